"""How good is an explanation of a face pair, measured as the field measures it.

- :func:`perturbation_curve` (and :func:`deletion_insertion`): the deletion and insertion metrics of
  RISE (Petsiuk et al., BMVC 2018) applied to the pair's cosine similarity, as face-verification
  saliency work does (e.g. CorrRISE): curves for any importance map over one face, their area under
  the curve, and the same for random orders as the reference; :func:`pair_method_curves` averages
  them over pairs for every method.
- :func:`part_swap_scores`: the part-swap game scored as the inpainting game of Williford et al.
  (ECCV 2020): the nonmate rate (does pasting the explained region of the chimera into the original
  make the network take it for the chimera's identity?) and the IoU of the explained region with the
  swapped part's mask, for the part breakdown and for every baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ecl.attribution import PartAssignment, forward_pair, part_similarity
from ecl.pair_explain import MAP_METHODS, pair_map
from ecl.pair_methods import (
    as_pair,
    baseline_image,
    embed,
    occlusion_map,
    prepare_model,
    region_similarity,
    upsample,
    xcos_grid,
    xcos_part_breakdown,
)
from ecl.studies import _group_masks, _render_trials, _to_tensor
from ecl.utils import dataset_attr, eval_mode, json_float, model_device

PERTURBATION_MODES = ("deletion", "insertion")

GAME_METHODS = ("breakdown", "regions", "xcos_parts", "gradcam", "xcos", "occlusion", "oracle", "random")
"""Methods ``part_swap_scores`` knows: three that name a part, three maps, and two references."""

_NAMED = ("breakdown", "regions", "xcos_parts")


# --------------------------------------------------------------------------------- deletion / insertion
def curve_auc(fractions: np.ndarray, scores: np.ndarray) -> float:
    """Area under a curve over fractions in [0, 1] by the trapezoid rule: the curve's mean height."""
    x, y = np.asarray(fractions, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def pixel_order(
    saliency: torch.Tensor | np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Pixel indices (row-major) of an (S, S) image, most important first.

    The map is upsampled bilinearly to the image (a per-cell map becomes a smooth per-pixel one); pixels
    of equal importance (flat regions of a map) are taken in a random order drawn from ``rng``, so no
    part of the image is favoured by a tie.
    """
    values = upsample(saliency, size).double().numpy().ravel()
    return np.lexsort((rng.random(values.size), -values))


@dataclass
class PerturbationCurve:
    """A deletion or insertion curve of a pair's cosine similarity.

    Attributes:
        mode: ``"deletion"`` or ``"insertion"``. side: the face perturbed (``"a"`` or ``"b"``).
        baseline: what removed pixels are replaced by (``ecl.pair_methods.baseline_image``).
        fractions: (K + 1,) share of the pixels removed (deletion) or revealed (insertion).
        scores: (K + 1,) the cosine similarity at each step, following the map's order.
        random_scores: (R, K + 1) the same for R random orders.
    """

    mode: str
    side: str
    baseline: str
    fractions: np.ndarray
    scores: np.ndarray
    random_scores: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve (deletion: lower is better; insertion: higher is better)."""
        return curve_auc(self.fractions, self.scores)

    @property
    def random_auc(self) -> float | None:
        """Mean area under the random orders' curves (None without random orders)."""
        if not len(self.random_scores):
            return None
        return float(np.mean([curve_auc(self.fractions, s) for s in self.random_scores]))

    @property
    def beats_random(self) -> bool | None:
        """Deletion: AUC below the random orders'; insertion: above."""
        if self.random_auc is None:
            return None
        return self.auc < self.random_auc if self.mode == "deletion" else self.auc > self.random_auc

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "mode": self.mode,
            "side": self.side,
            "baseline": self.baseline,
            "auc": json_float(self.auc),
            "random_auc": None if self.random_auc is None else json_float(self.random_auc),
            "beats_random": self.beats_random,
            "fractions": [json_float(v) for v in self.fractions],
            "scores": [json_float(v) for v in self.scores],
            "random_scores": [[json_float(v) for v in row] for row in self.random_scores],
        }


def perturbation_curve(
    model: nn.Module,
    image_a: Any,
    image_b: Any,
    saliency: torch.Tensor | np.ndarray,
    mode: str = "deletion",
    side: str = "a",
    steps: int = 20,
    baseline: str | torch.Tensor = "mean",
    num_random: int = 3,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> PerturbationCurve:
    """Deletion or insertion curve of a pair's cosine similarity for an importance map over one face.

    Deletion: the face's pixels are replaced by the baseline in the map's order, most important first,
    in ``steps`` equal steps (step k removes ``round(k N / steps)`` of the N pixels); the curve is the
    cosine similarity of the pair after each step, starting at the pair's own similarity. A map that
    finds what makes the faces similar makes it fall fast (low area). Insertion starts from the
    baseline and reveals the face's pixels in the same order (high area is good).

    Choices: ``steps = 20`` (5 % of the pixels per step: fine enough for the area, 21 forward passes
    per curve); ``baseline = "mean"`` (each colour's mean over the face: no new colour, no new edge,
    see ``baseline_image``; ``"blur"`` is the other common choice); ``num_random = 3`` random orders,
    averaged, as the reference a map must beat. Any map works, at any resolution (upsampled
    bilinearly, ties in random order, see ``pixel_order``), so methods from other libraries can be
    scored the same way.

    Args:
        model: the face model. image_a, image_b: (3, S, S) float in [0, 1].
        saliency: (h, w) importance over face ``side`` (positive: makes the pair similar).
        mode: ``"deletion"`` or ``"insertion"``. side: which face is perturbed (the other stays).
        steps, baseline, num_random: see above. seed: the random orders and tie-breaks.
        batch_size: images per pass. device: default the model's device.

    Returns:
        ``PerturbationCurve``.
    """
    if mode not in PERTURBATION_MODES:
        raise ValueError(f"mode must be one of {PERTURBATION_MODES}; got {mode!r}")
    if side not in ("a", "b"):
        raise ValueError(f"side must be 'a' or 'b'; got {side!r}")
    if steps < 1 or num_random < 0:
        raise ValueError(f"need steps >= 1 and num_random >= 0; got {steps} and {num_random}")
    a, b = as_pair(image_a, image_b)
    image, other = (a, b) if side == "a" else (b, a)
    size = tuple(image.shape[-2:])
    n = size[0] * size[1]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDE1E7E]))
    orders = [pixel_order(saliency, size, rng)] + [rng.permutation(n) for _ in range(num_random)]
    counts = np.round(np.linspace(0, n, steps + 1)).astype(np.int64)
    fill = baseline_image(image[0], baseline)
    start, end = (image[0], fill) if mode == "deletion" else (fill, image[0])
    batches = []
    for order in orders:
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        changed = torch.from_numpy(rank[None, :] < counts[:, None]).view(-1, 1, *size)  # (K + 1, 1, S, S)
        batches.append(torch.where(changed, end, start))
    prepare_model(model, device)
    with eval_mode(model):
        reference = embed(model, other)
        e = embed(model, torch.cat(batches), batch_size)
    scores = (e @ reference[0]).double().numpy().reshape(len(orders), steps + 1)
    return PerturbationCurve(
        mode=mode,
        side=side,
        baseline=baseline if isinstance(baseline, str) else "image",
        fractions=counts / n,
        scores=scores[0],
        random_scores=scores[1:],
    )


