"""Every way to explain a face pair, called by name: one importance map, or a summary and its pictures.

- :func:`pair_map`: one method's per-pixel importance map over one face of a pair, the input of the
  deletion and insertion curves of :mod:`ecl.pair_scores`;
- :func:`explain_pair_with`: one method's JSON summary and the maps to draw, for
  ``python -m ecl explain-pair --method``.

The methods themselves live in :mod:`ecl.attribution` (the part breakdown, the similarity Grad-CAM)
and :mod:`ecl.pair_methods` (xCos grid, occlusion, Shapley part contributions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ecl.attribution import PartAssignment, explain_pair, forward_pair, part_similarity, similarity_saliency
from ecl.pair_cam import CAM_METHODS, library_cam
from ecl.pair_methods import as_pair, channel_shapley, occlusion_map, prepare_model, upsample, xcos_grid
from ecl.utils import eval_mode, json_float

MAP_METHODS = ("gradcam", "xcos", "occlusion", "shapley")
"""Methods ``pair_map`` turns into a per-pixel importance map."""

PAIR_METHODS = ("parts", "shapley", "xcos", "gradcam", "occlusion", "cam")
"""Methods of ``explain_pair_with`` (``python -m ecl explain-pair --method``)."""


def pair_map(
    model: nn.Module,
    image_a: Any,
    image_b: Any,
    method: str,
    assignment: PartAssignment | None = None,
    side: str = "a",
    device: str | torch.device | None = None,
    **options: Any,
) -> torch.Tensor:
    """One method's importance map over one face of a pair, at the image's resolution (S, S).

    Positive means "this region makes the two faces similar"; maps at the target layer's resolution are
    upsampled bilinearly. Methods:

    - ``"gradcam"``: the signed similarity Grad-CAM of that face (``similarity_saliency``);
    - ``"xcos"``: the xCos contribution ``w_p cos_p`` (``xcos_grid``; the grid is shared by both faces;
      ``options``: ``attention``);
    - ``"occlusion"``: the occlusion drop of that face (``occlusion_map``; ``options``: ``patch``,
      ``stride``, ``baseline``);
    - ``"shapley"``: each part's Shapley contribution (``channel_shapley``) spread over where its channels
      look in that face (the part's summed normalised channels, scaled to sum 1); needs ``assignment``.

    Args:
        model, image_a, image_b: as ``explain_pair``. method: one of ``MAP_METHODS``.
        assignment: for ``"shapley"``. side: ``"a"`` or ``"b"``. device: default the model's device.

    Returns:
        (S, S) float32 tensor on the CPU.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"method must be one of {MAP_METHODS}; got {method!r}")
    if side not in ("a", "b"):
        raise ValueError(f"side must be 'a' or 'b'; got {side!r}")
    a, b = as_pair(image_a, image_b)
    size = tuple(a.shape[-2:])
    row = 0 if side == "a" else 1
    if method == "gradcam":
        cams = similarity_saliency(model, a, b, device=device)
        return upsample(cams[row][0], size)
    if method == "occlusion":
        return torch.from_numpy(occlusion_map(model, a, b, side=side, device=device, **options).pixel).float()
    device = prepare_model(model, device)
    with eval_mode(model):
        _, activations, _ = forward_pair(model, a.to(device), b.to(device), saliency=False)
    if method == "xcos":
        grid = xcos_grid(activations[:1], activations[1:], **options)
        return upsample(grid.contribution[0], size)
    if assignment is None:
        raise ValueError("the 'shapley' map needs a part assignment (assign_parts or PartAssignment.load)")
    breakdown = channel_shapley(model, a, b, assignment, device=device)
    groups = tuple(breakdown.parts)
    _, attention_a, attention_b = part_similarity(activations[:1], activations[1:], assignment, groups=groups)
    attention = (attention_a if side == "a" else attention_b)[0].cpu().double()
    attention = attention / attention.sum((1, 2), keepdim=True).clamp_min(1e-12)
    phi = torch.tensor([breakdown.parts[g] for g in groups], dtype=torch.float64)
    return upsample((phi[:, None, None] * attention).sum(0).float(), size)


# ---------------------------------------------------------------------------- explain-pair --method
@dataclass
class PairMethodResult:
    """One method's explanation of a pair, for the command line and its picture.

    Attributes:
        method: the method. summary: the JSON output (plain types; always ``"method"`` and ``"overall"``).
        maps: column title -> (map over face a, map over face b), any resolution, drawn with ReLU.
        caption: one line under the picture (e.g. the additive sum).
    """

    method: str
    summary: dict[str, Any]
    maps: dict[str, tuple[np.ndarray, np.ndarray]]
    caption: str


def _rounded(values: torch.Tensor | np.ndarray) -> list:
    return np.round(np.asarray(values, dtype=np.float64), 6).tolist()


