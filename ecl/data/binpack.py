"""InsightFace ``.bin`` verification packs (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin).

A pack is a pickle of ``(bins, issame_list)``: ``bins`` a list of encoded images (2 per pair, in
pair order) and ``issame_list`` one boolean per pair. Unpickling can run arbitrary code, so this
module uses a restricted unpickler that resolves NO global at all: only the built-in containers and
scalars that pickle encodes without a global (bytes, str, lists, tuples, booleans, ints, None) can
be built (plus protocol 2's spelling of bytes, ``_codecs.encode(str, "latin1")``, answered by a
checked stand-in), and anything else (a class, a function, ``os.system``...) raises ``UnsafePickleError``
before it is looked up. The result is then checked to be exactly (list of bytes, list of bools).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ecl.data.faceparts import LANDMARK_NAMES, image_to_tensor
from ecl.data.pairs import PairList, balanced_folds


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain bytes, lists, tuples and booleans."""


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """How protocol-2 pickles written by Python 3 spell bytes: ``_codecs.encode(str, "latin1")``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only accepted as the latin1 spelling of bytes")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes  # a checked stand-in, not the real function
        raise UnsafePickleError(
            f"refusing to load global {module}.{name}: a verification pack may only hold bytes, lists, "
            "tuples and booleans"
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise UnsafePickleError("refusing persistent ids in a verification pack")


def safe_load_bin(data: bytes) -> tuple[list[bytes], list[bool]]:
    """Unpickle a verification pack's bytes safely.

    Returns:
        (bins, issame): encoded images (bytes), and one bool per pair (len(bins) == 2 * len(issame)).

    Raises:
        UnsafePickleError: the pickle references any global (class, function) or has the wrong structure.
    """
    # encoding="bytes": packs written by Python 2 store images as str, which must stay bytes
    obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise UnsafePickleError(f"expected a (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise UnsafePickleError("bins must be a list of bytes")
    if not isinstance(issame, (list, tuple)) or not all(isinstance(s, bool) for s in issame):
        raise UnsafePickleError("issame_list must be a list of booleans")
    if len(bins) != 2 * len(issame):
        raise UnsafePickleError(f"{len(bins)} images for {len(issame)} pairs (expected 2 per pair)")
    return [bytes(b) for b in bins], list(issame)


class BinImages(Dataset):
    """Decoded images of a verification pack. Labels are unknown (-1), landmarks NaN; no alignment is undone.

    Args:
        bins: encoded images.
        image_size: output side S (packs are usually 112 x 112 already).
    """

    landmark_names = LANDMARK_NAMES
    part_names: tuple[str, ...] = ()
    num_classes = 0

    def __init__(self, bins: list[bytes], image_size: int = 112):
        self.bins, self.image_size = bins, int(image_size)
        self.labels = np.full(len(bins), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index) % len(self)
        img = Image.open(io.BytesIO(self.bins[index])).convert("RGB")
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return {
            "image": image_to_tensor(arr),
            "label": torch.tensor(-1, dtype=torch.int64),
            "landmarks": torch.full((len(LANDMARK_NAMES), 2), float("nan")),
            "index": index,
        }


def load_bin(path: str | os.PathLike, image_size: int = 112, folds: int = 10) -> tuple[BinImages, PairList]:
    """Load an InsightFace ``.bin`` pack: (dataset of its images, PairList with pairs (2p, 2p + 1)).

    Folds follow the insightface evaluation code (KFold without shuffling): contiguous blocks of the
    pair list; for a list of same/different blocks (LFW order) that is also balanced.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"verification pack {str(path)!r} does not exist. Get it with: "
            f"python data/insightface_bins/prepare.py --root {path.parent} (see data/README.md)"
        )
    bins, issame = safe_load_bin(path.read_bytes())
    n = len(issame)
    fold = np.repeat(np.arange(folds), int(np.ceil(n / folds)))[:n] if n else np.zeros(0, np.int64)
    same = np.array(issame, dtype=bool)
    if n and (np.bincount(fold, weights=same, minlength=folds) == 0).any():
        fold = balanced_folds(same, folds)  # a list sorted all-same-then-different: balance it
    pairs = PairList(np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2), same, fold)
    return BinImages(bins, image_size), pairs
