"""The page: one self-contained HTML file (inline CSS, images as ``data:`` URIs, no script, no fetch).

Every value read from the run directory passes through :func:`esc`; the sections are built
in :mod:`distillkit.report.sections`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430;
       background: #f6f7f9; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 18px 28px 40px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 0 0 8px; color: #143a66; }
h3 { font-size: 14px; margin: 14px 0 4px; }
section { background: #fff; border: 1px solid #dde2e8; border-radius: 6px; padding: 12px 16px;
          margin: 14px 0; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border-bottom: 1px solid #e4e8ee; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #eef2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.dim td { color: #8a94a3; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; margin: 6px 0; }
dt { color: #5b6675; } dd { margin: 0; }
img { max-width: 100%; display: block; margin: 6px 0; }
img.grid { image-rendering: pixelated; border: 1px solid #dde2e8; }
.figures { display: flex; flex-wrap: wrap; gap: 8px; }
.figures img { max-width: 500px; }
.missing { color: #a05a00; font-style: italic; }
.note { color: #5b6675; }
code { background: #eef2f7; padding: 0 3px; border-radius: 3px; }
"""

NUM_CELL = '<td class="num">'

#: Shown for any value the run directory does not hold.
NOT_RECORDED = "not recorded"


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML, attributes included."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4) -> str:
    """A short, escaped rendering of a number (or :data:`NOT_RECORDED`)."""
    if isinstance(value, bool) or value is None:
        return esc(NOT_RECORDED if value is None else value)
    if isinstance(value, int):
        return esc(value)
    if isinstance(value, float):
        return esc(f"{value:.{digits}g}") if math.isfinite(value) else esc(value)
    return esc(value)


def percent(mean: Any, std: Any = None) -> str:
    if not isinstance(mean, int | float):
        return esc(NOT_RECORDED)
    text = f"{100 * mean:.2f}"
    return esc(f"{text} ± {100 * std:.2f} %" if isinstance(std, int | float) else f"{text} %")


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], dim: Sequence[bool] = (), align: bool = True
) -> str:
    """A table of already-escaped cells; with ``align``, cells that look numeric are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="dim"' if i < len(dim) and dim[i] else ""
        cells = "".join((NUM_CELL if align and _numeric(c) else "<td>") + f"{c}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _numeric(cell: str) -> bool:
    return bool(cell) and cell.lstrip("-").replace(".", "", 1).replace("e-", "", 1).isdigit()


def pairs(items: Iterable[tuple[str, str]]) -> str:
    """A definition list of (label, already-escaped value)."""
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def image(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<img{klass} alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def missing(reason: str) -> str:
    return f'<p class="missing">{esc(reason)}</p>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """The whole document; ``rel=icon`` points at an empty ``data:`` URI so no favicon is fetched."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main><h1>{esc(title)}</h1>{note(subtitle)}{''.join(sections)}</main></body></html>\n"
    )
