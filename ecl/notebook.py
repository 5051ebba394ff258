"""Notebook set-up shared by every chapter: renderers, seeds, threads, data roots.

Every chapter opens with the same *setup cell*, which does something only on Google Colab: it clones the
book's repository (:data:`REPO_URL`) at a pinned version (:data:`REPO_REF`), installs it with the tested
dependency versions of its ``constraints.txt`` (``pip install -c constraints.txt -e <clone>``, without the
``book`` extra: a reader needs neither jupyter-book nor papermill), and moves into the clone's ``book/``
folder, so a chapter finds ``configs/``, ``book/results/`` and ``../runs`` as in a local checkout. That cell
runs before ``ecl`` can be imported, so it repeats both values; ``tests/test_colab.py`` checks that they
equal the ones here and that every chapter's cell is the same. The environment variables ``ECL_REPO_URL``
and ``ECL_REPO_REF`` override them (the test points them at a local copy of the repository).

Chapters then call :func:`setup` in their first cell of code proper. It changes process-wide settings only
when called, never at import time.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecl import __version__
from ecl.utils import resolve_device

#: Where the book's source lives; the Colab badges and every chapter's setup cell point here.
REPO_URL = "https://github.com/ecl-book/ecl"
#: The version of the repository a chapter clones on Colab: the release tag of this version of the library
#: (``v`` + :data:`ecl.__version__`). A tag, not a branch, so a reader gets the code, presets and committed
#: results the chapter was executed with, and the same ones tomorrow; a tag, not a commit, because a commit
#: cannot name itself. Releasing a version therefore means: bump ``ecl.__version__``, set ``REPO_REF`` in
#: every chapter's setup cell to the new tag (``tests/test_colab.py`` fails until they agree), commit, and
#: push the tag ``v<version>`` on that commit.
REPO_REF = f"v{__version__}"


@dataclass(frozen=True)
class NotebookContext:
    """What :func:`setup` decided, for the chapter to print or use.

    Attributes:
        device: ``"cuda"``, ``"mps"`` or ``"cpu"``.
        in_colab: Whether the notebook runs on Google Colab.
        seed: The seed applied to ``random``, numpy and torch.
    """

    device: str
    in_colab: bool
    seed: int


def in_colab() -> bool:
    """Whether this kernel runs on Google Colab."""
    return "google.colab" in sys.modules


def setup(seed: int = 0, threads: int | None = None) -> NotebookContext:
    """Prepare a chapter: plotly inlined in the saved page, offline model hubs, seeds, CPU threads.

    Args:
        seed: Seed for ``random``, numpy and torch.
        threads: torch intra-op threads; default leaves torch's choice.

    Returns:
        A :class:`NotebookContext`.
    """
    import numpy as np
    import plotly.io as pio
    import torch

    # "notebook" inlines plotly.js into the saved output, so the published page draws the figure with no
    # network; the default renderer stores only JSON, which the book cannot show.
    pio.renderers["notebook"] = _offline_notebook_renderer(pio.renderers["notebook"])
    pio.renderers.default = "notebook"
    # Model weights are never downloaded by the book; a user who wants them passes pretrained=True.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    return NotebookContext(device=resolve_device("auto").type, in_colab=in_colab(), seed=seed)


#: Set to ``"1"`` by the book runner (:func:`ecl.book.run_book`, quick profile): :func:`supports` then raises.
STRICT_ENV = "ECL_BOOK_STRICT"


def supports(condition: bool, sentence: str) -> None:
    """Check that the numbers a chapter just computed still support a sentence of its prose.

    The prose of a chapter states what its numbers show ("the ECLoss run ends higher"); a cell after the
    numbers checks each such sentence with this function. In a book build of the quick profile (the runner
    sets ``ECL_BOOK_STRICT=1`` and trains on one CPU thread, so every build trains the same models) a sentence
    the numbers no longer support stops the build: the author rewrites it. Anywhere else (Jupyter, Colab, a
    GPU, another thread count or profile) the models differ a little from the published ones, so a sentence
    that no longer holds is printed as a note and the chapter goes on.

    Raises:
        AssertionError: in a strict build, when ``condition`` is false, quoting the sentence.
    """
    if condition:
        return
    message = f"the numbers above no longer support this sentence of the chapter: {sentence!r}"
    if os.environ.get(STRICT_ENV) == "1":
        raise AssertionError(f"{message}. Rewrite it from the numbers and rebuild.")
    print(
        f"note: {message}. The page was written for the models of the published book (quick profile, "
        "one CPU thread); yours differ a little, so read the numbers rather than that sentence."
    )


def chapter_models(
    profile: str = "quick",
    methods: Sequence[str] = ("baseline", "ecloss"),
    seed: int = 0,
    runs_root: str | os.PathLike = "../runs",
    device: str | None = "cpu",
    callbacks: Callable[[str], Sequence[Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The trained models a chapter shows: the FaceParts preset of ``profile`` with each method.

    Each model is loaded from its run folder under ``runs_root``, or trained there once
    (:func:`ecl.train.load_or_train`), so every chapter that asks for the same method and seed shares it.

    Args:
        profile: ``"quick"`` (the CPU grid's preset, :data:`ecl.experiments.BOOK_PRESETS`) or ``"full"``.
        methods: names of :data:`ecl.experiments.METHODS`.
        seed: the run seed.
        runs_root: folder of the run folders.
        device: where the returned models live (``None``: the config's device).
        callbacks: ``method -> training callbacks`` (e.g. a live plot), used only when a model is trained.

    Returns:
        ``(models, run_dirs)``, both keyed by method; the models in eval mode.
    """
    from ecl.config import load_config
    from ecl.experiments import BOOK_PRESETS, REPO, method_config
    from ecl.train import load_or_train

    preset = load_config(REPO / BOOK_PRESETS[profile])
    models, run_dirs = {}, {}
    for method in methods:
        config = method_config(preset, method, seed=seed)
        models[method], run_dirs[method] = load_or_train(
            config, root=runs_root, callbacks=callbacks(method) if callbacks else (), map_location=device
        )
    return models, run_dirs


