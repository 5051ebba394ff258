"""Studies of the part breakdown on FaceParts: the part-swap game and clean vs occluded verification.

- :func:`part_swap_game`: a chimera is a face with one part (eyes, brows, nose, mouth, hair) taken from
  another identity; which part differs is known, and the game asks the breakdown (and the similarity
  saliency map) to name it. :func:`game_summary` reduces runs over seeds.
- :func:`occlusion_verification`: verification on clean and occluded copies of the same pairs, with and
  without ignoring the channels of the parts the breakdown finds occluded; :func:`occlusion_summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecl.attribution import PART_GROUPS, PartAssignment, forward_pair, part_similarity, tap_target
from ecl.utils import dataset_attr, eval_mode, json_float, model_device, split_output


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
        p: json_float(correct[truth == k].mean()) if (truth == k).any() else None for k, p in enumerate(parts)
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
            "the part-swap game needs a FaceParts dataset (it renders chimeras); "
            f"got {type(dataset).__name__}"
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


def _mask_pooled(
    normed: torch.Tensor, masks_a: torch.Tensor, masks_b: torch.Tensor, attention: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The game's reference rows for one batch of pairs (activations of the ``n`` originals, then the
    chimeras).

    The all-channel descriptor pooled under the true part masks (no part channels needed), and how
    much of each part's channel attention lies inside its mask.

    Returns:
        ``(cosine (n, G), share of attention inside the mask (n, G))``.
    """
    n = masks_a.shape[0]
    normed = normed.clamp_min(0)
    cells = normed.shape[-2:]
    weights_a = F.adaptive_avg_pool2d(masks_a.float(), cells)
    weights_b = F.adaptive_avg_pool2d(masks_b.float(), cells)
    desc_a = torch.einsum("bghw,bchw->bgc", weights_a, normed[:n])
    desc_b = torch.einsum("bghw,bchw->bgc", weights_b, normed[n:])
    pooled = F.cosine_similarity(desc_a, desc_b, dim=-1, eps=1e-12)
    inside = (attention * weights_a).sum((2, 3)) / attention.sum((2, 3)).clamp_min(1e-12)
    return pooled, inside


def _breakdown_scores(similarity: np.ndarray, truth: np.ndarray, parts: Sequence[str]) -> dict[str, Any]:
    """The breakdown's game scores, with the mean similarity of the swapped part and of the others."""
    scores = _game_scores(similarity, truth, parts)
    swapped = similarity[np.arange(len(truth)), truth]
    others = np.where(np.arange(len(parts))[None, :] != truth[:, None], similarity, np.nan)
    scores["swapped_similarity"] = json_float(np.nanmean(swapped)) if np.isfinite(swapped).any() else None
    scores["other_similarity"] = json_float(np.nanmean(others)) if np.isfinite(others).any() else None
    return scores


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
    part_names = tuple(dataset_attr(dataset, "part_names", ()) or ())
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    sims, cams, pooled, inside = [], [], [], []
    scale = torch.as_tensor(assignment.reference_peak, dtype=torch.float32).view(1, -1, 1, 1)
    with eval_mode(model):
        for start in range(0, num_trials, batch_size):
            stop = min(start + batch_size, num_trials)
            a = _to_tensor(originals[start:stop]).to(device)
            b = _to_tensor(chimeras[start:stop]).to(device)
            _, activations, cam = forward_pair(model, a, b, saliency)
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
            batch_pooled, batch_inside = _mask_pooled(
                activations.cpu() / scale, masks_a, masks_b, attention.cpu()
            )
            pooled.append(batch_pooled)
            inside.append(batch_inside)
            if saliency:
                score_a = _region_scores(cam[:n].cpu(), masks_a)
                score_b = _region_scores(cam[n:].cpu(), masks_b)
                cams.append(torch.nanmean(torch.stack([score_a, score_b]), dim=0))
    breakdown = _breakdown_scores(torch.cat(sims).numpy().astype(np.float64), truth, parts)
    share = torch.cat(inside).mean(0).numpy()
    out: dict[str, Any] = {
        "num_trials": int(num_trials),
        "parts": list(parts),
        "chance": 1.0 / len(parts),
        "seed": int(seed),
        "descriptor": descriptor,
        "channels_per_part": {p: int(len(assignment.channels(p))) for p in parts},
        "attention_in_part": {p: json_float(v) for p, v in zip(parts, share, strict=True)},
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
            row[f"{key}_top1_mean"] = json_float(values.mean()) if values.size else None
            row[f"{key}_top1_std"] = json_float(values.std()) if values.size else None
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
        with tap_target(model, scale):
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
    model.to(device)
    out: dict[str, Any] = {"threshold": float(threshold), "num_pairs": int(len(is_same))}
    with eval_mode(model):
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
                share["occluded_images"] = json_float(any_found[truly].mean()) if truly.any() else None
                share["unoccluded_images"] = json_float(any_found[~truly].mean()) if (~truly).any() else None
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
                    row[f"{setting}_{metric}_mean"] = json_float(values.mean())
                    row[f"{setting}_{metric}_std"] = json_float(values.std())
        out[method] = row
    return out