def explain_pair_with(
    method: str,
    model: nn.Module,
    image_a: Any,
    image_b: Any,
    assignment: PartAssignment | None = None,
    descriptor: str = "attention",
    device: str | torch.device | None = None,
    patch: int | None = None,
    cam: str = "gradcam",
) -> PairMethodResult:
    """Explain one pair with one method of ``PAIR_METHODS``: a JSON summary and the maps to draw.

    - ``"parts"``: the channel part breakdown (``explain_pair``; part similarities), needs ``assignment``;
    - ``"shapley"``: the additive channel breakdown (``channel_shapley``), needs ``assignment``;
    - ``"xcos"``: the local-similarity grid with norm attention (``xcos_grid``), its score, the cosine of
      the flattened maps and the embedding cosine side by side;
    - ``"gradcam"``: the similarity Grad-CAM of both faces (``similarity_saliency``);
    - ``"occlusion"``: the occlusion drop over each face in turn (``occlusion_map``; ``patch`` in pixels);
    - ``"cam"``: pytorch-grad-cam's ``cam`` (``ecl.pair_cam.library_cam``: ``"hirescam"``, ``"scorecam"``,
      ``"eigencam"`` ...) of each face for its similarity to the other, at the image's resolution.
    """
    if method not in PAIR_METHODS:
        raise ValueError(f"method must be one of {PAIR_METHODS}; got {method!r}")
    if method in ("parts", "shapley") and assignment is None:
        raise ValueError(
            f"method {method!r} needs a part assignment: assign_parts(model, reference) or "
            "PartAssignment.load(run_dir)"
        )
    a, b = as_pair(image_a, image_b)
    device = prepare_model(model, device)
    with eval_mode(model):
        overall, activations, _ = forward_pair(model, a.to(device), b.to(device), saliency=False)
    overall = float(overall[0])
    if method == "parts":
        result = explain_pair(
            model, a[0], b[0], assignment, descriptor=descriptor, saliency=False, device=device
        )
        maps = {
            f"{g} {'n/a' if v is None else f'{v:.3f}'}": (result.part_maps_a[i], result.part_maps_b[i])
            for i, (g, v) in enumerate(result.parts.items())
        }
        caption = f"part similarities; embedding cosine {overall:.3f}; least similar: {result.least_similar}"
        return PairMethodResult(method, {"method": method, **result.to_dict()}, maps, caption)
    if method == "shapley":
        breakdown = channel_shapley(model, a, b, assignment, device=device)
        groups = tuple(breakdown.parts)
        _, maps_a, maps_b = part_similarity(activations[:1], activations[1:], assignment, groups=groups)
        maps = {
            f"{g} {breakdown.parts[g]:+.3f}": (maps_a[0, i].cpu().numpy(), maps_b[0, i].cpu().numpy())
            for i, g in enumerate(groups)
        }
        summary = {"method": method, **breakdown.to_dict(), "overall": json_float(overall)}
        return PairMethodResult(method, summary, maps, breakdown.text())
    if method == "xcos":
        grid = xcos_grid(activations[:1], activations[1:])
        summary = {
            "method": method,
            "overall": json_float(overall),
            "score": json_float(grid.score[0]),
            "flat_cosine": json_float(grid.flat_cosine[0]),
            "attention": grid.rule,
            "local_cosine": _rounded(grid.cosine[0]),
            "attention_map": _rounded(grid.attention[0]),
        }
        maps = {
            "local cosine": (grid.cosine[0].numpy(),) * 2,
            "attention": (grid.attention[0].numpy(),) * 2,
            "contribution": (grid.contribution[0].numpy(),) * 2,
        }
        caption = (
            f"xCos {float(grid.score[0]):.3f} (sum of attention x local cosine); flattened-map cosine "
            f"{float(grid.flat_cosine[0]):.3f}; embedding cosine {overall:.3f}"
        )
        return PairMethodResult(method, summary, maps, caption)
    if method == "gradcam":
        cam_a, cam_b, _ = similarity_saliency(model, a, b, device=device)
        summary = {
            "method": method,
            "overall": json_float(overall),
            "saliency_a": _rounded(cam_a[0]),
            "saliency_b": _rounded(cam_b[0]),
        }
        maps = {"similarity Grad-CAM": (cam_a[0].numpy(), cam_b[0].numpy())}
        return PairMethodResult(
            method, summary, maps, f"Grad-CAM of the embedding cosine {overall:.3f} (ReLU)"
        )
    if method == "cam":
        map_a = library_cam(model, a, b, cam=cam, device=device)
        map_b = library_cam(model, b, a, cam=cam, device=device)
        summary = {
            "method": method,
            "cam": cam,
            "overall": json_float(overall),
            "map_a": _rounded(map_a),
            "map_b": _rounded(map_b),
        }
        caption = f"pytorch-grad-cam {CAM_METHODS[cam]} of the embedding cosine {overall:.3f}"
        return PairMethodResult(method, summary, {f"{cam} (pytorch-grad-cam)": (map_a, map_b)}, caption)
    over_a = occlusion_map(model, a, b, patch=patch, side="a", device=device)
    over_b = occlusion_map(model, a, b, patch=patch, side="b", device=device)
    summary = {"method": method, "overall": json_float(overall), "a": over_a.to_dict(), "b": over_b.to_dict()}
    maps = {"occlusion drop": (over_a.pixel, over_b.pixel)}
    caption = f"similarity drop when a {over_a.patch}-px patch is occluded; cosine {overall:.3f}"
    return PairMethodResult(method, summary, maps, caption)
