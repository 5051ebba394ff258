"""Arrays and PNG bytes: colour maps, heat-map overlays, part-mask overlays and tiling."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch

# Viridis at 9 evenly spaced stops (matplotlib's published table, rounded); linear interpolation between
# them is visually indistinguishable at the sizes used here and keeps matplotlib out of the dependencies.
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


# Distinct colours for part masks (Tableau 10), in ``part_names`` order.
PART_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def colormap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map values to viridis RGB colours.

    Args:
        values: Any array of numbers.
        vmin, vmax: Value range mapped to the ends of the colour map (default: the array's range).

    Returns:
        ``uint8`` array of shape ``values.shape + (3,)``.
    """
    values = np.asarray(values, dtype=np.float64)
    lo = np.nanmin(values) if vmin is None else vmin
    hi = np.nanmax(values) if vmax is None else vmax
    scaled = np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    position = np.nan_to_num(scaled) * (len(_VIRIDIS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (position - low)[..., None]
    rgb = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac
    return rgb.round().astype(np.uint8)


def image_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (3, H, W) float image in [0, 1] (or an (H, W, 3) uint8 array) as (H, W, 3) uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def heatmap_overlay(
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    opacity: float = 0.5,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend a channel's activation map, upsampled bilinearly to the image, over the image.

    Args:
        image: ``(3, H, W)`` float in [0, 1] or ``(H, W, 3)`` uint8.
        heatmap: ``(h, w)`` activation map (any size; bilinear upsampling as in the metrics).
        opacity: Weight of the heat map, 0 (image only) to 1 (heat map only).
        vmax: Value drawn as the brightest colour (default: the map's maximum), so maps can share a scale.

    Returns:
        ``(H, W, 3)`` uint8 array.
    """
    rgb = image_hwc(image)
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    heat = torch.nn.functional.interpolate(heat, size=rgb.shape[:2], mode="bilinear", align_corners=False)[
        0, 0
    ]
    colours = colormap(
        heat.numpy(), vmin=0.0, vmax=vmax if vmax is not None else max(float(heat.max()), 1e-12)
    )
    blended = (1 - opacity) * rgb.astype(np.float64) + opacity * colours.astype(np.float64)
    return blended.round().astype(np.uint8)


def to_png(array: np.ndarray, scale: int = 1) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 (or ``(H, W)``) array as PNG bytes, enlarged ``scale`` times
    (nearest)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(array))
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def masks_overlay(
    image: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    opacity: float = 0.45,
    parts: Sequence[int] | None = None,
) -> np.ndarray:
    """Colour each part mask over the image (later parts drawn over earlier ones).

    Args:
        image: ``(3, H, W)`` float in [0, 1] or ``(H, W, 3)`` uint8.
        masks: ``(P, H, W)`` boolean part masks.
        opacity: Weight of the mask colour.
        parts: Indices of the parts to draw (default: all).

    Returns:
        ``(H, W, 3)`` uint8 array.
    """
    rgb = image_hwc(image).astype(np.float64)
    masks = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks, dtype=bool)
    for p in range(len(masks)) if parts is None else parts:
        colour = np.array(PART_COLOURS[p % len(PART_COLOURS)], dtype=np.float64)
        rgb[masks[p]] = (1 - opacity) * rgb[masks[p]] + opacity * colour
    return rgb.round().astype(np.uint8)


def tile(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 pictures in a grid with white gaps."""
    h, w = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    out = np.full((len(rows) * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = picture
    return out
