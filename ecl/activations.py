"""One streaming pass over a dataset's target-layer activations, and the peaks every metric reads.

- Peaks. A map's peak is its argmax cell (first on ties) ``(i, j)``; in image pixels it is the
  centre of that receptive-field cell, ``x = (j + 0.5) * S_w / W``, ``y = (i + 0.5) * S_h / H``.
- :func:`collect_activations` makes one streaming pass: per image and channel it keeps the maximum
  activation and the peak cell (O(N C) numbers); per channel, histograms of the raw activations
  (for the Network Dissection quantile) and of the upsampled maps over all pixels and inside each
  part mask (O(C P bins) counts), which give the part-IoU tallies at the quantile threshold at the
  end of the pass; and how often each channel's peak falls inside each part. No activation map
  outlives its batch, so memory does not grow with the number of images beyond O(N C). Only the
  upsampled values that can still count are computed: those above a running lower bound of the
  final threshold, found block by block near the cells above it (:func:`upsampled_above`), so the pass
  costs less than twice the forward pass (1.5-1.8x on a CPU, ``benchmarks/bench_explain.py``).

Approximations, stated where they are made:

- The (1 - q) activation quantile comes from a per-channel histogram of ``bins`` equal bins over
  [0, hi], where ``hi`` doubles (merging bin pairs) whenever a larger value arrives; exact zeros are
  counted apart. The estimate is interpolated inside its bin, so its error is at most one bin
  width, ``hi / bins <= 2 * max / bins`` (0.1% of the channel's largest activation for 2048 bins).
- The one-pass IoU counts the upsampled pixels above the threshold from histograms with the same
  bins: only pixels whose value shares the threshold's bin are uncertain, and they are counted as
  spread evenly over that bin. :func:`ecl.metrics.part_iou` (a second pass) counts them exactly; the
  benchmark ``benchmarks/bench_explain.py`` reports the difference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecl.utils import autocast, batch_images, eval_mode, model_device, progress_bar, split_output


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


def target_activations(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    activations = split_output(model(images))[1]
    if activations is None or activations.ndim != 4:
        raise ValueError("the model must return (embeddings, activations) with activations (B, C, H, W)")
    return activations.float()


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
        self.hist.view(-1).index_add_(0, index.reshape(-1), ones)
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
        second_max: (N, C) float32, each map's strongest local maximum at least two cells from its
            peak (:func:`second_peak_cells`; 0 when there is none).
        peak_parts, second_parts: (N, C) int8, the part (index into ``part_names``) whose mask holds
            the peak pixel and the second peak's pixel, -1 for none; None without masks.
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
    second_max: np.ndarray | None = field(default=None, repr=False)
    peak_parts: np.ndarray | None = field(default=None, repr=False)
    second_parts: np.ndarray | None = field(default=None, repr=False)

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


def second_peak_cells(
    activations: torch.Tensor, peaks: torch.Tensor, min_distance: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """The strongest local maximum of every map at least ``min_distance`` cells from its peak.

    A local maximum is a positive cell no smaller than its 8 neighbours; the distance is the larger of
    the row and column offsets. A map with one blob has none (value 0). Two eyes in one map show here.

    Args:
        activations: (B, C, H, W). peaks: (B, C, 2) the maps' peak cells (:func:`peak_cells`).

    Returns:
        ``(value (B, C), cell (B, C, 2) long)``.
    """
    b, c, h, w = activations.shape
    pooled = F.max_pool2d(activations, 3, stride=1, padding=1)
    rows = torch.arange(h, device=activations.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=activations.device).view(1, 1, 1, w)
    far = ((rows - peaks[..., 0, None, None]).abs() >= min_distance) | (
        (cols - peaks[..., 1, None, None]).abs() >= min_distance
    )
    candidates = (activations >= pooled) & (activations > 0) & far
    values, flat = (
        torch.where(candidates, activations, torch.zeros_like(activations)).reshape(b, c, h * w).max(2)
    )
    return values, torch.stack([flat // w, flat % w], dim=-1)


def part_at(cells: torch.Tensor, map_size: tuple[int, int], masks: torch.Tensor) -> torch.Tensor:
    """The part whose mask holds each cell's pixel (the first one, for overlapping masks), -1 for none.

    Args:
        cells: (B, C, 2). map_size: (H, W). masks: bool (B, P, S_h, S_w).

    Returns:
        int8 (B, C).
    """
    inside = peak_in_masks(cells, map_size, masks)  # (B, C, P)
    first = inside.to(torch.int8).argmax(-1).to(torch.int8)
    return torch.where(inside.any(-1), first, torch.full_like(first, -1))


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
def _bilinear_blocks(
    h: int, w: int, image_h: int, image_w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        raise ValueError(
            f"part masks ({image_h} x {image_w}) must be at least as large as the maps ({h} x {w})"
        )
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
    offsets = (
        torch.arange(3, device=index.device)[:, None] * (w + 2) + torch.arange(3, device=index.device)
    ).reshape(-1)
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
    model.to(device)
    maxima, cells, landmarks, seconds, parts_first, parts_second = [], [], [], [], [], []
    histograms: ChannelHistograms | None = None
    part_hits = part_area = None
    map_size = image_size = None
    total = len(loader) if hasattr(loader, "__len__") else None
    dataset = getattr(loader, "dataset", None)
    num_images = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    rank = None
    with eval_mode(model):
        for batch in progress_bar(loader, progress, "activations", total):
            images = batch_images(batch).to(device, non_blocking=True)
            with autocast(device, amp):
                activations = target_activations(model, images)
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
            second, second_cells = second_peak_cells(activations, peaks)
            histograms.update(activations.transpose(0, 1).reshape(c, -1))
            maxima.append(values.cpu().numpy())
            cells.append(peaks.cpu().numpy().astype(np.int16))
            seconds.append(second.float().cpu().numpy())
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
                parts_first.append(part_at(peaks, map_size, masks).cpu().numpy())
                parts_second.append(part_at(second_cells, map_size, masks).cpu().numpy())
                area = masks.sum((0, 2, 3))
                part_hits = hits if part_hits is None else part_hits + hits
                part_area = area if part_area is None else part_area + area
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
        second_max=np.concatenate(seconds),
        peak_parts=np.concatenate(parts_first) if parts_first else None,
        second_parts=np.concatenate(parts_second) if parts_second else None,
    )
