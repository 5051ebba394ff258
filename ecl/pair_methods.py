"""Other ways to explain a face pair, beside the channel part breakdown of :mod:`ecl.attribution`.

Each method answers "which regions or parts made these two faces similar?" for one pair, so that the
part breakdown can be compared with what a user would otherwise reach for:

- :func:`xcos_grid`: an xCos-style local-similarity grid (the cosine of the two faces' target-layer
  feature vectors cell by cell, weighted by an attention map that sums to 1);
- :func:`occlusion_map`: occlusion sensitivity (a patch slid over one face, or over both);
- :func:`region_breakdown` (:func:`region_similarity` on activations): the landmark-region breakdown
  (features pooled inside each part's region, no part detectors needed); :func:`landmark_region_masks`
  draws the regions;
- :func:`channel_shapley` and :func:`xcos_part_breakdown`: breakdowns whose parts add up exactly to
  the pair's score, with the residual stated (an :class:`AdditiveBreakdown`).

The similarity Grad-CAM (:func:`ecl.attribution.similarity_saliency`) is the fourth map method;
:mod:`ecl.pair_explain` calls every method by name, :mod:`ecl.pair_scores` scores them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecl.attribution import (
    PART_GROUPS,
    PartAssignment,
    _as_image_batch,
    tap_target,
)
from ecl.data.landmark_masks import LANDMARK_PART_NAMES, landmark_part_masks
from ecl.utils import eval_mode, json_float, model_device, split_output

XCOS_ATTENTIONS = ("norm", "uniform")
"""Attention rules of ``xcos_grid``."""

BASELINES = ("mean", "blur", "zero")
"""Named fills of ``baseline_image`` (a (3, S, S) tensor is accepted too)."""

FIVE_POINT_PART_NAMES = ("left_eye", "right_eye", "nose", "mouth")
"""Regions ``landmark_region_masks`` draws from the 5 standard landmarks."""


# ------------------------------------------------------------------------------------------- helpers
def upsample(values: torch.Tensor | np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """A (h, w) map resized bilinearly (``align_corners=False``, as the metrics and overlays do) to (S, S)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    grid = torch.as_tensor(np.asarray(values, dtype=np.float32) if isinstance(values, np.ndarray) else values)
    grid = grid.detach().float().cpu()
    if tuple(grid.shape) == size:
        return grid.clone()
    return F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def baseline_image(image: torch.Tensor, baseline: str | torch.Tensor = "mean") -> torch.Tensor:
    """What a removed region of ``image`` (3, S, S) is replaced by.

    - ``"mean"`` (default everywhere): each colour channel's mean over the image. It adds no colour the
      face does not have and no edge inside the removed region, and keeps the image's overall brightness,
      so what the model loses is the region's structure.
    - ``"blur"``: a Gaussian blur with sigma = S / 16 (7 px at 112), which keeps the coarse layout of
      skin and hair but removes the detail that tells identities apart (the insertion baseline of RISE).
    - ``"zero"``: black. A tensor: used as it is.
    """
    if isinstance(baseline, torch.Tensor):
        if tuple(baseline.shape[-3:]) != tuple(image.shape[-3:]):
            raise ValueError(
                f"a baseline image must be {tuple(image.shape[-3:])}; got {tuple(baseline.shape)}"
            )
        return baseline.to(image.device, image.dtype).reshape(image.shape)
    if baseline == "mean":
        return image.mean((-2, -1), keepdim=True).expand_as(image).clone()
    if baseline == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = image.shape[-1] / 16
        kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(image.shape[-2:]) // 2) - 1)
        return gaussian_blur(
            image[None] if image.ndim == 3 else image, [kernel, kernel], [sigma, sigma]
        ).reshape(image.shape)
    if baseline == "zero":
        return torch.zeros_like(image)
    raise ValueError(f"baseline must be one of {BASELINES} or a (3, S, S) tensor; got {baseline!r}")


