"""Face-part masks drawn from 68 iBUG landmarks, for real data that has landmarks but no part masks.

:func:`landmark_part_masks` draws polygons through the landmarks: eyes 36-41 / 42-47, mouth 48-59, nose
as the convex hull of 27-35, eyebrows as a thick line through 17-21 / 22-26 (width 0.1 x the eye
distance). They are coarse stand-ins for annotated masks, and dlib's points are machine output, not
manual labels. :class:`LandmarkPartMasks` adds them to the items of any 68-landmark dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

LANDMARK_PART_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "left_brow", "right_brow", "nose", "mouth")
"""Parts ``landmark_part_masks`` draws from 68 iBUG points (left/right as seen in the image)."""


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain: hull vertices of 2-D points in order."""
    pts = sorted(map(tuple, points))
    if len(pts) <= 2:
        return np.array(pts)

    def half(sequence):
        hull: list[tuple[float, float]] = []
        for p in sequence:
            while len(hull) >= 2:
                (ax, ay), (bx, by) = hull[-2], hull[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                hull.pop()
            hull.append(p)
        return hull

    lower, upper = half(pts), half(reversed(pts))
    return np.array(lower[:-1] + upper[:-1])


def landmark_part_masks(
    landmarks: np.ndarray | torch.Tensor, image_size: int | tuple[int, int]
) -> np.ndarray:
    """Approximate part masks drawn from 68 iBUG landmarks (see the module docstring).

    Args:
        landmarks: (68, 2) or (N, 68, 2) pixel (x, y); a part with a missing (NaN) point is empty.
        image_size: S or (S_h, S_w).

    Returns:
        bool (P, S_h, S_w) or (N, P, S_h, S_w), parts in ``LANDMARK_PART_NAMES`` order.
    """
    from PIL import Image, ImageDraw

    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim == 3:
        return np.stack([landmark_part_masks(p, image_size) for p in points])
    if points.shape != (68, 2):
        raise ValueError(f"landmark_part_masks needs 68 iBUG points (68, 2); got {points.shape}")
    image_h, image_w = (image_size, image_size) if np.isscalar(image_size) else image_size
    eye_distance = np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0))
    width = max(1, int(round(0.1 * eye_distance))) if np.isfinite(eye_distance) else max(1, image_w // 40)
    shapes = {
        "left_eye": ("polygon", points[36:42]),
        "right_eye": ("polygon", points[42:48]),
        "left_brow": ("line", points[17:22]),
        "right_brow": ("line", points[22:27]),
        "nose": ("hull", points[27:36]),
        "mouth": ("polygon", points[48:60]),
    }
    masks = np.zeros((len(LANDMARK_PART_NAMES), image_h, image_w), dtype=bool)
    for index, name in enumerate(LANDMARK_PART_NAMES):
        kind, pts = shapes[name]
        if not np.isfinite(pts).all():
            continue
        canvas = Image.new("1", (image_w, image_h), 0)
        draw = ImageDraw.Draw(canvas)
        if kind == "hull":
            pts = _convex_hull(pts)
        xy = [tuple(p) for p in pts.tolist()]
        if kind == "line":
            draw.line(xy, fill=1, width=width, joint="curve")
        else:
            draw.polygon(xy, fill=1, outline=1)
        masks[index] = np.asarray(canvas, dtype=bool)
    return masks


class LandmarkPartMasks(torch.utils.data.Dataset):
    """Adds approximate ``"masks"`` (from 68 landmarks) to every item of a dataset without masks."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset
        self.part_names = LANDMARK_PART_NAMES

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        # Dunders stay ours: forwarding e.g. Subset.__getitems__ would let DataLoader skip __getitem__.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        size = tuple(item["image"].shape[-2:])
        item["masks"] = torch.from_numpy(landmark_part_masks(np.asarray(item["landmarks"]), size))
        return item


def with_part_masks(dataset: Any, part_names: Sequence[str] = ()) -> tuple[Any, tuple[str, ...], str | None]:
    """A dataset whose items carry part masks: its own, or polygons drawn from its 68 landmarks.

    Args:
        dataset: any face dataset. part_names: the names of its own masks.

    Returns:
        ``(dataset, part_names, where the masks come from)``: ``"dataset"``, ``"68-landmark polygons"``
        (wrapped in :class:`LandmarkPartMasks`), or ``None`` with the dataset unchanged when there are
        neither masks nor 68 landmarks.
    """
    probe = dataset[0]
    if "masks" in probe:
        return dataset, tuple(part_names), "dataset"
    if np.asarray(probe.get("landmarks", np.zeros((0, 2)))).shape[0] == 68:
        return LandmarkPartMasks(dataset), LANDMARK_PART_NAMES, "68-landmark polygons"
    return dataset, tuple(part_names), None