def find_data_root(name: str, data_root: str | os.PathLike | None = None) -> Path | None:
    """Locate a real dataset folder for a chapter, or ``None`` when it is not on this machine.

    Looks in ``data_root`` (a chapter parameter), then ``$ECL_DATA_ROOT``, then the ``shared/data`` folder
    that developer machines and CI carry beside the repository.

    Args:
        name: Dataset folder name, e.g. ``"lfw"`` or ``"celeba_subset"``.
        data_root: Folder holding dataset folders.

    Returns:
        The dataset folder, or ``None``.
    """
    candidates = []
    if data_root:
        candidates.append(Path(data_root))
    if os.environ.get("ECL_DATA_ROOT"):
        candidates.append(Path(os.environ["ECL_DATA_ROOT"]))
    repo = Path(__file__).resolve().parents[1]
    candidates.append(repo.parent / "shared" / "data")
    for base in candidates:
        if (base / name).is_dir():
            return base / name
    return None


def _offline_notebook_renderer(renderer):
    """Plotly's ``notebook`` renderer without the MathJax ``<script>`` it loads from a CDN for each figure.

    The book serves its own MathJax (vendored), so that tag would only be a failed network request offline
    (or a second MathJax online). Idempotent: an already offline renderer is returned as it is.
    """
    from plotly.io._base_renderers import NotebookRenderer

    if getattr(renderer, "_ecl_offline", False):
        return renderer

    class OfflineNotebookRenderer(NotebookRenderer):
        _ecl_offline = True

        def to_mimebundle(self, fig_dict):
            bundle = super().to_mimebundle(fig_dict)
            html = bundle.get("text/html", "")
            bundle["text/html"] = re.sub(r'<script src="https://[^"]*mathjax[^"]*"></script>', "", html)
            return bundle

    return OfflineNotebookRenderer(config=renderer.config)


def glue(name: str, value: Any) -> bool:
    """Name ``value`` for the page's prose, showing nothing in the notebook.

    The built page writes it where the text says ``{glue:text}`name:.3f``` (MyST-NB's glue), so a number in
    a hand-written sentence still comes from the code that ran. Where MyST-NB is not installed (Colab, which
    installs the library without the book's tools) this does nothing, and the notebook's printed tables carry
    the numbers. Returns whether the value was glued.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return False
    myst_glue(name, value, display=False)
    return True
