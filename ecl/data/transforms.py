"""The evaluation jitter: a seeded random translation (and optional scale) of image, landmarks and
masks together.

Why: real evaluation faces are roughly centred, so a channel that always fires at the same image cell
(a position detector) looks like a part detector there (METHOD section 6). Every dataset therefore has
an unaligned evaluation copy: ``jittered(dataset)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class Jitter:
    """Random translation of up to ``max_shift`` of the image (and optional scale), seeded per item.

    Args:
        max_shift: largest shift as a fraction of the image side (0.15 = +-15%), drawn uniformly per axis.
        scale: None (no scaling), a float ``s`` (scale drawn log-uniformly in ``[1/(1+s), 1+s]``)
            or a (low, high) range.
        padding: "zeros" or "reflect" for the image; masks are always padded with False.
        seed: the shift of item ``index`` depends only on (seed, index).
        integer_shift: round shifts to whole pixels when there is no scaling, so the output is an
            exact shifted copy (no resampling blur).
        drop_outside: set landmarks that leave the image to NaN (they are no longer visible).

    Call with an item dict (as datasets return); it uses ``item["index"]`` for the seed and returns a
    new dict with "image", "landmarks" and "masks" moved, plus "shift" float32 (2,) = (dx, dy) in
    pixels and "scale" (float).
    """

    def __init__(
        self,
        max_shift: float = 0.15,
        scale: float | tuple[float, float] | None = None,
        padding: str = "zeros",
        seed: int = 0,
        integer_shift: bool = True,
        drop_outside: bool = True,
    ):
        if padding not in ("zeros", "reflect"):
            raise ValueError(f"padding must be 'zeros' or 'reflect', got {padding!r}")
        if not 0.0 <= max_shift < 1.0:
            raise ValueError(f"max_shift must be in [0, 1), got {max_shift}")
        if isinstance(scale, (int, float)):
            scale = (1.0 / (1.0 + float(scale)), 1.0 + float(scale))
        self.max_shift, self.scale, self.padding, self.seed = float(max_shift), scale, padding, int(seed)
        self.integer_shift, self.drop_outside = integer_shift, drop_outside

    def params(self, index: int, size: int) -> tuple[float, float, float]:
        """(dx, dy, scale) for item ``index`` of an image of side ``size``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x717, int(index)]))
        dx, dy = rng.uniform(-self.max_shift, self.max_shift, 2) * size
        s = 1.0
        if self.scale is not None:
            lo, hi = self.scale
            s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        elif self.integer_shift:
            dx, dy = round(dx), round(dy)
        return float(dx), float(dy), s

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        image = item["image"]
        size_h, size_w = image.shape[-2:]
        dx, dy, s = self.params(item["index"], size_w)
        out = dict(item)
        out["image"] = apply_affine(image, dx, dy, s, self.padding, mode="bilinear")
        if "masks" in item:
            masks = torch.from_numpy(item["masks"].numpy().astype(np.float32))
            out["masks"] = apply_affine(masks, dx, dy, s, "zeros", mode="nearest") > 0.5
        lm = torch.as_tensor(item["landmarks"], dtype=torch.float32).clone()
        centre = torch.tensor([size_w / 2.0, size_h / 2.0])
        lm = centre + s * (lm - centre) + torch.tensor([dx, dy])
        if self.drop_outside:
            outside = (lm[:, 0] < 0) | (lm[:, 0] >= size_w) | (lm[:, 1] < 0) | (lm[:, 1] >= size_h)
            lm[outside] = float("nan")
        out["landmarks"] = lm
        out["shift"] = torch.tensor([dx, dy], dtype=torch.float32)
        out["scale"] = s
        return out


