"""Face verification: embedding extraction and the 10-fold protocol (METHOD section 7).

The protocol is the one of the widely used face-recognition evaluation code (insightface's
``verification.py``): embeddings are L2-normalised, the score of a pair is the squared Euclidean
distance between them (``2 - 2 cos``), and on each of 10 folds the threshold is chosen from the
grid ``np.arange(0, 4, 0.01)`` as the one that maximises accuracy on the *other* folds (first
maximum on ties, as ``np.argmax``); the fold's accuracy is then measured with that threshold. The
grid stops at 3.99, exactly as that code's; METHOD's "0, 0.01, ..., 4" differs only for pairs at
distance 3.99 or more, i.e. embeddings pointing in nearly opposite directions.

Folds:

- explicit fold ids (``PairList.fold``, e.g. LFW View-2 ``pairs.txt``'s 10 blocks) are kept;
- an integer ``folds`` builds *balanced* folds in list order: the same pairs, in list order, are
  cut into ``folds`` contiguous chunks as ``KFold(shuffle=False)`` cuts a list (the first
  ``n_same % folds`` chunks one longer), and so are the different pairs; chunk f of each forms
  fold f (the rule of ``ecl.data.balanced_folds``). On a list already made of ``folds`` equal blocks
  with equal numbers of same and different pairs (LFW ``pairs.txt``, the insightface ``.bin``
  packs) this is exactly the contiguous ``KFold(n_splits=folds, shuffle=False)`` split of that
  code; on a list that is all same pairs then all different pairs (LFW View-1
  ``pairsDevTest.txt``) it gives every fold equal numbers of both, where a contiguous split would not.
- ``balanced=False`` uses the contiguous ``KFold(shuffle=False)`` split whatever the list.

ROC and AUC come from scikit-learn on the score ``-distance``. EER is where the false-negative and
false-positive rates are equal, interpolated linearly between the two ROC points around the crossing.
TAR at FAR f is read from the ROC polyline: the true-accept rate of the last ROC point with
false-accept rate <= f, linearly interpolated towards the next point (for untied scores the
segment is horizontal, so this equals the usual "best TAR with FAR <= f").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold, PredefinedSplit
from torch import nn

from ecl.data.pairs import balanced_folds
from ecl.utils import (
    autocast,
    batch_images,
    eval_mode,
    json_default,
    model_device,
    progress_bar,
    resolve_device,
    split_output,
)

THRESHOLDS = np.arange(0, 4, 0.01)
"""The distance thresholds searched on each fold (the insightface grid, 400 values)."""

FARS = (1e-3, 1e-2)


# --------------------------------------------------------------------------- embeddings


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    loader: Iterable,
    flip: bool = True,
    device: str | torch.device | None = None,
    amp: bool = True,
    progress: bool = True,
) -> np.ndarray:
    """L2-normalised embeddings of every image a loader yields, in loader order.

    Args:
        model: returns ``FaceOutput(embeddings, activations)`` (or a tuple / a tensor of embeddings).
        loader: yields batches of dicts with ``"image"`` (B, 3, S, S) in [0, 1], or image tensors.
        flip: add the embedding of the horizontally mirrored image before normalising
            (flip test-time augmentation, as the standard evaluation code does).
        device: where to run; default the model's device. The model is moved there.
        amp: float16 autocast on CUDA (ignored on CPU).
        progress: show a progress bar.

    Returns:
        float32 array (N, D), each row of unit length.
    """
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    chunks = []
    total = len(loader) if hasattr(loader, "__len__") else None
    with eval_mode(model):
        for batch in progress_bar(loader, progress, "embeddings", total):
            images = batch_images(batch).to(device, non_blocking=True)
            with autocast(device, amp):
                embeddings = split_output(model(images))[0].float()
                if flip:
                    embeddings = embeddings + split_output(model(images.flip(-1)))[0].float()
            chunks.append(F.normalize(embeddings, dim=1).cpu())
    if not chunks:
        raise ValueError("the loader yielded no batches: nothing to embed")
    return torch.cat(chunks).numpy().astype(np.float32)


# --------------------------------------------------------------------------- verification


@dataclass
class VerificationResult:
    """The 10-fold verification numbers of one pair list.

    Attributes:
        accuracy: mean accuracy over folds. accuracy_std: their (population) standard deviation.
        threshold: mean over folds of the chosen distance threshold.
        fold_accuracies, fold_thresholds: per fold.
        auc, eer: ROC area and equal error rate. tar_at_far: {far: tar} for FAR 1e-3 and 1e-2.
        fpr, tpr, roc_thresholds: the ROC curve (thresholds on the score ``-distance``).
        num_pairs, num_same: list size and number of same pairs.
    """

    accuracy: float
    accuracy_std: float
    threshold: float
    fold_accuracies: np.ndarray
    fold_thresholds: np.ndarray
    auc: float
    eer: float
    tar_at_far: dict[float, float]
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    roc_thresholds: np.ndarray = field(repr=False)
    num_pairs: int = 0
    num_same: int = 0

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """Plain-JSON numbers; the ROC curve too when ``curves``."""
        out: dict[str, Any] = {
            "accuracy": float(self.accuracy),
            "accuracy_std": float(self.accuracy_std),
            "threshold": float(self.threshold),
            "fold_accuracies": [float(a) for a in self.fold_accuracies],
            "auc": float(self.auc),
            "eer": float(self.eer),
            **{f"tar_at_far_{far:g}": float(tar) for far, tar in self.tar_at_far.items()},
            "num_pairs": int(self.num_pairs),
            "num_same": int(self.num_same),
        }
        if curves:
            out["fpr"] = self.fpr.tolist()
            out["tpr"] = self.tpr.tolist()
        return out


def pair_distances(embeddings_a: np.ndarray, embeddings_b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance between the L2-normalised rows of two arrays (N, D) -> (N,)."""
    a = np.asarray(embeddings_a, dtype=np.float64)
    b = np.asarray(embeddings_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings_a and embeddings_b must both be (N, D); got {a.shape} and {b.shape}")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(np.square(a - b), axis=1)


def _splits(is_same: np.ndarray, folds: int | np.ndarray, balanced: bool):
    n = len(is_same)
    if isinstance(folds, (int, np.integer)):
        if folds < 2 or folds > n:
            raise ValueError(f"folds must be between 2 and the number of pairs ({n}); got {folds}")
        if balanced:
            return list(PredefinedSplit(balanced_folds(is_same, int(folds))).split())
        return list(KFold(n_splits=int(folds), shuffle=False).split(np.arange(n)))
    fold_ids = np.asarray(folds)
    if fold_ids.shape != (n,):
        raise ValueError(f"fold ids must have one entry per pair ({n}); got shape {fold_ids.shape}")
    if len(np.unique(fold_ids)) < 2:
        raise ValueError("fold ids must name at least two folds")
    return list(PredefinedSplit(fold_ids).split())


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """True-accept rate at a false-accept rate, read from the ROC polyline (see module docstring)."""
    i = int(np.searchsorted(fpr, far, side="right")) - 1
    if i < 0:
        return 0.0
    if fpr[i] == far or i + 1 >= len(fpr):
        return float(tpr[i])
    t = (far - fpr[i]) / (fpr[i + 1] - fpr[i])
    return float(tpr[i] + t * (tpr[i + 1] - tpr[i]))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where false negatives equal false positives, interpolated on the ROC."""
    gap = (1.0 - tpr) - fpr  # non-increasing along the curve
    i = int(np.argmax(gap <= 0))
    if gap[i] > 0:  # never crosses (cannot happen: the curve ends at fpr = tpr = 1)
        return float(fpr[-1])
    if i == 0:
        return float(fpr[0])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def verification(
    embeddings_a: np.ndarray,
    embeddings_b: np.ndarray,
    is_same: np.ndarray,
    folds: int | np.ndarray = 10,
    balanced: bool = True,
    thresholds: np.ndarray = THRESHOLDS,
    fars: Sequence[float] = FARS,
) -> VerificationResult:
    """The k-fold verification protocol on pairs of embeddings.

    Args:
        embeddings_a, embeddings_b: (N, D), row i of each forms pair i (normalised here).
        is_same: bool (N,), True for pairs of the same identity.
        folds: number of folds (built in list order, see the module docstring) or explicit fold
            ids (N,) such as ``PairList.fold``.
        balanced: with an integer ``folds``, balance same/different pairs per fold (default) or
            split into contiguous blocks like ``KFold(shuffle=False)``.
        thresholds: distance grid searched on each fold.
        fars: false-accept rates at which to report the true-accept rate.

    Returns:
        A ``VerificationResult``.
    """
    is_same = np.asarray(is_same, dtype=bool)
    dist = pair_distances(embeddings_a, embeddings_b)
    if len(is_same) != len(dist):
        raise ValueError(f"is_same has {len(is_same)} entries but there are {len(dist)} pairs")
    if is_same.all() or not is_same.any():
        raise ValueError("verification needs both same and different pairs")
    splits = _splits(is_same, folds, balanced)

    # correct[n, t]: does threshold t classify pair n correctly ("same" when dist < t)?
    thresholds = np.asarray(thresholds, dtype=np.float64)
    correct = (dist[:, None] < thresholds[None, :]) == is_same[:, None]
    fold_accuracies, fold_thresholds = [], []
    for train, test in splits:
        # Same arithmetic as the reference code: integer count / size, first maximum on ties.
        acc_train = correct[train].sum(0) / len(train)
        best = int(np.argmax(acc_train))
        fold_thresholds.append(thresholds[best])
        fold_accuracies.append(correct[test, best].sum() / len(test))
    fold_accuracies = np.array(fold_accuracies)
    fold_thresholds = np.array(fold_thresholds)

    scores = -dist
    fpr, tpr, roc_thresholds = roc_curve(is_same, scores, drop_intermediate=False)
    return VerificationResult(
        accuracy=float(fold_accuracies.mean()),
        accuracy_std=float(fold_accuracies.std()),
        threshold=float(fold_thresholds.mean()),
        fold_accuracies=fold_accuracies,
        fold_thresholds=fold_thresholds,
        auc=float(roc_auc_score(is_same, scores)),
        eer=equal_error_rate(fpr, tpr),
        tar_at_far={float(far): tar_at_far(fpr, tpr, far) for far in fars},
        fpr=fpr,
        tpr=tpr,
        roc_thresholds=roc_thresholds,
        num_pairs=len(dist),
        num_same=int(is_same.sum()),
    )


def evaluate_pairs(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    pairs: Any,
    flip: bool = True,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    folds: int | str = "auto",
    progress: bool = True,
) -> VerificationResult:
    """Embed a dataset once and run the verification protocol on a ``PairList`` into it.

    Only the images the pairs reference are embedded.

    Args:
        model, flip, device, progress: as ``extract_embeddings``.
        dataset: the images the pairs index.
        pairs: an ``ecl.data.PairList`` (``index_a``, ``index_b``, ``is_same``, ``fold``).
        folds: "auto" keeps ``pairs.fold`` when the list has one, else 10 balanced folds; an int
            builds that many balanced folds; "given" requires ``pairs.fold``.
    """
    # Embed only the images the pairs use, once each.
    used, inverse = np.unique(
        np.r_[np.asarray(pairs.index_a), np.asarray(pairs.index_b)], return_inverse=True
    )
    subset = dataset if len(used) == len(dataset) else torch.utils.data.Subset(dataset, used.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
    embeddings = extract_embeddings(model, loader, flip=flip, device=device, progress=progress)
    if subset is not dataset:
        embeddings = embeddings[inverse].reshape(2, -1, embeddings.shape[1])
        embeddings_a, embeddings_b = embeddings[0], embeddings[1]
    else:
        embeddings_a, embeddings_b = (
            embeddings[np.asarray(pairs.index_a)],
            embeddings[np.asarray(pairs.index_b)],
        )
    fold_ids = getattr(pairs, "fold", None)
    if folds == "given" and fold_ids is None:
        raise ValueError("folds='given' but the pair list has no fold ids")
    chosen: int | np.ndarray
    if folds in ("auto", "given"):
        chosen = np.asarray(fold_ids) if fold_ids is not None and len(np.unique(fold_ids)) > 1 else 10
    else:
        chosen = int(folds)
    return verification(embeddings_a, embeddings_b, np.asarray(pairs.is_same, dtype=bool), folds=chosen)


# --------------------------------------------------------------------------- a model on named data


DATA_SPECS = "faceparts | faceparts-val | lfw:ROOT | lfw-view2:ROOT | celeba:ROOT | bin:FILE"

#: The split each kind of ``--data`` spec measures on; every result records it.
SPLITS = {
    "faceparts": "FaceParts test",
    "faceparts-val": "FaceParts validation",
    "lfw": "LFW View-1 test",
    "lfw-view2": "LFW View-2",
    "celeba": "CelebA test identities",
    "bin": "verification pack",
}


def evaluation_split(spec: str) -> str:
    """The split a ``--data`` spec measures on, e.g. ``"FaceParts validation"`` for ``faceparts-val``."""
    kind = spec.partition(":")[0]
    if kind not in SPLITS:
        raise ValueError(f"unknown data spec {spec!r}: use {DATA_SPECS}")
    return SPLITS[kind]


def load_evaluation_data(
    spec: str, image_size: int = 112, max_images: int | None = None
) -> tuple[Any, Any, Any]:
    """The data a ``--data`` spec names: ``(pair_dataset, pairs, explain_dataset or None)``.

    - ``faceparts``: the built-in FaceParts test split (100 identities x 10 images, 1,000 pairs in
      10 folds); explainability on the same images (5 landmarks and part masks). ``max_images``
      renders a smaller split instead (10 images per identity). ``faceparts-val``: the same on the
      validation split (other identities), where settings are chosen.
    - ``lfw:ROOT``: LFW View-1 test pairs (``pairsDevTest.txt``); ``lfw-view2:ROOT``: View-2
      ``pairs.txt``. Explainability on the View-1 test people with 68 landmarks (part masks drawn
      from them, instability on the 5 points derived from them).
    - ``celeba:ROOT``: pairs drawn on the CelebA test identities; explainability on them (68 points).
    - ``bin:FILE``: an insightface verification pack (no landmarks: translation tracking only).

    With ``max_images``, pair lists keep the first pairs of every fold's same and different halves
    (about ``max_images / 2`` pairs) and explainability uses the first ``max_images`` images.
    """
    from ecl import data as ecl_data

    kind, _, root = spec.partition(":")
    if kind in ("lfw", "lfw-view2", "celeba", "bin") and not root:
        raise ValueError(f"the data spec {kind}:PATH needs a path, e.g. {kind}:../shared/data/{kind}")
    if kind in ("faceparts", "faceparts-val"):
        per = 10
        identities = 100 if max_images is None else max(2, max_images // per)
        num_pairs = min(1000, max(20, identities * per // 40 * 20))
        dataset, pairs = ecl_data.build_pairs(
            "faceparts",
            None,
            split="val" if kind == "faceparts-val" else "test",
            image_size=image_size,
            num_pairs=num_pairs,
            num_identities=identities,
            images_per_identity=per,
        )
        return dataset, pairs, dataset
    if kind in ("lfw", "lfw-view2"):
        view = "test" if kind == "lfw" else "view2"
        dataset, pairs = ecl_data.build_pairs(
            "lfw",
            root,
            view=view,
            image_size=image_size,
            on_missing="drop",
            max_pairs=None if max_images is None else max(20, max_images // 2),
        )
        explain_dataset = ecl_data.build_dataset(
            "lfw", root, split="test", image_size=image_size, landmarks="68pt"
        )
        return dataset, pairs, explain_dataset
    if kind == "celeba":
        dataset, pairs = ecl_data.build_pairs(
            "celeba", root, split="test", image_size=image_size, landmarks="68pt"
        )
    elif kind == "bin":
        dataset, pairs = ecl_data.build_pairs("bin", root, image_size=image_size)
    else:
        raise ValueError(f"unknown data spec {spec!r}: use {DATA_SPECS}")
    if max_images is not None:
        pairs = subsample_pairs(pairs, max(20, max_images // 2))
    return dataset, pairs, dataset


def subsample_pairs(pairs: Any, max_pairs: int) -> Any:
    """The first pairs of every fold's same and different halves, about ``max_pairs`` in all."""
    from ecl.data import PairList

    folds = np.unique(pairs.fold)
    per = max(1, max_pairs // (2 * len(folds)))
    keep = []
    for fold in folds:
        for same in (True, False):
            keep.extend(np.flatnonzero((pairs.fold == fold) & (pairs.is_same == same))[:per].tolist())
    keep = np.sort(np.array(keep, dtype=np.int64))
    return PairList(pairs.index_a[keep], pairs.index_b[keep], pairs.is_same[keep], pairs.fold[keep])


def evaluate_model(
    model: nn.Module,
    data: str = "faceparts",
    batch_size: int = 64,
    flip: bool = True,
    explain: bool = True,
    max_images: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    curves: bool = False,
    target_layer: str | None = None,
) -> dict[str, Any]:
    """Verification and explainability numbers of a model on the data a spec names (what the CLI prints).

    Args:
        model: a ``FaceModel`` (its ``image_size`` sets the evaluation size).
        data: ``faceparts | lfw:ROOT | lfw-view2:ROOT | celeba:ROOT | bin:FILE`` (see
            :func:`load_evaluation_data`).
        batch_size: images per forward pass.
        flip: flip test-time augmentation for the embeddings.
        explain: also compute the explainability report (original and jittered images).
        max_images: a quick look on fewer images and pairs.
        device: default CUDA, then MPS, when available, else CPU.
        progress: show progress bars.
        curves: include the ROC curve (``fpr``, ``tpr``) in the verification numbers.
        target_layer: measure the explainability numbers at this layer instead of the one the model
            was trained with (``FaceModel.retarget``; the embeddings, and so verification, do not
            change). The model is given back its own layer afterwards.

    Returns:
        A dict in plain JSON types with the keys ``data``, ``split``, ``target_layer``, ``verification``
        and ``explainability`` (itself with ``original`` and ``jittered``).
    """
    from ecl.metrics import explainability_report

    device = resolve_device(device)
    model.to(device).eval()
    image_size = int(getattr(model, "image_size", 112))
    dataset, pairs, explain_dataset = load_evaluation_data(data, image_size, max_images)
    result = evaluate_pairs(
        model, dataset, pairs, flip=flip, batch_size=batch_size, device=device, progress=progress
    )
    trained_layer = getattr(model, "target_layer", None)
    output: dict[str, Any] = {
        "data": data,
        "split": evaluation_split(data),
        "target_layer": target_layer or trained_layer,
        "verification": result.to_dict(curves=curves),
    }
    if explain_dataset is not None and explain:
        if target_layer is not None and target_layer != trained_layer:
            model.retarget(target_layer)
        try:
            output["explainability"] = explainability_report(
                model,
                explain_dataset,
                batch_size=batch_size,
                max_images=max_images,
                device=device,
                progress=progress,
            )
        finally:
            if trained_layer is not None and getattr(model, "target_layer", None) != trained_layer:
                model.retarget(trained_layer)
    return json.loads(json.dumps(output, default=json_default))


__all__ = [
    "DATA_SPECS",
    "SPLITS",
    "FARS",
    "THRESHOLDS",
    "VerificationResult",
    "equal_error_rate",
    "evaluate_model",
    "evaluate_pairs",
    "evaluation_split",
    "extract_embeddings",
    "load_evaluation_data",
    "pair_distances",
    "subsample_pairs",
    "tar_at_far",
    "verification",
]
