"""Real face data: what every loader shares, and identity folders (CASIA-WebFace, VGGFace2, ORL).

All loaders return the same items as FaceParts, without "masks": "image" float32 (3, S, S) in [0, 1],
"label" int64, "landmarks" float32 (K, 2) pixel (x, y) in the returned image (NaN where missing),
"index" int. Nothing is aligned: an image is either padded to a square (default), centre-cropped, or
cropped by a square box (CelebA), then resized to S, and its landmarks are mapped the same way.

Landmark sets: ``landmarks="5pt"`` (left eye, right eye, nose tip, left and right mouth corner,
image-left/right as in CelebA), ``"68pt"`` (iBUG 300-W order) or ``"none"`` (five NaN points, so
items keep the same keys). Five points are derived from 68 where only 68 exist: eye centres are the
means of points 36-41 and 42-47, the nose tip is 30, the mouth corners 48 and 54.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ecl.data.faceparts import LANDMARK_NAMES, image_to_tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp")
LANDMARK68_NAMES = tuple(f"p{i}" for i in range(68))
LANDMARK68_FILE = "landmarks68_dlib_DERIVED.tsv"


def prepare_hint(name: str, root: Any) -> str:
    return f"python data/{name}/prepare.py --root {root}"


def missing_root_error(kind: str, root: Any, prepare: str | None = None) -> FileNotFoundError:
    """The error for a dataset folder that does not exist: names the path and the command that makes it."""
    prepare = prepare or kind.lower()
    return FileNotFoundError(
        f"{kind} root {str(root)!r} does not exist. Download and prepare it with: "
        f"{prepare_hint(prepare, root)} (see data/README.md)"
    )


# ----------------------------------------------------------------------------- landmark files


def five_from_68(points: np.ndarray) -> np.ndarray:
    """CelebA-style 5 points from iBUG 68 points.

    Shape:
        points: (..., 68, 2) -> (..., 5, 2)
    """
    p = np.asarray(points, dtype=np.float32)
    return np.stack(
        [p[..., 36:42, :].mean(-2), p[..., 42:48, :].mean(-2), p[..., 30, :], p[..., 48, :], p[..., 54, :]],
        axis=-2,
    )


def read_landmarks_5pt(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read a 5-point landmark file: lines ``image x1 y1 ... x5 y5`` (tabs or spaces).

    Accepts the LFW files (``#`` comments) and CelebA's official ``list_landmarks_celeba.txt``
    (a count line and a header line first). Returns image path (as written) -> float32 (5, 2);
    only for ``keys`` when given.
    """
    out: dict[str, np.ndarray] = {}
    wanted = None if keys is None else set(keys)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            f = line.split()
            if len(f) != 11 or (wanted is not None and f[0] not in wanted):
                continue
            try:
                out[f[0]] = np.array(f[1:], dtype=np.float32).reshape(5, 2)
            except ValueError:
                continue  # the header line
    return out


