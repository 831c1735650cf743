"""Signed reports: a document number derived from the report's content, every issued file signed
and registered, ``verify_report_file`` telling an issued, unchanged file from anything else; and
the report saying what it rests on (the chain heads, verified or not) instead of "Records are
immutable events"."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from queries import RecallImpact, Trigger
from queries.report import assemble_report, document_number
from queries.report_html import render_html
from queries.report_render import issue_documents, issue_report, render, verify_report_file
from queries.report_sections import evidence_map
from queries.verify import ChainStatus
from sinks.chain import Signer
from tests.unit.test_report import T0, _report

NUMBER = re.compile(r"R[RD]-\d{8}-[0-9A-F]{10}")


class Register:
    """``issued_reports`` in memory: ``write_batch`` appends, ``query_rows`` looks up by sha256."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.tokens: list[str] = []

    def write_batch(self, tables: dict[str, pa.Table], token: str) -> dict[str, int]:
        assert list(tables) == ["issued_reports"]
        self.tokens.append(token)
        self.rows += tables["issued_reports"].to_pylist()
        return {n: t.num_rows for n, t in tables.items()}

    def query_rows(
        self, sql: str, params: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        assert "FROM issued_reports" in sql and params is not None
        rows = [
            (
                r["document_number"],
                r["format"],
                r["key_id"],
                r["signature"].hex().upper(),
                r["issued_at"],
                r["prepared_by"],
            )
            for r in self.rows
            if r["sha256"].hex() == params["h"]
        ]
        return ["document_number", "format", "key_id", "signature", "issued_at", "prepared_by"], rows


def test_the_document_number_is_the_day_and_a_hash_of_the_content() -> None:
    r = _report()
    n = document_number(r)
    assert NUMBER.fullmatch(n) and n.startswith(f"RR-{r.generated_at:%Y%m%d}-")
    assert document_number(_report()) == n  # same content, same number
    assert document_number(dataclasses.replace(r, prepared_by="someone else")) != n
    r.units[0].status = "in_stock"
    assert document_number(r) != n
    drill = _report(drill=True)
    d = document_number(drill)
    assert d.startswith("RD-")
    # a drill's timings grow while its formats render: not content, one number for all formats
    drill.drill_timings = [*(drill.drill_timings or []), ("render html", None, "this document")]
    drill.query_seconds = 1.5
    assert document_number(drill) == d


def test_assembling_a_report_numbers_it_from_its_content_and_verification() -> None:
    impact = RecallImpact(Trigger("lot", "L1"), [], [], [], {}, {}, {})
    fresh = _report().freshness
    ok = ChainStatus(True, "the signed heads of all 1 chains verify", (("t.events", 0, 41, "ab" * 32),))
    a = assemble_report(impact, fresh, generated_at=T0, units=[], prepared_by="Q", verification=ok)
    b = assemble_report(impact, fresh, generated_at=T0, units=[], prepared_by="Q")
    assert a.document_number == document_number(a) and NUMBER.fullmatch(a.document_number)
    assert a.document_number != b.document_number  # what it rests on is part of its content
    later = assemble_report(impact, fresh, generated_at=T0 + timedelta(days=1), units=[], prepared_by="Q")
    assert later.document_number[3:11] != b.document_number[3:11]


def test_a_report_says_what_it_rests_on() -> None:
    r = _report()
    r.verification = ChainStatus(
        True, "the signed heads of all 3 chains verify", (("t.events", 2, 77, "c0ffee" * 10),)
    )
    page = render_html(r)
    assert (
        "Verification at report time" in page and "verified: the signed heads of all 3 chains verify" in page
    )
    assert "t.events[2]@77 c0ffeec0ffeec0ff" in page
    text = " ".join(x.evidence for x in evidence_map(r))
    assert "immutable" not in text and "append-only events" in text and "hash chain" in text
    assert "verification at report time: verified" in text
    r.verification = None
    assert "not verified" in render_html(r)


def test_an_issued_report_is_signed_registered_and_verifies(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "keys" / "report.ed25519")
    store = Register()
    r = _report()
    content = issue_report(store, r, "html", signer)
    assert content == render(r, "html")
    [row] = store.rows
    assert row["sha256"] == hashlib.sha256(content).digest() and row["size"] == len(content)
    assert (row["document_number"], row["format"], row["prepared_by"]) == (
        r.document_number,
        "html",
        r.prepared_by,
    )
    assert signer.verify(row["signature"], content)
    ok = verify_report_file(store, content, signer)
    assert ok.genuine and ok.document_number == r.document_number and "unchanged" in ok.reason
    changed = verify_report_file(store, content.replace(b"PCB:1", b"PCB:7"), signer)
    assert not changed.genuine and "not registered" in changed.reason
    # a register row added without the key (a forged entry for a forged file) does not verify
    forged = content + b"<!-- edited -->"
    store.rows.append({**row, "sha256": hashlib.sha256(forged).digest(), "signature": b"\0" * 64})
    bad = verify_report_file(store, forged, signer)
    assert not bad.genuine and "tampered" in bad.reason
    other = Signer.load_or_create(tmp_path / "keys" / "other.ed25519")
    assert not verify_report_file(store, content, other).genuine  # another key did not issue it


def test_every_format_of_one_drill_is_registered_under_one_number(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "report.ed25519")
    store = Register()
    r = _report(drill=True)
    number = r.document_number = document_number(r)
    docs = {fmt: render(r, fmt) for fmt in ("html", "pdf", "csv")}
    issued = issue_documents(store, r, docs, signer)
    assert {i.document_number for i in issued} == {number} and [i.format for i in issued] == [
        "html",
        "pdf",
        "csv",
    ]
    assert all(verify_report_file(store, c, signer).document_number == number for c in docs.values())
    assert number.encode() in docs["html"] and number.encode() in docs["csv"]
