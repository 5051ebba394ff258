"""Verification pair lists (LFW-style): which two images, same person or not, and the fold of each pair."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PairList:
    """A verification list: pair ``p`` compares items ``index_a[p]`` and ``index_b[p]`` of one dataset.

    Attributes:
        index_a: int64 (P,) indices into the dataset.
        index_b: int64 (P,) indices into the dataset.
        is_same: bool (P,) whether the two images show the same identity.
        fold: int64 (P,) cross-validation fold 0..folds-1 of each pair, in list order.
    """

    index_a: np.ndarray
    index_b: np.ndarray
    is_same: np.ndarray
    fold: np.ndarray

    def __post_init__(self) -> None:
        self.index_a = np.asarray(self.index_a, dtype=np.int64)
        self.index_b = np.asarray(self.index_b, dtype=np.int64)
        self.is_same = np.asarray(self.is_same, dtype=bool)
        self.fold = np.asarray(self.fold, dtype=np.int64)
        n = len(self.index_a)
        if not (len(self.index_b) == len(self.is_same) == len(self.fold) == n):
            raise ValueError("PairList fields must all have the same length")

    def __len__(self) -> int:
        return len(self.index_a)

    @property
    def num_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self.fold) else 0


def balanced_folds(is_same: Sequence[bool], folds: int = 10) -> np.ndarray:
    """Fold ids for a list without its own folds: each fold gets equal shares of same and different pairs.

    Same pairs are cut into ``folds`` contiguous chunks in list order, and so are different pairs
    (METHOD section 7; LFW View-1 ``pairsDevTest.txt`` is all same pairs, then all different pairs).
    """
    is_same = np.asarray(is_same, dtype=bool)
    fold = np.empty(len(is_same), dtype=np.int64)
    for value in (True, False):
        idx = np.flatnonzero(is_same == value)
        for f, chunk in enumerate(np.array_split(idx, folds)):
            fold[chunk] = f
    return fold


def faceparts_pairs(dataset, num_pairs: int = 1000, folds: int = 10, seed: int = 0) -> PairList:
    """An LFW-style verification list on a labelled dataset (FaceParts test split, or any with ``labels``).

    Identities are dealt to folds (as LFW View 2 keeps people within one fold) when there are at
    least two per fold; otherwise pairs are dealt to folds at random. Every fold holds
    ``num_pairs // (2 * folds)`` same pairs followed by as many different pairs; no pair repeats.

    Args:
        dataset: anything with a ``labels`` sequence (identity per item).
        num_pairs: total pairs; rounded down to a multiple of ``2 * folds``.
        folds: number of folds.
        seed: pairs are a deterministic function of (labels, num_pairs, folds, seed).

    Returns:
        PairList in fold order (fold 0 same, fold 0 different, fold 1 same, ...).
    """
    labels = np.asarray(dataset.labels, dtype=np.int64)
    per = num_pairs // (2 * folds)
    if per < 1:
        raise ValueError(f"num_pairs={num_pairs} is too small for {folds} folds (need >= {2 * folds})")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9A125]))
    ids = np.unique(labels)
    members = {int(i): np.flatnonzero(labels == i) for i in ids}
    multi = [i for i in ids.tolist() if len(members[i]) >= 2]
    if len(multi) < 1 or len(ids) < 2:
        raise ValueError("need at least two identities, one with >= 2 images, to build pairs")
    if len(ids) >= 2 * folds and len(multi) >= folds:
        # identity-disjoint folds: deal identities with >= 2 images first, so every fold has some
        order = (
            rng.permutation(multi).tolist()
            + rng.permutation([i for i in ids.tolist() if i not in multi]).tolist()
        )
        groups = [order[f::folds] for f in range(folds)]
    else:
        groups = [ids.tolist()] * folds
    seen: set[tuple[int, int]] = set()
    rows: list[tuple[int, int, bool, int]] = []
    for f, group in enumerate(groups):
        gm = [i for i in group if len(members[i]) >= 2]
        for same in (True, False):
            made, tries = 0, 0
            while made < per:
                tries += 1
                if tries > 1000 * per:
                    raise ValueError(
                        f"cannot draw {per} distinct {'same' if same else 'different'} pairs in fold {f}; "
                        "lower num_pairs or add identities/images"
                    )
                if same:
                    a, b = rng.choice(members[int(rng.choice(gm))], 2, replace=False)
                else:
                    ia, ib = rng.choice(group, 2, replace=False)
                    a, b = rng.choice(members[int(ia)]), rng.choice(members[int(ib)])
                key = (int(min(a, b)), int(max(a, b)))
                if key in seen:
                    continue
                seen.add(key)
                rows.append((int(a), int(b), same, f))
                made += 1
    a, b, s, fo = zip(*rows, strict=True)
    return PairList(np.array(a), np.array(b), np.array(s), np.array(fo))