def read_landmarks_68(
    path: str | os.PathLike, keys: Iterable[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Read the 68-point TSV: ``path n_faces box_l box_t box_r box_b x0 y0 ... x67 y67``.

    Returns image path -> (box float32 (4,), points float32 (68, 2)), or None where no face was
    found; only for ``keys`` when given.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    wanted = None if keys is None else set(keys)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            f = line.rstrip("\n").split("\t")
            if len(f) < 2 or (wanted is not None and f[0] not in wanted):
                continue
            if int(f[1]) == 0 or len(f) < 6 + 136:
                out[f[0]] = None
                continue
            v = np.array(f[2 : 6 + 136], dtype=np.float32)
            out[f[0]] = (v[:4], v[4:].reshape(68, 2))
    return out


def landmark_names_for(landmarks: str) -> tuple[str, ...]:
    if landmarks == "68pt":
        return LANDMARK68_NAMES
    if landmarks in ("5pt", "none"):
        return LANDMARK_NAMES
    raise ValueError(f"landmarks must be '5pt', '68pt' or 'none', got {landmarks!r}")


def natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# ----------------------------------------------------------------------------- the common dataset


class FaceImages(Dataset):
    """Face images from files with labels, optional landmarks and optional square crop boxes.

    Args:
        paths: image files.
        labels: identity index per image (-1 where unknown).
        image_size: output side S.
        landmarks: float32 (N, K, 2) in original-image pixels (NaN where missing), or None (K = 5, all NaN).
        boxes: float (N, 4) square crop boxes (left, top, right, bottom) in original pixels, may leave
            the image (padded with black); None = pad the whole image to a centred square.
        crop: with ``boxes=None``, keep a centred square of this fraction of the image's shorter side
            (e.g. 0.7), instead of the whole padded image.
        landmark_names: names of the K landmarks.
        check: "header" (open each file at construction: catches unreadable files), "decode" (also
            decode every pixel: catches truncated files; slower) or "none".
        on_corrupt: "skip" (drop the image and record it in ``skipped``) or "raise".
        preload: decode and resize every image now and keep them in memory (uint8).
        num_classes: number of identities (default: max label + 1).

    Attributes:
        skipped: list of (path, reason) for images dropped at construction.
        paths, labels: the kept images, in item order.
    """

    part_names: tuple[str, ...] = ()

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int],
        image_size: int = 112,
        landmarks: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        crop: float | None = None,
        landmark_names: tuple[str, ...] = LANDMARK_NAMES,
        check: str = "header",
        on_corrupt: str = "skip",
        preload: bool = False,
        num_classes: int | None = None,
        skipped: list[tuple[str, str]] | None = None,
    ):
        if on_corrupt not in ("skip", "raise"):
            raise ValueError(f"on_corrupt must be 'skip' or 'raise', got {on_corrupt!r}")
        if check not in ("header", "decode", "none"):
            raise ValueError(f"check must be 'header', 'decode' or 'none', got {check!r}")
        if crop is not None and not 0.0 < crop <= 1.0:
            raise ValueError(f"crop must be a fraction in (0, 1], got {crop}")
        n = len(paths)
        if len(labels) != n:
            raise ValueError(f"{n} paths but {len(labels)} labels")
        self.image_size = int(image_size)
        self.landmark_names = tuple(landmark_names)
        self.crop = crop
        self.on_corrupt = on_corrupt
        self.skipped: list[tuple[str, str]] = list(skipped or [])
        k = len(self.landmark_names)
        lm = (
            np.full((n, k, 2), np.nan, np.float32) if landmarks is None else np.asarray(landmarks, np.float32)
        )
        keep = []
        for i, p in enumerate(paths):
            reason = self._check(p, check)
            if reason is None:
                keep.append(i)
            elif on_corrupt == "raise":
                raise OSError(
                    f"corrupt or unreadable image {str(p)!r}: {reason} (pass on_corrupt='skip' to skip it)"
                )
            else:
                self.skipped.append((str(p), reason))
        self.paths = [Path(paths[i]) for i in keep]
        self.labels = np.asarray(labels, dtype=np.int64)[keep]
        self._landmarks = lm[keep]
        self._boxes = None if boxes is None else np.asarray(boxes, np.float64)[keep]
        self.num_classes = (
            int(num_classes) if num_classes is not None else int(self.labels.max(initial=-1)) + 1
        )
        self._cache: list[tuple[np.ndarray, np.ndarray] | None] | None = None
        if preload:
            self._cache = [self._load(i) for i in range(len(self.paths))]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @staticmethod
    def _check(path: str | os.PathLike, check: str) -> str | None:
        if check == "none":
            return None
        try:
            with Image.open(path) as img:
                if check == "decode":
                    img.load()
        except FileNotFoundError:
            return "file not found"
        except Exception as err:  # PIL raises several types for bad files; all mean "unreadable"
            return f"{type(err).__name__}: {err}"
        return None

    def __len__(self) -> int:
        return len(self.paths)

    def _box(self, index: int, w: int, h: int) -> tuple[float, float, float, float]:
        if self._boxes is not None:
            return tuple(self._boxes[index])  # type: ignore[return-value]
        side = max(w, h) if self.crop is None else self.crop * min(w, h)
        cx, cy = w / 2.0, h / 2.0
        return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode, crop and resize image ``index``: (uint8 (S, S, 3), landmarks float32 (K, 2) in output
        pixels)."""
        S = self.image_size
        path = self.paths[index]
        try:
            img = Image.open(path)
            w, h = img.size
            left, top, right, bottom = self._box(index, w, h)
            side = max(right - left, bottom - top)
            if img.format == "JPEG" and side > 2 * S:
                # decode at a reduced scale (1/2, 1/4, 1/8): big in-the-wild photos load far faster
                img.draft("RGB", (max(1, int(w * 2 * S / side)), max(1, int(h * 2 * S / side))))
            img = img.convert("RGB")
        except Exception as err:
            raise OSError(
                f"cannot decode image {str(path)!r}: {err} (construct with check='decode' to skip "
                "such files up front)"
            ) from err
        sx, sy = img.size[0] / w, img.size[1] / h
        box = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
        # crop() pads with black outside the image: that is how boxes leaving the image are handled
        img = img.crop(box).resize((S, S), Image.BILINEAR)
        lm = self._landmarks[index].astype(np.float64)
        scale_x, scale_y = S / (box[2] - box[0]), S / (box[3] - box[1])
        lm = np.stack([(lm[:, 0] * sx - box[0]) * scale_x, (lm[:, 1] * sy - box[1]) * scale_y], axis=1)
        return np.asarray(img, dtype=np.uint8), lm.astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of length {len(self)}")
        index = int(index) % len(self)
        image, lm = self._cache[index] if self._cache is not None else self._load(index)
        return {
            "image": image_to_tensor(image),
            "label": torch.tensor(int(self.labels[index]), dtype=torch.int64),
            "landmarks": torch.from_numpy(lm.copy()),
            "index": index,
        }

    def subset_by(self, indices: Iterable[int]) -> FaceImages:
        """A new dataset with items ``indices`` (labels kept as they are)."""
        idx = list(indices)
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.paths = [self.paths[i] for i in idx]
        out.labels = self.labels[idx]
        out._landmarks = self._landmarks[idx]
        out._boxes = None if self._boxes is None else self._boxes[idx]
        out._cache = None if self._cache is None else [self._cache[i] for i in idx]
        return out


def select_landmarks(
    keys: Sequence[str],
    landmarks: str,
    five: dict[str, np.ndarray] | None,
    sixty_eight: dict[str, tuple[np.ndarray, np.ndarray] | None] | None,
) -> np.ndarray:
    """Stack landmarks for ``keys`` (relative paths) from a 5-point and/or 68-point table (NaN where
    missing)."""
    k = 68 if landmarks == "68pt" else 5
    out = np.full((len(keys), k, 2), np.nan, np.float32)
    if landmarks == "none":
        return out
    for i, key in enumerate(keys):
        if landmarks == "5pt" and five is not None and key in five:
            out[i] = five[key]
        elif sixty_eight is not None and sixty_eight.get(key) is not None:
            pts = sixty_eight[key][1]  # type: ignore[index]
            out[i] = pts if landmarks == "68pt" else five_from_68(pts)
    return out


def find_first(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.exists():
            return c
    return None


# ----------------------------------------------------------------------------- identity folders


class ImageFolderFaces(FaceImages):
    """Identity folders: ``root/<identity>/*.jpg|png|pgm`` (CASIA-WebFace, VGGFace2, ORL layouts).

    Labels are the identities in natural sort order (s1, s2, ..., s10). Images are padded to a square
    (or centre-cropped with ``crop``) and resized; no alignment.

    Args:
        root: the folder of identity folders; for a folder holding ``images/`` (as ORL in
            ../shared/data), that subfolder is used.
        image_size: output side S.
        landmarks: "none", "5pt" or "68pt".
        landmark_file: a 5-point file or a 68-point TSV with paths relative to the identity-folder root;
            default: ``landmarks68_dlib_DERIVED.tsv`` in root or its parent, if there.
        identities: keep only these identity folder names.
        min_images: drop identities with fewer images.
        max_identities: keep the first N identities (after sorting and filtering).
        max_per_identity: keep at most N images per identity.
        **kw: ``FaceImages`` options (crop, check, on_corrupt, preload).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 112,
        landmarks: str = "none",
        landmark_file: str | os.PathLike | None = None,
        identities: Sequence[str] | None = None,
        min_images: int = 1,
        max_identities: int | None = None,
        max_per_identity: int | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        prepare: str = "folder",
        **kw: Any,
    ):
        root = Path(root)
        if not root.is_dir():
            raise missing_root_error("Identity-folder", root, prepare)
        base = root / "images" if (root / "images").is_dir() else root
        names = sorted((d.name for d in base.iterdir() if d.is_dir()), key=natural_key)
        if identities is not None:
            wanted = set(identities)
            names = [n for n in names if n in wanted]
        exts = tuple(e.lower() for e in extensions)
        files: list[list[Path]] = []
        kept: list[str] = []
        for n in names:
            fs = sorted(
                (f for f in (base / n).iterdir() if f.suffix.lower() in exts),
                key=lambda f: natural_key(f.name),
            )
            if max_per_identity is not None:
                fs = fs[:max_per_identity]
            if len(fs) >= max(1, min_images):
                files.append(fs)
                kept.append(n)
            if max_identities is not None and len(kept) >= max_identities:
                break
        if not kept:
            raise FileNotFoundError(
                f"no identity folders with images ({', '.join(exts)}) under {str(base)!r}"
            )
        paths = [f for fs in files for f in fs]
        labels = [i for i, fs in enumerate(files) for _ in fs]
        keys = [f"{f.parent.name}/{f.name}" for f in paths]
        lm_names = landmark_names_for(landmarks)
        lms = None
        if landmarks != "none":
            lf = (
                Path(landmark_file)
                if landmark_file
                else find_first(
                    [base / LANDMARK68_FILE, root / LANDMARK68_FILE, base.parent / LANDMARK68_FILE]
                )
            )
            if lf is None:
                raise FileNotFoundError(
                    f"landmarks={landmarks!r} needs a landmark file; none found near {str(base)!r}; "
                    "pass landmark_file=..."
                )
            five = sixty = None
            if lf.suffix == ".tsv":
                sixty = read_landmarks_68(lf)
            else:
                five = read_landmarks_5pt(lf)
            lms = select_landmarks(keys, landmarks, five, sixty)
        self.root, self.identities = base, kept
        super().__init__(
            paths,
            labels,
            image_size=image_size,
            landmarks=lms,
            landmark_names=lm_names,
            num_classes=len(kept),
            **kw,
        )
