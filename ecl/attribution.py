"""Which face parts made two faces similar: channels assigned to parts, and a pair's score broken
down by part.

With channels that are part detectors, a pair of images gets one similarity per part (eyes, brows,
nose, mouth, hair, skin) next to the embedding's own. :func:`assign_parts` decides which channels
belong to which part from a reference set (a :class:`PartAssignment`, saved beside a run);
:func:`part_similarity` and :func:`explain_pair` compute the breakdown; :func:`similarity_saliency`
is the similarity Grad-CAM map it is compared with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecl.activations import collect_activations
from ecl.data.landmark_masks import with_part_masks
from ecl.metrics import PartIoUResult, landmark_assignment, part_iou_from_stats
from ecl.utils import atomic_write_json, dataset_attr, eval_mode, json_float, model_device, split_output

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
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PartAssignment:
        """Read a saved assignment: a JSON file, a run folder, or a checkpoint folder inside one.

        Raises:
            FileNotFoundError: no ``part_assignment.json`` there (the message says how to make one).
        """
        path = Path(path)
        candidates = (
            [path]
            if path.suffix == ".json"
            else [path / ASSIGNMENT_FILE, path.parent / ASSIGNMENT_FILE, path.parent.parent / ASSIGNMENT_FILE]
        )
        for candidate in candidates:
            if candidate.is_file():
                try:
                    return cls.from_dict(json.loads(candidate.read_text()))
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"{candidate} is not a valid part assignment: {err}") from err
        raise FileNotFoundError(
            f"no part assignment at {path} (looked for {ASSIGNMENT_FILE} in the run folder): make one with "
            f"`python -m ecl assign-parts --checkpoint {path}` or "
            "`ecl.attribution.assign_parts(model, reference_dataset).save(run_dir)`"
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
    part_names = tuple(dataset_attr(dataset, "part_names", ()) or ())
    landmark_names = tuple(dataset_attr(dataset, "landmark_names", ()) or ())
    dataset, part_names, _ = with_part_masks(dataset, part_names)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    stats = collect_activations(
        model,
        loader,
        device=device,
        quantile=quantile,
        progress=progress,
        landmark_names=landmark_names,
        part_names=part_names,
    )
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
            part_names=part_names,
            assigned=assigned,
            reference_peak=reference,
            groups=chosen,
            source=source,
            method="part_iou",
            iou_threshold=iou_threshold,
            num_reference_images=stats.num_images,
            best_iou=iou.best_iou,
        )
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
            part_names=names,
            assigned=assigned,
            reference_peak=reference,
            groups={g: tuple(p) for g, p in chosen.items()},
            source={g: "nearest landmark" for g in chosen},
            method="landmark",
            iou_threshold=iou_threshold,
            num_reference_images=stats.num_images,
        )
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


def target_module(model: nn.Module) -> nn.Module | None:
    """The tapped module of a ``FaceModel`` (None for other models)."""
    backbone, name = getattr(model, "backbone", None), getattr(model, "target_layer", None)
    if isinstance(backbone, nn.Module) and isinstance(name, str):
        return dict(backbone.named_modules()).get(name)
    return None


@contextmanager
def tap_target(model: nn.Module, keep: torch.Tensor | None = None):
    """Capture the target layer's output *as it flows on* (for gradients), optionally scaling channels.

    ``FaceModel`` returns ``relu(output)`` as its activations, a copy that the embedding does not
    depend on, so gradients must be taken at the module's output itself. ``keep`` (B, C) multiplies
    the channels of what flows on (``occlusion_verification`` zeroes the channels of occluded parts).
    """
    module = target_module(model)
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


def forward_pair(
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
    with torch.enable_grad(), tap_target(model) as store:
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
    model.to(device)
    with eval_mode(model):
        cosine, _, cam = forward_pair(model, images_a.to(device), images_b.to(device), saliency=True)
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
            "overall": json_float(self.overall),
            "parts": {k: (None if v is None else json_float(v)) for k, v in self.parts.items()},
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
    model.to(device)
    with eval_mode(model):
        cosine, activations, cam = forward_pair(model, batch_a.to(device), batch_b.to(device), saliency)
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


def read_image(path: str):
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


def image_tensor(image: Any, size: int) -> torch.Tensor:
    """An RGB PIL image as a (3, size, size) tensor in [0, 1], resized bilinearly when needed."""
    from PIL import Image

    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
