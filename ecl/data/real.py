"""Loaders for real face data: identity folders (CASIA-WebFace, VGGFace2, ORL), LFW and CelebA in the wild.

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
from ecl.data.pairs import PairList, balanced_folds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp")
LANDMARK68_NAMES = tuple(f"p{i}" for i in range(68))
LANDMARK68_FILE = "landmarks68_dlib_DERIVED.tsv"


def _prepare_hint(name: str, root: Any) -> str:
    return f"python data/{name}/prepare.py --root {root}"


def missing_root_error(kind: str, root: Any, prepare: str | None = None) -> FileNotFoundError:
    """The error for a dataset folder that does not exist: names the path and the command that makes it."""
    prepare = prepare or kind.lower()
    return FileNotFoundError(
        f"{kind} root {str(root)!r} does not exist. Download and prepare it with: "
        f"{_prepare_hint(prepare, root)} (see data/README.md)"
    )


# ----------------------------------------------------------------------------- landmark files


def five_from_68(points: np.ndarray) -> np.ndarray:
    """CelebA-style 5 points from iBUG 68 points.

    Shape:
        points: (..., 68, 2) -> (..., 5, 2)
    """
    p = np.asarray(points, dtype=np.float32)
    return np.stack(
        [p[..., 36:42, :].mean(-2), p[..., 42:48, :].mean(-2), p[..., 30, :], p[..., 48, :], p[..., 54, :]], axis=-2
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


def _landmark_names(landmarks: str) -> tuple[str, ...]:
    if landmarks == "68pt":
        return LANDMARK68_NAMES
    if landmarks in ("5pt", "none"):
        return LANDMARK_NAMES
    raise ValueError(f"landmarks must be '5pt', '68pt' or 'none', got {landmarks!r}")


def _natural_key(s: str) -> list[Any]:
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
        lm = np.full((n, k, 2), np.nan, np.float32) if landmarks is None else np.asarray(landmarks, np.float32)
        keep = []
        for i, p in enumerate(paths):
            reason = self._check(p, check)
            if reason is None:
                keep.append(i)
            elif on_corrupt == "raise":
                raise OSError(f"corrupt or unreadable image {str(p)!r}: {reason} (pass on_corrupt='skip' to skip it)")
            else:
                self.skipped.append((str(p), reason))
        self.paths = [Path(paths[i]) for i in keep]
        self.labels = np.asarray(labels, dtype=np.int64)[keep]
        self._landmarks = lm[keep]
        self._boxes = None if boxes is None else np.asarray(boxes, np.float64)[keep]
        self.num_classes = int(num_classes) if num_classes is not None else int(self.labels.max(initial=-1)) + 1
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
        """Decode, crop and resize image ``index``: (uint8 (S, S, 3), landmarks float32 (K, 2) in output pixels)."""
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
            raise OSError(f"cannot decode image {str(path)!r}: {err} (construct with check='decode' to skip "
                          "such files up front)") from err
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


def _select_landmarks(
    keys: Sequence[str],
    landmarks: str,
    five: dict[str, np.ndarray] | None,
    sixty_eight: dict[str, tuple[np.ndarray, np.ndarray] | None] | None,
) -> np.ndarray:
    """Stack landmarks for ``keys`` (relative paths) from a 5-point and/or 68-point table (NaN where missing)."""
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


def _find(candidates: Iterable[Path]) -> Path | None:
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
        names = sorted((d.name for d in base.iterdir() if d.is_dir()), key=_natural_key)
        if identities is not None:
            wanted = set(identities)
            names = [n for n in names if n in wanted]
        exts = tuple(e.lower() for e in extensions)
        files: list[list[Path]] = []
        kept: list[str] = []
        for n in names:
            fs = sorted((f for f in (base / n).iterdir() if f.suffix.lower() in exts), key=lambda f: _natural_key(f.name))
            if max_per_identity is not None:
                fs = fs[:max_per_identity]
            if len(fs) >= max(1, min_images):
                files.append(fs)
                kept.append(n)
            if max_identities is not None and len(kept) >= max_identities:
                break
        if not kept:
            raise FileNotFoundError(f"no identity folders with images ({', '.join(exts)}) under {str(base)!r}")
        paths = [f for fs in files for f in fs]
        labels = [i for i, fs in enumerate(files) for _ in fs]
        keys = [f"{f.parent.name}/{f.name}" for f in paths]
        lm_names = _landmark_names(landmarks)
        lms = None
        if landmarks != "none":
            lf = Path(landmark_file) if landmark_file else _find([base / LANDMARK68_FILE, root / LANDMARK68_FILE,
                                                                    base.parent / LANDMARK68_FILE])
            if lf is None:
                raise FileNotFoundError(f"landmarks={landmarks!r} needs a landmark file; none found near {str(base)!r}; "
                                        "pass landmark_file=...")
            five = sixty = None
            if lf.suffix == ".tsv":
                sixty = read_landmarks_68(lf)
            else:
                five = read_landmarks_5pt(lf)
            lms = _select_landmarks(keys, landmarks, five, sixty)
        self.root, self.identities = base, kept
        super().__init__(paths, labels, image_size=image_size, landmarks=lms, landmark_names=lm_names,
                         num_classes=len(kept), **kw)


# ----------------------------------------------------------------------------- LFW

_LFW_IMAGE_DIRS = ("images", "lfw", "lfw_funneled", "lfw-deepfunneled", "lfw-funneled")
_LFW_PAIRS = {"test": "pairsDevTest.txt", "dev_test": "pairsDevTest.txt", "train": "pairsDevTrain.txt",
              "dev_train": "pairsDevTrain.txt", "view2": "pairs.txt", "all": "pairs.txt"}
_LFW_PEOPLE = {"train": "peopleDevTrain.txt", "test": "peopleDevTest.txt", "view2": "people.txt"}


class _LFWLayout:
    """Where the images and the official lists of an LFW root are."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise missing_root_error("LFW", self.root, "lfw")
        self.images = _find(self.root / d for d in _LFW_IMAGE_DIRS) or self.root
        self._annot = [self.root / "annotations", self.root, self.images.parent]

    def file(self, name: str, required: bool = True) -> Path | None:
        p = _find(d / name for d in self._annot)
        if p is None and required:
            raise FileNotFoundError(f"LFW list {name!r} not found in {[str(d) for d in self._annot]}; "
                                    f"run {_prepare_hint('lfw', self.root)}")
        return p

    def path(self, name: str, number: int) -> Path:
        return self.images / name / f"{name}_{int(number):04d}.jpg"

    def landmarks(self, landmarks: str, width: int, keys: Sequence[str] | None = None) -> tuple[dict | None, dict | None]:
        """The 5-point table for images of this width, and/or the 68-point table (rows for ``keys`` only)."""
        if landmarks == "none":
            return None, None
        five = sixty = None
        f5 = self.file(f"lfw_landmark_5pt_{width}px.txt", required=False)
        if f5 is None and width == 250:
            f5 = self.file("lfw_landmark.txt", required=False)  # SphereFace's file, 250 px frame
        if landmarks == "5pt" and f5 is not None:
            five = read_landmarks_5pt(f5, keys)
        f68 = self.file(LANDMARK68_FILE, required=False)
        if f68 is not None and (landmarks == "68pt" or five is None):
            sixty = read_landmarks_68(f68, keys)
        return five, sixty


