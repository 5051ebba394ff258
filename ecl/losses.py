"""ECLoss, its baselines (ICNN filter loss, SAD) and the identity heads (softmax, CosFace, ArcFace).

The formulation is the project's reconstruction, written down in ``docs/METHOD.md`` (sections 2-5):

* :func:`activation_template` is ICNN's template ``T_mu[p] = max(1 - beta * ||p - mu||_1 / n, -1)``.
* :func:`ecloss` is ``L_match + gamma * L_div``: one minus the cosine between every active map and the
  positive part of its own template, plus (optionally) the overlap of the active maps of one image.
* :func:`icnn_filter_loss` is ICNN's ``-MI(X; T)``, estimated over the batch.
* :func:`sad_loss` is the diversity term alone (after Yin et al.'s spatial activation diversity).
* :class:`MarginHead` is insightface's combined margin ``cos(m1 * theta + m2) - m3``.

Every function takes the target layer's activations ``(B, C, H, W)`` (after ReLU), is vectorised over
images and channels, and computes in float32 (float64 stays float64) with autocast switched off
inside, so it can be called from fp16/bf16 autocast regions without overflow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_PEAK",
    "DEFAULT_WEIGHT",
    "ECLoss",
    "MarginHead",
    "TemplateMask",
    "activation_template",
    "diversity_loss",
    "consistency_loss",
    "ecloss",
    "find_peaks",
    "icnn_filter_loss",
    "make_head",
    "peak_pull",
    "positive_template",
    "sad_loss",
]

PEAK_MODES = ("argmax", "centroid", "subcell", "anchored")

#: ECLoss's default setting, chosen on the FaceParts validation split by the rule of METHOD section 9 (the
#: book's search chapter): a part-sized template (beta = 8: 14 px from the peak at 112 px), each channel's
#: usual place on the face as its peak (``anchored``), no diversity or consistency term, on a 28 x 28 map
#: (``ecl.models`` taps the map closest to 28 x 28 by default). The reconstruction's original setting was
#: beta = 4 with argmax peaks on a 14 x 14 map.
DEFAULT_BETA = 8.0
DEFAULT_PEAK = "anchored"
#: The weight lambda the default setting was chosen with: train with ``L_id + DEFAULT_WEIGHT * ecloss(A)``.
DEFAULT_WEIGHT = 10.0
HEAD_KINDS = ("arcface", "cosface", "softmax")


# --------------------------------------------------------------------------------------- helpers
def _check_activations(activations: Tensor, name: str = "activations") -> None:
    if not isinstance(activations, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(activations).__name__}"
        )
    if activations.dim() != 4:
        raise ValueError(
            f"{name} must have shape (B, C, H, W) (the target layer's output), "
            f"got {tuple(activations.shape)}; "
            "add a batch dimension with .unsqueeze(0) for a single image"
        )
    if not activations.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {activations.dtype}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Half precision overflows in the squared norms and loses the cosine's precision: compute in
    # float32, but keep float64 (gradcheck) as it is.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _no_autocast(device: torch.device):
    # Autocast would run the matmuls below in fp16/bf16 again; switch it off for the loss.
    device_type = device.type if device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


# ------------------------------------------------------------------------------------ templates
def activation_template(
    peaks: Tensor,
    size: tuple[int, int],
    beta: float = 4.0,
    positive: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """ICNN's activation template for every peak (METHOD section 3).

    ``T_mu[i, j] = max(1 - beta * (|i - mu_i| + |j - mu_j|) / n, -1)`` with ``n = max(H, W)``:
    1 at the peak, falling linearly with the L1 distance, floored at -1.

    Args:
        peaks: Integer peak cells ``(mu_i, mu_j)`` (row, column), 0-based, any leading shape.
        size: ``(H, W)`` of the maps.
        beta: Slope of the pyramid; ``T_mu^+`` is zero at L1 distance ``>= n / beta``.
        positive: Return ``T_mu^+ = max(T_mu, 0)`` instead of the signed template.
        dtype: Floating dtype of the result.

    Returns:
        The templates, on ``peaks.device``.

    Shape:
        peaks ``(..., 2)`` -> ``(..., H, W)``.
    """
    if peaks.shape[-1:] != (2,):
        raise ValueError(f"peaks must have shape (..., 2) holding (row, column), got {tuple(peaks.shape)}")
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be (H, W) with H, W >= 1, got {size}")
    n = max(height, width)
    rows = torch.arange(height, device=peaks.device, dtype=dtype)
    cols = torch.arange(width, device=peaks.device, dtype=dtype)
    mu = peaks.to(dtype)
    # |i - mu_i| is (..., H, 1) and |j - mu_j| is (..., 1, W); their broadcast sum is the L1 distance.
    dist = (rows - mu[..., 0:1]).abs().unsqueeze(-1) + (cols - mu[..., 1:2]).abs().unsqueeze(-2)
    template = (1.0 - beta * dist / n).clamp_min(0.0 if positive else -1.0)
    return template


def positive_template(
    peaks: Tensor, size: tuple[int, int], beta: float = 4.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``T_mu^+ = max(T_mu, 0)``, the diamond-shaped pyramid ECLoss matches (see
    :func:`activation_template`)."""
    return activation_template(peaks, size, beta=beta, positive=True, dtype=dtype)