def deletion_insertion(
    model: nn.Module, image_a: Any, image_b: Any, saliency: torch.Tensor | np.ndarray, **options: Any
) -> dict[str, PerturbationCurve]:
    """Both curves of ``perturbation_curve`` for one map: ``{"deletion": ..., "insertion": ...}``."""
    return {
        mode: perturbation_curve(model, image_a, image_b, saliency, mode=mode, **options)
        for mode in PERTURBATION_MODES
    }


def pair_method_curves(
    model: nn.Module,
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    methods: Sequence[str] = ("gradcam", "xcos", "occlusion"),
    assignment: PartAssignment | None = None,
    side: str = "a",
    steps: int = 20,
    baseline: str = "mean",
    num_random: int = 3,
    seed: int = 0,
    device: str | torch.device | None = None,
    map_options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Deletion and insertion areas of every method over a set of pairs (for example mated test pairs).

    For each pair i and method m, the map ``pair_map(m)`` over face ``side`` is scored by
    ``deletion_insertion`` (random orders seeded with ``seed + i``). The random orders of a pair do not
    depend on the map (``pixel_order`` draws its tie-breaks first, the same number for every map), so
    they are the same for every method: they are evaluated once per pair, with the first method, and
    every method is compared with them.

    Args:
        model: the face model. images_a, images_b: (N, 3, S, S) the pairs. methods: of ``MAP_METHODS``
            (``"shapley"`` needs ``assignment``). map_options: per method, extra arguments of
            ``pair_map`` (e.g. ``{"occlusion": {"stride": 14}}``). Other arguments: as
            ``perturbation_curve``.

    Returns:
        Plain JSON types::

            {"num_pairs": N, "steps": K, "baseline": "mean", "side": "a", "seed": s, "num_random": R,
             "random": {"deletion_auc", "insertion_auc"} (the random orders' mean areas; None when R = 0),
             "methods": {method: {"deletion_auc", "deletion_auc_std", "deletion_random_auc",
                                   "deletion_beats_random" (share of pairs), and the same for insertion}}}
    """
    for method in methods:
        if method not in MAP_METHODS:
            raise ValueError(f"unknown method {method!r}; methods: {', '.join(MAP_METHODS)}")
    if len(images_a) != len(images_b):
        raise ValueError(
            f"images_a and images_b must hold as many images; got {len(images_a)} and {len(images_b)}"
        )
    map_options = map_options or {}
    rows: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    random_rows: dict[str, list[float]] = {mode: [] for mode in PERTURBATION_MODES}
    for i in range(len(images_a)):
        reference: dict[str, float] = {}
        for k, method in enumerate(methods):
            saliency = pair_map(model, images_a[i], images_b[i], method, assignment=assignment, side=side,
                                device=device, **map_options.get(method, {}))  # fmt: skip
            curves = deletion_insertion(model, images_a[i], images_b[i], saliency, side=side, steps=steps,
                                        baseline=baseline, num_random=num_random if k == 0 else 0,
                                        seed=seed + i, device=device)  # fmt: skip
            for mode, curve in curves.items():
                if k == 0 and num_random:
                    reference[mode] = curve.random_auc
                    random_rows[mode].append(curve.random_auc)
                row, random_auc = rows[method], reference.get(mode, np.nan)
                row.setdefault(f"{mode}_auc", []).append(curve.auc)
                row.setdefault(f"{mode}_random_auc", []).append(random_auc)
                beats = curve.auc < random_auc if mode == "deletion" else curve.auc > random_auc
                row.setdefault(f"{mode}_beats_random", []).append(float(bool(num_random) and bool(beats)))
    out: dict[str, Any] = {
        "num_pairs": int(len(images_a)),
        "steps": int(steps),
        "baseline": baseline,
        "side": side,
        "seed": int(seed),
        "num_random": int(num_random),
        "random": {
            f"{mode}_auc": json_float(np.mean(values)) if values else None
            for mode, values in random_rows.items()
        },
        "methods": {},
    }
    for method, row in rows.items():
        summary = {key: json_float(np.mean(values)) for key, values in row.items()}
        for mode in PERTURBATION_MODES:
            summary[f"{mode}_auc_std"] = json_float(np.std(row[f"{mode}_auc"]))
        out["methods"][method] = summary
    return out


# ------------------------------------------------------------------------------------- the nonmate game
def top_region(
    saliency: torch.Tensor | np.ndarray, area: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """bool (S, S): the ``area`` most important pixels of a map (upsampled; ties in random order)."""
    mask = np.zeros(size[0] * size[1], dtype=bool)
    mask[pixel_order(saliency, size, rng)[: int(area)]] = True
    return mask.reshape(size)


def region_iou(region: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = np.logical_or(region, truth).sum()
    return float(np.logical_and(region, truth).sum() / union) if union else 0.0


def _lowest(scores: np.ndarray) -> int:
    """Index of the lowest finite score, -1 when there is none (a method that names no part)."""
    finite = np.isfinite(scores)
    return int(np.where(finite, scores, np.inf).argmin()) if finite.any() else -1


def _galleries(
    model: nn.Module, dataset: Any, who: tuple[int, int, int], part: str, count: int
) -> torch.Tensor:
    """(2, D) the mean normalised embeddings of other images of identity A (mates) and of their chimeras
    wearing B's part (nonmates), each normalised again."""
    a, b, image = who
    per = int(dataset.images_per_identity)
    others = [(image + j) % per for j in range(1, min(count, per - 1) + 1)]
    mates = np.stack([dataset.raw(a * per + j)[0] for j in others])
    nonmates = np.stack([dataset.render_chimera(a, b, part, image_index=j)[0] for j in others])
    e = embed(model, _to_tensor(np.concatenate([mates, nonmates])))
    k = len(others)
    means = torch.stack([e[:k].mean(0), e[k:].mean(0)])
    return torch.nn.functional.normalize(means, dim=1)


def _trial_regions(
    model: nn.Module,
    original: torch.Tensor,
    chimera: torch.Tensor,
    masks: tuple[torch.Tensor, torch.Tensor],
    truth: int,
    methods: Sequence[str],
    assignment: PartAssignment,
    key: tuple[int, int],
    options: dict[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The region each method explains in one trial (bool (S, S) each), and the part each naming method
    names. Maps are *difference* maps on the original: where the two faces differ. ``key`` (seed, trial)
    seeds each method's own tie-breaks (and the random region), so a method's result does not depend on
    which other methods run."""
    masks_a, masks_b = masks  # (G, S, S) breakdown parts of the original and of the chimera
    union = (masks_a | masks_b).numpy()
    size = tuple(original.shape[-2:])
    area = int(union[truth].sum())
    device = model_device(model)
    _, activations, cam = forward_pair(
        model, original.to(device), chimera.to(device), saliency="gradcam" in methods
    )
    regions: dict[str, np.ndarray] = {}
    named: dict[str, int] = {}
    grid = xcos_grid(activations[:1], activations[1:])
    for method in methods:
        rng = np.random.default_rng(np.random.SeedSequence([*key, GAME_METHODS.index(method), 0x6A3E]))
        if method == "breakdown":
            similarity, _, _ = part_similarity(
                activations[:1],
                activations[1:],
                assignment,
                options["descriptor"],
                options["parts"],
                min_peak=options["min_peak"],
            )
            named[method] = _lowest(similarity[0].cpu().double().numpy())
        elif method == "regions":
            similarity = region_similarity(activations[:1], activations[1:], masks_a[None], masks_b[None])
            named[method] = _lowest(similarity[0].cpu().double().numpy())
        elif method == "xcos_parts":
            groups = {p: (p,) for p in options["parts"]}
            pooled = xcos_part_breakdown(grid, options["parts"], masks_a, masks_b, groups)
            means = np.array(
                [
                    pooled.parts[p] / pooled.weights[p] if pooled.weights[p] > 0 else np.nan
                    for p in options["parts"]
                ]
            )
            named[method] = _lowest(means)
        elif method == "gradcam":
            regions[method] = top_region(-cam[0].cpu(), area, size, rng)
        elif method == "xcos":
            regions[method] = top_region(grid.difference[0], area, size, rng)
        elif method == "occlusion":
            over = occlusion_map(
                model,
                original,
                chimera,
                side="both",
                patch=options.get("patch"),
                stride=options.get("stride"),
            )
            regions[method] = top_region(-over.pixel, area, size, rng)
        elif method == "oracle":
            regions[method] = union[truth]
        elif method == "random":
            regions[method] = top_region(np.zeros(size), area, size, rng)
    for method, part in named.items():
        regions[method] = union[part] if part >= 0 else np.zeros(size, dtype=bool)
    return regions, named


def part_swap_scores(
    model: nn.Module,
    assignment: PartAssignment,
    dataset: Any,
    parts: Sequence[str] = ("eyes", "brows", "nose", "mouth", "hair"),
    num_trials: int = 100,
    seed: int = 0,
    methods: Sequence[str] = GAME_METHODS,
    num_references: int = 3,
    descriptor: str = "attention",
    min_peak: float = 0.1,
    patch: int | None = None,
    stride: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """The part-swap game scored as the inpainting game: nonmate rate and IoU of each method's region.

    The trials are those of ``ecl.studies.part_swap_game`` with the same ``seed`` (face A, and A wearing
    one part of identity B, same pose and light). Each method explains the pair by a region of the
    original face:

    - methods that name a part (the region is the named part's mask, in either image):
      ``"breakdown"`` (lowest ``part_similarity``, the channel part breakdown), ``"regions"`` (lowest
      cosine of the features pooled inside the true part masks: the region breakdown, no part channels)
      and ``"xcos_parts"`` (lowest attention-weighted mean local cosine of the xCos grid in the part);
    - maps of where the faces *differ*, whose region is their top pixels, as many as the swapped part
      covers (a fair size for the IoU): ``"gradcam"`` (most negative signed similarity Grad-CAM of the
      original), ``"xcos"`` (``attention x (1 - local cosine)``) and ``"occlusion"`` (the largest rise in
      similarity when a patch covers both faces at the same place, ``occlusion_map(side="both")``);
    - references: ``"oracle"`` (the swapped part's own mask) and ``"random"`` (random pixels, same area).

    Nonmate rate (Williford et al.): paste the chimera's pixels inside the region into the original;
    the hybrid counts as a nonmate when its embedding is closer to the chimera's identity than to A's,
    each represented by the mean embedding of ``num_references`` *other* images of A, as they are and
    wearing B's part. Only trials where the network itself tells them apart count (the original is
    closer to A, the chimera closer to the chimera identity); ``valid_trials`` says how many. IoU: of
    the region with the swapped part's mask (union over the two images), over all trials.

    Cost per trial: one pass with gradients (Grad-CAM), ``2 num_references`` reference images, one
    image per method, and for ``"occlusion"`` two images per window ((S / stride)^2 windows: 225 at
    112 px with the default 14 px patch and 7 px stride; pass a larger ``stride`` on a CPU).

    Args:
        model: the face model. assignment: its ``PartAssignment`` (for ``"breakdown"``).
        dataset: a FaceParts split with at least two images per identity. parts: candidate parts.
        num_trials, seed: which trials. methods: of ``GAME_METHODS``. num_references: images per gallery.
        descriptor, min_peak: as ``part_similarity``. patch, stride: of the occlusion windows.
        device: default the model's device.

    Returns:
        Plain JSON types::

            {"num_trials", "valid_trials", "parts", "seed", "num_references", "chance",
             "methods": {method: {"nonmate_rate", "iou", "top1" (naming methods),
                                  "per_part": {part: nonmate rate}}}}
    """
    parts = tuple(parts)
    unknown = [m for m in methods if m not in GAME_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; methods: {', '.join(GAME_METHODS)}")
    for part in parts:
        if part not in assignment.groups:
            raise ValueError(
                f"part {part!r} is not a breakdown part of the assignment ({', '.join(assignment.groups)})"
            )
    if int(getattr(dataset, "images_per_identity", 1)) < 2:
        raise ValueError("the nonmate rate needs at least two images per identity (one probe, one reference)")
    originals, chimeras, labels_a, labels_b, truth, who = _render_trials(dataset, parts, num_trials, seed)
    part_names = tuple(dataset_attr(dataset, "part_names", ()) or ())
    options = {
        "descriptor": descriptor,
        "parts": parts,
        "min_peak": min_peak,
        "patch": patch,
        "stride": stride,
    }
    prepare_model(model, device)
    valid = np.zeros(num_trials, dtype=bool)
    nonmate = {m: np.zeros(num_trials, dtype=bool) for m in methods}
    iou = {m: np.zeros(num_trials) for m in methods}
    named = {m: np.full(num_trials, -1) for m in methods if m in _NAMED}
    with eval_mode(model):
        for t in range(num_trials):
            original, chimera = _to_tensor(originals[t : t + 1]), _to_tensor(chimeras[t : t + 1])
            masks = tuple(
                torch.from_numpy(_group_masks(labels[t : t + 1], part_names, parts, assignment.groups)[0])
                for labels in (labels_a, labels_b)
            )
            regions, guesses = _trial_regions(
                model, original, chimera, masks, int(truth[t]), methods, assignment, (int(seed), t), options
            )
            truth_region = (masks[0] | masks[1])[truth[t]].numpy()
            hybrids = torch.stack(
                [torch.where(torch.from_numpy(regions[m]), chimera[0], original[0]) for m in methods]
            )
            gallery = _galleries(model, dataset, who[t], parts[truth[t]], num_references)
            e = embed(model, torch.cat([original, chimera, hybrids])) @ gallery.T  # (2 + M, 2)
            valid[t] = bool(e[0, 0] > e[0, 1]) and bool(e[1, 1] > e[1, 0])
            for k, m in enumerate(methods):
                nonmate[m][t] = bool(e[2 + k, 1] > e[2 + k, 0])
                iou[m][t] = region_iou(regions[m], truth_region)
                if m in named:
                    named[m][t] = guesses[m]
    out: dict[str, Any] = {
        "num_trials": int(num_trials),
        "valid_trials": int(valid.sum()),
        "parts": list(parts),
        "seed": int(seed),
        "num_references": int(num_references),
        "chance": 1.0 / len(parts),
        "methods": {
            m: _method_scores(nonmate[m], iou[m], named.get(m), valid, truth, parts) for m in methods
        },
    }
    return out


def _method_scores(
    nonmate: np.ndarray,
    iou: np.ndarray,
    named: np.ndarray | None,
    valid: np.ndarray,
    truth: np.ndarray,
    parts: Sequence[str],
) -> dict[str, Any]:
    """One method's row of ``part_swap_scores``: nonmate rate over valid trials, IoU, top-1, per part."""
    row: dict[str, Any] = {
        "nonmate_rate": json_float(nonmate[valid].mean()) if valid.any() else None,
        "iou": json_float(iou.mean()),
    }
    if named is not None:
        row["top1"] = json_float((named == truth).mean())
    row["per_part"] = {
        p: json_float(nonmate[valid & (truth == k)].mean()) if (valid & (truth == k)).any() else None
        for k, p in enumerate(parts)
    }
    return row
