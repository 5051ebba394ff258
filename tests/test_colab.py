"""The chapters on Google Colab: every chapter opens with the same setup cell, which on Colab clones the
repository at the pinned version, installs it and moves into its ``book/`` folder, and is a no-op anywhere
else. The slow tests run that cell for real, offline, in a simulated Colab session:

- **Colab**: a stub ``google.colab`` package, imported when the kernel starts by a ``sitecustomize`` module
  (Colab's kernel imports the real one at start), so ``"google.colab" in sys.modules`` holds as on Colab.
  That is the only stand-in.
- **The repository**: ``ECL_REPO_URL`` points at a local git repository whose one commit is a snapshot of
  this working tree (tracked files and new, not ignored ones: what the next commit would hold), and
  ``ECL_REPO_REF`` at that commit. The cell runs its own ``git clone`` and ``git checkout``.
- **The install**: the kernel runs in a fresh virtual environment that sees the project environment's
  packages through a ``.pth`` line (a path only: the project's own editable ``ecl`` stays invisible), and
  the cell's own ``pip install -c constraints.txt -e <clone>`` runs there with ``PIP_NO_INDEX=1`` and no
  build isolation. So pip really resolves ``ecl``'s dependencies against ``constraints.txt`` (they must
  match the installed versions, or pip would need the index and fail) and setuptools really builds the
  editable install into the fresh environment; nothing is downloaded. pip does not touch the project
  environment (it is outside the fresh one); the tests check that the project's ``ecl`` is unchanged.

The notebooks are executed with papermill from a folder that holds only the notebook, as Colab's
``/content`` does. The setup cell alone takes seconds; a whole chapter (``slow``) about half a minute.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import nbformat
import pytest

import ecl
import ecl.notebook
import ecl.results
from ecl.book import toc_notebooks

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]
KERNEL = "ecl-colab-sim"


def _chapters() -> list[Path]:
    return [REPO / rel for rel in toc_notebooks(REPO)]


def _setup_cell(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return next(cell.source for cell in nb.cells if cell.cell_type == "code")


SETUP_CELL = _setup_cell(REPO / "book" / "04-training.ipynb")


def test_every_chapter_starts_with_the_same_setup_cell():
    for path in _chapters():
        assert _setup_cell(path) == SETUP_CELL, (
            f"{path.name}: its first code cell differs from the Colab setup cell of 04-training.ipynb"
        )


def _pinned(name: str) -> tuple[str, str]:
    """The environment variable and the default of ``NAME = os.environ.get(VAR, DEFAULT)`` in the cell."""
    for node in ast.parse(SETUP_CELL).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            call = node.value
            assert isinstance(call, ast.Call), ast.unparse(node)
            assert ast.unparse(call.func) == "os.environ.get", ast.unparse(node)
            variable, default = (ast.literal_eval(arg) for arg in call.args)
            return variable, default
    raise AssertionError(f"the setup cell assigns no {name}")


def test_setup_cell_pins_the_repository_and_version_of_ecl_notebook():
    assert _pinned("REPO_URL") == ("ECL_REPO_URL", ecl.notebook.REPO_URL)
    assert _pinned("REPO_REF") == ("ECL_REPO_REF", ecl.notebook.REPO_REF), (
        "the chapters' setup cell pins another version than ecl.notebook.REPO_REF: update REPO_REF in every "
        "chapter's first code cell (see ecl.notebook.REPO_REF for the release steps)"
    )
    assert ecl.notebook.REPO_REF == f"v{ecl.__version__}"
    # Installed with the tested versions and without the book extra (no jupyter-book, no papermill).
    assert '"-c", repo / "constraints.txt"' in SETUP_CELL and '"-e", repo' in SETUP_CELL
    assert "[book]" not in SETUP_CELL


def test_colab_badges_open_the_pinned_version_of_their_own_chapter():
    """A badge opening another version's notebook would run it against the pinned code: they must agree."""
    repo_path = ecl.notebook.REPO_URL.removeprefix("https://github.com/")
    for path in _chapters():
        nb = nbformat.read(str(path), as_version=4)
        expected = (
            f"https://colab.research.google.com/github/{repo_path}/blob/{ecl.notebook.REPO_REF}/"
            f"{path.relative_to(REPO).as_posix()}"
        )
        assert expected in nb.cells[0].source, f"{path.name}: its Colab badge does not open {expected}"


def _run_setup_cell(monkeypatch, cwd: Path, colab: bool) -> list:
    """Execute the setup cell in ``cwd``, recording instead of running any command; return the commands."""
    commands: list = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: commands.append(args))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(cwd)
    path_before = list(sys.path)
    exec(compile(SETUP_CELL, "setup cell", "exec"), {})
    assert Path.cwd() == cwd and sys.path == path_before
    return commands


def test_setup_cell_is_a_no_op_off_colab_and_inside_a_clone(monkeypatch, tmp_path):
    assert _run_setup_cell(monkeypatch, tmp_path, colab=False) == []
    # On Colab, in the book/ folder of a clone (configs/ beside it): nothing to do either.
    assert _run_setup_cell(monkeypatch, REPO / "book", colab=True) == []