@torch.no_grad()
def embed(
    model: nn.Module, images: torch.Tensor, batch_size: int = 64, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """L2-normalised float embeddings (N, D) of images (N, 3, S, S), in chunks; ``keep`` (N, C) scales the
    target-layer channels as they flow on (``ecl.attribution.tap_target``)."""
    device = model_device(model)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].to(device)
        scale = None if keep is None else keep[start : start + batch_size]
        with tap_target(model, scale) if scale is not None else nullcontext():
            embeddings, _ = split_output(model(chunk))
        out.append(F.normalize(embeddings.float(), dim=1).cpu())
    return torch.cat(out)


def as_pair(image_a: Any, image_b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The two images of a pair ((3, S, S) or (1, 3, S, S) float in [0, 1], or (S, S, 3) uint8) as
    (1, 3, S, S) float tensors of one size."""
    a, b = _as_image_batch(image_a, "image_a"), _as_image_batch(image_b, "image_b")
    if a.shape != b.shape:
        raise ValueError(
            f"image_a and image_b must have the same size; got {tuple(a.shape[1:])} and {tuple(b.shape[1:])}"
        )
    return a, b


def prepare_model(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Move the model to ``device`` (default: where it is) and return that device."""
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    return device


# ------------------------------------------------------------------------------------- additive parts
@dataclass
class AdditiveBreakdown:
    """Per-part contributions that add up, with a stated rest, to a pair's score.

    ``sum(parts.values()) + rest == total`` to float precision (``residual`` is the difference).

    Attributes:
        total: the score that is broken down (``method`` says which).
        parts: breakdown part -> its contribution.
        rest: everything no part accounts for; ``terms`` says what it is made of.
        method: ``"shapley"`` (``channel_shapley``: the embedding cosine) or ``"xcos"``
            (``xcos_part_breakdown``: the xCos score).
        terms: the pieces of ``rest`` by name.
        overall: the embedding cosine of the pair (equal to ``total`` for ``"shapley"``).
        weights: part -> its share of the xCos attention (``"xcos"`` only), so that
            ``parts[p] / weights[p]`` is the part's mean local cosine.
    """

    total: float
    parts: dict[str, float]
    rest: float
    method: str
    terms: dict[str, float] = field(default_factory=dict)
    overall: float | None = None
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def residual(self) -> float:
        """``total - (sum of parts + rest)``: zero up to float rounding."""
        return float(self.total - (sum(self.parts.values()) + self.rest))

    def text(self, digits: int = 3) -> str:
        """The sum as a reader reads it: ``"eyes 0.410 + nose 0.220 + rest 0.050 = 0.680"``."""
        terms = [f"{name} {value:.{digits}f}" for name, value in [*self.parts.items(), ("rest", self.rest)]]
        return " + ".join(terms) + f" = {self.total:.{digits}f}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "method": self.method,
            "total": json_float(self.total),
            "parts": {k: json_float(v) for k, v in self.parts.items()},
            "rest": json_float(self.rest),
            "terms": {k: json_float(v) for k, v in self.terms.items()},
            "overall": None if self.overall is None else json_float(self.overall),
            "weights": {k: json_float(v) for k, v in self.weights.items()},
            "text": self.text(),
        }


def _shapley_values(values: np.ndarray, n: int) -> np.ndarray:
    """Exact Shapley values of n players from v over all 2^n coalitions (bit i of the index = player i)."""
    coalitions = np.arange(2**n)
    sizes = np.array([bin(s).count("1") for s in coalitions])
    phi = np.zeros(n)
    for i in range(n):
        without = coalitions[(coalitions >> i) & 1 == 0]
        s = sizes[without]
        weight = np.array([math.factorial(k) * math.factorial(n - k - 1) for k in s]) / math.factorial(n)
        phi[i] = float((weight * (values[without | (1 << i)] - values[without])).sum())
    return phi


