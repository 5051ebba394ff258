"""Datasets and pair lists by name: the one entry point that configs and the CLI use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from ecl.data.binpack import load_bin
from ecl.data.celeba import CelebA
from ecl.data.faceparts import FaceParts
from ecl.data.lfw import LFW, lfw_pairs
from ecl.data.pairs import PairList, faceparts_pairs
from ecl.data.real import ImageFolderFaces
from ecl.data.transforms import jittered

if TYPE_CHECKING:
    from ecl.config import ExperimentConfig

DATASETS = ("faceparts", "lfw", "celeba", "folder", "orl", "casia", "vggface2", "bin")
_FOLDER_NAMES = ("folder", "orl", "casia", "vggface2")
_REPO = Path(__file__).resolve().parents[2]


def _need_root(name: str, root: Any) -> None:
    if root is None:
        prepare = (
            name if name in ("lfw", "celeba", "orl") else "insightface_bins" if name == "bin" else "folder"
        )
        raise ValueError(
            f"dataset {name!r} needs root=<folder>; "
            f"get it with python data/{prepare}/prepare.py --root <folder>"
        )


def _folder(
    root: Any, split: str, image_size: int, test_fraction: float = 0.2, **kw: Any
) -> ImageFolderFaces:
    """Identity folders, with an identity-disjoint split: first (1 - test_fraction) of the sorted
    identities train."""
    prepare = kw.pop("prepare", "folder")
    full = ImageFolderFaces(
        root,
        image_size=image_size,
        check="none",
        prepare=prepare,
        **{k: v for k, v in kw.items() if k in ("extensions",)},
    )
    names = full.identities
    if split in ("train", "test"):
        cut = int(round((1 - test_fraction) * len(names)))
        names = names[:cut] if split == "train" else names[cut:]
    elif split != "all":
        raise ValueError(f"split must be 'train', 'test' or 'all' for identity folders, got {split!r}")
    return ImageFolderFaces(root, image_size=image_size, identities=names, prepare=prepare, **kw)


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    image_size: int = 112,
    jitter: float | dict[str, Any] | None = None,
    **kw: Any,
) -> Dataset:
    """A dataset by name.

    Args:
        name: "faceparts" (built in; ``root`` unused), "lfw" (``LFW``: split "train" = View 1 train
            people, "test", "view2", "all"), "celeba" (``CelebA``: "all", "train", "test"),
            "folder" / "orl" / "casia" / "vggface2" (``ImageFolderFaces``; "train"/"test" = first
            80% / last 20% of the sorted identities, ``test_fraction`` to change; "all"), or "bin"
            (an InsightFace pack; ``root`` is the .bin file; split unused).
        root: dataset folder (file for "bin").
        split: as above.
        image_size: output side S.
        jitter: None, a max shift (e.g. 0.15), or a dict of ``Jitter`` arguments: wraps the dataset
            in ``jittered`` (the unaligned evaluation copy).
        **kw: passed to the dataset class (e.g. FaceParts ``num_identities``, ``images_per_identity``,
            ``seed``, ``difficulty``, ``cache_dir``; LFW ``landmarks``, ``people``, ``max_people``).

    Returns:
        A Dataset whose items are dicts (image, label, landmarks, [masks], index).
    """
    name = name.lower()
    if name == "faceparts":
        ds: Dataset = FaceParts(split=split, image_size=image_size, **kw)
    elif name == "lfw":
        _need_root(name, root)
        ds = LFW(root, split=split, image_size=image_size, **kw)  # type: ignore[arg-type]
    elif name == "celeba":
        _need_root(name, root)
        ds = CelebA(root, split=split, image_size=image_size, **kw)  # type: ignore[arg-type]
    elif name in _FOLDER_NAMES:
        _need_root(name, root)
        kw.setdefault("prepare", "orl" if name == "orl" else "folder")
        ds = _folder(root, split, image_size, **kw)
    elif name == "bin":
        _need_root(name, root)
        ds = load_bin(root, image_size=image_size)[0]  # type: ignore[arg-type]
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if jitter is not None:
        ds = jittered(ds, **(jitter if isinstance(jitter, dict) else {"max_shift": float(jitter)}))
    return ds


def build_pairs(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "test",
    image_size: int = 112,
    num_pairs: int = 1000,
    folds: int = 10,
    seed: int = 0,
    view: str = "test",
    jitter: float | dict[str, Any] | None = None,
    **kw: Any,
) -> tuple[Dataset, PairList]:
    """A verification set by name: (dataset, PairList indexing into it).

    Args:
        name: "faceparts" (``faceparts_pairs`` on the ``split`` split), "lfw" (official list ``view``:
            "test" = View 1 pairsDevTest, "train", "view2" = pairs.txt), "bin" (``root`` = .bin file),
            or "celeba" / "folder" / "orl" (pairs drawn from the labels like FaceParts).
        root: dataset folder (file for "bin").
        split: dataset split for the drawn lists (default "test").
        image_size: output side S.
        num_pairs, folds, seed: for drawn lists (ignored by LFW and bin lists, which are fixed).
        view: LFW list.
        jitter: as in ``build_dataset`` (the pairs are unchanged; only the images move).
        **kw: passed to the dataset class.
    """
    name = name.lower()
    if name == "lfw":
        _need_root(name, root)
        ds, pairs = lfw_pairs(root, view=view, image_size=image_size, **kw)  # type: ignore[arg-type]
    elif name == "bin":
        _need_root(name, root)
        ds, pairs = load_bin(root, image_size=image_size, folds=folds)  # type: ignore[arg-type]
    else:
        ds = build_dataset(name, root, split=split, image_size=image_size, **kw)
        pairs = faceparts_pairs(ds, num_pairs=num_pairs, folds=folds, seed=seed)
    if jitter is not None:
        ds = jittered(ds, **(jitter if isinstance(jitter, dict) else {"max_shift": float(jitter)}))
    return ds, pairs


def build_train_dataset(cfg: ExperimentConfig) -> Dataset:
    """The training dataset of a config (:func:`build_dataset` plus optional jitter)."""

    data = cfg.data
    kwargs = dict(data.options)
    if data.name == "faceparts":
        kwargs.setdefault("num_identities", data.num_identities)
        kwargs.setdefault("images_per_identity", data.images_per_identity)
        kwargs.setdefault("seed", data.seed)
    root = resolve_data_root(data.root) if data.root is not None else None
    jitter = {"max_shift": data.jitter, "seed": data.seed} if data.jitter > 0 else None
    dataset = build_dataset(
        data.name, root, split=data.split, image_size=data.image_size, jitter=jitter, **kwargs
    )
    return dataset


def resolve_data_root(root: str) -> Path:
    """``data.root`` as a path: ``~`` and ``$VARS`` expanded; a relative path is looked up in the
    current folder first, then in the repository root (so ``../shared/data/lfw`` in a preset works
    from the repository and from ``book/``).

    Raises:
        FileNotFoundError: neither exists (the message says how to set the root).
    """
    path = Path(os.path.expandvars(os.path.expanduser(root)))
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, _REPO / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"data.root {root!r} does not exist (looked for {tried}); point it at the dataset folder with "
        "--set data.root=/path/to/dataset"
    )
