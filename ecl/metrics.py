"""Explainability metrics of a target layer (METHOD section 6), and the report that runs them all.

All metrics read the target-layer ``activations`` (B, C, H, W) a ``FaceModel`` returns, mostly through
the one streaming pass of :func:`ecl.activations.collect_activations`.

- :func:`location_instability` (ICNN), :func:`part_iou_from_stats` (Network Dissection, from the one
  pass; :func:`part_iou` is the exact two-pass version), :func:`peak_hit_rate` (pointing game),
  :func:`translation_tracking` (label-free: does a channel's peak follow the face when the image
  shifts?) and :func:`part_coverage` (how many channels each part gets, and the entropy of that).
- :func:`explainability_report` runs everything on a dataset and on jittered copies of it.

Part masks of data with 68 landmarks and no annotated masks are the polygons of
:mod:`ecl.data.landmark_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecl.activations import ActivationStats, collect_activations, peak_cells, target_activations
from ecl.data.landmark_masks import with_part_masks
from ecl.utils import autocast, batch_images, dataset_attr, eval_mode, json_float, model_device, progress_bar

DEFAULT_SHIFTS: tuple[tuple[int, int], ...] = (
    (1, 0),
    (-1, 0),
    (2, 0),
    (-2, 0),
    (0, 1),
    (0, -1),
    (0, 2),
    (0, -2),
)
"""(dx, dy) image shifts in target-layer cells used by ``translation_tracking``."""


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
            "overall": json_float(self.overall),
            "active": json_float(self.active),
            "num_channels": int(np.isfinite(self.per_channel).sum()),
            "num_active_channels": int(self.active_channels.sum()),
        }
        if per_channel:
            out["per_channel"] = [json_float(v) for v in self.per_channel]
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
            "mean_best_iou": json_float(self.mean_best_iou),
            "iou_threshold": self.iou_threshold,
        }
        if per_channel:
            out["best_iou"] = [json_float(v) for v in self.best_iou]
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
    model.to(device)
    thresholds = torch.as_tensor(np.asarray(thresholds), dtype=torch.float32, device=device)
    tallies = None
    total = len(loader) if hasattr(loader, "__len__") else None
    with eval_mode(model):
        for batch in progress_bar(loader, progress, "part IoU", total):
            if not isinstance(batch, dict) or "masks" not in batch:
                raise ValueError(
                    "part_iou needs batches with 'masks' (B, P, S, S); use LandmarkPartMasks for 68 points"
                )
            images = batch_images(batch).to(device, non_blocking=True)
            with autocast(device, amp):
                activations = target_activations(model, images)
            new = iou_tallies(activations, batch["masks"].to(device).bool(), thresholds)
            tallies = new if tallies is None else tuple(a + b for a, b in zip(tallies, new, strict=True))
    if tallies is None:
        raise ValueError("the loader yielded no batches")
    return part_iou_from_tallies(*tallies, part_names=part_names, iou_threshold=iou_threshold)


@dataclass
class HitRateResult:
    """Pointing game: fraction of fired maps whose peak lies in the channel's assigned part.

    Attributes:
        per_channel: (C,), NaN for unassigned channels. mean: over assigned channels.
    """

    per_channel: np.ndarray
    mean: float

    def to_dict(self, per_channel: bool = False) -> dict[str, Any]:
        out = {"mean": json_float(self.mean), "num_channels": int(np.isfinite(self.per_channel).sum())}
        if per_channel:
            out["per_channel"] = [json_float(v) for v in self.per_channel]
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
            "mean": json_float(self.mean),
            "fraction_tracking": json_float(self.fraction_tracking),
            "num_channels": int(np.isfinite(self.per_channel).sum()),
            "shifts": [list(s) for s in self.shifts],
        }
        if per_channel:
            out["per_channel"] = [json_float(v) for v in self.per_channel]
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
    model.to(device)
    shifts = tuple((int(dx), int(dy)) for dx, dy in shifts)
    image_h, image_w = images.shape[-2:]

    def peaks_of(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        with autocast(device, amp):
            activations = target_activations(model, batch.to(device))
        values, cells = peak_cells(activations)
        return values.cpu(), cells.cpu(), tuple(activations.shape[-2:])

    tracked = None
    with eval_mode(model):
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


@dataclass
class BimodalityResult:
    """How often a map has two blobs, and how often they are the two eyes.

    Attributes:
        bimodal: fraction of fired maps whose second peak (:func:`ecl.activations.second_peak_cells`)
            reaches ``ratio`` of the map's maximum.
        both_eyes: fraction of fired maps that are bimodal with one peak on each eye (None without eye
            masks).
        two_eye_channels: channels whose fired maps are mostly (more than half) bimodal on both eyes.
        per_channel: (C,) the bimodal fraction of each channel (NaN for one that never fired).
        ratio: the second peak's threshold, as a fraction of the maximum.
    """

    bimodal: float
    both_eyes: float | None
    two_eye_channels: int | None
    per_channel: np.ndarray = field(repr=False)
    ratio: float = 0.5

    def to_dict(self, per_channel: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bimodal": json_float(self.bimodal),
            "both_eyes": None if self.both_eyes is None else json_float(self.both_eyes),
            "two_eye_channels": self.two_eye_channels,
            "ratio": self.ratio,
        }
        if per_channel:
            out["per_channel"] = [json_float(v) for v in self.per_channel]
        return out


def bimodality(stats: ActivationStats, ratio: float = 0.5) -> BimodalityResult:
    """Two eyes against one peak: how often a channel's map has a second blob, and on which parts.

    ECLoss matches each map to one pyramid, so a channel that answers to "an eye" and fires on both
    eyes is penalised for the second one. This counts how often that happens.

    Args:
        stats: from :func:`ecl.activations.collect_activations` (part masks give ``both_eyes``).
        ratio: a second peak counts when it reaches this fraction of the map's maximum.
    """
    fired = stats.fired
    second = stats.second_max if stats.second_max is not None else np.zeros_like(stats.max_activation)
    bimodal = fired & (second >= ratio * stats.max_activation)
    counts = fired.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_channel = np.where(counts > 0, bimodal.sum(0) / np.maximum(counts, 1), np.nan)
    both_eyes = two_eye_channels = None
    names = tuple(stats.part_names)
    if stats.peak_parts is not None and {"left_eye", "right_eye"} <= set(names):
        eyes = {names.index("left_eye"), names.index("right_eye")}
        first, other = stats.peak_parts.astype(np.int64), stats.second_parts.astype(np.int64)
        on_eyes = bimodal & (first != other) & np.isin(first, list(eyes)) & np.isin(other, list(eyes))
        both_eyes = float(on_eyes.sum() / max(int(fired.sum()), 1))
        two_eye_channels = int((on_eyes.sum(0) > 0.5 * counts).sum())
    return BimodalityResult(
        bimodal=float(bimodal.sum() / max(int(fired.sum()), 1)),
        both_eyes=both_eyes,
        two_eye_channels=two_eye_channels,
        per_channel=per_channel,
        ratio=ratio,
    )


def part_extents(dataset: Any, max_images: int = 200) -> dict[str, dict[str, float]]:
    """How large each part is, in pixels: the mean height, width and area of its mask where present.

    The template's reach (``S / beta`` pixels from its peak, METHOD section 3) is measured against these.

    Args:
        dataset: items with ``"masks"`` (P, S, S); ``part_names`` names them.
        max_images: the first this many images.

    Returns:
        ``{part: {"height", "width", "area"}}`` in pixels (NaN for a part never present).
    """
    names = tuple(dataset_attr(dataset, "part_names", ()) or ())
    sums = np.zeros((len(names), 3))
    counts = np.zeros(len(names))
    for index in range(min(max_images, len(dataset))):
        masks = np.asarray(dataset[index]["masks"], dtype=bool)
        for p, mask in enumerate(masks):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if rows.size:
                sums[p] += (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1, mask.sum())
                counts[p] += 1
    with np.errstate(invalid="ignore"):
        means = sums / counts[:, None]
    return {
        name: dict(zip(("height", "width", "area"), map(float, means[p]), strict=True))
        for p, name in enumerate(names)
    }


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
        "entropy_bits": json_float(entropy),
        "normalised_entropy": json_float(entropy / normaliser) if total > 0 else None,
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
    part_names = tuple(dataset_attr(dataset, "part_names", ()) or ())
    landmark_names = tuple(dataset_attr(dataset, "landmark_names", ()) or ())
    dataset, part_names, masks_from = with_part_masks(dataset, part_names)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    stats = collect_activations(
        model,
        loader,
        device=device,
        quantile=quantile,
        progress=progress,
        landmark_names=landmark_names,
        part_names=part_names,
    )
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
                model,
                loader,
                stats.thresholds,
                part_names,
                device=device,
                iou_threshold=iou_threshold,
                progress=progress,
            )
        else:
            iou = part_iou_from_stats(stats, iou_threshold)
        out["part_iou"] = {**iou.to_dict(per_channel), "masks": masks_from}
        out["peak_hit_rate"] = peak_hit_rate(stats, iou.assigned).to_dict(per_channel)
        out["part_coverage"] = part_coverage(iou.assigned, part_names)
        out["bimodality"] = bimodality(stats).to_dict(per_channel)
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


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")
