"""The book runner and the offline HTML book: execution, failure reporting, build, and what a reader sees."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from ecl.book import BookError, check_executed, hide_injected_parameters, run_book, toc_notebooks

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]


def _notebook(cells: list[tuple[str, str, list[str]]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, source, tags in cells:
        cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


SMOKE = [
    (
        "markdown",
        "# Smoke chapter\n\n"
        "An equation: $$\\mathcal{L} = \\mathcal{L}_{id} + \\lambda \\mathcal{L}_{match}$$",
        [],
    ),
    ("code", 'profile = "full"', ["parameters"]),
    ("code", "import ecl.notebook\nctx = ecl.notebook.setup(seed=0)\nprint('profile', profile)", []),
    ("code", "long_line = " + " + ".join(f"{i}" for i in range(60)) + "\nprint('x' * 300)", []),
    ("code", "import plotly.graph_objects as go\ngo.Figure(go.Scatter(x=[0, 1, 2], y=[2, 0, 1]))", []),
    (
        "code",
        "import ipywidgets as widgets\nwidgets.IntSlider(value=3, min=0, max=9, description='channel')",
        [],
    ),
]


def _make_book(tmp: Path, notebooks: dict[str, list]) -> Path:
    """A small book with the project's real _config.yml, vendored JavaScript and CSS."""
    shutil.copy2(REPO / "_config.yml", tmp / "_config.yml")
    shutil.copytree(REPO / "_vendor", tmp / "_vendor")
    (tmp / "book").mkdir()
    shutil.copytree(REPO / "book" / "_static", tmp / "book" / "_static")
    shutil.copy2(REPO / "book" / "references.bib", tmp / "book" / "references.bib")
    (tmp / "book" / "intro.md").write_text("# Intro\n\nA test book.\n")
    chapters = []
    for name, cells in notebooks.items():
        nbformat.write(_notebook(cells), str(tmp / "book" / f"{name}.ipynb"))
        chapters.append({"file": f"book/{name}"})
    toc = {"format": "jb-book", "root": "book/intro", "chapters": chapters}
    (tmp / "_toc.yml").write_text(yaml.safe_dump(toc))
    return tmp


def test_toc_lists_the_real_books_notebooks_in_order():
    notebooks = toc_notebooks(REPO)
    assert notebooks, "the book's _toc.yml lists no notebook"
    assert all(p.suffix == ".ipynb" and (REPO / p).is_file() for p in notebooks)
    assert notebooks == sorted(notebooks, key=lambda p: p.name), "chapters should be listed in NN- order"


def test_every_chapter_has_exactly_one_parameters_cell_and_no_outputs():
    for rel in toc_notebooks(REPO):
        nb = nbformat.read(str(REPO / rel), as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{rel}: {len(tagged)} cells tagged 'parameters', want 1"
        assert "profile" in tagged[0].source, f"{rel}: the parameters cell must define `profile`"
        stale = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("outputs")]
        assert not stale, (
            f"{rel}: cells {stale} carry outputs; commit chapters stripped (the runner executes them)"
        )


