"""Datasets: the built-in FaceParts renderer and loaders for real face data (see data/README.md).

Every dataset returns dict items with "image" float32 (3, S, S) in [0, 1], "label" int64,
"landmarks" float32 (K, 2) pixel (x, y) (NaN where missing), "index" int, and "masks" bool (P, S, S)
where the dataset has part masks (``part_names`` non-empty).
"""

from ecl.data.binpack import BinImages, UnsafePickleError, load_bin, safe_load_bin
from ecl.data.celeba import CelebA
from ecl.data.faceparts import (
    CHIMERA_PARTS,
    HAIR_STYLES,
    LANDMARK_NAMES,
    PART_NAMES,
    FaceParts,
    Identity,
    RenderConfig,
    chimera,
    default_cache_dir,
)
from ecl.data.factory import DATASETS, build_dataset, build_pairs
from ecl.data.lfw import LFW, lfw_pairs, read_lfw_pairs, read_lfw_people
from ecl.data.pairs import PairList, balanced_folds, faceparts_pairs
from ecl.data.real import (
    LANDMARK68_NAMES,
    FaceImages,
    ImageFolderFaces,
    five_from_68,
    read_landmarks_5pt,
    read_landmarks_68,
)
from ecl.data.transforms import Jitter, JitteredDataset, apply_affine, jittered

# Any labelled dataset can get a drawn pair list the same way as FaceParts.
make_pairs = faceparts_pairs

__all__ = [
    "BinImages",
    "CHIMERA_PARTS",
    "CelebA",
    "DATASETS",
    "FaceImages",
    "FaceParts",
    "HAIR_STYLES",
    "Identity",
    "ImageFolderFaces",
    "Jitter",
    "JitteredDataset",
    "LANDMARK68_NAMES",
    "LANDMARK_NAMES",
    "LFW",
    "PART_NAMES",
    "PairList",
    "RenderConfig",
    "UnsafePickleError",
    "apply_affine",
    "balanced_folds",
    "build_dataset",
    "build_pairs",
    "chimera",
    "default_cache_dir",
    "faceparts_pairs",
    "five_from_68",
    "jittered",
    "lfw_pairs",
    "load_bin",
    "make_pairs",
    "read_landmarks_5pt",
    "read_landmarks_68",
    "read_lfw_pairs",
    "read_lfw_people",
    "safe_load_bin",
]