def channel_shapley(
    model: nn.Module,
    image_a: Any,
    image_b: Any,
    assignment: PartAssignment,
    groups: tuple[str, ...] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    max_players: int = 10,
) -> AdditiveBreakdown:
    """The embedding cosine of a pair as a sum of part contributions: Shapley values of channel groups.

    Players are the breakdown parts (their target-layer channels in ``assignment``) and, when some
    channels belong to no part, one more player ``"unassigned"``. The value of a coalition S is the
    embedding cosine of the pair when only the channels of S flow on from the target layer, in *both*
    images, and every other channel is zeroed (zero is the choice: it is what "the part is absent"
    means for channels after a ReLU). Every coalition is evaluated, so the Shapley values are exact,
    and they add up exactly (efficiency): ``sum(parts) + rest = cosine``, with

        rest = v(no channel) + phi(unassigned)

    the cosine the embedding head gives two all-zero maps (its biases) plus what the unassigned channels
    contribute; ``terms`` holds both. A part whose channels are zero in both images gets 0.

    Args:
        model: a ``FaceModel`` (a model with ``.backbone`` and ``.target_layer``).
        image_a, image_b: (3, S, S) float in [0, 1]. assignment: the channel -> part assignment.
        groups: breakdown parts (default ``assignment.group_names``). batch_size: pairs per pass.
        device: default the model's device. max_players: refuse more players (2^n coalitions).

    Returns:
        ``AdditiveBreakdown`` with ``method="shapley"`` and ``total`` the embedding cosine.
    """
    a, b = as_pair(image_a, image_b)
    groups = assignment.group_names if groups is None else tuple(groups)
    member = assignment.membership(groups)  # (G, C)
    unassigned = member.sum(0) == 0
    players = list(groups) + (["unassigned"] if unassigned.any() else [])
    masks = np.vstack([member, unassigned[None].astype(np.float32)]) if unassigned.any() else member
    n = len(players)
    if n > max_players:
        raise ValueError(f"{n} players need 2^{n} forward passes; pass fewer groups or raise max_players")
    device = prepare_model(model, device)
    bits = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float32)  # (2^n, n)
    keep = torch.from_numpy(np.clip(bits @ masks, 0, 1))  # (2^n, C)
    k = len(keep)
    with eval_mode(model):
        with torch.no_grad():
            channels = split_output(model(a.to(device)))[1]
        if channels is None or channels.shape[1] != assignment.num_channels:
            raise ValueError(
                f"the assignment is for {assignment.num_channels} target channels; the model's target "
                f"layer has {None if channels is None else channels.shape[1]}: was it made for another model?"
            )
        values = []
        for start in range(0, k, batch_size):
            part = keep[start : start + batch_size]
            m = len(part)
            images = torch.cat([a.expand(m, -1, -1, -1), b.expand(m, -1, -1, -1)])
            e = embed(model, images, batch_size=2 * m, keep=torch.cat([part, part]))
            values.append((e[:m] * e[m:]).sum(1))
    v = torch.cat(values).double().numpy()
    phi = _shapley_values(v, n)
    terms = {"baseline": float(v[0])}
    if unassigned.any():
        terms["unassigned"] = float(phi[-1])
    return AdditiveBreakdown(
        total=float(v[-1]),
        parts={g: float(p) for g, p in zip(groups, phi, strict=False)},
        rest=float(sum(terms.values())),
        method="shapley",
        terms=terms,
        overall=float(v[-1]),
    )


# ---------------------------------------------------------------------------------------------- xCos
@dataclass
class XCosGrid:
    """An xCos-style local-similarity grid of pairs (see ``xcos_grid``); small, so kept on the CPU.

    Attributes:
        cosine: (B, H, W) cosine of the two faces' feature vectors in each cell (0 where either is 0).
        attention: (B, H, W) cell weights, summing to 1 per pair.
        score: (B,) the xCos score, ``(attention * cosine).sum()``.
        flat_cosine: (B,) the cosine of the two flattened maps.
        rule: the attention rule.
    """

    cosine: torch.Tensor
    attention: torch.Tensor
    score: torch.Tensor
    flat_cosine: torch.Tensor
    rule: str

    @property
    def contribution(self) -> torch.Tensor:
        """(B, H, W) ``attention * cosine``: sums to ``score``."""
        return self.attention * self.cosine

    @property
    def difference(self) -> torch.Tensor:
        """(B, H, W) ``attention * (1 - cosine)``: where the pair differs; sums to ``1 - score``."""
        return self.attention * (1.0 - self.cosine)


