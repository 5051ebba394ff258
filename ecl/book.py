"""The book runner: execute every chapter with papermill, then build the HTML book with Jupyter Book 1.x.

``python -m ecl book --profile quick`` is what ``make book`` and CI run. It

1. reads ``_toc.yml`` and executes each listed notebook with papermill, in the notebook's own folder,
   passing the profile's parameters (only those the notebook declares in its ``parameters`` cell),
   into executed copies under ``_build/executed/`` (the sources stay stripped of outputs);
2. prints one line per notebook with its wall time, and stops at the first failure with the notebook,
   the cell and the error;
3. checks every executed copy (each code cell ran, no error output) and builds the book from a staged
   copy of the sources with execution off, ``-W`` turning any Sphinx warning (an output the book cannot
   show, a broken reference) into a failure. The HTML lands in ``_build/html``. In the staged copies the
   cell papermill injects (tagged ``injected-parameters``) is tagged ``remove-cell``: the page shows the
   chapter's own ``parameters`` cell, not the runner's plumbing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ecl.notebook import STRICT_ENV
from ecl.utils import restored_environ

#: Parameters each profile passes to the notebooks (a notebook receives the ones it declares).
#: ``quick`` finishes on a 2-core CPU in minutes (CI); ``full`` is the GPU profile behind the book's results.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"profile": "quick"},
    "full": {"profile": "full"},
}

#: Files and folders of the book root copied into the staging tree besides the executed notebooks.
_STAGED = ("_config.yml", "_toc.yml", "_vendor", "docs")


class BookError(RuntimeError):
    """A chapter failed to execute or the book failed to build."""


def toc_notebooks(root: str | os.PathLike = ".") -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in reading order, relative to ``root``.

    Args:
        root: Book root holding ``_config.yml`` and ``_toc.yml``.

    Returns:
        Paths of the ``.ipynb`` files the table of contents names (entries without a suffix are
        resolved to an existing ``.ipynb``; markdown pages are skipped).
    """
    root = Path(root)
    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        raise BookError(f"no _toc.yml in {root.resolve()}: run from the repository root or pass --root")
    toc = yaml.safe_load(toc_path.read_text())
    entries: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    entries.append(str(node[key]))
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    notebooks = []
    for entry in entries:
        path = root / entry
        candidates = [path] if path.suffix else [path.with_suffix(".ipynb"), path.with_suffix(".md")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise BookError(f"_toc.yml lists {entry!r} but no such file exists under {root.resolve()}")
        if found.suffix == ".ipynb":
            notebooks.append(found.relative_to(root))
    return notebooks


def notebook_parameters(path: Path, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``wanted`` that the notebook declares in its cell tagged ``parameters``."""
    import papermill

    declared = papermill.inspect_notebook(str(path))
    if not declared and wanted:
        raise BookError(f"{path} has no cell tagged 'parameters': add one so papermill can pass the profile")
    return {k: v for k, v in wanted.items() if k in declared}


def check_executed(path: str | os.PathLike) -> None:
    """Raise :class:`BookError` unless every code cell of an executed notebook ran without error."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                raise BookError(f"{path}: cell {index} failed: {output.get('ename')}: {output.get('evalue')}")
        if cell.get("execution_count") is None:
            raise BookError(
                f"{path}: cell {index} was never executed (missing output); rerun the book runner"
            )


def execute_notebook(
    src: Path, dst: Path, parameters: Mapping[str, Any], kernel: str = "python3", log_output: bool = False
) -> float:
    """Execute ``src`` into ``dst`` with papermill in the notebook's own folder; return the wall time.

    Raises:
        BookError: naming the notebook, the failing cell and the error.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    dst.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(src),
            str(dst),
            parameters=dict(parameters),
            kernel_name=kernel,
            cwd=str(src.parent),
            progress_bar=False,
            log_output=log_output,
        )
    except PapermillExecutionError as err:
        first_line = next((line for line in (err.source or "").splitlines() if line.strip()), "")
        raise BookError(
            f"{src}: cell {err.cell_index} of the executed copy {dst} (execution count {err.exec_count}, "
            f"starting {first_line!r}) failed: {err.ename}: {err.evalue}"
        ) from err
    return time.perf_counter() - start


def hide_injected_parameters(path: str | os.PathLike) -> bool:
    """Tag the cell papermill injected (``injected-parameters``) ``remove-cell``, so the page leaves it out.

    The chapter's own ``parameters`` cell stays: it shows the reader what can be changed. Idempotent.

    Returns:
        Whether the notebook has an injected cell.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    changed = False
    for cell in injected:
        tags = cell.metadata.setdefault("tags", [])
        if "remove-cell" not in tags:
            tags.append("remove-cell")
            changed = True
    if changed:
        nbformat.write(nb, str(path))
    return bool(injected)


def stage_book(root: Path, executed: Mapping[Path, Path], stage: Path) -> Path:
    """Copy the book sources into ``stage``, with executed notebooks in place of the stripped ones.

    The staged ``_config.yml`` turns execution off: the outputs come from the runner, not from the build.
    The cells papermill injected are hidden from the pages (:func:`hide_injected_parameters`).
    """
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in _STAGED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, stage / name)
        elif src.is_file():
            shutil.copy2(src, stage / name)
    # Every non-notebook file of the book folders (markdown, bib, images, results) goes along as is.
    for rel in {p.parent for p in [*executed.keys()]} | {Path("book")}:
        src_dir = root / rel
        if not src_dir.is_dir():
            continue
        shutil.copytree(
            src_dir,
            stage / rel,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("*.ipynb", "_build", ".ipynb_checkpoints", "__pycache__"),
        )
    for rel, executed_path in executed.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(executed_path, stage / rel)
        hide_injected_parameters(stage / rel)
    config_path = stage / "_config.yml"
    config = yaml.safe_load(config_path.read_text()) or {}
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return stage


def build_html(stage: Path, out: Path, strict: bool = True) -> Path:
    """Build the staged book with Jupyter Book 1.x into ``out / 'html'``; return that folder."""
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if jb is None:
        raise BookError("jupyter-book is not installed: pip install -e '.[book]' (or run `make book`)")
    cmd = [jb, "build", str(stage), "--builder", "html", "--path-output", str(stage)]
    if strict:
        cmd += ["-W", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (out / "build.log").parent.mkdir(parents=True, exist_ok=True)
    (out / "build.log").write_text(log)
    if proc.returncode != 0:
        tail = "\n".join(line for line in log.splitlines() if "WARNING" in line or "ERROR" in line)[-4000:]
        raise BookError(f"jupyter-book build failed (full log: {out / 'build.log'}):\n{tail or log[-4000:]}")
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    shutil.copytree(stage / "_build" / "html", html)
    return html


def _execute_all(
    root: Path,
    notebooks: list[Path],
    out: Path,
    only: Iterable[str] | None,
    wanted: Mapping[str, Any],
    kernel: str,
    echo,
) -> tuple[dict[Path, Path], int]:
    """Execute the notebooks ``only`` selects; return every executed copy to stage, and how many ran."""
    executed: dict[Path, Path] = {}
    ran = 0
    for rel in notebooks:
        dst = out / "executed" / rel
        if only and not any(part in str(rel) for part in only):
            if dst.is_file():  # an executed copy from an earlier run is staged as it is
                executed[rel] = dst
            continue
        params = notebook_parameters(root / rel, wanted)
        seconds = execute_notebook(root / rel, dst, params, kernel=kernel)
        check_executed(dst)
        executed[rel] = dst
        ran += 1
        echo(f"{seconds:7.1f} s  {rel}")
    return executed, ran


def run_book(
    root: str | os.PathLike = ".",
    profile: str = "quick",
    out: str | os.PathLike | None = None,
    only: Iterable[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    build: bool = True,
    kernel: str = "python3",
    threads: int = 1,
    echo=print,
) -> Path | None:
    """Execute the book's notebooks with ``profile`` and build the HTML book.

    Args:
        root: Book root (``_config.yml``, ``_toc.yml``).
        profile: ``"quick"`` (CPU, minutes) or ``"full"`` (GPU).
        out: Output folder, ``<root>/_build`` by default; executed copies go to ``out/executed``.
        only: Execute only notebooks whose path contains one of these strings (the others are staged from
            earlier executed copies if present, else skipped from the build check).
        parameters: Extra parameters for every notebook, on top of the profile's.
        build: Build the HTML book after executing.
        kernel: Jupyter kernel name.
        threads: torch threads of every kernel (``OMP_NUM_THREADS``). One by default: a model trained on the
            CPU depends on the thread count, and one thread trains the very models of the committed results
            (``reproduce`` trains on one thread), which the prose of the quick profile describes.
        echo: Where progress lines go.

    Returns:
        The HTML folder, or ``None`` when ``build`` is false.

    Raises:
        BookError: on the first failing notebook or a failed build, naming what failed.
    """
    root = Path(root).resolve()
    if profile not in PROFILES:
        raise BookError(f"unknown profile {profile!r}: choose one of {sorted(PROFILES)}")
    if threads < 1:
        raise BookError(f"threads must be at least 1, got {threads}")
    out = Path(out).resolve() if out is not None else root / "_build"
    wanted = {**PROFILES[profile], **(parameters or {})}
    notebooks = toc_notebooks(root)
    # The kernels inherit this process's environment: one torch thread (the CPU results depend on the thread
    # count, so every build trains the models of the committed results), and, for the quick profile whose
    # models the prose describes, sentences the numbers no longer support fail the build.
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if profile == "quick":
        env[STRICT_ENV] = "1"
    total = time.perf_counter()
    with restored_environ(*env):
        os.environ.update(env)
        executed, ran = _execute_all(root, notebooks, out, only, wanted, kernel, echo)
    echo(f"{time.perf_counter() - total:7.1f} s  executed {ran} notebook(s), profile {profile!r}")
    if not build:
        return None
    missing = [str(rel) for rel in notebooks if rel not in executed]
    if missing:
        raise BookError(f"no executed copy of {missing}: run without --only first")
    start = time.perf_counter()
    html = build_html(stage_book(root, executed, out / "stage"), out)
    echo(f"{time.perf_counter() - start:7.1f} s  built {html / 'index.html'}")
    return html
