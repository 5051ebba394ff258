"""CelebA in the wild: identities, boxes and landmarks of the original (unaligned) photos, cropped square.

Items and landmark sets are those of :mod:`ecl.data.real`; nothing is aligned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

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
        images = find_first(root / d for d in _CELEBA_IMAGE_DIRS) or root
        annot = [root / "annotations", root, images.parent]

        def find(*names: str) -> Path | None:
            return find_first(d / n for n in names for d in annot)

        idf = Path(identity_file) if identity_file else find("identity_subset.txt", "identity_CelebA.txt")
        if idf is None:
            raise FileNotFoundError(
                f"no CelebA identity file under {str(root)!r}; run {prepare_hint('celeba', root)}"
            )
        ids = read_identities(idf)
        five = sixty = None
        if landmark_file is not None:
            lf = Path(landmark_file)
            sixty, five = (
                (read_landmarks_68(lf), None) if lf.suffix == ".tsv" else (None, read_landmarks_5pt(lf))
            )
        else:
            f68, f5 = find(LANDMARK68_FILE), find("list_landmarks_celeba.txt")
            sixty = read_landmarks_68(f68) if f68 else None
            five = read_landmarks_5pt(f5) if f5 else None
        if landmarks == "68pt" and sixty is None:
            raise FileNotFoundError(f"landmarks='68pt' needs {LANDMARK68_FILE} under {str(root)!r}")
        if five is None and sixty is None:
            raise FileNotFoundError(
                f"no CelebA landmark file ({LANDMARK68_FILE} or list_landmarks_celeba.txt) "
                f"under {str(root)!r}"
            )
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
                raise ValueError(
                    f"split {split!r} needs list_eval_partition.txt; use 'all', 'train' or 'test'"
                )
        skipped: list[tuple[str, str]] = []
        rows = []
        for f in files:
            pts = select_landmarks([f], landmarks, five, sixty)[0]
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
            [images / f for f, _, _ in rows],
            [label_of[ids[f]] for f, _, _ in rows],
            image_size=image_size,
            landmarks=np.stack([p for _, p, _ in rows]),
            boxes=np.stack([b for _, _, b in rows]),
            landmark_names=landmark_names_for(landmarks),
            num_classes=len(uid),
            skipped=skipped,
            **kw,
        )