def xcos_grid(activations_a: torch.Tensor, activations_b: torch.Tensor, attention: str = "norm") -> XCosGrid:
    """xCos-style local similarity: cell-by-cell cosines of target features, weighted to one score.

    For cell p, ``cos_p = <f_a(p), f_b(p)> / (|f_a(p)| |f_b(p)|)`` over the C channels. xCos (Lin et
    al., 2021) learns its attention with an extra branch; this project has none, so the attention is
    computed from the features:

    - ``"norm"`` (default): ``w_p = |f_a(p)| |f_b(p)| / sum_q |f_a(q)| |f_b(q)|``, cells where both faces
      have strong features weigh most. Then ``score = sum_p w_p cos_p = sum_p <f_a(p), f_b(p)> /
      sum_p |f_a(p)| |f_b(p)|``, and its relation to the cosine of the flattened maps F_a, F_b is exact:
      ``cos(F_a, F_b) = kappa * score`` with ``kappa = sum_p |f_a(p)| |f_b(p)| / (|F_a| |F_b|)`` in (0, 1]
      (Cauchy-Schwarz), 1 exactly when the two faces' cell-norm maps are proportional. The embedding
      cosine is a further learned function of the maps (the layers after the target and the head), so
      the xCos score is not the embedding cosine; ``explain_pair_with`` reports the three side by side.
    - ``"uniform"``: ``w_p = 1 / (H W)``, the plain mean of the local cosines.

    A pair with no feature anywhere gets uniform weights and score 0.

    Args:
        activations_a, activations_b: (B, C, H, W) target activations of the two images of each pair.
        attention: ``"norm"`` or ``"uniform"``.

    Returns:
        ``XCosGrid``.
    """
    if attention not in XCOS_ATTENTIONS:
        raise ValueError(f"attention must be one of {XCOS_ATTENTIONS}; got {attention!r}")
    if activations_a.shape != activations_b.shape or activations_a.ndim != 4:
        raise ValueError(
            f"activations must both be (B, C, H, W); got {tuple(activations_a.shape)} and "
            f"{tuple(activations_b.shape)}"
        )
    fa, fb = activations_a.detach().cpu().double(), activations_b.detach().cpu().double()
    na, nb = fa.norm(dim=1), fb.norm(dim=1)  # (B, H, W)
    dot = (fa * fb).sum(1)
    both = na * nb
    cosine = torch.where(both > 0, dot / both.clamp_min(1e-300), torch.zeros_like(dot))
    uniform = torch.full_like(both, 1.0 / (both.shape[1] * both.shape[2]))
    if attention == "norm":
        mass = both.sum((1, 2), keepdim=True)
        weights = torch.where(mass > 0, both / mass.clamp_min(1e-300), uniform)
    else:
        weights = uniform
    flat = F.cosine_similarity(fa.flatten(1), fb.flatten(1), dim=1, eps=1e-300)
    return XCosGrid(
        cosine=cosine.float(),
        attention=weights.float(),
        score=(weights * cosine).sum((1, 2)).float(),
        flat_cosine=flat.float(),
        rule=attention,
    )


