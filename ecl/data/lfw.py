"""LFW: the images, the official people and pair lists (View 1 and View 2), and its landmarks.

Items and landmark sets are those of :mod:`ecl.data.real`; nothing is aligned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ecl.data.pairs import PairList, balanced_folds
from ecl.data.real import (
    LANDMARK68_FILE,
    FaceImages,
    find_first,
    landmark_names_for,
    missing_root_error,
    prepare_hint,
    read_landmarks_5pt,
    read_landmarks_68,
    select_landmarks,
)

_LFW_IMAGE_DIRS = ("images", "lfw", "lfw_funneled", "lfw-deepfunneled", "lfw-funneled")
_LFW_PAIRS = {
    "test": "pairsDevTest.txt",
    "dev_test": "pairsDevTest.txt",
    "train": "pairsDevTrain.txt",
    "dev_train": "pairsDevTrain.txt",
    "view2": "pairs.txt",
    "all": "pairs.txt",
}
_LFW_PEOPLE = {"train": "peopleDevTrain.txt", "test": "peopleDevTest.txt", "view2": "people.txt"}


class _LFWLayout:
    """Where the images and the official lists of an LFW root are."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise missing_root_error("LFW", self.root, "lfw")
        self.images = find_first(self.root / d for d in _LFW_IMAGE_DIRS) or self.root
        self._annot = [self.root / "annotations", self.root, self.images.parent]

    def file(self, name: str, required: bool = True) -> Path | None:
        p = find_first(d / name for d in self._annot)
        if p is None and required:
            raise FileNotFoundError(
                f"LFW list {name!r} not found in {[str(d) for d in self._annot]}; "
                f"run {prepare_hint('lfw', self.root)}"
            )
        return p

    def path(self, name: str, number: int) -> Path:
        return self.images / name / f"{name}_{int(number):04d}.jpg"

    def landmarks(
        self, landmarks: str, width: int, keys: Sequence[str] | None = None
    ) -> tuple[dict | None, dict | None]:
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
    """Parse ``people.txt`` / ``peopleDev*.txt``: (name, number of images) in file order (count lines
    skipped)."""
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
            raise ValueError(
                f"{path}: header says {folds} folds of 2x{n} pairs but the file has {len(pairs)}"
            )
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
        lm_names = landmark_names_for(landmarks)
        keys = [f"{p.parent.name}/{p.name}" for p in paths]
        five, sixty = layout.landmarks(landmarks, _first_width(paths), keys)
        lms = select_landmarks(keys, landmarks, five, sixty)
        self.root, self.split, self.people = layout.root, split, [n for n, _ in listed]
        super().__init__(
            paths,
            labels,
            image_size=image_size,
            landmarks=lms,
            crop=crop,
            landmark_names=lm_names,
            num_classes=len(listed),
            skipped=skipped,
            **kw,
        )


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
            f"e.g. {missing[:5]}; re-run {prepare_hint('lfw', layout.root)}, or pass on_missing='drop' "
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
    lm_names = landmark_names_for(landmarks)
    keys5 = [f"{p.parent.name}/{p.name}" for p in paths]
    five, sixty = layout.landmarks(landmarks, _first_width(paths), keys5)
    lms = select_landmarks(keys5, landmarks, five, sixty)
    kw.setdefault("on_corrupt", "raise")  # a pair list must not silently lose images
    ds = FaceImages(
        paths,
        labels,
        image_size=image_size,
        landmarks=lms,
        crop=crop,
        landmark_names=lm_names,
        num_classes=len(person),
        **kw,
    )
    ds.people = list(person)
    ds.dropped_pairs = dropped
    ia = np.array([index[(a, i)] for a, i, _, _ in pairs])
    ib = np.array([index[(b, j)] for _, _, b, j in pairs])
    same = np.array([a == b for a, _, b, _ in pairs])
    return ds, PairList(ia, ib, same, fold)
