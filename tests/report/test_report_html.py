"""The page: escaped text, tables, sections around the figures, no scripts, no network."""

from __future__ import annotations

from conftest import PNG_SIGNATURE
from reslab.report.html import (
    RenderedFigure,
    Section,
    mean_pm,
    render_page,
    table,
    verdict_items,
)

_PNG = PNG_SIGNATURE + b"\x00\x00\x00\rIHDR" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big")


def test_table_right_aligns_numeric_columns() -> None:
    html = table(["a", "b"], [["x", "1"], ["y", "2"]], {1})
    assert '<th>a</th><th class="num">b</th>' in html
    assert '<tr><td>y</td><td class="num">2</td></tr>' in html


def test_mean_pm_shows_the_std_only_over_several_seeds() -> None:
    assert mean_pm(1.234, 0.5, 2) == "1.23 ± 0.50"
    assert mean_pm(1.234, 0.0, 1) == "1.23 ± ?"  # one seed: the spread is unknown
    assert mean_pm(None, 0.5, 2) == "—"


def test_verdict_items_use_a_study_format_or_the_plain_form() -> None:
    verdict = {"text": "t", "gap": 1.5, "spread": 0.123456, "flag": True, "best": "<b>"}
    items = verdict_items(verdict, {"gap": lambda v: f"gap is {v}", "flag": lambda v: None})
    assert items == [
        "gap is 1.5",
        "spread: <b>0.1235</b>",
        "flag: <b>True</b>",  # the format declined: plain form
        "best: <b>&lt;b&gt;</b>",
    ]


def test_page_puts_tables_around_the_figures_and_escapes_text() -> None:
    results = {"experiment": "x", "title": "T <&>", "verdict": {"text": "v & w"}, "config": {}}
    page = render_page(
        results,
        intro="intro <i>",
        verdict=["item"],
        sections=[
            Section("after", "After", '<section id="after">A</section>', after_figures=True),
            Section("empty", "Empty", ""),
            Section("before", "Before", '<section id="before">B</section>'),
        ],
        figures=[RenderedFigure("f", "cap <1>", "read me", _PNG)],
    )
    assert page.index('id="before"') < page.index('id="figures"') < page.index('id="after"')
    assert '<a href="#empty">' not in page  # an empty section is left out of the page and nav
    nav = page[page.index("<nav>") : page.index("</nav>")]
    assert [part.split('"')[0] for part in nav.split('href="#')[1:]] == [
        "verdict",
        "before",
        "figures",
        "after",
        "config",
        "versions",
    ]
    assert "<title>T &lt;&amp;&gt;</title>" in page and "v &amp; w" in page
    assert 'width="640" height="480" alt="cap &lt;1&gt;"' in page
    assert "<li>item</li>" in page and "intro &lt;i&gt;" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert "default-src 'none'; img-src data:" in page