def join_part_masks(
    masks: torch.Tensor | np.ndarray,
    part_names: Sequence[str],
    groups: dict[str, tuple[str, ...]] | None = None,
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Fine part masks (..., P, S, S) joined into breakdown parts (..., G, S, S) (union of each group's
    fine parts), keeping the groups that have at least one of their fine parts in ``part_names``."""
    masks = torch.as_tensor(np.asarray(masks) if isinstance(masks, np.ndarray) else masks).bool()
    names = tuple(part_names)
    chosen = {
        g: [names.index(p) for p in parts if p in names] for g, parts in (groups or PART_GROUPS).items()
    }
    chosen = {g: ids for g, ids in chosen.items() if ids}
    if not chosen:
        raise ValueError(f"no breakdown part joins any of the parts {names}; pass groups naming them")
    joined = torch.stack([masks[..., ids, :, :].any(-3) for ids in chosen.values()], dim=-3)
    return joined, tuple(chosen)


def _cell_shares(masks: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """(G, S, S) masks -> (G, H, W) the share of each target cell each part covers, parts that overlap in a
    cell scaled down so the shares of a cell sum to at most 1."""
    shares = F.adaptive_avg_pool2d(masks.float()[None], cells)[0]
    total = shares.sum(0, keepdim=True)
    return torch.where(total > 1, shares / total.clamp_min(1e-12), shares)


def xcos_part_breakdown(
    grid: XCosGrid,
    part_names: Sequence[str],
    masks_a: torch.Tensor | np.ndarray,
    masks_b: torch.Tensor | np.ndarray | None = None,
    groups: dict[str, tuple[str, ...]] | None = None,
    index: int = 0,
    overall: float | None = None,
) -> AdditiveBreakdown:
    """The xCos score of pair ``index`` as a sum over parts: the grid's contributions pooled by part masks.

    Each cell's share of a part is the fraction of its pixels inside the part's mask (the mean of the
    two images' fractions when both are given; parts that overlap in a cell are scaled to share it).
    Part g contributes ``sum_p share_g(p) w_p cos_p``; ``rest`` is what the cells' uncovered shares
    contribute, so ``sum(parts) + rest = score`` exactly. ``weights[g]`` is the attention the part
    holds, so ``parts[g] / weights[g]`` is its attention-weighted mean local cosine.

    Args:
        grid: from ``xcos_grid``. part_names: the names of the masks' parts.
        masks_a, masks_b: (P, S, S) bool fine part masks of the two images (FaceParts masks, or
            ``landmark_region_masks``); ``masks_b`` may be left out.
        groups: breakdown parts joining fine parts (default ``PART_GROUPS``). index: which pair of the grid.
        overall: the pair's embedding cosine, kept beside the score.

    Returns:
        ``AdditiveBreakdown`` with ``method="xcos"`` and ``total`` the xCos score.
    """
    cells = tuple(grid.cosine.shape[-2:])
    joined_a, names = join_part_masks(masks_a, part_names, groups)
    shares = _cell_shares(joined_a, cells).double()
    if masks_b is not None:
        joined_b, _ = join_part_masks(masks_b, part_names, groups)
        shares = (shares + _cell_shares(joined_b, cells).double()) / 2
    weight = grid.attention[index].double()
    contribution = weight * grid.cosine[index].double()
    parts = (shares * contribution).sum((1, 2))
    rest = ((1 - shares.sum(0)) * contribution).sum()
    return AdditiveBreakdown(
        total=float(contribution.sum()),
        parts={g: float(v) for g, v in zip(names, parts, strict=True)},
        rest=float(rest),
        method="xcos",
        terms={"uncovered cells": float(rest)},
        overall=overall,
        weights={g: float(v) for g, v in zip(names, (shares * weight).sum((1, 2)), strict=True)},
    )


# --------------------------------------------------------------------------------- region breakdown
def landmark_region_masks(
    landmarks: np.ndarray | torch.Tensor, image_size: int | tuple[int, int]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Part regions drawn from landmarks, for the region breakdown on data without part masks.

    68 iBUG points: ``ecl.data.landmark_masks.landmark_part_masks`` (eye and mouth polygons, nose hull,
    brow lines). 5 standard points (left eye, right eye, nose, left and right mouth corner, as
    FaceParts, CelebA and LFW's detectors give them): a disc of radius r = 0.2 x the distance between
    the eyes around each eye and the nose tip, and the mouth as a band of width 2r between the corners
    with round ends. Coarse stand-ins for annotated masks; a region with a missing (NaN) point is empty.

    Returns:
        ``(bool (P, S_h, S_w) masks, part names)``.
    """
    from PIL import Image, ImageDraw

    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape == (68, 2):
        return landmark_part_masks(points, image_size), LANDMARK_PART_NAMES
    if points.shape != (5, 2):
        raise ValueError(f"landmark_region_masks needs 5 or 68 (x, y) points; got shape {points.shape}")
    image_h, image_w = (image_size, image_size) if np.isscalar(image_size) else image_size
    distance = float(np.linalg.norm(points[1] - points[0]))
    r = 0.2 * distance if np.isfinite(distance) and distance > 0 else image_w / 20
    masks = np.zeros((len(FIVE_POINT_PART_NAMES), image_h, image_w), dtype=bool)
    shapes = {
        "left_eye": [points[0]],
        "right_eye": [points[1]],
        "nose": [points[2]],
        "mouth": [points[3], points[4]],
    }
    for index, name in enumerate(FIVE_POINT_PART_NAMES):
        pts = shapes[name]
        if not np.isfinite(np.asarray(pts)).all():
            continue
        canvas = Image.new("1", (image_w, image_h), 0)
        draw = ImageDraw.Draw(canvas)
        for x, y in pts:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
        if len(pts) == 2:
            draw.line([tuple(pts[0]), tuple(pts[1])], fill=1, width=max(1, int(round(2 * r))))
        masks[index] = np.asarray(canvas, dtype=bool)
    return masks, FIVE_POINT_PART_NAMES


def region_similarity(
    activations_a: torch.Tensor,
    activations_b: torch.Tensor,
    masks_a: torch.Tensor | np.ndarray,
    masks_b: torch.Tensor | np.ndarray,
) -> torch.Tensor:
    """The landmark-region breakdown: per region, the cosine of the features pooled inside it.

    The descriptor of region g is the sum over target cells of (the share of the cell inside the
    region) x (the cell's C-channel feature vector): all channels, pooled where the region lies, with
    no part channels needed (the region comes from landmarks or masks). NaN when the region is empty
    in either image; 0 when it covers only cells without features.

    Args:
        activations_a, activations_b: (B, C, H, W) target activations.
        masks_a, masks_b: (B, G, S, S) bool region masks of each image (``join_part_masks`` joins fine
            parts into breakdown parts).

    Returns:
        (B, G) float32 similarities.
    """
    cells = activations_a.shape[-2:]
    out = []
    for activations, masks in ((activations_a, masks_a), (activations_b, masks_b)):
        masks = torch.as_tensor(np.asarray(masks) if isinstance(masks, np.ndarray) else masks)
        masks = masks.to(activations.device).float()
        shares = F.adaptive_avg_pool2d(masks, cells)
        descriptor = torch.einsum("bghw,bchw->bgc", shares, activations.float().clamp_min(0))
        out.append((descriptor, masks.flatten(2).any(-1)))
    (desc_a, found_a), (desc_b, found_b) = out
    cosine = F.cosine_similarity(desc_a, desc_b, dim=-1, eps=1e-12)
    return torch.where(found_a & found_b, cosine, torch.full_like(cosine, float("nan")))


def region_breakdown(
    model: nn.Module,
    image_a: Any,
    image_b: Any,
    landmarks_a: np.ndarray | torch.Tensor,
    landmarks_b: np.ndarray | torch.Tensor,
    groups: dict[str, tuple[str, ...]] | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float | None]:
    """The landmark-region breakdown of one pair from its images and landmarks (5 or 68 points each).

    Regions from ``landmark_region_masks``, joined into breakdown parts (``PART_GROUPS`` by default:
    eyes, nose, mouth, and brows from 68 points), then ``region_similarity`` on the target activations.

    Returns:
        breakdown part -> cosine similarity (None where a region is empty in either image).
    """
    a, b = as_pair(image_a, image_b)
    size = tuple(a.shape[-2:])
    (masks_a, names), (masks_b, names_b) = (
        landmark_region_masks(p, size) for p in (landmarks_a, landmarks_b)
    )
    if names != names_b:
        raise ValueError("landmarks_a and landmarks_b must have the same number of points (5 or 68)")
    joined_a, parts = join_part_masks(masks_a, names, groups)
    joined_b, _ = join_part_masks(masks_b, names, groups)
    device = prepare_model(model, device)
    with eval_mode(model), torch.no_grad():
        activations = split_output(model(torch.cat([a, b]).to(device)))[1]
    if activations is None or activations.ndim != 4:
        raise ValueError("the model must return (embeddings, activations) with activations (B, C, H, W)")
    similarity = region_similarity(activations[:1], activations[1:], joined_a[None], joined_b[None])[0]
    return {
        g: (float(v) if np.isfinite(float(v)) else None) for g, v in zip(parts, similarity.cpu(), strict=True)
    }


# ------------------------------------------------------------------------------------------ occlusion
@dataclass
class OcclusionMap:
    """Occlusion sensitivity of a pair (see ``occlusion_map``).

    Attributes:
        drop: (n_y, n_x) similarity drop when each window is occluded (positive: it supported the match).
        pixel: (S, S) the mean drop of the windows that cover each pixel.
        similarity: the pair's embedding cosine. patch, stride: window size and step in pixels.
        side: ``"a"``, ``"b"`` or ``"both"``. baseline: the fill.
    """

    drop: np.ndarray
    pixel: np.ndarray
    similarity: float
    patch: int
    stride: int
    side: str
    baseline: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "similarity": json_float(self.similarity),
            "patch": self.patch,
            "stride": self.stride,
            "side": self.side,
            "baseline": self.baseline,
            "drop": np.round(self.drop, 6).tolist(),
        }


def _window_starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)  # the last window touches the border, so every pixel is covered
    return starts