def _snapshot_repository(dest: Path) -> str:
    """A git repository at ``dest`` whose one commit is this working tree; returns the commit."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file() and not src.is_symlink():  # files deleted in the working tree are left out
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-C", str(dest), "-c", "user.name=ecl tests", "-c", "user.email=tests@ecl.invalid"]
    subprocess.run(["git", "-c", "init.defaultBranch=main", "init", "-q", str(dest)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "working tree"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return head.stdout.strip()


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A kernel that looks like Colab's, in a fresh environment, with the repository at a local URL.

    Returns a function that executes a notebook in a new folder holding only that notebook (like Colab's
    ``/content``) and returns ``(executed notebook, folder)``.
    """
    import papermill

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the repository")
    base = tmp_path_factory.mktemp("colab")
    commit = _snapshot_repository(base / "remote")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "ecl_project_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")

    stub = base / "stub"
    (stub / "google" / "colab").mkdir(parents=True)
    (stub / "google" / "colab" / "__init__.py").write_text('"""Stand-in for Colab\'s google.colab."""\n')
    (stub / "sitecustomize.py").write_text("import google.colab  # as Colab's kernel does at start-up\n")

    kernels = base / "jupyter"
    (kernels / "kernels" / KERNEL).mkdir(parents=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (simulated Colab)",
        "language": "python",
        "env": {
            "PYTHONPATH": str(stub),
            "ECL_REPO_URL": str(base / "remote"),
            "ECL_REPO_REF": commit,
            "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0",  # pip reads this variable inverted: "0" is --no-build-isolation
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        },
    }
    (kernels / "kernels" / KERNEL / "kernel.json").write_text(json.dumps(spec))

    def execute(name: str, nb: nbformat.NotebookNode, **parameters):
        folder = base / name
        folder.mkdir()
        nbformat.write(nb, str(folder / f"{name}.ipynb"))
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("JUPYTER_PATH", str(kernels))
            papermill.execute_notebook(
                str(folder / f"{name}.ipynb"),
                str(base / f"{name}.executed.ipynb"),
                parameters=parameters,
                kernel_name=KERNEL,
                cwd=str(folder),
                progress_bar=False,
                execution_timeout=900,
            )
        return nbformat.read(str(base / f"{name}.executed.ipynb"), as_version=4), folder

    before = _project_install()
    yield execute
    assert _project_install() == before, "pip changed the project environment's ecl"


def _project_install() -> dict[str, bytes]:
    """The files of the project environment's ``ecl`` install (its editable hook and its metadata)."""
    site = Path(sysconfig.get_path("purelib"))
    files = [*site.glob("__editable__*ecl*"), *site.glob("ecl-*.dist-info/*")]
    return {str(path.relative_to(site)): path.read_bytes() for path in files if path.is_file()}


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


CHECK = """\
import importlib.metadata, json, subprocess, sys
from pathlib import Path

import ecl.config, ecl.experiments, ecl.results

preset = ecl.config.load_config(ecl.experiments.REPO / ecl.experiments.BOOK_PRESETS["quick"])
# What a restarted kernel sees: the editable install, not this kernel's sys.path entry.
restarted = subprocess.run([sys.executable, "-c", "import ecl.experiments; print(ecl.experiments.REPO)"],
                           cwd="/", capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps({
    "colab": "google.colab" in sys.modules,
    "cwd": str(Path.cwd()),
    "ecl": ecl.__file__,
    "repo": str(ecl.experiments.REPO),
    "prefix": sys.prefix,
    "installed_at": str(importlib.metadata.distribution("ecl").locate_file("")),
    "restarted": restarted,
    "preset": preset.run.name,
    "results": len(ecl.results.load_results("results")),
}))
"""


def test_setup_cell_on_colab_clones_installs_and_finds_configs_and_results(colab):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    # The setup cell twice: running it again (as after "Run all") changes nothing.
    nb.cells = [nbformat.v4.new_code_cell(SETUP_CELL) for _ in range(2)] + [nbformat.v4.new_code_cell(CHECK)]
    executed, folder = colab("setup", nb)
    printed = _stdout(executed.cells[-1])
    seen = json.loads(next((line for line in printed.splitlines() if line.startswith("{")), printed))
    clone = folder / "ecl-book"
    committed = ecl.results.load_results(REPO / "book" / "results")  # the working tree's, read the same way
    assert seen["colab"], "the stub did not make the kernel look like Colab's"
    assert seen["cwd"] == str(clone / "book"), "the cell did not move into the clone's book/ folder"
    assert seen["ecl"] == str(clone / "ecl" / "__init__.py") and seen["repo"] == str(clone)
    assert seen["restarted"] == str(clone), "a restarted kernel would not find the clone's ecl"
    assert Path(seen["prefix"]) == folder.parent / "venv", "the kernel does not run in the fresh environment"
    assert seen["installed_at"].startswith(seen["prefix"]), "pip installed ecl elsewhere"
    assert seen["preset"] == "faceparts-grid", "the preset was not read from the clone's configs/"
    assert seen["results"] == len(committed) > 0, "the clone's book/results/ is not the working tree's"
    assert (clone / "constraints.txt").is_file() and (clone / "configs").is_dir()


@pytest.mark.slow
def test_a_training_chapter_runs_on_colab(colab):
    """The own-loop chapter as a Colab reader runs it: it trains two models and reads committed runs."""
    chapter = nbformat.read(str(REPO / "book" / "10-own-loop.ipynb"), as_version=4)
    executed, folder = colab("10-own-loop", chapter)
    printed = "\n".join(_stdout(cell) for cell in executed.cells if cell.cell_type == "code")
    assert "training steps per model" in printed and "steps of 16 faces" in printed
    assert "the committed runs are not in" not in printed, "the chapter found no book/results/ in the clone"
    assert (folder / "ecl-book" / "book" / "results").is_dir()
