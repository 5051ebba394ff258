"""Explainability metrics of a target layer (METHOD section 6).

All metrics read the target-layer ``activations`` (B, C, H, W) a ``FaceModel`` returns.

- Peaks. A map's peak is its argmax cell (first on ties) ``(i, j)``; in image pixels it is the
  centre of that receptive-field cell, ``x = (j + 0.5) * S_w / W``, ``y = (i + 0.5) * S_h / H``.
- ``collect_activations`` makes one streaming pass: per image and channel it keeps the maximum
  activation and the peak cell (O(N C) numbers); per channel, histograms of the raw activations
  (for the Network Dissection quantile) and of the upsampled maps over all pixels and inside each
  part mask (O(C P bins) counts), which give the part-IoU tallies at the quantile threshold at the
  end of the pass; and how often each channel's peak falls inside each part. No activation map
  outlives its batch, so memory does not grow with the number of images beyond O(N C). Only the
  upsampled values that can still count are computed: those above a running lower bound of the
  final threshold, found block by block near the cells above it (``upsampled_above``), so the pass
  costs less than twice the forward pass (1.5-1.8x on a CPU, ``benchmarks/bench_explain.py``).
- ``location_instability`` (ICNN), ``part_iou_from_stats`` (Network Dissection, from the one pass;
  ``part_iou`` is the exact two-pass version), ``peak_hit_rate`` (pointing game),
  ``translation_tracking`` (label-free: does a channel's peak follow the face when the image
  shifts?) and ``part_coverage`` (how many channels each part gets, and the entropy of that).
- ``explainability_report`` runs everything on a dataset and on jittered copies of it.

Approximations, stated where they are made:

- The (1 - q) activation quantile comes from a per-channel histogram of ``bins`` equal bins over
  [0, hi], where ``hi`` doubles (merging bin pairs) whenever a larger value arrives; exact zeros are
  counted apart. The estimate is interpolated inside its bin, so its error is at most one bin
  width, ``hi / bins <= 2 * max / bins`` (0.1% of the channel's largest activation for 2048 bins).
- The one-pass IoU counts the upsampled pixels above the threshold from histograms with the same
  bins: only pixels whose value shares the threshold's bin are uncertain, and they are counted as
  spread evenly over that bin. ``part_iou`` (a second pass) counts them exactly; the benchmark
  ``benchmarks/bench_explain.py`` reports the difference.
- Part masks of data with 68 landmarks and no annotated masks are polygons drawn through the
  landmarks (``landmark_part_masks``): eyes 36-41 / 42-47, mouth 48-59, nose as the convex hull of
  27-35, eyebrows as a thick line through 17-21 / 22-26 (width 0.1 x the eye distance). They are
  coarse stand-ins for annotated masks, and dlib's points are machine output, not manual labels.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecl.evaluate import autocast, batch_images, model_device, progress_bar, split_output

DEFAULT_SHIFTS: tuple[tuple[int, int], ...] = (
    (1, 0), (-1, 0), (2, 0), (-2, 0), (0, 1), (0, -1), (0, 2), (0, -2),
)  # fmt: skip
"""(dx, dy) image shifts in target-layer cells used by ``translation_tracking``."""

LANDMARK_PART_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "left_brow", "right_brow", "nose", "mouth")
"""Parts ``landmark_part_masks`` draws from 68 iBUG points (left/right as seen in the image)."""


# --------------------------------------------------------------------------- peaks


def peak_cells(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum and argmax cell of every map.

    Args:
        activations: (B, C, H, W).

    Returns:
        ``(max_activation (B, C), cells (B, C, 2) long (i, j))``; ties go to the first cell in
        row-major order.
    """
    b, c, h, w = activations.shape
    values, flat = activations.reshape(b, c, h * w).max(dim=2)
    return values, torch.stack([flat // w, flat % w], dim=-1)


def cells_to_pixels(cells: np.ndarray | torch.Tensor, map_size: tuple[int, int], image_size: tuple[int, int]):
    """Cell ``(i, j)`` -> the pixel ``(x, y)`` of its receptive-field centre.

    Shape: cells (..., 2) -> (..., 2) float, x = (j + 0.5) * S_w / W and y = (i + 0.5) * S_h / H.
    """
    (h, w), (image_h, image_w) = map_size, image_size
    if isinstance(cells, torch.Tensor):
        cells = cells.float()
        return torch.stack([(cells[..., 1] + 0.5) * image_w / w, (cells[..., 0] + 0.5) * image_h / h], dim=-1)
    cells = np.asarray(cells, dtype=np.float32)
    return np.stack([(cells[..., 1] + 0.5) * image_w / w, (cells[..., 0] + 0.5) * image_h / h], axis=-1)


def _activations(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    activations = split_output(model(images))[1]
    if activations is None or activations.ndim != 4:
        raise ValueError("the model must return (embeddings, activations) with activations (B, C, H, W)")
    return activations.float()


# --------------------------------------------------------------------------- streaming histograms


class ChannelHistograms:
    """Per-channel streaming histograms of non-negative values, in groups that share one range.

    Bins are equal over [0, hi_c]; ``hi_c`` starts at the channel's first positive maximum and
    doubles (merging bin pairs of every group) whenever a larger value arrives, so the bin width
    stays within ``2 * max_c / bins``. Zeros are not binned (most of a ReLU map is zero); group 0
    counts them apart so that its quantiles are exact up to one bin.

    ``collect_activations`` uses group 0 for the raw activations (the quantile), and further groups
    for the upsampled maps: all pixels, and the pixels inside each part mask. Counting the
    upsampled values above a threshold then gives Network Dissection's tallies without a second
    pass.

    Args:
        num_channels: C. groups: G. bins: bins per channel and group (a power of two).
        device: where the counts live (the activations' device avoids copies).
    """

    def __init__(
        self, num_channels: int, groups: int = 1, bins: int = 2048, device: str | torch.device = "cpu"
    ):
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2; got {bins}")
        self.bins, self.groups, self.num_channels = bins, groups, num_channels
        self.hist = torch.zeros(num_channels, groups, bins, dtype=torch.long, device=device)
        self.hi = torch.zeros(num_channels, dtype=torch.float64, device=device)
        self.zeros = torch.zeros(num_channels, dtype=torch.long, device=device)
        self.count = 0

    def extend(self, vmax: torch.Tensor) -> None:
        """Grow each channel's range to cover ``vmax`` (C,), merging bins by powers of two."""
        vmax = vmax.detach().double().to(self.hi.device)
        first = (self.hi == 0) & (vmax > 0)
        self.hi[first] = vmax[first]
        grow = vmax > self.hi
        if not grow.any():
            return
        rows = torch.nonzero(grow).flatten()
        hi, target = self.hi[rows].cpu().numpy(), vmax[rows].cpu().numpy()
        doublings = np.ceil(np.log2(target / hi)).astype(np.int64)
        doublings += hi * 2.0**doublings < target  # guard against log2 rounding down
        max_doublings = int(math.log2(self.bins))
        for k in np.unique(doublings):
            idx = rows[torch.as_tensor(doublings == k, device=rows.device)]
            factor = 2 ** min(int(k), max_doublings)
            merged = self.hist[idx].reshape(len(idx), self.groups, self.bins // factor, factor).sum(-1)
            self.hist[idx] = F.pad(merged, (0, self.bins - self.bins // factor))
            self.hi[idx] *= 2.0 ** int(k)

    def add(self, values: torch.Tensor, channels: torch.Tensor, group: int | torch.Tensor) -> None:
        """Count positive values (n,) of the given channels (n,) in a group (int or (n,) long).

        Values must lie within range (call ``extend`` first; values above it land in the last bin).
        """
        scale = (self.bins / self.hi[channels].clamp_min(1e-30)).float()
        bucket = (values.float() * scale).long().clamp_(0, self.bins - 1)
        index = (channels * self.groups + group) * self.bins + bucket
        self.hist.view(-1).index_add_(0, index, torch.ones_like(index))

    def update(self, values: torch.Tensor) -> None:
        """Extend the range to cover raw values (C, n) and count them in group 0 (zeros apart)."""
        values = values.detach().float()
        if values.shape[0] != self.num_channels:
            raise ValueError(
                f"update takes values of all {self.num_channels} channels; got {values.shape[0]} rows"
            )
        self.extend(values.amax(1))
        nonpositive = values.shape[1] - (values > 0).sum(1)
        self.count += values.shape[1]
        self.zeros += nonpositive
        # Bin every value (cheaper than selecting the positive ones first): the non-positive ones all
        # land in bin 0 of group 0, and are taken out of it again since they are counted apart.
        scale = (self.bins / self.hi.clamp_min(1e-30)).float()
        index = (values * scale[:, None]).long().clamp_(0, self.bins - 1)
        index += (torch.arange(self.num_channels, device=index.device) * (self.groups * self.bins))[:, None]
        ones = torch.ones(1, dtype=torch.long, device=index.device).expand(index.numel())
        self.hist.view(-1).index_add_(0, index.view(-1), ones)
        self.hist[:, 0, 0] -= nonpositive

    def lower_bound(self, rank: int) -> torch.Tensor:
        """Per channel, a value with at least ``rank`` group-0 values at or above it (C,).

        The lower edge of the highest bin that still has ``rank`` values at or above it; 0 when
        fewer than ``rank`` positive values have been seen.
        """
        above = self.hist[:, 0].flip(-1).cumsum(-1).flip(-1)
        top = (above >= rank).sum(1) - 1
        return torch.where(top >= 0, top.double() * self.hi / self.bins, torch.zeros_like(self.hi))

    def quantile(self, level: float) -> torch.Tensor:
        """The ``level`` quantile (e.g. 0.995) of every channel's group-0 values, float64 (C,)."""
        if self.count == 0:
            raise ValueError("the histograms hold no values")
        hist = self.hist[:, 0].double()
        rank = level * self.count - self.zeros.double()  # how many positive values lie below it
        cumulative = hist.cumsum(1)
        index = torch.searchsorted(cumulative, rank[:, None].clamp_min(0).contiguous()).squeeze(1)
        index = index.clamp_(max=self.bins - 1)
        before = torch.where(
            index > 0, cumulative.gather(1, (index - 1).clamp_min(0)[:, None]).squeeze(1), 0.0
        )
        inside = hist.gather(1, index[:, None]).squeeze(1)
        fraction = ((rank - before) / inside.clamp_min(1)).clamp(0, 1)
        value = (index.double() + fraction) * self.hi / self.bins
        return torch.where(rank <= 0, torch.zeros_like(value), value)

    def count_above(self, thresholds: torch.Tensor) -> torch.Tensor:
        """How many binned values of each group exceed each channel's threshold, float64 (C, G).

        Values inside the threshold's own bin are taken as spread evenly over it.
        """
        thresholds = torch.as_tensor(thresholds, dtype=torch.float64, device=self.hi.device)
        position = (thresholds / self.hi.clamp_min(1e-300) * self.bins).clamp(0, self.bins)
        index = position.floor().long().clamp_(max=self.bins - 1)
        fraction = (position - index.double()).clamp(0, 1)  # share of the threshold's bin below it
        below = self.hist.cumsum(-1)  # below[..., k] = count in bins 0..k (one copy of the counts)
        at = index[:, None, None].expand(-1, self.groups, 1)
        in_bin = self.hist.gather(2, at).squeeze(2)
        from_bin = below[..., -1] - below.gather(2, at).squeeze(2) + in_bin  # count in bins k and up
        return from_bin.double() - fraction[:, None] * in_bin.double()


# --------------------------------------------------------------------------- one streaming pass


@dataclass
class ActivationStats:
    """What one pass over a dataset keeps about a target layer (no activation maps).

    Attributes:
        max_activation: (N, C) float32, each map's maximum.
        peak_cells: (N, C, 2) int16, each map's argmax cell (i, j).
        map_size: (H, W) of the target layer. image_size: (S_h, S_w) of the input images.
        landmarks: (N, K, 2) float32 pixel (x, y), NaN where missing; None without landmarks.
        landmark_names, part_names: from the dataset.
        part_hits: (C, P) int64, images whose peak pixel lies in each part mask (fired maps only);
            None without masks.
        thresholds: (C,) the (1 - quantile) value of all raw activations of each channel.
        quantile: q.
        iou_tallies: ``(intersection (C, P), map_area (C,), part_area (P,))`` pixel counts of the
            upsampled maps binarised at ``thresholds`` (from the histograms, see
            ``ChannelHistograms.count_above``); None without masks.
    """

    max_activation: np.ndarray
    peak_cells: np.ndarray
    map_size: tuple[int, int]
    image_size: tuple[int, int]
    landmarks: np.ndarray | None
    thresholds: np.ndarray
    quantile: float
    landmark_names: tuple[str, ...] = ()
    part_names: tuple[str, ...] = ()
    part_hits: np.ndarray | None = field(default=None, repr=False)
    iou_tallies: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def num_images(self) -> int:
        return self.max_activation.shape[0]

    @property
    def num_channels(self) -> int:
        return self.max_activation.shape[1]

    @property
    def fired(self) -> np.ndarray:
        """(N, C) bool: the map has a positive activation somewhere."""
        return self.max_activation > 0

    @property
    def peak_xy(self) -> np.ndarray:
        """(N, C, 2) float32 peak positions in image pixels (x, y)."""
        return cells_to_pixels(self.peak_cells, self.map_size, self.image_size)


def peak_in_masks(cells: torch.Tensor, map_size: tuple[int, int], masks: torch.Tensor) -> torch.Tensor:
    """Whether each map's peak pixel lies inside each part mask.

    Args:
        cells: (B, C, 2) peak cells. map_size: (H, W). masks: bool (B, P, S_h, S_w).

    Returns:
        bool (B, C, P).
    """
    b, p, image_h, image_w = masks.shape
    xy = cells_to_pixels(cells, map_size, (image_h, image_w))
    x = xy[..., 0].long().clamp(0, image_w - 1)
    y = xy[..., 1].long().clamp(0, image_h - 1)
    flat = (y * image_w + x)[:, None, :].expand(b, p, -1)  # (B, P, C)
    return masks.reshape(b, p, image_h * image_w).gather(2, flat).transpose(1, 2)


@functools.lru_cache(maxsize=16)
def _bilinear_blocks(h: int, w: int, image_h: int, image_w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear upsampling (``F.interpolate``, ``align_corners=False``) written cell by cell.

    Every output pixel belongs to the cell that contains its centre, and its value is a weighted sum
    of that cell's 3 x 3 neighbourhood. Returns, for the h x w cells: ``classes`` (h * w,) long, the
    index of each cell's weight matrix; ``weights`` (U, 9, m) float32, the U distinct matrices
    (neighbourhood in row-major order, m pixels per block, zero columns where a block is smaller);
    ``pixels`` (h * w, m) long, each block's flat pixel indices (-1 for the padding).
    """

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        # As ATen computes it in float32: source = max((dst + 0.5) * n_in / n_out - 0.5, 0).
        scale = np.float32(n_in) / np.float32(n_out)
        dst = np.arange(n_out, dtype=np.float32)
        src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
        i0 = src.astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam1 = (src - i0.astype(np.float32)).astype(np.float32)
        lam0 = (np.float32(1) - lam1).astype(np.float32)
        owner = np.minimum(((dst + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)
        size = int(np.bincount(owner, minlength=n_in).max())
        coords = np.full((n_in, size), -1, dtype=np.int64)
        weights = np.zeros((n_in, size, 3), dtype=np.float32)  # neighbours owner - 1, owner, owner + 1
        slot = np.zeros(n_in, dtype=np.int64)
        for d in range(n_out):
            o, t = owner[d], slot[owner[d]]
            assert o - 1 <= i0[d] <= i1[d] <= o + 1, "an upsampled pixel reads beyond its cell's neighbours"
            slot[o] += 1
            coords[o, t] = d
            weights[o, t, i0[d] - o + 1] += lam0[d]
            weights[o, t, i1[d] - o + 1] += lam1[d]
        return coords, weights

    if image_h < h or image_w < w:
        raise ValueError(f"part masks ({image_h} x {image_w}) must be at least as large as the maps ({h} x {w})")
    rows, row_w = axis(h, image_h)
    cols, col_w = axis(w, image_w)
    # (h, w, 3, 3, mh, mw): weight of neighbour (a, b) for block pixel (t, u)
    full = np.einsum("ita,jub->ijabtu", row_w, col_w).reshape(h * w, 9, -1)
    unique, classes = np.unique(full, axis=0, return_inverse=True)
    pixel = rows[:, None, :, None] * image_w + cols[None, :, None, :]
    pixel = np.where((rows[:, None, :, None] >= 0) & (cols[None, :, None, :] >= 0), pixel, -1)
    return (
        torch.as_tensor(classes.reshape(-1), dtype=torch.long),
        torch.as_tensor(unique, dtype=torch.float32),
        torch.as_tensor(pixel.reshape(h * w, -1), dtype=torch.long),
    )


def upsampled_above(
    activations: torch.Tensor, floor: torch.Tensor, image_size: tuple[int, int], max_cells: int = 1 << 13
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The pixels of the bilinearly upsampled maps whose value exceeds each channel's ``floor``.

    Equal (to float rounding) to thresholding ``F.interpolate(activations, image_size,
    mode="bilinear", align_corners=False)``, but only the blocks of cells whose 3 x 3 neighbourhood
    holds a value above the floor are computed (an upsampled value never exceeds its four source
    cells), in chunks of at most ``max_cells`` blocks.

    Args:
        activations: (B, C, H, W). floor: (C,). image_size: (S_h, S_w), at least (H, W).

    Yields:
        ``(values, image, channel, pixel)`` 1-D tensors: each kept value, its image and channel, and
        its flat pixel index ``y * S_w + x``.
    """
    b, c, h, w = activations.shape
    classes, weights, pixels = (t.to(activations.device) for t in _bilinear_blocks(h, w, *image_size))
    floor = floor.to(activations.dtype)
    padded = F.pad(activations, (1, 1, 1, 1))
    # The largest value of each cell's 3 x 3 neighbourhood (separable; cheaper than max_pool2d on a CPU).
    rows_max = torch.maximum(torch.maximum(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])
    local_max = torch.maximum(torch.maximum(rows_max[..., :-2], rows_max[..., 1:-1]), rows_max[..., 2:])
    index = torch.nonzero((local_max > floor[None, :, None, None]).reshape(-1)).flatten()
    if len(index) == 0:
        return
    padded = padded.reshape(-1)
    offsets = (torch.arange(3, device=index.device)[:, None] * (w + 2) + torch.arange(3, device=index.device)).reshape(-1)
    for start in range(0, len(index), max_cells):
        flat = index[start : start + max_cells]
        cell = flat % (h * w)
        map_index = flat // (h * w)  # b * C + c
        i, j = cell // w, cell % w
        base = (map_index * (h + 2) + i) * (w + 2) + j
        neighbourhood = padded[base[:, None] + offsets]  # (K, 9)
        cls = classes[cell]
        values = torch.empty(len(flat), weights.shape[2], dtype=activations.dtype, device=activations.device)
        for u in torch.unique(cls).tolist():
            rows = torch.nonzero(cls == u).flatten()
            values[rows] = neighbourhood[rows] @ weights[u]
        channel = map_index % c
        pix = pixels[cell]
        keep = (values > floor[channel][:, None]) & (pix >= 0)
        rows, cols = torch.nonzero(keep, as_tuple=True)
        yield values[rows, cols], map_index[rows] // c, channel[rows], pix[rows, cols]


def _upsampled_histograms(
    histograms: ChannelHistograms,
    activations: torch.Tensor,
    masks: torch.Tensor,
    floor: torch.Tensor,
) -> None:
    """Add one batch's bilinearly upsampled maps to the histograms: group P + 1 all pixels, group
    1 + p the pixels inside part p, counting only values above each channel's ``floor`` (C,)
    (computed block by block, see ``upsampled_above``).
    """
    b = activations.shape[0]
    p, image_h, image_w = masks.shape[1:]
    flat_masks = masks.reshape(b, p, image_h * image_w)
    for values, image, channel, pixel in upsampled_above(activations, floor, (image_h, image_w)):
        histograms.add(values, channel, p + 1)
        # Part masks may overlap: a value counts once in every part that holds its pixel.
        kept, part = torch.nonzero(flat_masks[image, :, pixel], as_tuple=True)
        histograms.add(values[kept], channel[kept], 1 + part)


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device | None = None,
    quantile: float = 0.005,
    bins: int = 2048,
    amp: bool = True,
    progress: bool = True,
    landmark_names: Sequence[str] = (),
    part_names: Sequence[str] = (),
) -> ActivationStats:
    """One streaming pass for every explainability number that needs the whole dataset.

    Per image and channel: the maximum and the peak cell (O(N C) numbers). Per channel: a
    histogram of the raw activations (the Network Dissection quantile threshold) and, when batches
    carry part masks, histograms of the bilinearly upsampled maps over all pixels and inside each
    part (O(C P bins) counts); at the end they give the IoU tallies at the quantile threshold
    without a second pass (values in the threshold's own bin are split evenly, see
    ``ChannelHistograms``; ``part_iou`` is the exact two-pass version). Also counted: how often each
    channel's peak falls inside each part. No activation map outlives its batch.

    Args:
        model: returns ``(embeddings, activations)`` or a ``FaceOutput``.
        loader: yields dicts with "image" (B, 3, S, S), and optionally "landmarks" (B, K, 2) and
            "masks" bool (B, P, S, S).
        device: default the model's device. quantile: q of the part-IoU threshold.
        bins: histogram bins per channel. amp: float16 autocast on CUDA.
        landmark_names, part_names: carried into the result.

    Returns:
        ``ActivationStats``.
    """
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.to(device).eval()
    maxima, cells, landmarks = [], [], []
    histograms: ChannelHistograms | None = None
    part_hits = part_area = None
    map_size = image_size = None
    total = len(loader) if hasattr(loader, "__len__") else None
    dataset = getattr(loader, "dataset", None)
    num_images = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    rank = None
    try:
        for batch in progress_bar(loader, progress, "activations", total):
            images = batch_images(batch).to(device, non_blocking=True)
            with autocast(device, amp):
                activations = _activations(model, images)
            b, c, h, w = activations.shape
            map_size, image_size = (h, w), tuple(images.shape[-2:])
            masks = batch["masks"].to(device).bool() if isinstance(batch, dict) and "masks" in batch else None
            if histograms is None:
                groups = 1 if masks is None else masks.shape[1] + 2
                histograms = ChannelHistograms(c, groups=groups, bins=bins, device=device)
                if num_images is not None:
                    # The final (1 - q) quantile has at most about q N H W values above it, so the
                    # value with this many values at or above it can only be lower.
                    rank = math.ceil(quantile * num_images * h * w) + 2
            values, peaks = peak_cells(activations)
            histograms.update(activations.transpose(0, 1).reshape(c, -1))
            maxima.append(values.cpu().numpy())
            cells.append(peaks.cpu().numpy().astype(np.int16))
            if isinstance(batch, dict) and "landmarks" in batch:
                landmarks.append(np.asarray(batch["landmarks"], dtype=np.float32))
            if masks is not None:
                if histograms.groups != masks.shape[1] + 2:
                    raise ValueError("every batch must carry the same number of part masks")
                # Values at or below a lower bound of the final threshold can never count: skip
                # them (after the first q of the data, most maps) to keep the pass cheap.
                floor = histograms.lower_bound(rank) if rank is not None else torch.zeros_like(histograms.hi)
                _upsampled_histograms(histograms, activations, masks, floor)
                hits = (peak_in_masks(peaks, map_size, masks) & (values > 0)[..., None]).sum(0)
                area = masks.sum((0, 2, 3))
                part_hits = hits if part_hits is None else part_hits + hits
                part_area = area if part_area is None else part_area + area
    finally:
        model.train(was_training)
    if histograms is None:
        raise ValueError("the loader yielded no batches")
    thresholds = histograms.quantile(1.0 - quantile)
    tallies = None
    if part_area is not None:
        above = histograms.count_above(thresholds).cpu().numpy()
        tallies = (above[:, 1:-1], above[:, -1], part_area.cpu().double().numpy())
    return ActivationStats(
        max_activation=np.concatenate(maxima),
        peak_cells=np.concatenate(cells),
        map_size=map_size,
        image_size=image_size,
        landmarks=np.concatenate(landmarks) if landmarks else None,
        thresholds=thresholds.cpu().numpy(),
        quantile=quantile,
        landmark_names=tuple(landmark_names),
        part_names=tuple(part_names),
        part_hits=None if part_hits is None else part_hits.cpu().numpy().astype(np.int64),
        iou_tallies=tallies,
    )


# --------------------------------------------------------------------------- location instability


@dataclass
class InstabilityResult:
    """ICNN location instability (lower is better).

    Attributes:
        overall: mean over channels with a value. active: mean over channels that fire on at least
            half the images. per_channel: (C,), NaN for a channel with no value (it never fires, or
            no landmark has two annotated top images). per_landmark: (C, K) the std per landmark.
        active_channels: (C,) bool.
    """

    overall: float
    active: float
    per_channel: np.ndarray
    per_landmark: np.ndarray
    active_channels: np.ndarray

    def to_dict(self, per_channel: bool = False) -> dict[str, Any]:
        out = {
            "overall": _float(self.overall),
            "active": _float(self.active),
            "num_channels": int(np.isfinite(self.per_channel).sum()),
            "num_active_channels": int(self.active_channels.sum()),
        }
        if per_channel:
            out["per_channel"] = [_float(v) for v in self.per_channel]
        return out


def location_instability(
    peaks: np.ndarray,
    max_activation: np.ndarray,
    landmarks: np.ndarray,
    image_size: int | tuple[int, int],
    top_m: int = 100,
) -> InstabilityResult:
    """ICNN's location instability of every channel.

    For channel c: keep the ``top_m`` images with the largest maximum activation (all if fewer;
    only images where the channel fires, max > 0); for landmark k only those where landmark k is
    annotated (not NaN). ``d_bk = ||peak_bc - landmark_bk|| / sqrt(W^2 + H^2)``; the channel's value
    is the mean over landmarks of the sample std (ddof = 1) of d over its kept images; landmarks
    with fewer than two kept images are skipped.

    Args:
        peaks: (N, C, 2) peak pixels (x, y) (``ActivationStats.peak_xy``).
        max_activation: (N, C). landmarks: (N, K, 2) pixel (x, y), NaN where missing.
        image_size: S or (S_h, S_w) of the images the pixels refer to.
        top_m: M.

    Returns:
        ``InstabilityResult``.
    """
    peaks = np.asarray(peaks, dtype=np.float64)
    max_activation = np.asarray(max_activation)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    n, c = max_activation.shape
    if peaks.shape != (n, c, 2) or landmarks.ndim != 3 or landmarks.shape[0] != n:
        raise ValueError(
            f"expected peaks (N, C, 2), max_activation (N, C), landmarks (N, K, 2) with one N; "
            f"got {peaks.shape}, {max_activation.shape}, {landmarks.shape}"
        )
    image_h, image_w = (image_size, image_size) if np.isscalar(image_size) else image_size
    diagonal = math.hypot(image_w, image_h)
    m = min(top_m, n)
    order = np.argsort(-max_activation, axis=0, kind="stable")[:m]  # (M, C)
    channels = np.arange(c)[None, :]
    kept_peaks = peaks[order, channels]  # (M, C, 2)
    kept_landmarks = landmarks[order]  # (M, C, K, 2)
    fired = max_activation[order, channels] > 0  # (M, C)
    d = np.linalg.norm(kept_peaks[:, :, None, :] - kept_landmarks, axis=-1) / diagonal  # (M, C, K)
    valid = np.isfinite(d) & fired[:, :, None]
    count = valid.sum(0)  # (C, K)
    d0 = np.where(valid, d, 0.0)
    mean = d0.sum(0) / np.maximum(count, 1)
    var = np.where(valid, (d - mean) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1)
    per_landmark = np.where(count >= 2, np.sqrt(var), np.nan)
    finite = np.isfinite(per_landmark)
    per_channel = np.where(
        finite.any(1), np.where(finite, per_landmark, 0.0).sum(1) / np.maximum(finite.sum(1), 1), np.nan
    )
    active_channels = (max_activation > 0).mean(0) >= 0.5
    return InstabilityResult(
        overall=_nanmean(per_channel),
        active=_nanmean(per_channel[active_channels]),
        per_channel=per_channel,
        per_landmark=per_landmark,
        active_channels=active_channels,
    )


# --------------------------------------------------------------------------- part IoU


def iou_tallies(
    activations: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's Network Dissection tallies.

    Each map is upsampled bilinearly (``align_corners=False``) to the mask size and binarised as
    ``> threshold``. Channels are processed in chunks so at most about 2^25 upsampled values exist
    at once.

    Args:
        activations: (B, C, H, W). masks: bool (B, P, S_h, S_w). thresholds: (C,).

    Returns:
        ``(intersection (C, P), map_area (C,), part_area (P,))`` pixel counts, float64.
    """
    b, c = activations.shape[:2]
    p, image_h, image_w = masks.shape[1:]
    pixels = image_h * image_w
    parts = masks.reshape(b, p, pixels).float().transpose(1, 2)  # (B, S^2, P)
    thresholds = torch.as_tensor(thresholds, device=activations.device, dtype=torch.float32)
    intersection = torch.zeros(c, p, dtype=torch.float64, device=activations.device)
    map_area = torch.zeros(c, dtype=torch.float64, device=activations.device)
    chunk = max(1, (1 << 25) // max(b * pixels, 1))
    for start in range(0, c, chunk):
        stop = min(start + chunk, c)
        upsampled = F.interpolate(
            activations[:, start:stop].float(), size=(image_h, image_w), mode="bilinear", align_corners=False
        )
        binary = (
            (upsampled > thresholds[start:stop].view(1, -1, 1, 1)).reshape(b, stop - start, pixels).float()
        )
        # 0/1 values with float32 accumulation: exact counts (per image at most S^2 < 2^24).
        intersection[start:stop] += torch.bmm(binary, parts).sum(0).double()
        map_area[start:stop] += binary.sum((0, 2)).double()
    part_area = masks.reshape(b, p, pixels).sum((0, 2)).double()
    return intersection, map_area, part_area


@dataclass
class PartIoUResult:
    """Network Dissection part IoU (higher is better).

    Attributes:
        iou: (C, P). best_part: (C,) index of each channel's best part. best_iou: (C,).
        is_detector: (C,) best IoU > iou_threshold. assigned: (C,) best part for detectors, else -1.
        part_names: the P names. iou_threshold: the detector threshold (0.04).
    """

    iou: np.ndarray
    best_part: np.ndarray
    best_iou: np.ndarray
    is_detector: np.ndarray
    assigned: np.ndarray
    part_names: tuple[str, ...]
    iou_threshold: float

    @property
    def num_detectors(self) -> int:
        return int(self.is_detector.sum())

    @property
    def parts_covered(self) -> list[str]:
        return [self.part_names[p] for p in sorted(set(self.assigned[self.assigned >= 0].tolist()))]

    @property
    def mean_best_iou(self) -> float:
        return float(self.best_iou.mean()) if len(self.best_iou) else float("nan")

    def to_dict(self, per_channel: bool = False) -> dict[str, Any]:
        out = {
            "num_detectors": self.num_detectors,
            "num_channels": len(self.best_iou),
            "parts_covered": self.parts_covered,
            "num_parts_covered": len(self.parts_covered),
            "mean_best_iou": _float(self.mean_best_iou),
            "iou_threshold": self.iou_threshold,
        }
        if per_channel:
            out["best_iou"] = [_float(v) for v in self.best_iou]
            out["best_part"] = [self.part_names[p] for p in self.best_part]
        return out


def part_iou_from_tallies(
    intersection: np.ndarray | torch.Tensor,
    map_area: np.ndarray | torch.Tensor,
    part_area: np.ndarray | torch.Tensor,
    part_names: Sequence[str],
    iou_threshold: float = 0.04,
) -> PartIoUResult:
    """``IoU = sum_b |M AND P| / sum_b |M OR P|`` from accumulated tallies, and the part assignment."""
    intersection = np.asarray(torch.as_tensor(intersection).cpu(), dtype=np.float64)
    map_area = np.asarray(torch.as_tensor(map_area).cpu(), dtype=np.float64)
    part_area = np.asarray(torch.as_tensor(part_area).cpu(), dtype=np.float64)
    union = map_area[:, None] + part_area[None, :] - intersection
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
    best_part = iou.argmax(1)
    best_iou = iou.max(1) if iou.shape[1] else np.zeros(len(iou))
    is_detector = best_iou > iou_threshold
    return PartIoUResult(
        iou=iou,
        best_part=best_part,
        best_iou=best_iou,
        is_detector=is_detector,
        assigned=np.where(is_detector, best_part, -1),
        part_names=tuple(part_names),
        iou_threshold=iou_threshold,
    )


def part_iou_from_stats(stats: ActivationStats, iou_threshold: float = 0.04) -> PartIoUResult:
    """Part IoU from the single pass of ``collect_activations`` (its histogram tallies)."""
    if stats.iou_tallies is None:
        raise ValueError("these activation stats hold no part masks: collect them on a dataset with 'masks'")
    return part_iou_from_tallies(*stats.iou_tallies, part_names=stats.part_names, iou_threshold=iou_threshold)


@torch.no_grad()
def part_iou(
    model: nn.Module,
    loader: Iterable,
    thresholds: np.ndarray | torch.Tensor,
    part_names: Sequence[str],
    device: str | torch.device | None = None,
    iou_threshold: float = 0.04,
    amp: bool = True,
    progress: bool = True,
) -> PartIoUResult:
    """Network Dissection part IoU over a dataset, exactly, as a second streaming pass.

    ``collect_activations`` already gives these numbers in its one pass (``part_iou_from_stats``),
    up to the histogram approximation; this pass counts the binarised pixels themselves.

    Args:
        model: as ``collect_activations``. loader: yields dicts with "image" and "masks" (B, P, S, S).
        thresholds: (C,) per-channel thresholds, ``ActivationStats.thresholds`` (the dataset's
            (1 - q) activation quantile from the first pass).
        part_names: the P part names. iou_threshold: a channel detects its best part above this.

    Returns:
        ``PartIoUResult``.
    """
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.to(device).eval()
    thresholds = torch.as_tensor(np.asarray(thresholds), dtype=torch.float32, device=device)
    tallies = None
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        for batch in progress_bar(loader, progress, "part IoU", total):
            if not isinstance(batch, dict) or "masks" not in batch:
                raise ValueError(
                    "part_iou needs batches with 'masks' (B, P, S, S); use LandmarkPartMasks for 68 points"
                )
            images = batch_images(batch).to(device, non_blocking=True)
            with autocast(device, amp):
                activations = _activations(model, images)
            new = iou_tallies(activations, batch["masks"].to(device).bool(), thresholds)
            tallies = new if tallies is None else tuple(a + b for a, b in zip(tallies, new, strict=True))
    finally:
        model.train(was_training)
    if tallies is None:
        raise ValueError("the loader yielded no batches")
    return part_iou_from_tallies(*tallies, part_names=part_names, iou_threshold=iou_threshold)


# --------------------------------------------------------------------------- peak hit rate


@dataclass
class HitRateResult:
    """Pointing game: fraction of fired maps whose peak lies in the channel's assigned part.

    Attributes:
        per_channel: (C,), NaN for unassigned channels. mean: over assigned channels.
    """

    per_channel: np.ndarray
    mean: float

    def to_dict(self, per_channel: bool = False) -> dict[str, Any]:
        out = {"mean": _float(self.mean), "num_channels": int(np.isfinite(self.per_channel).sum())}
        if per_channel:
            out["per_channel"] = [_float(v) for v in self.per_channel]
        return out


def peak_hit_rate(stats: ActivationStats, assigned: np.ndarray) -> HitRateResult:
    """Peak hit rate of every channel for its assigned part.

    Args:
        stats: from ``collect_activations`` on a dataset with masks (``stats.part_hits``).
        assigned: (C,) part index per channel, -1 for none (``PartIoUResult.assigned``).

    Returns:
        ``HitRateResult``; the denominator is the number of images where the channel fires.
    """
    if stats.part_hits is None:
        raise ValueError("these activation stats hold no part masks: collect them on a dataset with 'masks'")
    assigned = np.asarray(assigned)
    fired = stats.fired.sum(0)
    channels = np.arange(len(assigned))
    hits = stats.part_hits[channels, np.maximum(assigned, 0)]
    rate = np.where((assigned >= 0) & (fired > 0), hits / np.maximum(fired, 1), np.nan)
    return HitRateResult(per_channel=rate, mean=_nanmean(rate))


# --------------------------------------------------------------------------- translation tracking


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate images by whole pixels, filling with zeros: ``out[..., y, x] = in[..., y - dy, x - dx]``."""
    h, w = images.shape[-2:]
    out = torch.zeros_like(images)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_y, dst_y = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[..., dst_y, dst_x] = images[..., src_y, src_x]
    return out


@dataclass
class TrackingResult:
    """Translation tracking (higher is better; a position detector scores ~0, a part detector ~1).

    Attributes:
        per_channel: (C,) fraction of (image, shift) where the peak followed the shift, over pairs
            where the channel fires on both images; NaN if there are none.
        mean: mean over channels with a value. fraction_tracking: share of those with >= 0.5.
        num_pairs: (C,) the number of (image, shift) pairs each value is over.
        shifts: the (dx, dy) cell shifts used.
    """

    per_channel: np.ndarray
    mean: float
    fraction_tracking: float
    num_pairs: np.ndarray
    shifts: tuple[tuple[int, int], ...]

    def to_dict(self, per_channel: bool = False) -> dict[str, Any]:
        out = {
            "mean": _float(self.mean),
            "fraction_tracking": _float(self.fraction_tracking),
            "num_channels": int(np.isfinite(self.per_channel).sum()),
            "shifts": [list(s) for s in self.shifts],
        }
        if per_channel:
            out["per_channel"] = [_float(v) for v in self.per_channel]
        return out


@torch.no_grad()
def translation_tracking(
    model: nn.Module,
    images: torch.Tensor,
    shifts: Sequence[tuple[int, int]] = DEFAULT_SHIFTS,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    tolerance: float = 0.5,
    amp: bool = True,
) -> TrackingResult:
    """Does each channel's peak follow the face when the image is translated?

    A shift of (dx, dy) target-layer cells moves the image by ``round(dx * S_w / W)`` and
    ``round(dy * S_h / H)`` pixels (zero fill). The channel *tracks* on (image, shift) when its peak
    moved by the image's shift, measured in cells, to within ``tolerance`` cells on both axes. With
    the default 0.5 (the peak lands in the expected cell), a position detector, whose peak stays
    put, fails every shift of one cell or more; a full cell of tolerance would pass it on +-1.

    Args:
        model: returns ``(embeddings, activations)``. images: (N, 3, S, S) in [0, 1].
        shifts: (dx, dy) in target-layer cells. tolerance: in cells.
        device, batch_size, amp: as elsewhere.

    Returns:
        ``TrackingResult``.
    """
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.to(device).eval()
    shifts = tuple((int(dx), int(dy)) for dx, dy in shifts)
    image_h, image_w = images.shape[-2:]

    def peaks_of(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        with autocast(device, amp):
            activations = _activations(model, batch.to(device))
        values, cells = peak_cells(activations)
        return values.cpu(), cells.cpu(), tuple(activations.shape[-2:])

    tracked = None
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            values, cells, (h, w) = peaks_of(batch)
            if tracked is None:
                tracked = torch.zeros(values.shape[1], dtype=torch.float64)
                pairs = torch.zeros(values.shape[1], dtype=torch.float64)
            for dx, dy in shifts:
                px, py = round(dx * image_w / w), round(dy * image_h / h)
                moved_values, moved_cells, _ = peaks_of(shift_images(batch, px, py))
                both = (values > 0) & (moved_values > 0)
                delta = (moved_cells - cells).float()  # (B, C, 2) as (i, j)
                ok = ((delta[..., 0] - py * h / image_h).abs() <= tolerance) & (
                    (delta[..., 1] - px * w / image_w).abs() <= tolerance
                )
                tracked += (ok & both).sum(0).double()
                pairs += both.sum(0).double()
    finally:
        model.train(was_training)
    if tracked is None:
        raise ValueError("no images to track")
    per_channel = torch.where(pairs > 0, tracked / pairs.clamp_min(1), torch.nan).numpy()
    valid = np.isfinite(per_channel)
    return TrackingResult(
        per_channel=per_channel,
        mean=_nanmean(per_channel),
        fraction_tracking=float((per_channel[valid] >= 0.5).mean()) if valid.any() else float("nan"),
        num_pairs=pairs.numpy().astype(np.int64),
        shifts=shifts,
    )


# --------------------------------------------------------------------------- coverage and assignment


def part_coverage(assigned: np.ndarray, part_names: Sequence[str]) -> dict[str, Any]:
    """How many channels each part (or landmark) has, and how evenly they spread.

    Args:
        assigned: (C,) part index per channel, -1 for none. part_names: the P names.

    Returns:
        A dict with ``channels_per_part`` (name -> count), ``num_assigned``, ``entropy_bits`` and
        ``normalised_entropy``: the Shannon entropy of the channel counts over the P parts, and it
        divided by log2(P) (1 = evenly spread, 0 = all on one part; None with no assigned channel).
    """
    assigned = np.asarray(assigned)
    counts = np.array([(assigned == p).sum() for p in range(len(part_names))], dtype=np.float64)
    total = counts.sum()
    if total > 0:
        share = counts[counts > 0] / total
        entropy = float(-(share * np.log2(share)).sum())
    else:
        entropy = float("nan")
    normaliser = math.log2(len(part_names)) if len(part_names) > 1 else float("nan")
    return {
        "channels_per_part": {name: int(n) for name, n in zip(part_names, counts, strict=True)},
        "num_assigned": int(total),
        "entropy_bits": _float(entropy),
        "normalised_entropy": _float(entropy / normaliser) if total > 0 else None,
    }


def landmark_assignment(stats: ActivationStats, top_m: int = 100, max_distance: float = 0.1) -> np.ndarray:
    """Assign each channel to the landmark its peak sits nearest to, for data without part masks.

    Over the channel's top-M images (as in ``location_instability``), the landmark with the
    smallest mean normalised distance; assigned only if that mean is at most ``max_distance``
    (a fraction of the image diagonal, 0.1 = 16 px at 112 px), else -1.

    Returns:
        int (C,) landmark index or -1.
    """
    if stats.landmarks is None or stats.landmarks.shape[1] == 0:
        return np.full(stats.num_channels, -1)
    n, c = stats.max_activation.shape
    m = min(top_m, n)
    order = np.argsort(-stats.max_activation, axis=0, kind="stable")[:m]
    peaks = stats.peak_xy.astype(np.float64)[order, np.arange(c)[None, :]]
    landmarks = stats.landmarks.astype(np.float64)[order]
    fired = stats.max_activation[order, np.arange(c)[None, :]] > 0
    d = np.linalg.norm(peaks[:, :, None] - landmarks, axis=-1) / math.hypot(*stats.image_size)
    valid = np.isfinite(d) & fired[:, :, None]
    mean = np.where(valid, d, 0).sum(0) / np.maximum(valid.sum(0), 1)
    mean = np.where(valid.sum(0) > 0, mean, np.inf)
    best = mean.argmin(1)
    return np.where(mean[np.arange(c), best] <= max_distance, best, -1)


# --------------------------------------------------------------------------- 68-point part masks


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


# --------------------------------------------------------------------------- the full report


def _dataset_attr(dataset: Any, name: str, default: Any = None) -> Any:
    """An attribute of a dataset or of the dataset it wraps (Subset, Jitter ...)."""
    while dataset is not None:
        if name in getattr(type(dataset), "__dict__", {}) or name in getattr(dataset, "__dict__", {}):
            return getattr(dataset, name)
        dataset = getattr(dataset, "dataset", None)
    return default


@torch.no_grad()
def explainability_metrics(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    top_m: int = 100,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    tracking_images: int = 128,
    shifts: Sequence[tuple[int, int]] = DEFAULT_SHIFTS,
    device: str | torch.device | None = None,
    progress: bool = True,
    per_channel: bool = False,
    exact_iou: bool = False,
) -> dict[str, Any]:
    """Every explainability number of one dataset, as a plain dict.

    One pass over the dataset (``collect_activations``) plus translation tracking on a subset;
    ``exact_iou`` adds the exact second pass for part IoU (``part_iou``).

    Location instability needs landmarks; part IoU, peak hit rate and part coverage need part
    masks ("masks", or 68 landmarks from which ``LandmarkPartMasks`` draws them); without masks,
    coverage uses ``landmark_assignment``. Translation tracking runs on the first
    ``tracking_images`` images.
    """
    part_names = tuple(_dataset_attr(dataset, "part_names", ()) or ())
    landmark_names = tuple(_dataset_attr(dataset, "landmark_names", ()) or ())
    probe = dataset[0]
    num_landmarks = int(np.asarray(probe.get("landmarks", np.zeros((0, 2)))).shape[0])
    masks_from = "dataset" if "masks" in probe else None
    if masks_from is None and num_landmarks == 68:
        dataset, part_names, masks_from = (
            LandmarkPartMasks(dataset),
            LANDMARK_PART_NAMES,
            "68-landmark polygons",
        )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    stats = collect_activations(
        model, loader, device=device, quantile=quantile, progress=progress,
        landmark_names=landmark_names, part_names=part_names,
    )  # fmt: skip
    out: dict[str, Any] = {
        "num_images": stats.num_images,
        "num_channels": stats.num_channels,
        "map_size": list(stats.map_size),
        "image_size": list(stats.image_size),
        "fire_rate": float(stats.fired.mean()),
    }
    # Datasets without landmarks give none or all-NaN ones (insightface packs): no instability then.
    has_landmarks = stats.landmarks is not None and bool(np.isfinite(stats.landmarks).any())
    if has_landmarks:
        landmarks = stats.landmarks
        if landmarks.shape[1] == 68:
            # Instability on the 5 standard points (eye centres, nose tip, mouth corners), so that
            # numbers compare across 5- and 68-point datasets; the 68 points draw the masks.
            from ecl.data import five_from_68

            landmarks = five_from_68(landmarks)
        out["location_instability"] = {
            **location_instability(
                stats.peak_xy, stats.max_activation, landmarks, stats.image_size, top_m=top_m
            ).to_dict(per_channel),
            "num_landmarks": int(landmarks.shape[1]),
        }
    if masks_from is not None:
        if exact_iou:
            iou = part_iou(
                model, loader, stats.thresholds, part_names, device=device, iou_threshold=iou_threshold,
                progress=progress,
            )  # fmt: skip
        else:
            iou = part_iou_from_stats(stats, iou_threshold)
        out["part_iou"] = {**iou.to_dict(per_channel), "masks": masks_from}
        out["peak_hit_rate"] = peak_hit_rate(stats, iou.assigned).to_dict(per_channel)
        out["part_coverage"] = part_coverage(iou.assigned, part_names)
    elif has_landmarks:
        names = landmark_names or tuple(f"landmark_{k}" for k in range(stats.landmarks.shape[1]))
        out["part_coverage"] = {
            **part_coverage(landmark_assignment(stats, top_m), names),
            "by": "nearest landmark",
        }
    count = min(tracking_images, len(dataset))
    if count > 0:
        images = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(count)])
        out["translation_tracking"] = translation_tracking(
            model, images, shifts, device=device, batch_size=batch_size
        ).to_dict(per_channel)
    return out


def explainability_report(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    jitter: bool = True,
    jitter_kwargs: dict[str, Any] | None = None,
    max_images: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``explainability_metrics`` on a dataset and on jittered copies of it.

    Args:
        model: the face model. dataset: evaluation images (with landmarks and/or masks).
        jitter: also report on ``ecl.data.jittered(dataset, **jitter_kwargs)`` (random translation
            of up to 15% of the image by default, landmarks and masks moved with it).
        max_images: use only the first N images.
        **kwargs: passed to ``explainability_metrics``.

    Returns:
        ``{"original": {...}, "jittered": {...}}``.
    """
    copies = {"original": dataset}
    if jitter:
        from ecl.data import jittered

        copies["jittered"] = jittered(dataset, **(jitter_kwargs or {}))
    if max_images is not None and len(dataset) > max_images:
        # Subset outermost: a wrapper around a Subset could be bypassed by Subset.__getitems__.
        copies = {name: torch.utils.data.Subset(data, range(max_images)) for name, data in copies.items()}
    return {name: explainability_metrics(model, data, **kwargs) for name, data in copies.items()}


# --------------------------------------------------------------------------- explaining a match
#
# Which face parts made two faces similar? With channels that are part detectors, a pair of images
# gets one similarity per part (eyes, brows, nose, mouth, hair, skin) next to the embedding's own.

PART_GROUPS: dict[str, tuple[str, ...]] = {
    "eyes": ("left_eye", "right_eye"),
    "brows": ("left_brow", "right_brow"),
    "nose": ("nose",),
    "mouth": ("mouth",),
    "hair": ("hair",),
    "skin": ("skin",),
}
"""Parts of a pair breakdown and the fine parts (FaceParts ``part_names``) each one joins.

The first five are FaceParts' ``CHIMERA_PARTS``, the parts the part-swap game exchanges."""

LANDMARK_GROUPS: dict[str, str] = {
    "left_eye": "eyes",
    "right_eye": "eyes",
    "nose": "nose",
    "left_mouth": "mouth",
    "right_mouth": "mouth",
}
"""Breakdown part of each of the 5 standard landmarks, for reference data without part masks."""

ASSIGNMENT_FILE = "part_assignment.json"
"""File name of a run's part assignment (``<run_dir>/part_assignment.json``)."""

DESCRIPTORS = ("attention", "peak")
"""Part descriptors ``explain_pair`` knows (see ``part_similarity``)."""


@dataclass
class PartAssignment:
    """Which target-layer channels belong to which face part, with what the breakdown needs to use them.

    Made by ``assign_parts`` from a reference set; saved as JSON next to a run
    (``save(run_dir)`` writes ``run_dir/part_assignment.json``) and read back with ``load``.

    Attributes:
        part_names: the fine parts (or landmarks) channels are assigned to, e.g. FaceParts'
            ``left_eye, right_eye, left_brow, right_brow, nose, mouth, hair, skin``.
        assigned: int (C,) index into ``part_names`` per channel, -1 for none.
        reference_peak: (C,) each channel's typical peak: the median over the reference images
            where it fires of its maximum activation (1 for a channel that never fired). Activations
            are divided by it so that every channel weighs alike in a descriptor, and a part whose
            channels peak far below it is taken as occluded.
        groups: breakdown part -> the fine parts it joins (``PART_GROUPS`` by default).
        source: breakdown part -> how its channels were chosen: ``"detector"`` (part IoU above the
            threshold), ``"best part by IoU"``, ``"highest IoU"`` (the fallbacks of
            ``assign_parts``) or ``"nearest landmark"``.
        method: ``"part_iou"`` or ``"landmark"``.
        iou_threshold: the detector threshold used. num_reference_images: N of the reference set.
        best_iou: (C,) each channel's best part IoU, when part masks were available.
    """

    part_names: tuple[str, ...]
    assigned: np.ndarray
    reference_peak: np.ndarray
    groups: dict[str, tuple[str, ...]]
    source: dict[str, str] = field(default_factory=dict)
    method: str = "part_iou"
    iou_threshold: float = 0.04
    num_reference_images: int = 0
    best_iou: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.part_names = tuple(self.part_names)
        self.assigned = np.asarray(self.assigned, dtype=np.int64)
        self.reference_peak = np.asarray(self.reference_peak, dtype=np.float64)
        self.groups = {name: tuple(parts) for name, parts in self.groups.items()}
        if self.assigned.shape != self.reference_peak.shape or self.assigned.ndim != 1:
            raise ValueError(
                f"assigned and reference_peak must both be (C,); got {self.assigned.shape} and "
                f"{self.reference_peak.shape}"
            )
        if (self.assigned >= len(self.part_names)).any() or (self.assigned < -1).any():
            raise ValueError(f"assigned holds indices outside -1..{len(self.part_names) - 1}")
        unknown = {p for parts in self.groups.values() for p in parts} - set(self.part_names)
        if unknown:
            raise ValueError(f"groups name parts that are not in part_names: {sorted(unknown)}")

    @property
    def num_channels(self) -> int:
        return len(self.assigned)

    def part_channels(self, part: str) -> np.ndarray:
        """Channel indices assigned to one fine part (e.g. ``"left_eye"``)."""
        if part not in self.part_names:
            raise KeyError(f"unknown part {part!r}; parts: {', '.join(self.part_names)}")
        return np.flatnonzero(self.assigned == self.part_names.index(part))

    def channels(self, group: str) -> np.ndarray:
        """Channel indices of one breakdown part (e.g. ``"eyes"``: both eyes' channels)."""
        if group not in self.groups:
            raise KeyError(f"unknown breakdown part {group!r}; parts: {', '.join(self.groups)}")
        ids = [self.part_names.index(p) for p in self.groups[group]]
        return np.flatnonzero(np.isin(self.assigned, ids))

    @property
    def group_names(self) -> tuple[str, ...]:
        """Breakdown parts with at least one channel, in ``groups`` order."""
        return tuple(g for g in self.groups if len(self.channels(g)))

    def membership(self, groups: Sequence[str] | None = None) -> np.ndarray:
        """float32 (G, C): 1 where channel c belongs to breakdown part g."""
        groups = self.group_names if groups is None else tuple(groups)
        out = np.zeros((len(groups), self.num_channels), dtype=np.float32)
        for g, name in enumerate(groups):
            out[g, self.channels(name)] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "part_names": list(self.part_names),
            "assigned": self.assigned.tolist(),
            "reference_peak": [float(v) for v in self.reference_peak],
            "groups": {name: list(parts) for name, parts in self.groups.items()},
            "source": dict(self.source),
            "method": self.method,
            "iou_threshold": float(self.iou_threshold),
            "num_reference_images": int(self.num_reference_images),
            "best_iou": None if self.best_iou is None else [float(v) for v in self.best_iou],
            "channels_per_part": {g: int(len(self.channels(g))) for g in self.groups},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartAssignment:
        return cls(
            part_names=tuple(data["part_names"]),
            assigned=np.asarray(data["assigned"]),
            reference_peak=np.asarray(data["reference_peak"]),
            groups=data["groups"],
            source=dict(data.get("source", {})),
            method=data.get("method", "part_iou"),
            iou_threshold=float(data.get("iou_threshold", 0.04)),
            num_reference_images=int(data.get("num_reference_images", 0)),
            best_iou=None if data.get("best_iou") is None else np.asarray(data["best_iou"], dtype=np.float64),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON to ``path``, or to ``path/part_assignment.json`` when ``path`` is a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / ASSIGNMENT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: str | Path) -> PartAssignment:
        """Read a saved assignment: a JSON file, a run folder, or a checkpoint folder inside one.

        Raises:
            FileNotFoundError: no ``part_assignment.json`` there (the message says how to make one).
        """
        path = Path(path)
        candidates = [path] if path.suffix == ".json" else [
            path / ASSIGNMENT_FILE, path.parent / ASSIGNMENT_FILE, path.parent.parent / ASSIGNMENT_FILE
        ]  # fmt: skip
        for candidate in candidates:
            if candidate.is_file():
                try:
                    return cls.from_dict(json.loads(candidate.read_text()))
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"{candidate} is not a valid part assignment: {err}") from err
        raise FileNotFoundError(
            f"no part assignment at {path} (looked for {ASSIGNMENT_FILE} in the run folder): make one with "
            f"`python -m ecl assign-parts --checkpoint {path}` or "
            "`ecl.explain.assign_parts(model, reference_dataset).save(run_dir)`"
        )


def _fallback_assignment(
    iou: PartIoUResult, groups: dict[str, tuple[str, ...]]
) -> tuple[np.ndarray, dict[str, str]]:
    """Detectors keep their part; a breakdown part without any detector borrows non-detectors.

    For such a part, first the non-detector channels whose best part (by IoU) is one of its fine
    parts; if there are none, the one non-detector channel with the highest IoU on it. So when no
    channel at all passes the threshold, every channel goes to its best part by IoU.
    """
    assigned = iou.assigned.copy()
    index = {name: i for i, name in enumerate(iou.part_names)}
    source: dict[str, str] = {}
    for group, parts in groups.items():
        ids = [index[p] for p in parts if p in index]
        if not ids:
            continue
        if np.isin(assigned, ids).any():
            source[group] = "detector"
            continue
        free = assigned < 0
        best = free & np.isin(iou.best_part, ids)
        if best.any():
            assigned[best] = iou.best_part[best]
            source[group] = "best part by IoU"
            continue
        scores = np.where(free[:, None], iou.iou[:, ids], -1.0)
        if scores.size and scores.max() > 0:
            channel, k = np.unravel_index(int(scores.argmax()), scores.shape)
            assigned[channel] = ids[k]
            source[group] = "highest IoU"
    return assigned, source


@torch.no_grad()
def assign_parts(
    model: nn.Module,
    reference_dataset: torch.utils.data.Dataset,
    batch_size: int = 64,
    iou_threshold: float = 0.04,
    quantile: float = 0.005,
    max_images: int | None = None,
    groups: dict[str, tuple[str, ...]] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> PartAssignment:
    """Assign target-layer channels to face parts on a reference set, for ``explain_pair``.

    With part masks (FaceParts, or 68 landmarks drawn into masks): the Network Dissection part IoU of
    ``collect_activations``; a channel with IoU above ``iou_threshold`` goes to its best part.
    Fallback, so that a weak model (such as a baseline) still gets a breakdown: a breakdown part
    with no detector takes the non-detector channels whose best part by IoU is one of its fine
    parts, else the one non-detector channel with the highest IoU on it (``PartAssignment.source``
    says which rule gave each part its channels). When no channel passes the threshold, every
    channel thus goes to its best part by IoU. Without masks but with the 5 standard landmarks:
    ``landmark_assignment`` (eyes, nose, mouth only).

    Args:
        model: the face model. reference_dataset: images with "masks" or "landmarks", never the
            pairs to be explained (use held-out identities).
        batch_size: images per forward pass. iou_threshold, quantile: as ``part_iou_from_stats``.
        max_images: use the first N images only. groups: breakdown parts (default ``PART_GROUPS``).
        device: default the model's device. progress: show a progress bar.

    Returns:
        ``PartAssignment``; ``.save(run_dir)`` keeps it with the run.
    """
    dataset = reference_dataset
    if max_images is not None and len(dataset) > max_images:
        dataset = torch.utils.data.Subset(dataset, range(max_images))
    part_names = tuple(_dataset_attr(dataset, "part_names", ()) or ())
    landmark_names = tuple(_dataset_attr(dataset, "landmark_names", ()) or ())
    probe = dataset[0]
    if "masks" not in probe and np.asarray(probe.get("landmarks", np.zeros((0, 2)))).shape[0] == 68:
        dataset, part_names = LandmarkPartMasks(dataset), LANDMARK_PART_NAMES
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    stats = collect_activations(
        model, loader, device=device, quantile=quantile, progress=progress,
        landmark_names=landmark_names, part_names=part_names,
    )  # fmt: skip
    fired = stats.fired
    masked = np.where(fired, stats.max_activation, np.nan)
    with np.errstate(all="ignore"):
        reference = np.where(fired.any(0), np.nanmedian(np.where(fired.any(0), masked, 0.0), axis=0), 1.0)
    reference = np.where(np.isfinite(reference) & (reference > 0), reference, 1.0)
    if stats.iou_tallies is not None:
        iou = part_iou_from_stats(stats, iou_threshold)
        chosen = {
            g: tuple(p for p in parts if p in part_names) for g, parts in (groups or PART_GROUPS).items()
        }
        chosen = {g: parts for g, parts in chosen.items() if parts}
        assigned, source = _fallback_assignment(iou, chosen)
        return PartAssignment(
            part_names=part_names, assigned=assigned, reference_peak=reference, groups=chosen, source=source,
            method="part_iou", iou_threshold=iou_threshold, num_reference_images=stats.num_images,
            best_iou=iou.best_iou,
        )  # fmt: skip
    if stats.landmarks is not None and np.isfinite(stats.landmarks).any():
        names = landmark_names or tuple(f"landmark_{k}" for k in range(stats.landmarks.shape[1]))
        chosen: dict[str, list[str]] = {}
        for name in names:
            if name in LANDMARK_GROUPS:
                chosen.setdefault(LANDMARK_GROUPS[name], []).append(name)
        if groups is not None:
            chosen = {g: list(parts) for g, parts in groups.items()}
        assigned = landmark_assignment(stats)
        return PartAssignment(
            part_names=names, assigned=assigned, reference_peak=reference,
            groups={g: tuple(p) for g, p in chosen.items()},
            source={g: "nearest landmark" for g in chosen}, method="landmark", iou_threshold=iou_threshold,
            num_reference_images=stats.num_images,
        )  # fmt: skip
    raise ValueError(
        "assign_parts needs a reference set with part masks ('masks') or landmarks; "
        "use FaceParts (ecl.data.build_dataset('faceparts', split='test')) or a dataset with landmarks"
    )


def part_similarity(
    activations_a: torch.Tensor,
    activations_b: torch.Tensor,
    assignment: PartAssignment,
    descriptor: str = "attention",
    groups: Sequence[str] | None = None,
    min_peak: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-part cosine similarity of two batches of target activations.

    Every channel is first divided by its ``reference_peak`` (so that all channels weigh alike).
    The part descriptor is a documented choice:

    - ``"attention"`` (default): the sum of the part's own channels is a spatial attention map
      (normalised to sum 1); the descriptor is the vector of *all* C channels pooled under it. The
      part channels say *where* the part is, all channels say what it looks like there, so a part
      with a single channel still gets a C-dimensional descriptor.
    - ``"peak"``: the peak (spatial maximum) of each of the part's own channels, concatenated, as
      "eyes 3 channels -> a 3-vector". With a single channel the cosine is 1 whenever it fires.

    A part is *found* in an image when one of its channels peaks at ``min_peak`` times its
    reference peak or more (a weak flicker of a channel is no evidence of the part). The similarity
    is the cosine of the two descriptors when the part is found in both images, 0 when in one
    only, NaN when in neither.

    Args:
        activations_a, activations_b: (B, C, H, W) target activations of the two images of each pair.
        assignment: the channel -> part assignment. descriptor: ``"attention"`` or ``"peak"``.
        groups: breakdown parts to score (default ``assignment.group_names``).
        min_peak: the found threshold, as a fraction of each channel's reference peak.

    Returns:
        ``(similarity (B, G) float32, attention_a (B, G, H, W), attention_b (B, G, H, W))``; the
        attention maps are the summed normalised channels of each part (what the part channels see).
    """
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"descriptor must be one of {DESCRIPTORS}; got {descriptor!r}")
    if activations_a.shape != activations_b.shape or activations_a.ndim != 4:
        raise ValueError(
            f"activations_a and activations_b must both be (B, C, H, W); got {tuple(activations_a.shape)} "
            f"and {tuple(activations_b.shape)}"
        )
    c = activations_a.shape[1]
    if c != assignment.num_channels:
        raise ValueError(
            f"the assignment is for a target layer of {assignment.num_channels} channels but the activations "
            f"have {c}: was it made for another model? Make a new one with assign_parts(model, reference)"
        )
    groups = assignment.group_names if groups is None else tuple(groups)
    device = activations_a.device
    member = torch.as_tensor(assignment.membership(groups), device=device)  # (G, C)
    scale = torch.as_tensor(assignment.reference_peak, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def describe(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normed = activations.float().clamp_min(0) / scale
        attention = torch.einsum("gc,bchw->bghw", member, normed)
        if descriptor == "attention":
            mass = attention.sum((2, 3))  # (B, G)
            weights = attention / mass.clamp_min(1e-12)[..., None, None]
            desc = torch.einsum("bghw,bchw->bgc", weights, normed)
        else:
            desc = normed.amax((2, 3))[:, None, :] * member[None]
        found = (normed.amax((2, 3))[:, None, :] * member[None]).amax(-1) >= min_peak
        return desc, found & (desc.norm(dim=-1) > 0), attention

    desc_a, found_a, attention_a = describe(activations_a)
    desc_b, found_b, attention_b = describe(activations_b)
    cosine = F.cosine_similarity(desc_a, desc_b, dim=-1, eps=1e-12)
    similarity = torch.where(found_a & found_b, cosine, torch.zeros_like(cosine))
    similarity = torch.where(found_a | found_b, similarity, torch.full_like(cosine, float("nan")))
    return similarity, attention_a, attention_b


def _target_module(model: nn.Module) -> nn.Module | None:
    """The tapped module of a ``FaceModel`` (None for other models)."""
    backbone, name = getattr(model, "backbone", None), getattr(model, "target_layer", None)
    if isinstance(backbone, nn.Module) and isinstance(name, str):
        return dict(backbone.named_modules()).get(name)
    return None


@contextmanager
def _tap_target(model: nn.Module, keep: torch.Tensor | None = None):
    """Capture the target layer's output *as it flows on* (for gradients), optionally scaling channels.

    ``FaceModel`` returns ``relu(output)`` as its activations, a copy that the embedding does not
    depend on, so gradients must be taken at the module's output itself. ``keep`` (B, C) multiplies
    the channels of what flows on (``occlusion_verification`` zeroes the channels of occluded parts).
    """
    module = _target_module(model)
    store: dict[str, torch.Tensor] = {}
    if module is None:
        if keep is not None:
            raise TypeError(
                "ignoring channels needs a FaceModel (a model with .backbone and .target_layer); "
                f"got {type(model).__name__}"
            )
        yield store
        return

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if keep is not None:
            output = output * keep.to(output.device, output.dtype)[:, :, None, None]
        store["output"] = output
        return output if keep is not None else None

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _forward_pair(
    model: nn.Module, images_a: torch.Tensor, images_b: torch.Tensor, saliency: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward pass of both images of every pair: ``(cosine (B,), activations (2B, C, H, W),
    Grad-CAM map (2B, H, W) or None)``; rows ``:B`` are image a, ``B:`` image b."""
    b = images_a.shape[0]
    images = torch.cat([images_a, images_b])
    if not saliency:
        with torch.no_grad():
            embeddings, activations = split_output(model(images))
        if activations is None or activations.ndim != 4:
            raise ValueError("the model must return (embeddings, activations) with activations (B, C, H, W)")
        e = F.normalize(embeddings.float(), dim=1)
        return (e[:b] * e[b:]).sum(1), activations.float(), None
    with torch.enable_grad(), _tap_target(model) as store:
        embeddings, activations = split_output(model(images))
        if activations is None or activations.ndim != 4:
            raise ValueError("the model must return (embeddings, activations) with activations (B, C, H, W)")
        target = store.get("output", activations)
        if not target.requires_grad:
            raise ValueError(
                "similarity saliency needs embeddings that depend differentiably on the target activations "
                "(a FaceModel, or a model whose returned activations feed its embeddings)"
            )
        e = F.normalize(embeddings.float(), dim=1)
        cosine = (e[:b] * e[b:]).sum(1)
        (grad,) = torch.autograd.grad(cosine.sum(), target)
    # Grad-CAM: channel weights are the spatial mean of the gradient; the map is kept signed
    # (negative = the region pulls the two embeddings apart), ReLU is for display only.
    cam = (grad.float().mean((2, 3), keepdim=True) * target.detach().float()).sum(1)
    return cosine.detach(), activations.detach().float(), cam


def similarity_saliency(
    model: nn.Module,
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM of the embedding cosine similarity, for both images of every pair.

    For pair (a, b) with ``s = cos(e_a, e_b)``: ``w_c = mean_{h,w} ds/dA_c`` and
    ``map = sum_c w_c A_c`` on the target layer, for A the activations of image a (and of b). The
    map is signed: positive where the region makes the two faces similar, negative where it pulls
    them apart. Apply ReLU to draw it the usual Grad-CAM way.

    Args:
        model: a ``FaceModel`` (or a model whose returned activations feed its embeddings).
        images_a, images_b: (B, 3, S, S) in [0, 1]. device: default the model's device.

    Returns:
        ``(saliency_a (B, H, W), saliency_b (B, H, W), similarity (B,))`` on the CPU.
    """
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.to(device).eval()
    try:
        cosine, _, cam = _forward_pair(model, images_a.to(device), images_b.to(device), saliency=True)
    finally:
        model.train(was_training)
    b = images_a.shape[0]
    return cam[:b].cpu(), cam[b:].cpu(), cosine.cpu()


@dataclass
class PairExplanation:
    """Why two faces are (dis)similar, part by part.

    Attributes:
        overall: cosine similarity of the two embeddings (the model's own verdict).
        parts: breakdown part -> cosine similarity of its descriptors (None: found in neither image).
        num_channels: breakdown part -> how many channels it has.
        descriptor: the descriptor used (see ``part_similarity``).
        part_maps_a, part_maps_b: (G, H, W) each part's summed normalised channels, parts in
            ``parts`` order (what the part channels see).
        saliency_a, saliency_b: (H, W) signed similarity Grad-CAM (``similarity_saliency``), or None.
    """

    overall: float
    parts: dict[str, float | None]
    num_channels: dict[str, int]
    descriptor: str
    part_maps_a: np.ndarray = field(repr=False)
    part_maps_b: np.ndarray = field(repr=False)
    saliency_a: np.ndarray | None = field(default=None, repr=False)
    saliency_b: np.ndarray | None = field(default=None, repr=False)

    @property
    def least_similar(self) -> str | None:
        """The part with the lowest similarity (None when no part has one)."""
        scored = {k: v for k, v in self.parts.items() if v is not None}
        return min(scored, key=scored.get) if scored else None

    def to_dict(self) -> dict[str, Any]:
        """The breakdown in plain JSON types (no maps)."""
        return {
            "overall": _float(self.overall),
            "parts": {k: (None if v is None else _float(v)) for k, v in self.parts.items()},
            "least_similar": self.least_similar,
            "num_channels": dict(self.num_channels),
            "descriptor": self.descriptor,
        }


def _as_image_batch(image: Any, name: str) -> torch.Tensor:
    """A (3, S, S) or (1, 3, S, S) float tensor in [0, 1], or an (S, S, 3) uint8 array -> (1, 3, S, S)."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        image = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"{name} must be a (3, S, S) float tensor in [0, 1] or an (S, S, 3) uint8 array; "
            f"got {type(image).__name__}"
        )
    image = image.float()
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"{name} must have shape (3, S, S) (one RGB image); got {tuple(image.shape)}")
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError(f"{name} must hold values in [0, 1] (divide uint8 images by 255)")
    return image


def explain_pair(
    model: nn.Module,
    image_a: Any,
    image_b: Any,
    assignment: PartAssignment | None = None,
    descriptor: str = "attention",
    saliency: bool = True,
    device: str | torch.device | None = None,
    min_peak: float = 0.1,
) -> PairExplanation:
    """Which face parts made two faces similar: a per-part similarity breakdown of one pair.

    Each breakdown part (eyes, brows, nose, mouth, hair, skin) gets the cosine similarity of its
    descriptor in the two images (``part_similarity``), read from the target-layer channels
    ``assignment`` gives it; the embedding cosine comes beside it, and, with ``saliency``, the
    similarity Grad-CAM of each image (``similarity_saliency``). Symmetric: swapping the images
    swaps the maps and keeps every number.

    Args:
        model: the face model (``forward(images) -> (embeddings, activations)``), in eval mode here.
        image_a, image_b: (3, S, S) float tensors in [0, 1] (or (S, S, 3) uint8 arrays) of the
            model's input size.
        assignment: ``assign_parts(model, reference)`` or ``PartAssignment.load(run_dir)``.
        descriptor: ``"attention"`` (default) or ``"peak"``, see ``part_similarity``.
        saliency: also compute the two similarity saliency maps. device: default the model's device.
        min_peak: when a part counts as found (see ``part_similarity``).

    Returns:
        ``PairExplanation``; ``.to_dict()`` is the JSON breakdown.

    Shape:
        ``part_maps_*`` (G, H, W) and ``saliency_*`` (H, W) at the target layer's resolution.
    """
    if assignment is None:
        raise ValueError(
            "explain_pair needs a part assignment: assign_parts(model, reference_dataset) or "
            "PartAssignment.load(run_dir)"
        )
    batch_a, batch_b = _as_image_batch(image_a, "image_a"), _as_image_batch(image_b, "image_b")
    if batch_a.shape != batch_b.shape:
        raise ValueError(
            f"image_a and image_b must have the same size; got {tuple(batch_a.shape[1:])} and "
            f"{tuple(batch_b.shape[1:])}"
        )
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.to(device).eval()
    try:
        cosine, activations, cam = _forward_pair(model, batch_a.to(device), batch_b.to(device), saliency)
    finally:
        model.train(was_training)
    groups = assignment.group_names
    similarity, maps_a, maps_b = part_similarity(
        activations[:1], activations[1:], assignment, descriptor, groups, min_peak=min_peak
    )
    values = similarity[0].cpu().numpy()
    return PairExplanation(
        overall=float(cosine[0]),
        parts={g: (None if not np.isfinite(v) else float(v)) for g, v in zip(groups, values, strict=True)},
        num_channels={g: int(len(assignment.channels(g))) for g in groups},
        descriptor=descriptor,
        part_maps_a=maps_a[0].cpu().numpy(),
        part_maps_b=maps_b[0].cpu().numpy(),
        saliency_a=None if cam is None else cam[0].cpu().numpy(),
        saliency_b=None if cam is None else cam[1].cpu().numpy(),
    )


def _group_masks(
    labelmaps: np.ndarray,
    part_names: Sequence[str],
    groups: Sequence[str],
    group_parts: dict[str, tuple[str, ...]],
) -> np.ndarray:
    """bool (N, G, S, S) masks of breakdown parts from FaceParts label maps (code = part index + 1)."""
    out = np.zeros((len(labelmaps), len(groups)) + labelmaps.shape[1:], dtype=bool)
    for g, group in enumerate(groups):
        codes = [
            part_names.index(p) + 1
            for p in group_parts.get(group, PART_GROUPS.get(group, ()))
            if p in part_names
        ]
        out[:, g] = np.isin(labelmaps, codes)
    return out


def _region_scores(cam: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean of each (H, W) map, upsampled bilinearly to the masks, over each mask: (B, G), NaN if empty."""
    up = F.interpolate(cam[:, None].float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    masks = masks.float()
    area = masks.sum((2, 3))
    total = (up * masks).sum((2, 3))
    return torch.where(area > 0, total / area.clamp_min(1), torch.full_like(total, float("nan")))


def _game_scores(predicted_scores: np.ndarray, truth: np.ndarray, parts: Sequence[str]) -> dict[str, Any]:
    """Top-1 accuracy, rank of the true part and confusion counts, lowest score = predicted."""
    scores = np.where(np.isfinite(predicted_scores), predicted_scores, np.inf)
    predicted = scores.argmin(1)
    # A trial whose scores are all missing predicts nothing.
    predicted = np.where(np.isfinite(scores).any(1), predicted, -1)
    true_score = scores[np.arange(len(truth)), truth]
    rank = 1 + (scores < true_score[:, None]).sum(1)
    correct = predicted == truth
    per_part = {
        p: _float(correct[truth == k].mean()) if (truth == k).any() else None for k, p in enumerate(parts)
    }
    confusion = {
        p: {q: int(((truth == k) & (predicted == j)).sum()) for j, q in enumerate(parts)}
        for k, p in enumerate(parts)
    }
    return {
        "top1": float(correct.mean()),
        "per_part": per_part,
        "mean_rank": float(rank.mean()),
        "confusion": confusion,
    }


def _render_trials(dataset: Any, parts: Sequence[str], num_trials: int, seed: int):
    """Images, label maps and truth of the game's (original, chimera) pairs."""
    if not hasattr(dataset, "render_chimera"):
        raise TypeError(
            f"the part-swap game needs a FaceParts dataset (it renders chimeras); got {type(dataset).__name__}"
        )
    if dataset.num_identities < 2:
        raise ValueError("the part-swap game needs at least two identities")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A4D]))
    originals, chimeras, labels_a, labels_b, truth, who = [], [], [], [], [], []
    for t in range(num_trials):
        k = t % len(parts)  # balanced over parts
        a = int(rng.integers(dataset.num_identities))
        b = int(rng.integers(dataset.num_identities - 1))
        b += b >= a  # any identity but a
        image = int(rng.integers(dataset.images_per_identity))
        original, label_a, _, _ = dataset.raw(a * dataset.images_per_identity + image)
        chimera, label_b, _, _ = dataset.render_chimera(a, b, parts[k], image_index=image)
        originals.append(original)
        chimeras.append(chimera)
        labels_a.append(label_a)
        labels_b.append(label_b)
        truth.append(k)
        who.append((a, b, image))
    return (
        np.stack(originals),
        np.stack(chimeras),
        np.stack(labels_a),
        np.stack(labels_b),
        np.array(truth),
        who,
    )


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) in [0, 1], bit-identical to FaceParts items."""
    out = np.empty((len(images), 3) + images.shape[1:3], dtype=np.float32)
    np.multiply(images.transpose(0, 3, 1, 2), np.float32(1.0 / 255.0), out=out)
    return torch.from_numpy(out)


def part_swap_game(
    model: nn.Module,
    assignment: PartAssignment,
    dataset: Any,
    parts: Sequence[str] = ("eyes", "brows", "nose", "mouth", "hair"),
    num_trials: int = 100,
    seed: int = 0,
    descriptor: str = "attention",
    saliency: bool = True,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    min_peak: float = 0.1,
) -> dict[str, Any]:
    """The part-swap game: which part of a chimera differs from the original face?

    Trial t takes a random identity A of ``dataset`` (a FaceParts split; use test identities the
    model never saw), a random other identity B and a random image index, and renders A's image
    and the chimera "A with part ``parts[t % len(parts)]`` of B" with the same pose, light and
    background (``FaceParts.render_chimera``), so the swapped part is exact ground truth (FaceParts
    places the mouth below the nose tip, so a nose swap also moves the mouth a little).

    - Breakdown: the part with the lowest ``part_similarity`` among ``parts`` is the guess.
    - Saliency: the part whose mask (of each image, averaged over the two) has the lowest mean
      signed similarity Grad-CAM is the guess (does the least similar region fall on it?). Note that
      this one is told where the parts are (the true masks); the breakdown must find them with
      its part channels.
    - Mask-pooled (a reference, not a method): the breakdown's all-channel descriptor pooled under
      the *true* part masks instead of the part channels' attention. The gap between it and the
      breakdown is what imperfect part channels cost; ``attention_in_part`` is the share of each
      part's channel attention that falls inside its true mask (1 for perfect detectors).

    Chance is ``1 / len(parts)``; a part without channels is never guessed (a miss when swapped).
    This is the synthetic, exact version of the published "inpainting game" for explainable face
    recognition.

    Args:
        model: the face model. assignment: its ``PartAssignment``. dataset: a ``FaceParts``.
        parts: candidate parts (``CHIMERA_PARTS``). num_trials: pairs; seed: which pairs.
        descriptor: see ``part_similarity``. saliency: also play with the saliency maps.
        batch_size: pairs per forward pass. device: default the model's device.
        min_peak: when a part counts as found (see ``part_similarity``).

    Returns:
        A dict in plain JSON types::

            {"num_trials": N, "parts": [...], "chance": 1 / P, "seed": s, "descriptor": "attention",
             "channels_per_part": {part: n},
             "breakdown": {"top1": acc, "per_part": {part: acc}, "mean_rank": r,
                           "confusion": {true part: {guessed part: count}},
                           "swapped_similarity": mean similarity of the swapped part,
                           "other_similarity": mean similarity of the other parts},
             "attention_in_part": {part: share},
             "mask_pooled": {"top1", "per_part", "mean_rank", "confusion"},
             "saliency": {"top1", "per_part", "mean_rank", "confusion"}}   # when saliency

        ``book/results/part_swap_game.json`` holds one such dict per (method, seed) under
        ``"runs"`` (each with ``"method"`` and ``"seed"`` added) and their mean and std per
        method under ``"summary"`` (``game_summary``).
    """
    parts = tuple(parts)
    for part in parts:
        if part not in assignment.groups:
            raise ValueError(
                f"part {part!r} is not a breakdown part of the assignment ({', '.join(assignment.groups)})"
            )
    originals, chimeras, labels_a, labels_b, truth, _ = _render_trials(dataset, parts, num_trials, seed)
    part_names = tuple(_dataset_attr(dataset, "part_names", ()) or ())
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.to(device).eval()
    sims, cams, pooled, inside = [], [], [], []
    scale = torch.as_tensor(assignment.reference_peak, dtype=torch.float32).view(1, -1, 1, 1)
    try:
        for start in range(0, num_trials, batch_size):
            stop = min(start + batch_size, num_trials)
            a = _to_tensor(originals[start:stop]).to(device)
            b = _to_tensor(chimeras[start:stop]).to(device)
            _, activations, cam = _forward_pair(model, a, b, saliency)
            n = stop - start
            similarity, attention, _ = part_similarity(
                activations[:n], activations[n:], assignment, descriptor, parts, min_peak=min_peak
            )
            sims.append(similarity.cpu())
            masks_a = torch.from_numpy(
                _group_masks(labels_a[start:stop], part_names, parts, assignment.groups)
            )
            masks_b = torch.from_numpy(
                _group_masks(labels_b[start:stop], part_names, parts, assignment.groups)
            )
            # Reference rows: the same all-channel descriptor pooled under the true part masks (no part
            # channels needed), and how much of each part's channel attention lies inside its mask.
            normed = activations.cpu().clamp_min(0) / scale
            cells = normed.shape[-2:]
            weights_a = F.adaptive_avg_pool2d(masks_a.float(), cells)
            weights_b = F.adaptive_avg_pool2d(masks_b.float(), cells)
            desc_a = torch.einsum("bghw,bchw->bgc", weights_a, normed[:n])
            desc_b = torch.einsum("bghw,bchw->bgc", weights_b, normed[n:])
            pooled.append(F.cosine_similarity(desc_a, desc_b, dim=-1, eps=1e-12))
            attention = attention.cpu()
            inside.append((attention * weights_a).sum((2, 3)) / attention.sum((2, 3)).clamp_min(1e-12))
            if saliency:
                score_a = _region_scores(cam[:n].cpu(), masks_a)
                score_b = _region_scores(cam[n:].cpu(), masks_b)
                cams.append(torch.nanmean(torch.stack([score_a, score_b]), dim=0))
    finally:
        model.train(was_training)
    similarity = torch.cat(sims).numpy().astype(np.float64)
    breakdown = _game_scores(similarity, truth, parts)
    swapped = similarity[np.arange(num_trials), truth]
    others = np.where(np.arange(len(parts))[None, :] != truth[:, None], similarity, np.nan)
    breakdown["swapped_similarity"] = _float(np.nanmean(swapped)) if np.isfinite(swapped).any() else None
    breakdown["other_similarity"] = _float(np.nanmean(others)) if np.isfinite(others).any() else None
    share = torch.cat(inside).mean(0).numpy()
    out: dict[str, Any] = {
        "num_trials": int(num_trials),
        "parts": list(parts),
        "chance": 1.0 / len(parts),
        "seed": int(seed),
        "descriptor": descriptor,
        "channels_per_part": {p: int(len(assignment.channels(p))) for p in parts},
        "attention_in_part": {p: _float(v) for p, v in zip(parts, share, strict=True)},
        "breakdown": breakdown,
        "mask_pooled": _game_scores(torch.cat(pooled).numpy().astype(np.float64), truth, parts),
    }
    if saliency:
        out["saliency"] = _game_scores(torch.cat(cams).numpy().astype(np.float64), truth, parts)
    return out


def game_summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of ``part_swap_game`` results, per method.

    Args:
        runs: game results, each with a ``"method"`` key added (and ``"seed"``).

    Returns:
        One row per method (std over seeds with ddof = 0; None where no run has that entry)::

            {method: {"breakdown_top1_mean", "breakdown_top1_std", "saliency_top1_mean",
                      "saliency_top1_std", "mask_pooled_top1_mean", "mask_pooled_top1_std",
                      "chance", "seeds", "num_trials"}}
    """
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        row: dict[str, Any] = {
            "seeds": [r.get("seed") for r in mine],
            "chance": mine[0]["chance"],
            "num_trials": [r["num_trials"] for r in mine],
        }
        for key in ("breakdown", "saliency", "mask_pooled"):
            values = np.array([r[key]["top1"] for r in mine if key in r], dtype=np.float64)
            row[f"{key}_top1_mean"] = _float(values.mean()) if values.size else None
            row[f"{key}_top1_std"] = _float(values.std()) if values.size else None
        out[method] = row
    return out


@torch.no_grad()
def _embed_with_peaks(
    model: nn.Module,
    images: np.ndarray,
    device: torch.device,
    batch_size: int,
    keep: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, D) and channel peaks (N, C) of uint8 images (N, S, S, 3), optionally with
    channels scaled by ``keep`` (N, C) at the target layer."""
    embeddings, peaks = [], []
    for start in range(0, len(images), batch_size):
        batch = _to_tensor(images[start : start + batch_size]).to(device)
        scale = None if keep is None else keep[start : start + batch_size].to(device)
        with _tap_target(model, scale):
            e, a = split_output(model(batch))
        embeddings.append(F.normalize(e.float(), dim=1).cpu())
        peaks.append(a.float().amax((2, 3)).cpu())
    return torch.cat(embeddings).numpy(), torch.cat(peaks).numpy()


def occluded_parts(
    peaks: np.ndarray, assignment: PartAssignment, threshold: float = 0.5
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Which fine parts are found occluded in each image: their channels' peaks collapsed.

    A part is found occluded when the median over its channels of ``peak / reference_peak`` is
    below ``threshold``. Parts without channels are never found occluded.

    Args:
        peaks: (N, C) each channel's maximum activation per image.
        assignment: gives the channels and reference peaks. threshold: the collapse ratio.

    Returns:
        ``(bool (N, P), part names)`` over ``assignment.part_names``.
    """
    ratio = np.asarray(peaks, dtype=np.float64) / assignment.reference_peak[None]
    out = np.zeros((ratio.shape[0], len(assignment.part_names)), dtype=bool)
    for p, part in enumerate(assignment.part_names):
        channels = assignment.part_channels(part)
        if len(channels):
            out[:, p] = np.median(ratio[:, channels], axis=1) < threshold
    return out, assignment.part_names


def occlusion_verification(
    model: nn.Module,
    clean: Any,
    occluded: Any,
    assignment: PartAssignment | None = None,
    pairs: Any = None,
    num_pairs: int = 1000,
    threshold: float = 0.5,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    curves: bool = True,
) -> dict[str, Any]:
    """Verification on clean and on occluded images, and with the channels of occluded parts ignored.

    ``clean`` and ``occluded`` are the same FaceParts split rendered with ``occlusion_prob=0`` and
    with ``occlusion_prob > 0`` (same identities and labels; the pair list indexes both). Embeddings
    without flip augmentation (a mirror would swap left and right part channels).

    With an ``assignment``: for each pair, the fine parts found occluded in either image
    (``occluded_parts``) have their channels zeroed at the target layer in *both* images (so the
    two are compared on the same channels), and both are embedded again; pairs with nothing found
    keep their embeddings. Zeroing is the choice: the layers above never saw such maps in training.

    Args:
        model: a ``FaceModel``. clean, occluded: datasets with ``raw(index)`` (FaceParts).
        assignment: enables the "ignore occluded parts" option. pairs: a ``PairList`` into both
            (default ``faceparts_pairs(clean, num_pairs)``). threshold: see ``occluded_parts``.
        batch_size, device: as elsewhere. curves: include each ROC (``fpr``, ``tpr``).

    Returns:
        A dict in plain JSON types; verification entries are ``VerificationResult.to_dict``, the
        ``*_ignoring`` entries and the next two only come with an assignment, ``found_occluded``
        is the share of images with a part found occluded::

            {"clean": verification, "occluded": verification,
             "clean_ignoring": verification, "occluded_ignoring": verification,
             "found_occluded": {"clean_images", "occluded_images", "unoccluded_images"},
             "pairs_changed": {"clean": n, "occluded": n}, "threshold": t, "num_pairs": n}

        ``book/results/occlusion.json`` holds one such dict per (method, seed) under ``"runs"``
        (each with ``"method"`` and ``"seed"`` added) and ``occlusion_summary`` of them under
        ``"summary"``.
    """
    from ecl.data.pairs import faceparts_pairs
    from ecl.evaluate import verification

    if len(clean) != len(occluded):
        raise ValueError(
            f"clean and occluded must be the same split; they have {len(clean)} and {len(occluded)} items"
        )
    if pairs is None:
        pairs = faceparts_pairs(clean, num_pairs=num_pairs)
    index_a, index_b = np.asarray(pairs.index_a), np.asarray(pairs.index_b)
    is_same = np.asarray(pairs.is_same, dtype=bool)
    folds = np.asarray(pairs.fold) if getattr(pairs, "fold", None) is not None else 10
    used = np.unique(np.r_[index_a, index_b])
    position = {int(i): k for k, i in enumerate(used)}
    pa = np.array([position[int(i)] for i in index_a])
    pb = np.array([position[int(i)] for i in index_b])
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.to(device).eval()
    out: dict[str, Any] = {"threshold": float(threshold), "num_pairs": int(len(is_same))}
    try:
        for name, data in (("clean", clean), ("occluded", occluded)):
            images = np.stack([data.raw(int(i))[0] for i in used])
            embeddings, peaks = _embed_with_peaks(model, images, device, batch_size)
            out[name] = verification(embeddings[pa], embeddings[pb], is_same, folds=folds).to_dict(curves)
            if assignment is None:
                continue
            found, _ = occluded_parts(peaks, assignment, threshold)
            flags = getattr(data, "occluded", None)
            any_found = found.any(1)
            if name == "clean":
                out.setdefault("found_occluded", {})["clean_images"] = float(any_found.mean())
            elif flags is not None:
                truly = np.asarray(flags, dtype=bool)[used]
                share = out.setdefault("found_occluded", {})
                share["occluded_images"] = _float(any_found[truly].mean()) if truly.any() else None
                share["unoccluded_images"] = _float(any_found[~truly].mean()) if (~truly).any() else None
            dropped = found[pa] | found[pb]  # (pairs, P)
            changed = np.flatnonzero(dropped.any(1))
            out.setdefault("pairs_changed", {})[name] = int(len(changed))
            ea, eb = embeddings[pa].copy(), embeddings[pb].copy()
            if len(changed):
                member = np.zeros((len(assignment.part_names), assignment.num_channels), dtype=np.float32)
                valid = assignment.assigned >= 0
                member[assignment.assigned[valid], np.flatnonzero(valid)] = 1.0
                keep = 1.0 - np.clip(dropped[changed].astype(np.float32) @ member, 0, 1)  # (n, C)
                keep_t = torch.from_numpy(np.repeat(keep, 2, axis=0))
                both = np.stack([images[pa[changed]], images[pb[changed]]], axis=1).reshape(
                    -1, *images.shape[1:]
                )
                again, _ = _embed_with_peaks(model, both, device, batch_size, keep=keep_t)
                ea[changed], eb[changed] = again[0::2], again[1::2]
            out[f"{name}_ignoring"] = verification(ea, eb, is_same, folds=folds).to_dict(curves)
    finally:
        model.train(was_training)
    return out


def occlusion_summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of ``occlusion_verification`` accuracies and AUCs, per method.

    Args:
        runs: ``occlusion_verification`` results, each with a ``"method"`` key added (and ``"seed"``).

    Returns:
        One row per method: ``{setting}_{accuracy|auc}_{mean|std}`` for each setting present
        (``clean``, ``occluded``, ``clean_ignoring``, ``occluded_ignoring``; std with ddof = 0),
        and ``seeds``.
    """
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        row: dict[str, Any] = {"seeds": [r.get("seed") for r in mine]}
        for setting in ("clean", "occluded", "clean_ignoring", "occluded_ignoring"):
            for metric in ("accuracy", "auc"):
                values = np.array([r[setting][metric] for r in mine if setting in r], dtype=np.float64)
                if values.size:
                    row[f"{setting}_{metric}_mean"] = _float(values.mean())
                    row[f"{setting}_{metric}_std"] = _float(values.std())
        out[method] = row
    return out


# --------------------------------------------------------------------------- CLI: explain-pair


def _read_image(path: str):
    """An image file as an RGB PIL image, with a clear error when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"cannot read image {path}: no such file")
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: not an image file PIL can open ({err})") from err


def _image_tensor(image: Any, size: int) -> torch.Tensor:
    """An RGB PIL image as a (3, size, size) tensor in [0, 1], resized bilinearly when needed."""
    from PIL import Image

    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _explain_pair_command(args: Any) -> int:
    import sys

    from ecl.train import load_run

    try:
        # Cheap checks first: unreadable images and a missing assignment fail before the model loads.
        pictures = _read_image(args.image_a), _read_image(args.image_b)
        assignment = PartAssignment.load(args.assignment or args.checkpoint)
        model, _ = load_run(args.checkpoint, map_location="cpu")
        size = int(getattr(model, "image_size", 112))
        image_a, image_b = (_image_tensor(p, size) for p in pictures)
        result = explain_pair(
            model,
            image_a,
            image_b,
            assignment,
            descriptor=args.descriptor,
            saliency=False,
            device=args.device,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"image_a": args.image_a, "image_b": args.image_b, **result.to_dict()}))
    return 0


def _assign_parts_command(args: Any) -> int:
    import sys

    from ecl.data import build_dataset
    from ecl.train import load_run

    try:
        model, config = load_run(args.checkpoint, map_location="cpu")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reference = build_dataset(
        "faceparts", split="test", image_size=int(getattr(model, "image_size", 112)),
        num_identities=args.identities, images_per_identity=args.images_per_identity, seed=config.data.seed,
    )  # fmt: skip
    assignment = assign_parts(model, reference, batch_size=args.batch_size, device=args.device)
    target = Path(args.out) if args.out else Path(args.checkpoint)
    path = assignment.save(target)
    print(
        json.dumps(
            {
                "saved": str(path),
                "source": assignment.source,
                "channels_per_part": assignment.to_dict()["channels_per_part"],
            }
        )
    )
    return 0


def add_subparser(subparsers: Any) -> None:
    """Register ``python -m ecl explain-pair`` and ``python -m ecl assign-parts``."""
    parser = subparsers.add_parser(
        "explain-pair",
        help="which face parts made two faces similar (JSON breakdown)",
        description=(
            "Per-part similarity breakdown of two face images (eyes, brows, nose, mouth, hair, skin) from "
            "the target layer's part channels, with the embedding cosine beside it. Needs the run's "
            f"{ASSIGNMENT_FILE} (make it with `python -m ecl assign-parts --checkpoint RUN`). Images are "
            "read with PIL, converted to RGB and resized to the model's input size. Prints one JSON object."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint written by `ecl train`")
    parser.add_argument("image_a", metavar="IMAGE_A", help="first face image (any format PIL reads)")
    parser.add_argument("image_b", metavar="IMAGE_B", help="second face image")
    parser.add_argument(
        "--assignment", default=None, help=f"part assignment JSON (default RUN/{ASSIGNMENT_FILE})"
    )
    parser.add_argument("--descriptor", choices=DESCRIPTORS, default="attention", help="part descriptor")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.set_defaults(func=_explain_pair_command)

    parser = subparsers.add_parser(
        "assign-parts",
        help="assign a run's target-layer channels to face parts (for explain-pair)",
        description=(
            "Part IoU of every target-layer channel on FaceParts test identities; writes "
            f"RUN/{ASSIGNMENT_FILE} (see ecl.explain.assign_parts for the fallback rules)."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint written by `ecl train`")
    parser.add_argument("--identities", type=int, default=50, help="FaceParts test identities (default 50)")
    parser.add_argument("--images-per-identity", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None, help=f"where to write (default RUN/{ASSIGNMENT_FILE})")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=_assign_parts_command)


# --------------------------------------------------------------------------- helpers


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _float(value: float) -> float | None:
    """A JSON-safe float: NaN becomes None."""
    value = float(value)
    return value if math.isfinite(value) else None


__all__ = [
    "ASSIGNMENT_FILE",
    "DEFAULT_SHIFTS",
    "DESCRIPTORS",
    "LANDMARK_GROUPS",
    "PART_GROUPS",
    "PairExplanation",
    "PartAssignment",
    "add_subparser",
    "assign_parts",
    "explain_pair",
    "game_summary",
    "occluded_parts",
    "occlusion_summary",
    "occlusion_verification",
    "part_similarity",
    "part_swap_game",
    "similarity_saliency",
    "LANDMARK_PART_NAMES",
    "ActivationStats",
    "HitRateResult",
    "InstabilityResult",
    "LandmarkPartMasks",
    "PartIoUResult",
    "ChannelHistograms",
    "TrackingResult",
    "cells_to_pixels",
    "collect_activations",
    "explainability_metrics",
    "explainability_report",
    "iou_tallies",
    "landmark_assignment",
    "landmark_part_masks",
    "location_instability",
    "part_coverage",
    "part_iou",
    "part_iou_from_stats",
    "part_iou_from_tallies",
    "peak_cells",
    "peak_hit_rate",
    "peak_in_masks",
    "shift_images",
    "translation_tracking",
]
