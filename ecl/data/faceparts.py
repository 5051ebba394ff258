"""FaceParts: a procedural dataset of unaligned synthetic face photos with exact part ground truth.

The faces are drawn by :mod:`ecl.data.render`. This module makes a dataset of them: identities per
split, images per identity, labels, landmarks and part masks, and a cache.

Determinism: an identity's parameters come from ``SeedSequence([seed, split, 0, identity])`` and an
image's nuisances from ``SeedSequence([seed, split, 1, identity, image])``, so item ``i`` has the same
bytes whatever the access order, worker count or cache state. ``train``, ``val`` (validation) and
``test`` use different streams, so their identities are disjoint by construction: every choice is made
on ``val`` and ``test`` is only measured.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ecl.data.render import (
    CHIMERA_PARTS,
    HAIR_STYLES,
    LANDMARK_NAMES,
    PART_NAMES,
    RENDERER_VERSION,
    FaceRenderer,
    Identity,
    RenderConfig,
    chimera,
    image_to_tensor,
    sample_identity,
)

__all__ = [
    "CHIMERA_PARTS",
    "HAIR_STYLES",
    "LANDMARK_NAMES",
    "PART_NAMES",
    "FaceParts",
    "Identity",
    "RenderConfig",
    "chimera",
    "default_cache_dir",
    "image_to_tensor",
    "sample_identity",
]

_SPLIT_CODE = {"train": 0, "test": 1, "val": 2}


# ----------------------------------------------------------------------------- the dataset


def default_cache_dir() -> Path:
    """``$ECL_CACHE/faceparts`` if set, else ``~/.cache/ecl/faceparts``."""
    root = os.environ.get("ECL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ecl") / "faceparts"


class FaceParts(Dataset):
    """Synthetic, unaligned face photos with identity labels, 5 landmarks and part masks.

    Args:
        split: "train", "val" (validation: where settings are chosen) or "test" (where they are only
            measured); the three splits have disjoint identities.
        num_identities: identities in this split (labels 0..num_identities-1).
        images_per_identity: images per identity; item ``i`` is identity ``i // images_per_identity``.
        image_size: output side S in pixels.
        seed: dataset seed; same seed, same bytes.
        difficulty: in [0, 1]; higher = smaller differences between people and stronger nuisances.
        occlusion_prob: probability that an image gets a random occluder over a face part.
        cache: "disk" (render once, store an .npz under ``cache_dir``), "memory" (render all now, keep
            in memory) or "none" (render each item on access; nothing stored).
        cache_dir: where "disk" caches live; default ``$ECL_CACHE/faceparts`` or ``~/.cache/ecl/faceparts``.
        **render_kw: other ``RenderConfig`` fields (max_shift, scale_range, max_rotation, max_yaw, jpeg_prob).

    Items are dicts with "image" float32 (3, S, S) in [0, 1], "label" int64, "landmarks" float32
    (5, 2) pixel (x, y), "masks" bool (8, S, S) in ``part_names`` order, "index" int.

    Masks are of the *visible* part: mutually exclusive like a face-parsing map (skin excludes the
    eyes, brows, nose and mouth drawn on it), and an occluder removes what it covers. Beards count as
    skin; glasses frames are not a part (the pixels under them keep their part).
    Attributes ``occluded`` (bool per item) and ``labels`` are numpy arrays.
    """

    landmark_names = LANDMARK_NAMES
    part_names = PART_NAMES

    def __init__(
        self,
        split: str = "train",
        num_identities: int = 100,
        images_per_identity: int = 20,
        image_size: int = 112,
        seed: int = 0,
        difficulty: float = 0.25,
        occlusion_prob: float = 0.1,
        cache: str = "disk",
        cache_dir: str | os.PathLike | None = None,
        **render_kw: Any,
    ):
        if split not in _SPLIT_CODE:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if cache not in ("disk", "memory", "none"):
            raise ValueError(f"cache must be 'disk', 'memory' or 'none', got {cache!r}")
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError("num_identities and images_per_identity must be >= 1")
        if not 0.0 <= difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
        self.split = split
        self.num_identities = self.num_classes = int(num_identities)
        self.images_per_identity = int(images_per_identity)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.config = RenderConfig(
            image_size=self.image_size,
            difficulty=float(difficulty),
            occlusion_prob=float(occlusion_prob),
            **render_kw,
        )
        self._renderer = FaceRenderer(self.config)
        self.identities = [self.identity(i) for i in range(self.num_identities)]
        n = len(self)
        self.labels = np.arange(n) // self.images_per_identity
        self._images = self._labelmaps = self._landmarks = None
        self.occluded = None
        self.cache_path: Path | None = None
        if cache == "disk":
            self.cache_path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            self.cache_path = self.cache_path / f"faceparts-{self.key()}.npz"
            self._load_or_render()
        elif cache == "memory":
            self._render_all()
        else:
            pass  # render on access; ``occluded`` stays None (it needs every image rendered)

    # -- identities and rendering
    def key(self) -> str:
        """A hash of every generation parameter (and the renderer version): the cache key."""
        spec = {
            "v": RENDERER_VERSION,
            "split": self.split,
            "n": self.num_identities,
            "k": self.images_per_identity,
            "seed": self.seed,
            "cfg": self.config.__dict__,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()).hexdigest()[:16]

    def identity(self, i: int) -> Identity:
        """Parameters of identity ``i`` of this split (depends only on seed, split and i)."""
        ss = np.random.SeedSequence([self.seed, _SPLIT_CODE[self.split], 0, int(i)])
        return sample_identity(np.random.default_rng(ss))

    def _image_rng(self, identity: int, image: int) -> np.random.Generator:
        ss = np.random.SeedSequence([self.seed, _SPLIT_CODE[self.split], 1, int(identity), int(image)])
        return np.random.default_rng(ss)

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Render item ``index``: (image uint8 (S, S, 3), label map uint8 (S, S), landmarks (5, 2),
        occluded)."""
        ident, img = divmod(int(index), self.images_per_identity)
        return self._renderer.render(self.identities[ident], self._image_rng(ident, img))

    def render_chimera(
        self, identity_a: int, identity_b: int, part: str, image_index: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Identity ``identity_a`` wearing part ``part`` ("eyes", "brows", "nose", "mouth", "hair") of
        ``identity_b``.

        The image's nuisances (pose, light, background...) are those of ``identity_a``'s image
        ``image_index``, so ``render(a, image_index)`` and the chimera differ only in that part
        (and in whatever the changed part covers). Returns the same tuple as ``render``.
        """
        ident = chimera(self.identities[identity_a], self.identities[identity_b], part)
        return self._renderer.render(ident, self._image_rng(identity_a, image_index))

    def _render_all(self) -> None:
        n, S = len(self), self.image_size
        images = np.empty((n, S, S, 3), np.uint8)
        labelmaps = np.empty((n, S, S), np.uint8)
        landmarks = np.empty((n, len(LANDMARK_NAMES), 2), np.float32)
        occluded = np.empty(n, bool)
        for i in range(n):
            images[i], labelmaps[i], landmarks[i], occluded[i] = self.render(i)
        self._images, self._labelmaps, self._landmarks, self.occluded = images, labelmaps, landmarks, occluded

    def _load_or_render(self) -> None:
        path = self.cache_path
        assert path is not None
        if path.is_file():
            try:
                with np.load(path) as z:
                    self._images, self._labelmaps = z["images"], z["labelmaps"]
                    self._landmarks, self.occluded = z["landmarks"], z["occluded"]
                if len(self._images) == len(self):
                    return
            except (OSError, KeyError, ValueError):
                pass  # a damaged cache is re-rendered below
        self._render_all()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                images=self._images,
                labelmaps=self._labelmaps,
                landmarks=self._landmarks,
                occluded=self.occluded,
            )
        os.replace(tmp, path)  # atomic: concurrent runs never read a half-written cache

    # -- Dataset protocol
    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(image uint8 (S, S, 3), label map uint8 (S, S), landmarks (5, 2), occluded) of item ``index``."""
        if self._images is not None:
            return (
                self._images[index],
                self._labelmaps[index],
                self._landmarks[index],
                bool(self.occluded[index]),
            )
        return self.render(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for FaceParts of length {len(self)}")
        index = int(index) % len(self)
        image, labelmap, landmarks, _ = self.raw(index)
        codes = np.arange(1, len(PART_NAMES) + 1, dtype=np.uint8)
        return {
            "image": image_to_tensor(image),
            "label": torch.tensor(int(self.labels[index]), dtype=torch.int64),
            "landmarks": torch.from_numpy(np.array(landmarks, dtype=np.float32)),
            "masks": torch.from_numpy(labelmap[None] == codes[:, None, None]),
            "index": index,
        }

    def __repr__(self) -> str:
        return (
            f"FaceParts(split={self.split!r}, num_identities={self.num_identities}, "
            f"images_per_identity={self.images_per_identity}, image_size={self.image_size}, "
            f"seed={self.seed}, "
            f"difficulty={self.config.difficulty})"
        )
