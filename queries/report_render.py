"""The recall report in a chosen format: ``render(report, fmt)`` to bytes, its file name and
media type.

The formats are ``MEDIA_TYPES``' keys: ``csv`` (``queries.report_csv``), ``html``
(``queries.report_html``) and ``pdf`` (``queries.report_pdf``). An unknown format is an
``InvalidInputError`` (``check_format``). This module sits above the renderers, which import
``queries.report`` and never this module.

Issued reports are signed: :func:`issue_report` renders a report, signs the file's bytes with
the report key (Ed25519, ``sinks.chain.Signer``, ``<data dir>/keys/report.ed25519``) and
registers it in ``issued_reports`` (sha256, signature, document number, format, who prepared
it); :func:`issue_documents` does the same for documents already rendered (a drill's formats).
:func:`verify_report_file` says whether a file's bytes are a report traceline issued, unchanged.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa

from queries.report import RecallReport
from queries.report_csv import render_csv
from queries.report_html import render_html
from queries.report_pdf import render_pdf
from schemas.errors import InvalidInputError
from sinks.chain import Signer, Verifier

__all__ = [
    "MEDIA_TYPES",
    "IssuedReport",
    "ReportCheck",
    "check_format",
    "filename",
    "issue_documents",
    "issue_report",
    "render",
    "verify_report_file",
]

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


# ----------------------------------------------------------------------------- signed reports

_ISSUED = pa.schema(
    [
        ("sha256", pa.binary(32)),
        ("document_number", pa.string()),
        ("format", pa.string()),
        ("size", pa.uint64()),
        ("key_id", pa.string()),
        ("signature", pa.binary()),
        ("issued_at", pa.timestamp("ms", tz="UTC")),
        ("prepared_by", pa.string()),
    ]
)


class _Register(Protocol):
    def write_batch(self, tables: Mapping[str, Any], token: str) -> dict[str, int]: ...


class _Lookup(Protocol):
    def query_rows(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...


@dataclass(frozen=True)
class IssuedReport:
    document_number: str
    format: str
    sha256: str  # hex
    signature: bytes
    key_id: str
    issued_at: datetime


def issue_documents(
    store: _Register, report: RecallReport, documents: Mapping[str, bytes], signer: Signer
) -> list[IssuedReport]:
    """Sign each rendered document (format -> file bytes) of ``report`` and register it in
    ``issued_reports`` (one insert). Returns what was registered."""
    at = datetime.now(UTC)
    issued = [
        IssuedReport(
            report.document_number,
            check_format(fmt),
            hashlib.sha256(content).hexdigest(),
            signer.sign(content),
            signer.key_id,
            at,
        )
        for fmt, content in documents.items()
    ]
    if not issued:
        return []
    sizes = [len(c) for c in documents.values()]
    table = pa.Table.from_pydict(
        {
            "sha256": [bytes.fromhex(i.sha256) for i in issued],
            "document_number": [i.document_number for i in issued],
            "format": [i.format for i in issued],
            "size": sizes,
            "key_id": [i.key_id for i in issued],
            "signature": [i.signature for i in issued],
            "issued_at": [at] * len(issued),
            "prepared_by": [report.prepared_by] * len(issued),
        },
        schema=_ISSUED,
    )
    token = "issued:" + ",".join(i.sha256 for i in issued)
    store.write_batch({"issued_reports": table}, token)
    return issued


def issue_report(store: _Register, report: RecallReport, fmt: str, signer: Signer) -> bytes:
    """The report in ``fmt``, signed with ``signer`` and registered as issued (see
    :func:`issue_documents`): the bytes to hand out."""
    content = render(report, fmt)
    issue_documents(store, report, {fmt: content}, signer)
    return content


@dataclass(frozen=True)
class ReportCheck:
    genuine: bool
    reason: str
    sha256: str
    document_number: str | None = None
    format: str | None = None
    issued_at: datetime | None = None
    prepared_by: str | None = None


def verify_report_file(store: _Lookup, content: bytes, verifier: Verifier) -> ReportCheck:
    """Whether ``content`` is a report traceline issued, unchanged: its sha256 is registered in
    ``issued_reports`` and the registered signature verifies over these bytes with the report
    key (a register row added without the key does not)."""
    digest = hashlib.sha256(content).hexdigest()
    _n, rows = store.query_rows(
        "SELECT document_number, format, key_id, hex(signature), issued_at, prepared_by FROM issued_reports"
        " WHERE sha256 = unhex({h:String}) ORDER BY issued_at",
        {"h": digest},
    )
    if not rows:
        return ReportCheck(
            False,
            f"not a report traceline issued, or changed since (its sha256 {digest} is not registered)",
            digest,
        )
    for doc, fmt, key_id, sig, at, who in rows:
        if key_id == verifier.key_id and verifier.verify(bytes.fromhex(sig), content):
            return ReportCheck(
                True,
                f"issued by traceline as {doc} ({fmt}) at {at:%Y-%m-%d %H:%M:%S} UTC, prepared by {who}; "
                "unchanged, signature valid",
                digest,
                doc,
                fmt,
                at,
                who,
            )
    doc = rows[0][0]
    return ReportCheck(
        False,
        f"registered as {doc}, but no registered signature verifies with the report key {verifier.key_id}: "
        "the register was tampered with, or the key is not the one it was issued with",
        digest,
        doc,
    )
