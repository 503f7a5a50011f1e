"""A self-contained HTML page: inline CSS, figures as data: URIs, no scripts, no network.

The page is built from parts: the verdict, an intro, the study's table sections before and
after the figures, the figures with their captions and reading guides, the configuration and
the versions. Everything here is escaped text and tables; the studies decide what goes in.
A Content-Security-Policy forbids anything but inline styles and data: images, so the file can
be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reslab.report.figures import FIGURES_DIR
from reslab.report.schema import is_number

__all__ = [
    "REPORT_NAME",
    "RenderedFigure",
    "Section",
    "attr",
    "e",
    "mean_pm",
    "num",
    "params",
    "render_page",
    "sci",
    "short",
    "table",
    "verdict_items",
]

REPORT_NAME = "report.html"

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2330;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 64px; background: #fff;
  min-height: 100vh; box-sizing: border-box; }
h1 { font-size: 1.8rem; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.35rem; margin-top: 2em; border-bottom: 1px solid #dde1e7;
  padding-bottom: 0.2em; }
.meta { color: #5a6273; margin: 0 0 1em; }
.intro { max-width: 60em; }
.verdict { border: 2px solid #0072B2; border-left-width: 10px; background: #eef5fb;
  padding: 14px 20px; border-radius: 6px; margin: 1.2em 0; }
.verdict h2 { border: 0; margin: 0 0 0.2em; font-size: 1rem; text-transform: uppercase;
  letter-spacing: 0.06em; color: #0072B2; }
.verdict .text { font-size: 1.3rem; font-weight: 600; margin: 0.1em 0 0.4em; }
.verdict ul { margin: 0.3em 0 0; padding-left: 1.2em; color: #2c3444; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4em 1.4em; }
nav a, a { color: #005a8c; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92rem; }
th, td { border-bottom: 1px solid #e3e6eb; padding: 5px 12px; text-align: left;
  vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
.table-wrap { overflow-x: auto; }
details { margin: 1em 0; }
summary { cursor: pointer; font-weight: 600; }
figure { margin: 1.6em 0 2.2em; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #e3e6eb; }
figcaption { margin-top: 0.5em; color: #2c3444; }
.howto { background: #fbf8ef; border-left: 4px solid #E69F00; padding: 8px 14px;
  margin: 0.6em 0 0; max-width: 62em; }
pre { background: #f3f4f6; padding: 12px 16px; overflow-x: auto; font-size: 0.85rem;
  border-radius: 4px; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono",
  monospace; }
.muted { color: #6b7280; }
"""

# No network, no scripts: only inline styles and data: images may load.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class Section:
    """A part of the page: ``html`` is a whole ``<section id=anchor>``, listed as ``title``."""

    anchor: str
    title: str
    html: str
    after_figures: bool = False  # tables that read best after the figures (e.g. probes)


@dataclass(frozen=True)
class RenderedFigure:
    """A figure as it goes into the page: ``figures/NAME.png``'s bytes and its texts."""

    name: str
    caption: str
    how_to: str
    png: bytes


# --- escaping and cells --------------------------------------------------------------------------


def e(value: Any) -> str:
    """Escape text content (quotes stay readable; use :func:`attr` inside attributes)."""
    return html.escape(str(value), quote=False)