def read_lfw_people(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse ``people.txt`` / ``peopleDev*.txt``: (name, number of images) in file order (count lines skipped)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            f = line.split()
            if len(f) == 2 and f[1].isdigit() and not f[0].isdigit():
                out.append((f[0], int(f[1])))
    return out


def read_lfw_pairs(path: str | os.PathLike) -> tuple[list[tuple[str, int, str, int]], np.ndarray]:
    """Parse ``pairs.txt`` / ``pairsDev*.txt``.

    Returns the pairs as (name_a, number_a, name_b, number_b) and their folds: the file's own folds
    when the header is ``folds n`` (View 2: blocks of n same then n different pairs), else
    ``balanced_folds`` (10 folds with equal shares of same and different pairs).
    """
    with open(path, encoding="utf-8") as fh:
        lines = [ln.split() for ln in fh if ln.strip()]
    header, rows = lines[0], lines[1:]
    pairs = []
    for f in rows:
        if len(f) == 3:
            pairs.append((f[0], int(f[1]), f[0], int(f[2])))
        elif len(f) == 4:
            pairs.append((f[0], int(f[1]), f[2], int(f[3])))
        else:
            raise ValueError(f"{path}: cannot parse pair line {' '.join(f)!r}")
    is_same = np.array([a == c for a, _, c, _ in pairs])
    if len(header) == 2:
        folds, n = int(header[0]), int(header[1])
        fold = np.arange(len(pairs)) // (2 * n)
        if fold.max(initial=0) >= folds:
            raise ValueError(f"{path}: header says {folds} folds of 2x{n} pairs but the file has {len(pairs)}")
    else:
        fold = balanced_folds(is_same, 10)
    return pairs, fold


def _first_width(paths: Sequence[Path]) -> int:
    for p in paths:
        try:
            with Image.open(p) as img:
                return img.size[0]
        except OSError:
            continue
    return 0


class LFW(FaceImages):
    """LFW images of a set of people (View 1 train people for training by default).

    Args:
        root: an LFW folder: ``images/<Name>/<Name>_NNNN.jpg`` (or ``lfw/...`` as in lfw.tgz) and the
            official lists in ``annotations/`` or the root.
        split: "train" (peopleDevTrain.txt), "test" (peopleDevTest.txt), "view2" (people.txt) or
            "all" (every folder).
        image_size: output side S; the whole (square) LFW image is resized, landmarks scaled.
        landmarks: "5pt" (``lfw_landmark_5pt_<W>px.txt`` for W-pixel images, else derived from the
            68-point TSV), "68pt" or "none".
        crop: keep a centred square of this fraction of the image (None = whole image).
        people: keep only these names (e.g. a handful, for tests).
        min_images: drop people with fewer images (1 keeps everyone).
        max_people: keep the first N people of the list.
        **kw: ``FaceImages`` options (check, on_corrupt, preload).

    Labels are indices into ``self.people``. Files a people list names but that are absent are
    recorded in ``skipped`` (the shared copy lacks one image that no pair uses).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int = 112,
        landmarks: str = "5pt",
        crop: float | None = None,
        people: Sequence[str] | None = None,
        min_images: int = 1,
        max_people: int | None = None,
        **kw: Any,
    ):
        layout = _LFWLayout(root)
        if split == "all":
            names = sorted(d.name for d in layout.images.iterdir() if d.is_dir())
            listed = [(n, len(list((layout.images / n).glob("*.jpg")))) for n in names]
        elif split in _LFW_PEOPLE:
            listed = read_lfw_people(layout.file(_LFW_PEOPLE[split]))
        else:
            raise ValueError(f"split must be one of 'train', 'test', 'view2', 'all'; got {split!r}")
        if people is not None:
            wanted = set(people)
            listed = [(n, k) for n, k in listed if n in wanted]
        listed = [(n, k) for n, k in listed if k >= min_images]
        if max_people is not None:
            listed = listed[:max_people]
        paths, labels, skipped = [], [], []
        for label, (name, count) in enumerate(listed):
            for i in range(1, count + 1):
                p = layout.path(name, i)
                if p.is_file():
                    paths.append(p)
                    labels.append(label)
                else:
                    skipped.append((str(p), "file not found"))
        lm_names = _landmark_names(landmarks)
        keys = [f"{p.parent.name}/{p.name}" for p in paths]
        five, sixty = layout.landmarks(landmarks, _first_width(paths), keys)
        lms = _select_landmarks(keys, landmarks, five, sixty)
        self.root, self.split, self.people = layout.root, split, [n for n, _ in listed]
        super().__init__(paths, labels, image_size=image_size, landmarks=lms, crop=crop, landmark_names=lm_names,
                         num_classes=len(listed), skipped=skipped, **kw)


def lfw_pairs(
    root: str | os.PathLike,
    view: str = "test",
    image_size: int = 112,
    landmarks: str = "5pt",
    crop: float | None = None,
    max_pairs: int | None = None,
    on_missing: str = "raise",
    **kw: Any,
) -> tuple[FaceImages, PairList]:
    """An LFW verification list and the dataset of the unique images it references.

    Args:
        root: LFW folder (as for ``LFW``).
        view: "test" (View 1 ``pairsDevTest.txt``, 500 + 500 pairs, people disjoint from View 1
            train), "train" (``pairsDevTrain.txt``) or "view2" (``pairs.txt``, 10 folds x 600).
        image_size, landmarks, crop: as for ``LFW``.
        max_pairs: keep only the first N pairs of each fold's same and different halves, evenly
            (for quick tests); None keeps all.
        on_missing: "raise" if the list names absent images, or "drop" the pairs that use them
            (recorded in ``dataset.dropped_pairs``; the copy in ../shared/data lacks
            Betsy_Coffin_0001.jpg, which one pairsDevTest.txt pair uses).
        **kw: ``FaceImages`` options.

    Returns:
        (dataset, pairs): items of the dataset are the referenced images (labels = person index in
        order of first appearance); ``pairs`` indexes into it, folds as ``read_lfw_pairs``.

    Raises:
        FileNotFoundError: listing the first missing files if the list names images that are absent.
    """
    if view not in _LFW_PAIRS:
        raise ValueError(f"view must be one of {sorted(_LFW_PAIRS)}, got {view!r}")
    if on_missing not in ("raise", "drop"):
        raise ValueError(f"on_missing must be 'raise' or 'drop', got {on_missing!r}")
    layout = _LFWLayout(root)
    pairs, fold = read_lfw_pairs(layout.file(_LFW_PAIRS[view]))
    if max_pairs is not None:
        is_same = np.array([a == c for a, _, c, _ in pairs])
        keep = []
        for f in np.unique(fold):
            for s in (True, False):
                idx = np.flatnonzero((fold == f) & (is_same == s))
                keep.extend(idx[: max(1, max_pairs // (2 * len(np.unique(fold))))].tolist())
        keep.sort()
        pairs, fold = [pairs[i] for i in keep], fold[keep]
    dropped: list[tuple[str, int, str, int]] = []
    absent = {(n, i) for a, i, b, j in pairs for n, i in ((a, i), (b, j)) if not layout.path(n, i).is_file()}
    if absent and on_missing == "drop":
        keep = [k for k, (a, i, b, j) in enumerate(pairs) if (a, i) not in absent and (b, j) not in absent]
        dropped = [pairs[k] for k in range(len(pairs)) if k not in set(keep)]
        pairs, fold = [pairs[k] for k in keep], fold[keep]
    elif absent:
        missing = sorted(str(layout.path(n, i)) for n, i in absent)
        raise FileNotFoundError(
            f"{len(missing)} image(s) named in {_LFW_PAIRS[view]} are missing under {str(layout.images)!r}, "
            f"e.g. {missing[:5]}; re-run {_prepare_hint('lfw', layout.root)}, or pass on_missing='drop' "
            "to drop the pairs that use them"
        )
    index: dict[tuple[str, int], int] = {}
    for a, i, b, j in pairs:
        for key in ((a, i), (b, j)):
            index.setdefault(key, len(index))
    keys = list(index)
    paths = [layout.path(n, i) for n, i in keys]
    person: dict[str, int] = {}
    labels = [person.setdefault(n, len(person)) for n, _ in keys]
    lm_names = _landmark_names(landmarks)
    keys5 = [f"{p.parent.name}/{p.name}" for p in paths]
    five, sixty = layout.landmarks(landmarks, _first_width(paths), keys5)
    lms = _select_landmarks(keys5, landmarks, five, sixty)
    kw.setdefault("on_corrupt", "raise")  # a pair list must not silently lose images
    ds = FaceImages(paths, labels, image_size=image_size, landmarks=lms, crop=crop, landmark_names=lm_names,
                    num_classes=len(person), **kw)
    ds.people = list(person)
    ds.dropped_pairs = dropped
    ia = np.array([index[(a, i)] for a, i, _, _ in pairs])
    ib = np.array([index[(b, j)] for _, _, b, j in pairs])
    same = np.array([a == b for a, _, b, _ in pairs])
    return ds, PairList(ia, ib, same, fold)


# ----------------------------------------------------------------------------- CelebA in the wild

_CELEBA_IMAGE_DIRS = ("images", "img_celeba", "img_align_celeba")
# Box side / landmark span: 68 points span brows to chin, 5 points only eyes to mouth.
DEFAULT_BOX_SCALE = {"68pt": 1.6, "5pt": 3.2, "bbox": 1.2}


def read_identities(path: str | os.PathLike) -> dict[str, int]:
    """CelebA ``identity_CelebA.txt``: ``image identity`` per line, with or without a header line."""
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            f = line.split()
            if len(f) == 2 and f[1].lstrip("-").isdigit():
                out[f[0]] = int(f[1])
    return out


def read_bboxes(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """CelebA ``list_bbox_celeba.txt``: ``image x_1 y_1 width height`` -> float (4,) (l, t, r, b)."""
    out: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            f = line.split()
            if len(f) == 5 and f[1].lstrip("-").isdigit():
                x, y, w, h = (float(v) for v in f[1:])
                out[f[0]] = np.array([x, y, x + w, y + h])
    return out


def square_box(points_or_box: np.ndarray, scale: float) -> np.ndarray:
    """A square (l, t, r, b) centred on a point set's (or a box's) extent, side = scale * its longer side."""
    a = np.asarray(points_or_box, dtype=np.float64)
    if a.ndim == 1:
        left, top, right, bottom = a
    else:
        (left, top), (right, bottom) = np.nanmin(a, 0), np.nanmax(a, 0)
    cx, cy, side = (left + right) / 2, (top + bottom) / 2, scale * max(right - left, bottom - top)
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


class CelebA(FaceImages):
    """CelebA in-the-wild photos, cropped by a square box around the face WITHOUT rotation (no alignment).

    Args:
        root: a folder with ``images/`` (or ``img_celeba/``) and annotation files in ``annotations/`` or
            the root: an identity file (``identity_subset.txt`` or ``identity_CelebA.txt``, header line
            optional), and landmarks: ``landmarks68_dlib_DERIVED.tsv`` and/or the official
            ``list_landmarks_celeba.txt`` (5 points, in-the-wild coordinates); optionally
            ``list_bbox_celeba.txt`` and ``list_eval_partition.txt``.
        split: "all"; "train"/"val"/"test" from ``list_eval_partition.txt`` when present, else an
            identity-disjoint split (sorted identity ids: the first 80% train, the rest test).
        image_size: output side S.
        landmarks: "5pt" or "68pt" (returned landmarks); the crop uses ``box``.
        box: "landmarks" (square around the 68 points, or the 5 official points) or "bbox" (the
            official box file).
        box_scale: box side / landmark (or box) extent; default 1.6 for 68 points, 3.2 for 5 points,
            1.2 for the official box. Boxes leaving the image are padded with black.
        min_images: drop identities with fewer images (after skipping faceless images).
        max_identities: keep the first N identities (sorted ids).
        **kw: ``FaceImages`` options (check, on_corrupt, preload).

    Images where no face was detected (68-point rows with n_faces 0) or with no landmarks are
    skipped and recorded in ``skipped``. Labels index ``self.identities`` (CelebA ids, sorted).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "all",
        image_size: int = 112,
        landmarks: str = "5pt",
        box: str = "landmarks",
        box_scale: float | None = None,
        identity_file: str | os.PathLike | None = None,
        landmark_file: str | os.PathLike | None = None,
        min_images: int = 1,
        max_identities: int | None = None,
        **kw: Any,
    ):
        root = Path(root)
        if not root.is_dir():
            raise missing_root_error("CelebA", root, "celeba")
        if landmarks not in ("5pt", "68pt"):
            raise ValueError(f"landmarks must be '5pt' or '68pt' for CelebA, got {landmarks!r}")
        if box not in ("landmarks", "bbox"):
            raise ValueError(f"box must be 'landmarks' or 'bbox', got {box!r}")
        images = _find(root / d for d in _CELEBA_IMAGE_DIRS) or root
        annot = [root / "annotations", root, images.parent]

        def find(*names: str) -> Path | None:
            return _find(d / n for n in names for d in annot)

        idf = Path(identity_file) if identity_file else find("identity_subset.txt", "identity_CelebA.txt")
        if idf is None:
            raise FileNotFoundError(f"no CelebA identity file under {str(root)!r}; run {_prepare_hint('celeba', root)}")
        ids = read_identities(idf)
        five = sixty = None
        if landmark_file is not None:
            lf = Path(landmark_file)
            sixty, five = (read_landmarks_68(lf), None) if lf.suffix == ".tsv" else (None, read_landmarks_5pt(lf))
        else:
            f68, f5 = find(LANDMARK68_FILE), find("list_landmarks_celeba.txt")
            sixty = read_landmarks_68(f68) if f68 else None
            five = read_landmarks_5pt(f5) if f5 else None
        if landmarks == "68pt" and sixty is None:
            raise FileNotFoundError(f"landmarks='68pt' needs {LANDMARK68_FILE} under {str(root)!r}")
        if five is None and sixty is None:
            raise FileNotFoundError(f"no CelebA landmark file ({LANDMARK68_FILE} or list_landmarks_celeba.txt) "
                                    f"under {str(root)!r}")
        bboxes = None
        if box == "bbox":
            bf = find("list_bbox_celeba.txt")
            if bf is None:
                raise FileNotFoundError(f"box='bbox' needs list_bbox_celeba.txt under {str(root)!r}")
            bboxes = read_bboxes(bf)
        # keep the images that are present
        present = {p.name for p in images.iterdir()} if images.is_dir() else set()
        files = sorted(f for f in ids if f in present)
        # split
        part_file = find("list_eval_partition.txt")
        if split != "all":
            if part_file is not None:
                code = {"train": 0, "val": 1, "test": 2}[split]
                part = read_identities(part_file)  # same two-column format
                files = [f for f in files if part.get(f) == code]
            elif split in ("train", "test"):
                uid = sorted({ids[f] for f in files})
                cut = int(round(0.8 * len(uid)))
                chosen = set(uid[:cut] if split == "train" else uid[cut:])
                files = [f for f in files if ids[f] in chosen]
            else:
                raise ValueError(f"split {split!r} needs list_eval_partition.txt; use 'all', 'train' or 'test'")
        skipped: list[tuple[str, str]] = []
        rows = []
        for f in files:
            pts = _select_landmarks([f], landmarks, five, sixty)[0]
            if np.isnan(pts).all():
                skipped.append((str(images / f), "no face detected / no landmarks"))
                continue
            if box == "bbox":
                if f not in bboxes:  # type: ignore[operator]
                    skipped.append((str(images / f), "no box"))
                    continue
                b = square_box(bboxes[f], box_scale or DEFAULT_BOX_SCALE["bbox"])  # type: ignore[index]
            else:
                if sixty is not None and sixty.get(f) is not None:
                    b = square_box(sixty[f][1], box_scale or DEFAULT_BOX_SCALE["68pt"])  # type: ignore[index]
                else:
                    b = square_box(five[f], box_scale or DEFAULT_BOX_SCALE["5pt"])  # type: ignore[index]
            rows.append((f, pts, b))
        counts: dict[int, int] = {}
        for f, _, _ in rows:
            counts[ids[f]] = counts.get(ids[f], 0) + 1
        uid = sorted(i for i, c in counts.items() if c >= min_images)
        if max_identities is not None:
            uid = uid[:max_identities]
        label_of = {i: k for k, i in enumerate(uid)}
        rows = [r for r in rows if ids[r[0]] in label_of]
        if not rows:
            raise FileNotFoundError(f"no usable CelebA images under {str(images)!r}")
        self.root, self.split, self.identities = root, split, uid
        super().__init__(
            [images / f for f, _, _ in rows], [label_of[ids[f]] for f, _, _ in rows], image_size=image_size,
            landmarks=np.stack([p for _, p, _ in rows]), boxes=np.stack([b for _, _, b in rows]),
            landmark_names=_landmark_names(landmarks), num_classes=len(uid), skipped=skipped, **kw,
        )
