"""The recall report in a chosen format: ``render(report, fmt)`` to bytes, its file name and
media type.

The formats are ``MEDIA_TYPES``' keys: ``csv`` (``queries.report_csv``), ``html``
(``queries.report_html``) and ``pdf`` (``queries.report_pdf``). An unknown format is an
``InvalidInputError`` (``check_format``). This module sits above the renderers, which import
``queries.report`` and never this module.
"""

from __future__ import annotations

import io
import re

from queries.report import RecallReport
from queries.report_csv import render_csv
from queries.report_html import render_html
from queries.report_pdf import render_pdf
from schemas.errors import InvalidInputError

__all__ = ["MEDIA_TYPES", "check_format", "filename", "render"]

_UNSAFE = re.compile(r"(?:[^A-Za-z0-9._-]|\.{2,})+")  # what a file name must not carry
_NAME_MAX = 80

MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8", "pdf": "application/pdf"}


def check_format(fmt: str) -> str:
    """``fmt`` when it is a report format, else an :class:`InvalidInputError` (field ``format``)."""
    if fmt not in MEDIA_TYPES:
        raise InvalidInputError(f"unknown report format {fmt!r}: use html, pdf or csv", field="format")
    return fmt


def render(report: RecallReport, fmt: str) -> bytes:
    """The report in ``fmt`` (csv | html | pdf) as bytes."""
    check_format(fmt)
    if fmt == "csv":
        return render_csv(report).encode("utf-8")
    if fmt == "html":
        return render_html(report).encode("utf-8")
    buf = io.BytesIO()
    render_pdf(report, buf)
    return buf.getvalue()


def filename(report: RecallReport, fmt: str) -> str:
    """``<document number>_<trigger kind>-<trigger id>.<fmt>``, a safe ASCII file name: any run of
    characters other than ASCII letters, digits, ``-``, ``_`` and single dots becomes ``_``; the
    trigger part is at most ``_NAME_MAX`` characters (a file name may be sent as an HTTP header
    or written anywhere)."""
    check_format(fmt)
    safe = _UNSAFE.sub("_", f"{report.trigger.kind}-{report.trigger.id}").strip("._-")[:_NAME_MAX]
    doc = _UNSAFE.sub("_", report.document_number).strip("._-")
    return f"{doc}_{safe.rstrip('._-') or report.trigger.kind}.{fmt}"