def attr(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or an em dash if not measured."""
    return "—" if not is_number(value) else f"{float(value):.{digits}f}"


def mean_pm(mean: Any, std: Any, n: Any) -> str:
    """``mean ± std`` over ``n`` seeds; ``mean ± ?`` for one seed, whose spread is unknown
    (not zero); a dash if not measured."""
    if not is_number(mean):
        return "—"
    if is_number(n) and n > 1 and is_number(std):
        return f"{mean:.2f} ± {std:.2f}"
    return f"{mean:.2f} ± ?"


def params(value: Any) -> str:
    """A parameter count in millions, the exact count as a tooltip."""
    if not is_number(value):
        return "—"
    return f'<span title="{int(value):,} parameters">{value / 1e6:.2f} M</span>'


def sci(value: float) -> str:
    """Three significant digits, a dash if not finite."""
    if not math.isfinite(value):
        return "—"
    return f"{value:.3g}"


def short(value: Any) -> str:
    """A verdict value in a few characters: floats to 4 digits, lists and dicts as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """An HTML table; cells are already-escaped HTML, columns in ``numeric`` right-aligned."""

    def cls(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


# --- the page's parts ----------------------------------------------------------------------------

#: Formats one verdict key's value as an HTML list item, or ``None`` to use the plain form.
ItemFormat = Callable[[Any], "str | None"]


def verdict_items(verdict: Mapping[str, Any], formats: Mapping[str, ItemFormat]) -> list[str]:
    """The verdict's numbers as list items: ``formats[key]`` where given, else ``key: value``."""
    items = []
    for key, value in verdict.items():
        if key == "text":
            continue
        item = formats[key](value) if key in formats else None
        items.append(item or f"{e(key.replace('_', ' '))}: <b>{e(short(value))}</b>")
    return items


def _verdict_html(verdict: Mapping[str, Any], items: Sequence[str]) -> str:
    text = verdict.get("text") or "no verdict recorded"
    lst = "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" if items else ""
    return (
        '<section class="verdict" id="verdict"><h2>Verdict</h2>'
        f'<p class="text">{e(text)}</p>{lst}</section>'
    )


def _png_size(png: bytes) -> tuple[int, int]:
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _figures_html(figures: Sequence[RenderedFigure]) -> str:
    if not figures:
        return ""
    parts = ['<section id="figures"><h2>Figures</h2>']
    for i, fig in enumerate(figures, 1):
        width, height = _png_size(fig.png)
        data = base64.b64encode(fig.png).decode("ascii")
        parts.append(
            f'<figure id="fig-{fig.name}">'
            f'<img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
            f'alt="{attr(fig.caption)}">'
            f"<figcaption><b>Figure {i}.</b> {e(fig.caption)} "
            f'<span class="muted">(<code>{FIGURES_DIR}/{fig.name}.png</code>)</span>'
            "</figcaption>"
            f'<p class="howto"><b>How to read this.</b> {e(fig.how_to)}</p></figure>'
        )
    parts.append("</section>")
    return "\n".join(parts)


def _versions_html(results: Mapping[str, Any]) -> str:
    import matplotlib

    from reslab.version import __version__

    rows = [
        ["reslab", e(results.get("reslab_version", "—"))],
        ["torch", e(results.get("torch_version", "—"))],
        ["python", e(results.get("python_version", "—"))],
        ["date", e(results.get("created", "—"))],
        ["machine", e(results.get("machine", "—"))],
        ["results schema", e(results.get("schema", "—"))],
        [
            "report built with",
            e(f"reslab {__version__}, matplotlib {matplotlib.__version__}"),
        ],
    ]
    return '<section id="versions"><h2>Versions</h2>' + table(["", ""], rows, set()) + "</section>"


def render_page(
    results: Mapping[str, Any],
    *,
    intro: str,
    verdict: Sequence[str],
    sections: Sequence[Section],
    figures: Sequence[RenderedFigure],
) -> str:
    """The whole report page for ``results``.

    ``verdict`` are the verdict's list items (HTML, see :func:`verdict_items`), ``sections``
    the study's tables, placed before the figures unless ``after_figures``.
    """
    experiment = str(results.get("experiment", ""))
    title = str(results.get("title") or f"reslab {experiment} study")
    config = json.dumps(results.get("config") or {}, indent=2, ensure_ascii=False)
    figures_part = _figures_html(figures)
    parts = [s for s in sections if not s.after_figures and s.html]
    if figures_part:
        parts.append(Section("figures", "Figures", figures_part))
    parts += [s for s in sections if s.after_figures and s.html]
    toc = [("verdict", "Verdict"), *((s.anchor, s.title) for s in parts)]
    toc += [("config", "Configuration"), ("versions", "Versions")]
    nav = "<nav><ul>" + "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in toc) + "</ul></nav>"
    created = results.get("created")
    meta = f"experiment <b>{e(experiment)}</b>" + (f" · {e(created)}" if created else "")
    body = [
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">{meta}</p>',
        _verdict_html(results.get("verdict") or {}, verdict),
        f'<p class="intro">{e(intro)}</p>',
        nav,
        *(s.html for s in parts),
        f'<section id="config"><h2>Configuration</h2><pre>{e(config)}</pre></section>',
        _versions_html(results),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f"<title>{e(title)}</title>\n"
        '<link rel="icon" href="data:,">\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + "\n</main>\n</body>\n</html>\n"
    )