@torch.no_grad()
def find_peaks(activations: Tensor, mode: str = "argmax") -> Tensor:
    """The peak of every map; no gradient flows through it (METHOD section 3).

    Args:
        activations: Target-layer maps (non-negative, i.e. after ReLU).
        mode: ``"argmax"``: the cell of the largest activation, the first one (row-major) on ties.
            ``"centroid"``: the activation-weighted mean position, rounded to the nearest cell
            (ICNN's released code); a map with no positive mass falls back to the argmax. Rounding a
            border-clipped blob's centroid moves it inward, so blobs drift towards the map's centre.
            ``"subcell"``: the argmax refined to a fractional position, along each axis the apex of the
            L1 cone through the argmax and its two neighbours (exact for the template's own shape, of
            any slope); a neighbour outside the map mirrors the other one. A template at any cell, the
            border included, is its own peak: the rule has no pull in any direction.
            ``"anchored"`` *(a choice of this project)*: the channel's usual place on the face. Each
            image's anchor is the centre of mass of all its channels' activation (where the face is);
            a channel's offset is the median, over the batch's images where it is active, of its
            ``subcell`` peak minus the anchor; its peak in every image is that image's anchor plus the
            offset. A channel that fires on the left eye in most images is asked for a blob on the left
            eye in all of them. The centroid rule pulls every channel to one shared place (offset 0);
            this one pulls each channel to its own. With one image it is the ``subcell`` peak.

    Returns:
        ``(row, column)`` per map: ``LongTensor`` for ``argmax`` and ``centroid``, floating point for
        ``subcell`` and ``anchored``.

    Shape:
        activations ``(B, C, H, W)`` -> ``(B, C, 2)``.
    """
    _check_activations(activations)
    if mode not in PEAK_MODES:
        raise ValueError(f"peak mode must be one of {PEAK_MODES}, got {mode!r}")
    _, _, height, width = activations.shape
    flat = activations.flatten(2)
    index = flat.argmax(dim=-1)  # first maximal value on ties (documented by torch.argmax)
    peaks = torch.stack((index // width, index % width), dim=-1)
    if mode == "centroid":
        return _centroid_peaks(flat.to(_compute_dtype(flat)).clamp_min(0).view(activations.shape), peaks)
    if mode == "subcell":
        return _subcell_peaks(flat.to(_compute_dtype(flat)).clamp_min(0), peaks, height, width)
    if mode == "anchored":
        return _anchored_peaks(flat.to(_compute_dtype(flat)).clamp_min(0), peaks, height, width)
    return peaks


def _anchored_peaks(flat: Tensor, argmax: Tensor, height: int, width: int) -> Tensor:
    """Each image's centre of activation plus each channel's median offset from it over the batch."""
    peaks = _subcell_peaks(flat, argmax, height, width)  # (B, C, 2)
    total = flat.sum(1).view(-1, height, width)  # (B, H, W): all channels together
    mass = total.sum((-2, -1))
    rows = torch.arange(height, device=flat.device, dtype=flat.dtype)
    cols = torch.arange(width, device=flat.device, dtype=flat.dtype)
    safe = mass.clamp_min(torch.finfo(flat.dtype).tiny)
    anchor = torch.stack(((total.sum(-1) * rows).sum(-1) / safe, (total.sum(-2) * cols).sum(-1) / safe), -1)
    middle = torch.tensor([(height - 1) / 2, (width - 1) / 2], device=flat.device, dtype=flat.dtype)
    anchor = torch.where((mass > 0).unsqueeze(-1), anchor, middle)  # (B, 2)
    active = flat.amax(-1) > 0  # (B, C)
    offsets = torch.where(active.unsqueeze(-1), peaks - anchor.unsqueeze(1), torch.nan)
    offset = torch.nanmedian(offsets, dim=0).values.nan_to_num(0.0)  # (C, 2)
    anchored = anchor.unsqueeze(1) + offset.unsqueeze(0)
    limit = torch.tensor([height - 1, width - 1], device=flat.device, dtype=flat.dtype)
    return torch.minimum(anchored.clamp_min(0), limit)


def peak_pull(size: tuple[int, int] = (14, 14), beta: float = 4.0, mode: str = "centroid") -> Tensor:
    """Where a peak rule puts the peak of a perfect template: the pull of the rule at every cell.

    For every cell ``mu`` of an ``(H, W)`` map, the positive template ``T+_mu`` itself is given to
    :func:`find_peaks`; the result minus ``mu`` is how far the rule moves a blob that already is a
    perfect pyramid there. A rule with no pull gives zeros everywhere (``argmax``, ``subcell``); the
    centroid moves border blobs inward (a border pyramid is clipped on one side).

    Returns:
        ``(H, W, 2)`` float: the ``(row, column)`` displacement of each cell's template peak.
    """
    height, width = size
    grid = torch.stack(
        torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij"), dim=-1
    ).reshape(1, height * width, 2)
    templates = positive_template(grid, size, beta=beta)  # (1, HW, H, W): one map per cell
    found = find_peaks(templates, mode=mode).to(torch.float32)
    return (found - grid.to(torch.float32)).reshape(height, width, 2)


def _centroid_peaks(weights: Tensor, argmax: Tensor) -> Tensor:
    height, width = weights.shape[-2:]
    mass = weights.sum(dim=(-2, -1))
    rows = torch.arange(height, device=weights.device, dtype=weights.dtype)
    cols = torch.arange(width, device=weights.device, dtype=weights.dtype)
    safe = mass.clamp_min(torch.finfo(weights.dtype).tiny)
    mean_i = (weights.sum(dim=-1) * rows).sum(dim=-1) / safe
    mean_j = (weights.sum(dim=-2) * cols).sum(dim=-1) / safe
    centroid = torch.stack((mean_i, mean_j), dim=-1).round().long()
    centroid[..., 0].clamp_(0, height - 1)
    centroid[..., 1].clamp_(0, width - 1)
    return torch.where((mass > 0).unsqueeze(-1), centroid, argmax)


def _subcell_peaks(flat: Tensor, argmax: Tensor, height: int, width: int) -> Tensor:
    """``argmax`` plus, per axis, the offset in [-0.5, 0.5] of the L1 cone through it and its neighbours."""
    i, j = argmax[..., 0], argmax[..., 1]

    def value(row: Tensor, col: Tensor) -> Tensor:
        return flat.gather(-1, (row * width + col).unsqueeze(-1)).squeeze(-1)

    def offset(before: Tensor, centre: Tensor, after: Tensor, has_before: Tensor, has_after: Tensor):
        before = torch.where(has_before, before, after)
        after = torch.where(has_after, after, before)
        rise = centre - torch.minimum(before, after)  # the cone's slope per cell
        step = 0.5 * (after - before) / rise.clamp_min(torch.finfo(flat.dtype).tiny)
        return torch.where(rise > 0, step, torch.zeros_like(step)).clamp(-0.5, 0.5)

    centre = value(i, j)
    up, down = value((i - 1).clamp_min(0), j), value((i + 1).clamp_max(height - 1), j)
    left, right = value(i, (j - 1).clamp_min(0)), value(i, (j + 1).clamp_max(width - 1))
    d_i = offset(up, centre, down, i > 0, i < height - 1)
    d_j = offset(left, centre, right, j > 0, j < width - 1)
    return torch.stack((i.to(flat.dtype) + d_i, j.to(flat.dtype) + d_j), dim=-1)


# --------------------------------------------------------------------------------------- ECLoss
def _match_terms(activations: Tensor, beta: float, peak: str, eps: float) -> tuple[Tensor, Tensor]:
    """Per-map ``1 - cos(A_bc, T+_bc)`` and the active mask; ``activations`` already float, >= 0."""
    _, _, height, width = activations.shape
    peaks = find_peaks(activations.detach(), mode=peak)
    template = positive_template(peaks, (height, width), beta=beta, dtype=activations.dtype)
    flat = activations.flatten(2)
    active = flat.detach().amax(dim=-1) > 0
    dot = (activations * template).sum(dim=(-2, -1))
    # Dead maps are all zeros; the norm's gradient at zero is 0/0, so feed them a dummy 1 (masked out).
    sq = flat.pow(2).sum(dim=-1)
    norm_a = torch.where(active, sq, torch.ones_like(sq)).sqrt()
    norm_t = template.flatten(2).pow(2).sum(dim=-1).sqrt()  # >= 1: the peak cell is 1
    terms = 1.0 - dot / (norm_a * norm_t + eps)
    return terms, active


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    # Sum over an all-False mask is an exact 0 that still carries a (zero) gradient.
    count = mask.sum().clamp_min(1)
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count


def _diversity(activations: Tensor) -> Tensor:
    """METHOD section 4's ``L_div`` on float, non-negative activations."""
    flat = activations.flatten(2)  # (B, C, HW)
    active = flat.detach().amax(dim=-1) > 0  # (B, C)
    sq = flat.pow(2).sum(dim=-1, keepdim=True)
    norm = torch.where(active.unsqueeze(-1), sq, torch.ones_like(sq)).sqrt()
    unit = flat / norm * active.unsqueeze(-1)  # dead maps are exactly zero rows
    gram = torch.bmm(unit, unit.transpose(1, 2))  # (B, C, C)
    off_diagonal = ~torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    overlap = torch.where(off_diagonal, gram, torch.zeros_like(gram)).pow(2).sum(dim=(-2, -1))
    k = active.sum(dim=-1)
    pairs = k * (k - 1)  # ordered pairs c != c', both active
    has_pairs = pairs > 0
    per_image = overlap / pairs.clamp_min(1).to(overlap.dtype)
    return _masked_mean(per_image, has_pairs)


def _consistency(activations: Tensor, active: Tensor) -> Tensor:
    """``L_cons`` on float, non-negative activations, given the active mask (B, C)."""
    b, c, h, w = activations.shape
    flat = activations.flatten(2)  # (B, C, HW)
    with torch.no_grad():
        # What the layer sees at each cell: the unit vector of all channels there.
        cells = F.normalize(flat, dim=1)  # (B, C_feature, HW)
        peaks = flat.argmax(dim=-1)  # (B, C)
        at_peak = cells.gather(2, peaks.unsqueeze(1).expand(b, c, c))  # (B, C_feature, C_channel)
        prototype = F.normalize((at_peak * active.unsqueeze(1).to(flat.dtype)).sum(0), dim=0)  # (C_feat, C)
        similarity = torch.einsum("bkp,kc->bcp", cells, prototype)  # (B, C_channel, HW)
    mass = flat.sum(-1, keepdim=True)
    share = flat / torch.where(active.unsqueeze(-1), mass, torch.ones_like(mass))
    terms = (share * (1.0 - similarity)).sum(-1)
    return _masked_mean(terms, active)


def consistency_loss(activations: Tensor) -> Tensor:
    """The part-consistency term ``L_cons`` *(a choice of this project, METHOD section 4)*.

    ``L_match`` makes each map one blob but lets a channel put it on a different part in every image.
    This term asks a channel to fire where the layer sees what it usually sees at its peak. Per channel
    ``c``, its *prototype* is the mean, over the batch's images where it is active, of the unit vector of
    all channels at its argmax cell; ``L_cons`` is the mean over active maps of
    ``sum_p w_bc(p) * (1 - cos(f_b(p), prototype_c))``, with ``w_bc = A_bc / sum A_bc`` the map's share
    of activation at cell ``p`` and ``f_b(p)`` the channel vector at that cell. The prototype and the
    cell vectors carry no gradient: the term moves where a channel fires, towards cells that look like
    its prototype, without pulling the features themselves together. It is in [0, 1] (activations are
    non-negative, so every cosine is), invariant to scaling a map, and costs ``O(B C^2 H W)``.

    Shape:
        activations ``(B, C, H, W)`` -> ``()``.
    """
    _check_activations(activations)
    with _no_autocast(activations.device):
        x = activations.to(_compute_dtype(activations)).clamp_min(0)
        return _consistency(x, x.detach().flatten(2).amax(-1) > 0)


def ecloss(
    activations: Tensor,
    beta: float = DEFAULT_BETA,
    gamma: float = 0.0,
    peak: str = DEFAULT_PEAK,
    eps: float = 1e-6,
    return_parts: bool = False,
    consistency: float = 0.0,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """ECLoss, ``L_match + gamma * L_div + consistency * L_cons`` (METHOD section 4).

    ``L_match`` is the mean, over active maps (``max A_bc > 0``), of
    ``1 - <A_bc, T+_bc> / (||A_bc|| * ||T+_bc|| + eps)``, with ``T+_bc`` the positive template at the
    map's own peak (no gradient through the peak). It is in [0, 1], invariant to scaling a map (up to
    ``eps / ||A_bc||``, which matters only for nearly dead maps), and 0 (up to the same eps) exactly
    when every active map is a scaled copy of its own pyramid. ``L_div`` is, per image, the
    mean squared cosine between distinct *active* maps, averaged over the images with at least two
    active maps (an image with fewer has no pair to compare). With no active map the loss is an exact 0
    that still back-propagates (zero gradients), so it never breaks a training step.

    Negative values are treated as 0 (the loss is defined on post-ReLU maps). Computation is in
    float32 (float64 input stays float64) with autocast switched off, so fp16/bf16 inputs are safe.
    The diversity term costs ``O(B C^2 H W)``; it is only computed when ``gamma > 0`` or
    ``return_parts`` is set (then without gradient).

    Args:
        activations: Target-layer maps.
        beta: Template slope (default 8, a part-sized template; ICNN's value is 4).
        gamma: Weight of the diversity term; 0 (the default) is the plain matching loss.
        peak: ``"argmax"``, ``"centroid"``, ``"subcell"`` or ``"anchored"``, see :func:`find_peaks`.
        eps: Keeps the cosine finite; also makes a scaled template score ``~eps / ||A||^2`` above 0.
        return_parts: Also return a dict of detached 0-dim float tensors: ``"match"`` (``L_match``),
            ``"div"`` (``L_div``), ``"active"`` (fraction of active maps, to watch for silenced
            channels) and, when ``consistency > 0``, ``"cons"`` (``L_cons``). They are tensors, not
            floats, so logging them does not force a device sync.
        consistency: Weight of the part-consistency term (:func:`consistency_loss`); 0 for none.

    Returns:
        The scalar loss in the computation dtype, or ``(loss, parts)`` when ``return_parts``.

    Shape:
        activations ``(B, C, H, W)`` -> ``()``.
    """
    _check_activations(activations)
    if peak not in PEAK_MODES:
        raise ValueError(f"peak must be one of {PEAK_MODES}, got {peak!r}")
    if gamma < 0 or consistency < 0:
        raise ValueError(f"gamma and consistency must be >= 0, got {gamma} and {consistency}")
    with _no_autocast(activations.device):
        x = activations.to(_compute_dtype(activations)).clamp_min(0)
        terms, active = _match_terms(x, beta=beta, peak=peak, eps=eps)
        match = _masked_mean(terms, active)
        loss = match
        div = cons = None
        if gamma > 0:
            div = _diversity(x)
            loss = loss + gamma * div
        if consistency > 0:
            cons = _consistency(x, active)
            loss = loss + consistency * cons
        if not return_parts:
            return loss
        if div is None:
            with torch.no_grad():
                div = _diversity(x)
        parts = {
            "match": match.detach(),
            "div": div.detach(),
            "active": active.to(x.dtype).mean().detach(),
        }
        if cons is not None:
            parts["cons"] = cons.detach()
        return loss, parts


class ECLoss(nn.Module):
    """Module form of :func:`ecloss`; it only holds the hyperparameters.

    Args:
        beta: Template slope.
        gamma: Weight of the diversity term.
        peak: ``"argmax"``, ``"centroid"``, ``"subcell"`` or ``"anchored"`` (see :func:`find_peaks`).
        eps: Denominator guard of the cosine.
        consistency: Weight of the part-consistency term (:func:`consistency_loss`).
    """

    def __init__(
        self,
        beta: float = DEFAULT_BETA,
        gamma: float = 0.0,
        peak: str = DEFAULT_PEAK,
        eps: float = 1e-6,
        consistency: float = 0.0,
    ) -> None:
        super().__init__()
        if peak not in PEAK_MODES:
            raise ValueError(f"peak must be one of {PEAK_MODES}, got {peak!r}")
        if gamma < 0 or consistency < 0:
            raise ValueError(f"gamma and consistency must be >= 0, got {gamma} and {consistency}")
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.peak = peak
        self.eps = float(eps)
        self.consistency = float(consistency)

    def forward(self, activations: Tensor, return_parts: bool = False):
        return ecloss(
            activations,
            self.beta,
            self.gamma,
            self.peak,
            self.eps,
            return_parts=return_parts,
            consistency=self.consistency,
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, gamma={self.gamma}, peak={self.peak!r}, eps={self.eps}, "
            f"consistency={self.consistency}"
        )


class TemplateMask(nn.Module):
    """ICNN's forward mask (METHOD section 4, a choice): ``A * max(T_mu, 0)`` with ``mu`` at each map's peak.

    Place it right after the target layer: identity information can then only flow through each
    channel's blob. The peak is found without gradient (straight-through for ``mu``); the gradient
    flows to ``A`` through the mask. Applied in training and evaluation alike, as in ICNN.

    Args:
        beta: Template slope.
        peak: ``"argmax"``, ``"centroid"``, ``"subcell"`` or ``"anchored"`` (see :func:`find_peaks`).

    Shape:
        ``(B, C, H, W)`` -> ``(B, C, H, W)``, same dtype.
    """

    def __init__(self, beta: float = 4.0, peak: str = "argmax") -> None:
        super().__init__()
        if peak not in PEAK_MODES:
            raise ValueError(f"peak must be one of {PEAK_MODES}, got {peak!r}")
        self.beta = float(beta)
        self.peak = peak

    def forward(self, x: Tensor) -> Tensor:
        _check_activations(x, "input")
        peaks = find_peaks(x.detach().clamp_min(0), mode=self.peak)
        mask = positive_template(peaks, x.shape[-2:], beta=self.beta, dtype=x.dtype)
        return x * mask

    def extra_repr(self) -> str:
        return f"beta={self.beta}, peak={self.peak!r}"


# ------------------------------------------------------------------------------------ baselines
def sad_loss(activations: Tensor) -> Tensor:
    """SAD baseline: the diversity term of METHOD section 4 alone (``L_div``; train with
    ``L_id + gamma * L_div``).

    Per image, the mean squared cosine between the maps of distinct active channels, averaged over the
    images with at least two active maps; 0 (differentiable) when there is none.

    Shape:
        activations ``(B, C, H, W)`` -> ``()``.
    """
    _check_activations(activations)
    with _no_autocast(activations.device):
        return _diversity(activations.to(_compute_dtype(activations)).clamp_min(0))


diversity_loss = sad_loss


def icnn_filter_loss(
    activations: Tensor,
    tau: float | None = None,
    alpha: float | None = None,
    beta: float = 4.0,
) -> Tensor:
    """ICNN's filter loss ``-MI(X; T)`` (Zhang et al., CVPR 2018), estimated over the batch (METHOD
    section 5).

    For each channel, the batch's maps ``X = {x_b}`` are scored against ``H*W`` positive templates
    ``tau * T_mu`` (one per cell, the signed templates of :func:`activation_template`) and one negative
    template ``T^- = -tau`` (constant). With ``p(x | T) = exp(tr(x . T)) / Z_T`` and
    ``Z_T = sum_{x in X} exp(tr(x . T))``:

        p(x) = sum_T p(T) p(x | T),
        MI(X; T) = sum_T p(T) sum_x p(x | T) log(p(x | T) / p(x)).

    All of it is done in log space (``log p(x | T) = s_xT - logsumexp_x s_xT`` with
    ``s_xT = tr(x . T)``), so large activations do not overflow. ICNN defines ``Z_T`` and ``p(x)`` over
    the whole training set and updates them with approximations; here the batch stands in for the set
    and autograd gives the exact gradient of this batch estimate (an approximation of the dataset-level
    MI). The result is the mean over channels of ``-MI`` (so ``lambda`` does not scale with ``C``).

    Priors: ``p(T_mu) = alpha / (H * W)`` and ``p(T^-) = 1 - alpha``, which is METHOD's
    ``alpha / n^2`` on square maps and stays a distribution on non-square ones.

    Args:
        activations: Target-layer maps (after ReLU).
        tau: Template scale; default ``0.5 / n^2`` with ``n = max(H, W)``.
        alpha: Prior mass of the positive templates; default ``n^2 / (1 + n^2)``.
        beta: Template slope.

    Returns:
        Scalar ``-MI`` (<= 0; lower is better).

    Shape:
        activations ``(B, C, H, W)`` -> ``()``.
    """
    _check_activations(activations)
    batch, channels, height, width = activations.shape
    n = max(height, width)
    tau = 0.5 / n**2 if tau is None else float(tau)
    alpha = n**2 / (1.0 + n**2) if alpha is None else float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    with _no_autocast(activations.device):
        x = activations.to(_compute_dtype(activations)).clamp_min(0).flatten(2)  # (B, C, P)
        cells = height * width
        grid = torch.stack(
            torch.meshgrid(
                torch.arange(height, device=x.device), torch.arange(width, device=x.device), indexing="ij"
            ),
            dim=-1,
        ).reshape(cells, 2)
        templates = activation_template(grid, (height, width), beta=beta, dtype=x.dtype).reshape(cells, cells)
        # Scores tr(x . T): (B, C, P) for the P positive templates, and one for T^- = -tau.
        positive = tau * (x @ templates.T)
        negative = -tau * x.sum(dim=-1, keepdim=True)
        scores = torch.cat((positive, negative), dim=-1)  # (B, C, P + 1)
        log_p_x_given_t = scores - torch.logsumexp(scores, dim=0, keepdim=True)  # normalised over the batch
        log_prior = torch.cat(
            (
                torch.full((cells,), math.log(alpha / cells), dtype=x.dtype, device=x.device),
                torch.full((1,), math.log1p(-alpha), dtype=x.dtype, device=x.device),
            )
        )
        log_p_x = torch.logsumexp(log_p_x_given_t + log_prior, dim=-1, keepdim=True)  # (B, C, 1)
        # sum_T p(T) sum_x p(x|T) (log p(x|T) - log p(x)), per channel.
        weights = (log_prior + log_p_x_given_t).exp()
        mutual_information = (weights * (log_p_x_given_t - log_p_x)).sum(dim=(0, 2))  # (C,)
        return -mutual_information.mean()


# ----------------------------------------------------------------------------------- margin heads
class MarginHead(nn.Module):
    """Combined-margin classifier (insightface): logits ``s * cos(m1 * theta + m2) - s * m3`` for the
    true class.

    Weights and embeddings are L2-normalised, so every logit is ``s * cos(theta_k)``; only the target
    class gets the margin. ``(m1, m2, m3) = (1, 0, 0)`` is a normalised softmax (NormFace), ``(1, 0.5, 0)``
    ArcFace, ``(1, 0, 0.35)`` CosFace, ``m1 > 1`` SphereFace-style. Cross-entropy is applied separately.

    Corner cases (documented because they change the logits):

    * ``cos(m1 * theta + m2)`` stops decreasing once ``m1 * theta + m2 > pi``; there a larger angle
      would *raise* the target logit. Past that threshold the target becomes insightface's linear
      fallback ``cos(theta) - m3 - m2 * sin(m2)`` (``m2 * sin(m2)`` is zero when ``m2 == 0``), which
      keeps the logit decreasing and still below the margin-free one.
    * ``easy_margin=True`` applies the margin only where ``cos(theta) > 0`` and leaves other targets
      as plain ``cos(theta)`` (insightface's option; gentler at the start of training).
    * ``theta`` comes from ``cos`` clamped to ``[-1 + 1e-7, 1 - 1e-7]`` so the gradient of ``acos``
      / ``sqrt(1 - cos^2)`` stays finite for an embedding exactly on a class centre.
    * Labels equal to ``-1`` get no margin (and can be dropped by cross-entropy's ``ignore_index=-1``).

    The logits are computed in float32 with autocast switched off (margins are tiny angles).

    Args:
        embedding_dim: D of the embeddings.
        num_classes: Number of identities.
        s: Scale of the cosine logits.
        m1: Multiplicative angular margin (SphereFace).
        m2: Additive angular margin (ArcFace).
        m3: Additive cosine margin (CosFace).
        easy_margin: See above.

    Shape:
        embeddings ``(B, D)``, labels ``(B,)`` int64 -> logits ``(B, num_classes)`` float32.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or num_classes < 1:
            raise ValueError(
                f"embedding_dim and num_classes must be >= 1, got {embedding_dim}, {num_classes}"
            )
        if s <= 0:
            raise ValueError(f"scale s must be > 0, got {s}")
        if m1 < 1 or m2 < 0 or m3 < 0:
            raise ValueError(f"margins must satisfy m1 >= 1, m2 >= 0, m3 >= 0, got m1={m1}, m2={m2}, m3={m3}")
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.s = float(s)
        self.m1 = float(m1)
        self.m2 = float(m2)
        self.m3 = float(m3)
        self.easy_margin = bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """``cos(theta)`` between every embedding and every class weight, ``(B, num_classes)`` float32."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (B, {self.embedding_dim}), got {tuple(embeddings.shape)}"
            )
        with _no_autocast(embeddings.device):
            dtype = _compute_dtype(embeddings)
            return F.linear(
                F.normalize(embeddings.to(dtype), dim=1), F.normalize(self.weight.to(dtype), dim=1)
            )

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings)
        if labels.shape != (cos.shape[0],):
            raise ValueError(f"labels must have shape ({cos.shape[0]},), got {tuple(labels.shape)}")
        with _no_autocast(cos.device):
            labels = labels.long()
            has_label = labels >= 0
            index = labels.clamp_min(0).unsqueeze(1)
            target = cos.gather(1, index).squeeze(1)
            margined = self._margin(target)
            target = torch.where(has_label, margined, target)
            logits = cos.scatter(1, index, target.unsqueeze(1))
            return logits * self.s

    def _margin(self, cos: Tensor) -> Tensor:
        m1, m2, m3 = self.m1, self.m2, self.m3
        if m1 == 1.0 and m2 == 0.0:
            return cos - m3  # softmax / CosFace: no angle needed
        cos = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        if m1 == 1.0:
            # cos(theta + m2) without acos (insightface's form; exact and cheaper).
            sin = (1.0 - cos * cos).sqrt()
            margined = cos * math.cos(m2) - sin * math.sin(m2)
            over = cos < math.cos(math.pi - m2)  # theta + m2 > pi
        else:
            theta = torch.acos(cos)
            margined = torch.cos(m1 * theta + m2)
            over = theta > (math.pi - m2) / m1
        margined = margined - m3
        fallback = cos - m3 - m2 * math.sin(m2)
        if self.easy_margin:
            return torch.where(cos > 0, margined, cos)
        return torch.where(over, fallback, margined)

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, s={self.s}, "
            f"m1={self.m1}, m2={self.m2}, m3={self.m3}, easy_margin={self.easy_margin}"
        )


_DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35, "softmax": 0.0}


def make_head(
    kind: str = "arcface",
    embedding_dim: int = 512,
    num_classes: int = 2,
    s: float = 64.0,
    margin: float | None = None,
    easy_margin: bool = False,
) -> MarginHead:
    """Identity head by name.

    Args:
        kind: ``"arcface"`` (additive angle ``m2 = margin``, default 0.5), ``"cosface"`` (additive cosine
            ``m3 = margin``, default 0.35) or ``"softmax"`` (normalised softmax: scaled cosine logits, no
            margin; ``margin`` must be None or 0).
        embedding_dim: D of the embeddings.
        num_classes: Number of identities.
        s: Logit scale.
        margin: The kind's margin; None takes the default above.
        easy_margin: See :class:`MarginHead`.

    Returns:
        A :class:`MarginHead`.
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")
    margin = _DEFAULT_MARGINS[kind] if margin is None else float(margin)
    if kind == "softmax" and margin != 0.0:
        raise ValueError(f"the softmax head has no margin; got margin={margin} (use 'arcface' or 'cosface')")
    m2 = margin if kind == "arcface" else 0.0
    m3 = margin if kind == "cosface" else 0.0
    return MarginHead(embedding_dim, num_classes, s=s, m1=1.0, m2=m2, m3=m3, easy_margin=easy_margin)