def apply_affine(
    x: torch.Tensor, dx: float, dy: float, scale: float = 1.0, padding: str = "zeros", mode: str = "bilinear"
) -> torch.Tensor:
    """Scale about the image centre by ``scale`` then shift by (dx, dy) pixels.

    A point at pixel (x, y) moves to ``c + scale * ((x, y) - c) + (dx, dy)``, c = (W/2, H/2).

    Shape:
        x: (C, H, W) or (B, C, H, W); output has the same shape.
    """
    squeeze = x.dim() == 3
    xb = x[None] if squeeze else x
    h, w = xb.shape[-2:]
    if scale == 1.0 and float(dx).is_integer() and float(dy).is_integer() and padding == "zeros":
        # exact integer shift: copy a window (no resampling); numpy, for the reason given below
        src = xb.detach().cpu().numpy()
        out = np.zeros_like(src)
        dx, dy = int(dx), int(dy)
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        if h - abs(dy) > 0 and w - abs(dx) > 0:
            out[..., yd, xd] = src[..., ys, xs]
        res = torch.from_numpy(out)
        return res[0] if squeeze else res
    # No rotation, so the warp is separable: sample rows, then columns (numpy gathers, no thread pool:
    # torch's grid_sample on one small image is slow when its threads compete with other processes).
    arr = xb.detach().cpu().numpy().astype(np.float32, copy=False).reshape(-1, h, w)
    iy, wy = _taps(h, dy, scale, padding, mode)
    ix, wx = _taps(w, dx, scale, padding, mode)
    rows = sum(arr[:, i, :] * wt[None, :, None] for i, wt in zip(iy, wy, strict=True))
    out = sum(rows[:, :, i] * wt[None, None, :] for i, wt in zip(ix, wx, strict=True))
    res = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32).reshape(xb.shape))
    if xb.dtype != torch.float32:
        res = res.to(xb.dtype)
    return res[0] if squeeze else res


def _taps(
    n: int, shift: float, scale: float, padding: str, mode: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Source indices and weights along one axis (pixel centres at i + 0.5, like align_corners=False)."""
    coord = (np.arange(n) + 0.5 - n / 2.0 - shift) / scale + n / 2.0 - 0.5
    if padding == "reflect":
        # reflect about the image borders (-0.5 and n - 0.5), as grid_sample's "reflection"
        period = 2.0 * n
        c = np.mod(coord + 0.5, period)
        coord = np.where(c > n, period - c, c) - 0.5
    if mode == "nearest":
        i = np.floor(coord + 0.5).astype(np.int64)
        valid = (i >= 0) & (i < n)
        return [np.clip(i, 0, n - 1)], [valid.astype(np.float32)]
    i0 = np.floor(coord).astype(np.int64)
    w1 = (coord - i0).astype(np.float32)
    idx, wts = [], []
    for i, wt in ((i0, 1.0 - w1), (i0 + 1, w1)):
        valid = (i >= 0) & (i < n)
        if padding == "reflect":
            valid = np.ones_like(valid)  # borders clamp after reflection
        idx.append(np.clip(i, 0, n - 1))
        wts.append(np.where(valid, wt, 0.0).astype(np.float32))
    return idx, wts


class JitteredDataset(Dataset):
    """A dataset whose items pass through a ``Jitter``; keeps the wrapped dataset's attributes."""

    def __init__(self, dataset: Dataset, jitter: Jitter):
        self.dataset, self.jitter = dataset, jitter

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.jitter(self.dataset[index])

    def __getattr__(self, name: str) -> Any:
        # labels, num_classes, landmark_names, part_names, image_size... come from the wrapped dataset
        # Dunder names (e.g. __getitems__, which DataLoader prefers) must not reach the wrapped dataset:
        # they would bypass the jitter.
        if name in ("dataset", "jitter") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def jittered(
    dataset: Dataset,
    max_shift: float = 0.15,
    scale: float | tuple[float, float] | None = None,
    padding: str = "zeros",
    seed: int = 0,
    **kw: Any,
) -> JitteredDataset:
    """The unaligned evaluation copy of ``dataset``: ``JitteredDataset(dataset, Jitter(...))``."""
    return JitteredDataset(
        dataset, Jitter(max_shift=max_shift, scale=scale, padding=padding, seed=seed, **kw)
    )