def test_every_chapter_ends_with_a_summary_and_exercises_with_hidden_hints():
    for rel in toc_notebooks(REPO):
        nb = nbformat.read(str(REPO / rel), as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        headings = re.findall(r"^## (.+)$", text, flags=re.M)
        assert headings[-2:] == ["Summary", "Exercises"], f"{rel}: should end with ## Summary, ## Exercises"
        summary, exercises = text.split("\n## Summary", 1)[1].split("\n## Exercises", 1)
        assert summary.count("\n- ") >= 3, f"{rel}: the summary should list the chapter's points"
        numbered = re.findall(r"^\*\*\d+\. ", exercises, flags=re.M)
        assert 2 <= len(numbered) <= 4, f"{rel}: want two to four numbered exercises, found {len(numbered)}"
        assert exercises.count(":class: dropdown") >= len(numbered), (
            f"{rel}: every exercise needs a hint or solution in a collapsed (dropdown) admonition"
        )


def test_every_chapters_colab_setup_cell_is_folded_away_on_the_page():
    # Readers of the web book need no install step: pages open on the chapter, the cell one click away.
    for rel in toc_notebooks(REPO):
        nb = nbformat.read(str(REPO / rel), as_version=4)
        setup = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# Google Colab only")]
        assert len(setup) == 1, f"{rel}: want one Colab setup cell, found {len(setup)}"
        assert "hide-input" in setup[0].metadata.get("tags", []), (
            f"{rel}: tag the Colab setup cell hide-input"
        )


def test_vendored_javascript_matches_its_checksums():
    lines = (REPO / "_vendor" / "SHA256SUMS").read_text().split("\n")
    entries = [line.split() for line in lines if line.strip()]
    assert {name for _, name in entries} >= {
        "./widgets/require.js",
        "./widgets/embed-amd.js",
        "./mathjax/tex-mml-chtml.js",
    }
    for digest, name in entries:
        assert hashlib.sha256((REPO / "_vendor" / name).read_bytes()).hexdigest() == digest, name


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    """A one-chapter book (equation, plotly figure, widget) executed and built by the runner."""
    root = _make_book(tmp_path_factory.mktemp("smoke"), {"01-smoke": SMOKE})
    lines: list[str] = []
    html = run_book(root, profile="quick", echo=lines.append)
    return root, html, lines


def test_runner_executes_with_profile_parameters_and_builds(smoke_book):
    root, html, lines = smoke_book
    executed = nbformat.read(str(root / "_build" / "executed" / "book" / "01-smoke.ipynb"), as_version=4)
    printed = "".join(o.get("text", "") for o in executed.cells[3].outputs)
    assert "profile quick" in printed, "the quick profile's parameter did not reach the notebook"
    assert any("book/01-smoke.ipynb" in line and " s " in line for line in lines), lines
    page = (html / "book" / "01-smoke.html").read_text()
    # plotly.js inlined (no CDN), widget state saved, scripts served locally.
    assert "plotly-graph-div" in page and "Plotly.newPlot" in page
    remote = re.findall(r'<(?:script|link)[^>]*(?:src|href)="(https?://[^"]+)"', page)
    assert not [url for url in remote if url.endswith((".js", ".css"))], (
        f"page loads code from the network: {remote}"
    )
    assert "application/vnd.jupyter.widget-state+json" in page
    assert "_static/widgets/embed-amd.js" in page and "_static/mathjax/tex-mml-chtml.js" in page
    # The source notebook stays stripped.
    source = nbformat.read(str(root / "book" / "01-smoke.ipynb"), as_version=4)
    assert not any(c.get("outputs") for c in source.cells if c.cell_type == "code")


def test_page_shows_the_chapters_parameters_cell_but_not_papermills(smoke_book):
    root, html, _ = smoke_book
    executed = nbformat.read(str(root / "_build" / "executed" / "book" / "01-smoke.ipynb"), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    page = (html / "book" / "01-smoke.html").read_text()
    own = re.search(r'<div class="cell tag_parameters[^"]*">(.*?)</pre>', page, re.S)
    assert own and '"full"' in own.group(1), "the chapter's own parameters cell is gone"
    assert "tag_injected-parameters" not in page and "# Parameters" not in page, (
        "the cell papermill injected is shown"
    )


def test_page_uses_the_books_css_for_long_code_lines(smoke_book):
    _, html, _ = smoke_book
    page = (html / "book" / "01-smoke.html").read_text()
    assert re.search(r'<link[^>]*href="../_static/ecl\.css', page), "the book's CSS is not linked"
    css = (html / "_static" / "ecl.css").read_text()
    assert "div.cell_input pre" in css and "white-space: pre-wrap" in css
    # Only the vendored scripts the config names are included, each once (no root _static/ folder).
    scripts = re.findall(r'<script[^>]*src="([^"?]+)', page)
    assert len(scripts) == len(set(scripts)), scripts
    assert not [s for s in scripts if "mathjax" in s and not s.endswith("tex-mml-chtml.js")], scripts


def test_hide_injected_parameters_tags_only_papermills_cell(tmp_path):
    nb = _notebook([("code", 'profile = "full"', ["parameters"]), ("code", 'profile = "quick"', [])])
    nb.cells[1].metadata["tags"] = ["injected-parameters"]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    assert hide_injected_parameters(path) and hide_injected_parameters(path)
    tags = [c.metadata.get("tags") for c in nbformat.read(str(path), as_version=4).cells]
    assert tags == [["parameters"], ["injected-parameters", "remove-cell"]]
    nbformat.write(_notebook([("code", "x = 1", [])]), str(path))
    assert not hide_injected_parameters(path)


def test_failing_cell_stops_the_runner_naming_notebook_and_cell(tmp_path):
    failing = [
        ("code", 'profile = "quick"', ["parameters"]),
        ("code", "x = 1", []),
        ("code", "raise ValueError('channel 7 exploded')", []),
    ]
    root = _make_book(tmp_path, {"01-ok": SMOKE[:3], "02-broken": failing})
    with pytest.raises(BookError) as err:
        run_book(root, profile="quick", build=False, echo=lambda _: None)
    message = str(err.value)
    assert "02-broken.ipynb" in message and "cell 3" in message and "channel 7 exploded" in message


def test_cli_exit_code_and_message_on_failure(tmp_path):
    failing = [("code", 'profile = "quick"', ["parameters"]), ("code", "1 / 0", [])]
    root = _make_book(tmp_path, {"01-broken": failing})
    proc = subprocess.run(
        [sys.executable, "-m", "ecl", "book", "--root", str(root), "--no-build"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    assert "01-broken.ipynb" in proc.stderr and "ZeroDivisionError" in proc.stderr


def _printed(root: Path, chapter: str, code: str) -> str:
    """What the executed cell whose source contains ``code`` printed."""
    executed = nbformat.read(str(root / "_build" / "executed" / "book" / f"{chapter}.ipynb"), as_version=4)
    cell = next(c for c in executed.cells if c.cell_type == "code" and code in c.source)
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def test_runner_trains_on_one_thread_and_fails_on_an_unsupported_sentence(tmp_path, monkeypatch):
    # On a CPU the trained model depends on the thread count: every build must use the same one, or the
    # chapters' sentences, written for the committed models, fail on another machine (as they did in CI).
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("ECL_BOOK_STRICT", raising=False)
    cells = [
        ("code", 'profile = "quick"', ["parameters"]),
        ("code", "import torch, ecl.notebook\nprint('threads', torch.get_num_threads())", []),
        ("code", "ecl.notebook.supports(1 < 2, 'one is below two')", []),
        ("code", "ecl.notebook.supports(2 < 1, 'two is below one')", []),
    ]
    root = _make_book(tmp_path, {"01-claims": cells})
    with pytest.raises(BookError) as err:
        run_book(root, profile="quick", build=False, echo=lambda _: None)
    assert "cell 4" in str(err.value) and "two is below one" in str(err.value) and "Rewrite" in str(err.value)
    assert "threads 1" in _printed(root, "01-claims", "get_num_threads")
    assert os.environ["OMP_NUM_THREADS"] == "7" and "ECL_BOOK_STRICT" not in os.environ, (
        "environment not restored"
    )
    # The full profile's models are not the ones the prose describes: the same sentence is a printed note.
    run_book(root, profile="full", build=False, threads=2, echo=lambda _: None)
    assert "threads 2" in _printed(root, "01-claims", "get_num_threads")
    note = _printed(root, "01-claims", "two is below one")
    assert note.startswith("note:") and "two is below one" in note


def test_check_executed_rejects_unexecuted_and_error_cells(tmp_path):
    nb = _notebook([("code", "x = 1", [])])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(BookError, match="never executed"):
        check_executed(path)
    nb.cells[0].execution_count = 1
    nb.cells[0].outputs = [nbformat.v4.new_output("error", ename="KeyError", evalue="'eyes'", traceback=[])]
    nbformat.write(nb, str(path))
    with pytest.raises(BookError, match="KeyError"):
        check_executed(path)


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    root = _make_book(tmp_path, {"01-noparams": [("code", "x = 1", [])]})
    with pytest.raises(BookError, match="parameters"):
        run_book(root, build=False, echo=lambda _: None)


def test_build_fails_on_an_output_the_book_cannot_show(tmp_path):
    # Plotly's default renderer stores only its JSON mime type: the page would silently lack the figure.
    cells = [
        ("code", 'profile = "quick"', ["parameters"]),
        (
            "code",
            "import plotly.io as pio, plotly.graph_objects as go\npio.renderers.default = 'plotly_mimetype'\n"
            "go.Figure(go.Bar(x=[1], y=[2]))",
            [],
        ),
    ]
    root = _make_book(tmp_path, {"01-json-only": cells})
    with pytest.raises(BookError, match="jupyter-book build failed"):
        run_book(root, echo=lambda _: None)


@pytest.mark.browser
def test_built_page_renders_offline_in_chromium(smoke_book):
    """What a reader sees, with the network cut: the figure drawn, the widget drawn, the equation typeset."""
    from browser import dump_dom

    _, html, _ = smoke_book
    dom = dump_dom(html / "book" / "01-smoke.html")
    assert 'class="main-svg"' in dom, "plotly did not draw the figure"
    assert "widget-slider" in dom, "the ipywidgets slider was not drawn from its saved state"
    assert "<mjx-container" in dom, "MathJax did not typeset the equation"


def test_formulation_page_is_written_for_readers_not_the_specification():
    text = (REPO / "book" / "formulation.md").read_text()
    assert "{include}" not in text and "```{" not in text, "the formulation page must not include the spec"
    for spec_line in ("The book must", "*(choice)*", "(choice, ", "Measured caution"):
        assert spec_line not in text, f"the formulation page carries spec text: {spec_line!r}"
    assert text.count("$$") >= 16, "the formulation page should write its formulas as LaTeX maths"
