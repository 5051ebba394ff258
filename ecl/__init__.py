"""ecl: Explainable Channel Loss (ECLoss) for face recognition, as a small PyTorch library.

A reconstruction of Lin, Liu, Li and Shen, "Activation Template Matching Loss for Explainable
Face Recognition" (arXiv 2207.02179, FG 2023). The paper's code and full text are not public; the
exact formulation implemented here, and which parts of it are documented choices, is in the book.

Submodules are imported lazily (``ecl.losses``, ``ecl.models``, ``ecl.data`` ...), so
``import ecl`` is cheap and does no work at import time.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "activations",
    "attribution",
    "book",
    "checkpoint",
    "cli",
    "config",
    "data",
    "evaluate",
    "experiments",
    "losses",
    "metrics",
    "models",
    "notebook",
    "optim",
    "pair_explain",
    "pair_methods",
    "pair_scores",
    "reproduce",
    "results",
    "runtime",
    "studies",
    "train",
    "utils",
    "viz",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"ecl.{name}")
    raise AttributeError(f"module 'ecl' has no attribute {name!r}")
