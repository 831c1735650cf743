"""The recall report as one self-contained, printable HTML page (no external assets).

``render_html(report)`` walks ``queries.report_sections.sections(report)`` and renders each block
kind the same way wherever it appears; every value goes through ``html.escape``. The page
prints on A4 landscape (``@page``), table headers repeat on each printed page.
"""

from __future__ import annotations

import html
from typing import Any

from queries.report import RecallReport
from queries.report_sections import (
    Block,
    Cell,
    Column,
    Emphasis,
    Fields,
    Note,
    Section,
    Signatures,
    Table,
    Text,
    document_title,
    sections,
)

__all__ = ["render_html"]

_CSS = """
@page { size: A4 landscape; margin: 14mm 12mm; }
body {
  font: 10pt/1.35 "Helvetica Neue", Arial, sans-serif;
  color: #111;
  margin: 0 auto;
  max-width: 1400px;
  padding: 16px;
}
h1 { font-size: 18pt; margin: 0 0 4px;}
h2 { font-size: 13pt; margin: 22px 0 6px; border-bottom: 1.5px solid #1f3a5f; color: #1f3a5f;}
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { border: 0.6px solid #9aa4b1; padding: 3px 5px; text-align: left; vertical-align: top; }
th { background: #e6ebf2; } thead { display: table-header-group; } tr { page-break-inside: avoid; }
td.num, th.num { text-align: right;}
.small { font-size: 8pt; color: #444;}
.mono { font-family: Menlo, Consolas, monospace; font-size: 8.5pt;}
.meta th { width: 22%;}
.sig td { height: 34px;}
.banner { background: #b00020; color: #fff; font-weight: bold; padding: 8px 12px; margin: 8px 0;}
.ooc { color: #b00020; font-weight: bold; } .past { background: #fff6e0; } .bad { color: #b00020; }
.units td { font-size: 8.5pt; } .note { font-size: 8.5pt; color: #444; }
.strong, tr.total td { font-weight: bold; } tr.total td { background: #e6ebf2; }
@media print { body { padding: 0; max-width: none; } h2 { page-break-after: avoid; } }
"""

_CLASS: dict[Emphasis, str] = {
    "": "",
    "code": "mono",
    "strong": "strong",
    "minor": "small",
    "warn": "bad",
    "alert": "ooc",
}


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _cls(*names: str) -> str:
    joined = " ".join(n for n in names if n)
    return f' class="{joined}"' if joined else ""


def _text(t: Text) -> str:
    cls = _CLASS[t.emphasis]
    return f'<span class="{cls}">{_e(t.text)}</span>' if cls else _e(t.text)


def _cell(c: Cell) -> str:
    if isinstance(c, Text):
        return _text(c)
    if isinstance(c, tuple):
        return "<br>".join(_text(t) for t in c)
    return _e(c)


def _td(col: Column, c: Cell) -> str:
    return f"<td{_cls('num' if col.numeric else '', _CLASS[col.emphasis])}>{_cell(c)}</td>"


def _table(t: Table) -> str:
    head = "".join(f"<th{_cls('num' if c.numeric else '')}>{_e(c.title)}</th>" for c in t.columns)
    body = [
        f"<tr{_cls(row.mark)}>{''.join(_td(col, c) for col, c in zip(t.columns, row.cells, strict=True))}"
        "</tr>"
        for row in t.rows
    ]
    if not t.rows and t.empty:
        body.append(f'<tr><td colspan="{len(t.columns)}">{_e(t.empty)}</td></tr>')
    note = f"<p class=note>{_e(t.note)}</p>\n" if t.note else ""
    return (
        f"{note}<table{_cls('units' if t.dense else '')}><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _fields(f: Fields) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in f.rows)
    return f'<table class="meta">{rows}</table>'


def _signatures(s: Signatures) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in s.COLUMNS)
    blank = "<td></td>" * (len(s.COLUMNS) - 2)
    rows = "".join(f"<tr><td>{_e(role)}</td><td>{_e(name)}</td>{blank}</tr>" for role, name in s.roles)
    return f'<table class="sig"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _block(b: Block) -> str:
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Fields):
        return _fields(b)
    if isinstance(b, Signatures):
        return _signatures(b)
    if isinstance(b, Note):
        return f"<p class=note>{_e(b.text)}</p>"
    raise TypeError(f"no HTML form for {type(b).__name__}")


def _section(s: Section) -> list[str]:
    out = [f'<div class="banner">{_e(s.banner)}</div>'] if s.banner else []
    tag = "h1" if s.level == 1 else "h2"
    out.append(f"<{tag}>{_e(s.heading)}</{tag}>")
    return out + [_block(b) for b in s.blocks]


def render_html(report: RecallReport) -> str:
    """The report as one self-contained, printable HTML page (no external assets)."""
    title = f"{document_title(report)} {report.document_number}"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for s in sections(report):
        parts += _section(s)
    parts.append("</body></html>")
    return "\n".join(parts)