def occlusion_map(
    model: nn.Module,
    image_a: Any,
    image_b: Any,
    patch: int | None = None,
    stride: int | None = None,
    side: str = "a",
    baseline: str | torch.Tensor = "mean",
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> OcclusionMap:
    """Occlusion sensitivity: slide a square patch over a face and record the drop in pair similarity.

    The drop of a window is ``cos(a, b) - cos(a', b)`` where a' is a with the window replaced by the
    baseline (``baseline_image``: by default each colour's mean over the face). Defaults: patch = S / 8
    (14 px at 112, about the width of an eye), stride = patch / 2, so neighbouring windows overlap by
    half and every pixel is covered (the last window of a row or column is moved to touch the border).

    ``side="both"`` occludes the same window in both faces, filled with the same values (the mean of the
    two faces' baselines): for two aligned faces, such as a face and its chimera, a window that covers
    everything they differ in makes them equal, so the most negative drops show where they differ.

    Args:
        model: the face model. image_a, image_b: (3, S, S) float in [0, 1].
        patch, stride: in pixels. side: which face to occlude. baseline: the fill (``baseline_image``).
        batch_size: images per pass. device: default the model's device.

    Returns:
        ``OcclusionMap``.
    """
    if side not in ("a", "b", "both"):
        raise ValueError(f"side must be 'a', 'b' or 'both'; got {side!r}")
    a, b = as_pair(image_a, image_b)
    size = a.shape[-1]
    patch = int(patch or max(1, round(size / 8)))
    stride = int(stride or max(1, patch // 2))
    if not 1 <= patch <= size or stride < 1:
        raise ValueError(f"need 1 <= patch <= {size} and stride >= 1; got patch {patch}, stride {stride}")
    starts = _window_starts(size, patch, stride)
    windows = [(y, x) for y in starts for x in starts]
    fill_a, fill_b = baseline_image(a[0], baseline), baseline_image(b[0], baseline)
    if side == "both":
        fill_a = fill_b = (fill_a + fill_b) / 2
    masks = torch.zeros(len(windows), 1, size, size, dtype=torch.bool)
    for w, (y, x) in enumerate(windows):
        masks[w, :, y : y + patch, x : x + patch] = True
    prepare_model(model, device)
    with eval_mode(model):
        base = embed(model, torch.cat([a, b]))
        occluded_a = (
            torch.where(masks, fill_a, a) if side in ("a", "both") else a.expand(len(windows), -1, -1, -1)
        )
        occluded_b = (
            torch.where(masks, fill_b, b) if side in ("b", "both") else b.expand(len(windows), -1, -1, -1)
        )
        ea = embed(model, occluded_a, batch_size) if side != "b" else base[:1].expand(len(windows), -1)
        eb = embed(model, occluded_b, batch_size) if side != "a" else base[1:].expand(len(windows), -1)
    similarity = float((base[0] * base[1]).sum())
    drops = similarity - (ea * eb).sum(1).double().numpy()
    total = np.zeros((size, size))
    count = np.zeros((size, size))
    for drop, (y, x) in zip(drops, windows, strict=True):
        total[y : y + patch, x : x + patch] += drop
        count[y : y + patch, x : x + patch] += 1
    return OcclusionMap(
        drop=drops.reshape(len(starts), len(starts)),
        pixel=total / np.maximum(count, 1),
        similarity=similarity,
        patch=patch,
        stride=stride,
        side=side,
        baseline=baseline if isinstance(baseline, str) else "image",
    )
