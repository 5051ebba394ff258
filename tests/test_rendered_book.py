"""The real book, as a reader opens it: every chapter's page exists, and the pages with figures, widgets and
equations render them offline in headless chromium.

CI builds the book once (`make book`) and points ECL_BOOK_HTML at it; without that variable this module
executes and builds the whole book itself with the quick profile (minutes).
"""

from __future__ import annotations

import os
import re
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


def _text(dom: str) -> str:
    """The page's visible words, roughly: tags dropped."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.browser
def test_formulation_appendix_typesets_its_maths_and_reads_as_a_page_for_readers(book_html):
    from browser import dump_dom

    dom = dump_dom(book_html / "book" / "formulation.html")
    assert dom.count("<mjx-container") >= 15, "the formulation's equations were not typeset"
    text = _text(dom)
    assert "Where each piece comes from" in text and "ICNN" in text and "SAD" in text
    # Nothing of the specification leaks into the page: no raw LaTeX left untypeset, no lines to implementers.
    assert "\\mathcal" not in text and "The book must" not in text and "(choice)" not in text


@pytest.mark.browser
def test_verdict_page_shows_each_claim_with_numbers_from_the_results(book_html):
    from browser import dump_dom

    dom = dump_dom(book_html / "book" / "11-verdict.html")
    text = _text(dom)
    for claim in ("Claim 1", "Claim 2", "Claim 3", "Claim 4", "Summary", "Exercises"):
        assert claim in text, f"the verdict page lacks its section {claim!r}"
    assert "{glue" not in text and "glue:text" not in text, "a glued number was not filled in"
    # The numbers in the prose are filled in from the results (e.g. "falls from 0.105 to 0.070").
    assert len(re.findall(r"\b0\.\d{2,3}\b", text)) >= 20, "the verdict's sentences carry too few numbers"
    assert dom.count("<table") >= 2, "the verdict's tables are missing"


@pytest.mark.browser
@pytest.mark.parametrize("page", ["10-own-loop", "glossary"])
def test_new_pages_render_offline(book_html, page):
    from browser import dump_dom

    dom = dump_dom(book_html / "book" / f"{page}.html")
    text = _text(dom)
    assert "Traceback" not in text, f"{page}: an error is shown on the page"
    if page == "10-own-loop":
        assert "Exercises" in text and "ecl.models.tap" in text
        assert dom.count("<mjx-container") >= 1
    else:
        for term in ("ICNN", "SAD", "target layer", "EER", "TAR@FAR", "View-1"):
            assert term in text, f"the glossary lacks {term!r}"
