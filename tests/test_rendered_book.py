"""The real book, as a reader opens it: every chapter's page exists, and the pages with figures, widgets and
equations render them offline in headless chromium.

CI builds the book once (`make book`) and points ECL_BOOK_HTML at it; without that variable this module
executes and builds the whole book itself with the quick profile (minutes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ecl.book import run_book, toc_notebooks

pytestmark = [pytest.mark.slow, pytest.mark.book]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def book_html(tmp_path_factory) -> Path:
    given = os.environ.get("ECL_BOOK_HTML")
    if given:
        html = Path(given)
        assert (html / "index.html").is_file(), f"ECL_BOOK_HTML={given} holds no built book"
        return html
    return run_book(REPO, profile="quick", out=tmp_path_factory.mktemp("book"), echo=lambda _: None)


def test_every_chapter_has_a_page(book_html):
    for rel in toc_notebooks(REPO):
        page = book_html / rel.with_suffix(".html")
        assert page.is_file(), f"no page for {rel}"
        assert "output text_html" in page.read_text() or "cell_output" in page.read_text(), (
            f"{page} shows no output"
        )


@pytest.mark.browser
@pytest.mark.parametrize(("chapter", "equations"), [("02-method", 3), ("05-inside", 1)])
def test_chapter_renders_figures_widgets_and_equations_offline(book_html, chapter, equations):
    from browser import dump_dom

    dom = dump_dom(book_html / "book" / f"{chapter}.html")
    assert dom.count('class="main-svg"') >= 2, f"{chapter}: plotly figures were not drawn"
    assert "widget-slider" in dom, f"{chapter}: the widget was not drawn from its saved state"
    assert "widget-image" in dom, f"{chapter}: the widget's picture is missing"
    assert dom.count("<mjx-container") >= equations, f"{chapter}: MathJax did not typeset the equations"
