"""The recall report as a signable PDF (reportlab, A4 landscape).

``render_pdf(report, path_or_io)`` walks ``queries.report_sections.sections(report)`` and turns
each block kind into flowables the same way wherever it appears: label/value fields, the
signature block, tables (header row repeated on each page; long tables printed in blocks of
``_PDF_UNIT_CHUNK`` rows, the test appendix in blocks of twice that, since one huge table
splits slowly) and notes. Every page carries the document header (trigger, document number,
"RECALL DRILL" on a drill) and the footer "page X of Y" (two-pass numbering).
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (
    CondPageBreak,
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
)
from reportlab.platypus import Table as RLTable

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
from queries.report_text import ts

__all__ = ["render_pdf"]

_PDF_UNIT_CHUNK = 150  # rows per Table flowable (a huge single Table splits slowly)
_ROWS_PER_BLOCK = {"tests": _PDF_UNIT_CHUNK * 2}  # other tables: _PDF_UNIT_CHUNK

PAGE_W, PAGE_H = landscape(A4)
MARGIN = 14 * mm
WIDTH = PAGE_W - 2 * MARGIN
NAVY = colors.HexColor("#1f3a5f")
GRID = colors.HexColor("#9aa4b1")
HEAD_BG = colors.HexColor("#e6ebf2")
RED = colors.HexColor("#b00020")
PAST_BG = colors.HexColor("#fff6e0")

# printed column widths in mm per table name; None: what is left of the page width. Other tables
# (and a table whose columns changed): the first column 60 mm, the others 30 mm, narrowed to fit.
_WIDTHS_MM: dict[str, list[float | None]] = {
    "timings": [70, 30, None],
    "lots": [50, 50, 40, 20],
    "upstream": [36, 40, 24, None, 40, 50],
    "receipts": [32, 36, 32, 32, 24, 36, 28, None],
    "lot_status": [40, 30, None, 50],
    "nonconformances": [30, 44, 62, 18, 26, None, 38],
    "units": [8, 34, 11, 14, 32, None, 36, 15, 50, 24],
    "evidence": [34, 66, None, 80],
    "freshness": [60, 90],
    "tests": [42, 34, 14, 24, 42, 20, 38, 34, None],
}

_SS = getSampleStyleSheet()
BODY = ParagraphStyle(
    "body",
    parent=_SS["BodyText"],
    fontName="Helvetica",
    fontSize=8.5,
    leading=10.5,
    spaceBefore=0,
    spaceAfter=0,
)
SMALL = ParagraphStyle("small", parent=BODY, fontSize=7, leading=8.5)
CELL = ParagraphStyle("cell", parent=BODY, fontSize=7.5, leading=9)
CELL_B = ParagraphStyle("cellb", parent=CELL, fontName="Helvetica-Bold")
MONO = ParagraphStyle("mono", parent=CELL, fontName="Courier", fontSize=7.2)
WARN = ParagraphStyle("warn", parent=CELL, textColor=RED)
ALERT = ParagraphStyle("alert", parent=CELL_B, textColor=RED)
H1 = ParagraphStyle(
    "h1", parent=_SS["Title"], fontName="Helvetica-Bold", fontSize=18, leading=22, alignment=0
)
H2 = ParagraphStyle(
    "h2",
    parent=_SS["Heading2"],
    fontName="Helvetica-Bold",
    fontSize=12,
    leading=15,
    textColor=NAVY,
    spaceBefore=10,
    spaceAfter=4,
    keepWithNext=1,
)
BANNER = ParagraphStyle("banner", parent=BODY, fontName="Helvetica-Bold", fontSize=10, textColor=colors.white)
_STYLE: dict[Emphasis, ParagraphStyle] = {
    "": CELL,
    "code": MONO,
    "strong": CELL_B,
    "minor": SMALL,
    "warn": WARN,
    "alert": ALERT,
}


def _p(text: Any, style: ParagraphStyle = CELL) -> Paragraph:
    return Paragraph(html.escape("" if text is None else str(text)), style)


def _grid(
    data: list[list[Any]],
    widths: list[float],
    *,
    repeat: int = 1,
    extra: list[Any] | None = None,
    heights: list[float | None] | None = None,
) -> RLTable:
    t = RLTable(data, colWidths=widths, rowHeights=heights, repeatRows=repeat, hAlign="LEFT")
    t.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.4, GRID),
                ("FONTSIZE", (0, 0), (-1, -1), 7.5),
                ("BACKGROUND", (0, 0), (-1, repeat - 1), HEAD_BG),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 3),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                *(extra or []),
            ]
        )
    )
    return t


def _widths(t: Table) -> list[float]:
    n = len(t.columns)
    spec = _WIDTHS_MM.get(t.name)
    if spec is None or len(spec) != n:
        first = 60 * mm
        return [first] + [min(30 * mm, (WIDTH - first) / max(n - 1, 1))] * (n - 1)
    rest = WIDTH - sum(w * mm for w in spec if w is not None)
    return [rest if w is None else w * mm for w in spec]


def _cell(c: Cell, col: Column) -> Any:
    if isinstance(c, Text):
        return _p(c.text, _STYLE[c.emphasis or col.emphasis])
    if isinstance(c, tuple):
        return [_p(t.text, _STYLE[t.emphasis or col.emphasis]) for t in c]
    return c if col.numeric else _p(c, _STYLE[col.emphasis])


def _table(t: Table) -> list[Any]:
    out: list[Any] = [_p(t.note, SMALL), Spacer(0, 1.5 * mm)] if t.note else []
    widths = _widths(t)
    header = [_p(c.title, CELL_B) for c in t.columns]
    rows = [[_cell(c, col) for col, c in zip(t.columns, row.cells, strict=True)] for row in t.rows]
    marks = [row.mark for row in t.rows]
    span = not rows and bool(t.empty)
    if span:
        rows, marks = [[_p(t.empty)] + [""] * (len(t.columns) - 1)], [""]
    size = 7 if t.dense else 8
    per = _ROWS_PER_BLOCK.get(t.name, _PDF_UNIT_CHUNK)
    for start in range(0, max(len(rows), 1), per):
        extra: list[Any] = [("SPAN", (0, 1), (-1, 1))] if span else []
        for i, col in enumerate(t.columns):
            if col.numeric:
                extra += [("ALIGN", (i, 1), (i, -1), "RIGHT"), ("FONTSIZE", (i, 1), (i, -1), size)]
                extra.append(("LEADING", (i, 1), (i, -1), size * 1.2))
        for j, mark in enumerate(marks[start : start + per], 1):
            if mark == "past":
                extra.append(("BACKGROUND", (0, j), (-1, j), PAST_BG))
            elif mark == "total":
                extra.append(("BACKGROUND", (0, j), (-1, j), HEAD_BG))
                extra.append(("FONTNAME", (0, j), (-1, j), "Helvetica-Bold"))
        out.append(_grid([header, *rows[start : start + per]], widths, extra=extra))
    return out


def _fields(f: Fields) -> list[Any]:
    rows = [[_p(k, CELL_B), _p(v, BODY)] for k, v in f.rows]
    extra = [("BACKGROUND", (0, 0), (0, -1), HEAD_BG)]
    return [_grid(rows, [55 * mm, WIDTH - 55 * mm], repeat=0, extra=extra)]


def _signatures(s: Signatures) -> list[Any]:
    rows: list[list[Any]] = [[_p(c, CELL_B) for c in s.COLUMNS]]
    rows += [[_p(role, CELL_B), _p(name, BODY), "", ""] for role, name in s.roles]
    heights: list[float | None] = [None, *([13 * mm] * len(s.roles))]
    widths = [50 * mm, 70 * mm, WIDTH - 160 * mm, 40 * mm]
    sig = _grid(rows, widths, heights=heights, extra=[("VALIGN", (0, 1), (-1, -1), "MIDDLE")])
    return [KeepTogether([sig])]


def _block(b: Block) -> list[Any]:
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Fields):
        return _fields(b)
    if isinstance(b, Signatures):
        return _signatures(b)
    if isinstance(b, Note):
        return [_p(b.text, SMALL)]
    raise TypeError(f"no PDF form for {type(b).__name__}")


def _banner(text: str) -> RLTable:
    b = RLTable([[_p(text, BANNER)]], colWidths=[WIDTH])
    b.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), RED),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
            ]
        )
    )
    return b


def _section(s: Section, first: bool) -> list[Any]:
    out: list[Any] = []
    if s.new_page and not first:
        out.append(PageBreak())
    elif s.keep_mm:
        out.append(CondPageBreak(s.keep_mm * mm))
    if s.banner:
        out += [_banner(s.banner), Spacer(0, 4 * mm)]
    if s.level == 1:
        out += [_p(s.heading, H1), Spacer(0, 2 * mm)]
    else:
        out.append(_p(s.heading, H2))
    gap = 4 * mm if s.level == 1 else 2 * mm
    for i, b in enumerate(s.blocks):
        if i:
            out.append(Spacer(0, gap))
        out += _block(b)
    return out


@dataclass(frozen=True)
class _PageMarks:
    header: str  # left of the page header
    document_number: str  # right of the page header
    drill: bool  # "RECALL DRILL" in the middle of the page header
    footer: str  # left of the page footer; "page X of Y" on the right


class _Numbered(rl_canvas.Canvas):
    """Two-pass page numbering: pages are kept until save, then stamped 'page X of Y'."""

    def __init__(self, *args: Any, marks: _PageMarks, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._marks = marks
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:  # noqa: N802 - reportlab API
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self._decorate(total)
            super().showPage()
        super().save()

    def _decorate(self, total: int) -> None:
        m = self._marks
        self.saveState()
        self.setStrokeColor(NAVY)
        self.setLineWidth(0.8)
        self.line(MARGIN, PAGE_H - 10 * mm, PAGE_W - MARGIN, PAGE_H - 10 * mm)
        self.line(MARGIN, 10 * mm, PAGE_W - MARGIN, 10 * mm)
        self.setFont("Helvetica", 7.5)
        self.setFillColor(colors.black)
        self.drawString(MARGIN, PAGE_H - 8.5 * mm, m.header[:150])
        self.drawRightString(PAGE_W - MARGIN, PAGE_H - 8.5 * mm, m.document_number)
        if m.drill:
            self.setFillColor(RED)
            self.setFont("Helvetica-Bold", 7.5)
            self.drawCentredString(PAGE_W / 2, PAGE_H - 8.5 * mm, "RECALL DRILL")
            self.setFillColor(colors.black)
            self.setFont("Helvetica", 7.5)
        self.drawString(MARGIN, 6.5 * mm, m.footer)
        self.drawRightString(PAGE_W - MARGIN, 6.5 * mm, f"page {self._pageNumber} of {total}")
        self.restoreState()


def render_pdf(report: RecallReport, path: str | Path | IO[bytes]) -> None:
    """A signable PDF (A4 landscape) at ``path`` (a file path or a binary file object)."""
    r = report
    title = document_title(r)
    story: list[Any] = []
    for i, s in enumerate(sections(r)):
        story += _section(s, first=i == 0)
    marks = _PageMarks(
        header=f"traceline | {title} | {r.trigger_text}",
        document_number=r.document_number,
        drill=r.is_drill,
        footer=f"Generated {ts(r.generated_at)} by traceline. Uncontrolled when printed unless signed.",
    )
    doc = SimpleDocTemplate(
        path if not isinstance(path, Path) else str(path),
        pagesize=(PAGE_W, PAGE_H),
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=14 * mm,
        bottomMargin=14 * mm,
        title=f"{title} {r.document_number}",
        author=r.prepared_by or "traceline",
        subject=r.trigger_text,
        creator="traceline",
    )
    doc.build(story, canvasmaker=functools.partial(_Numbered, marks=marks))
