"""Recall drill: a mock recall, run as if the trigger were nonconforming, every step timed.

A traceability system is only proven by a drill. ``run_drill`` runs the whole recall the way
an analyst would: the forward trace of a lot, then the report pipeline itself
(``queries.report.build_report``: recall impact, test histories and production records, lot
receipts / status / nonconformances, data freshness) with a clock as its step hook, once; it
renders that one report in each format (``drill_documents``: in memory, one document number in
every format) and writes the files plus ``<document>_drill.json`` (the step timings). Each
report carries a "recall drill" banner and a timings section; a document cannot time its own
rendering, so its own row says "this document" (and the formats rendered after it "after this
document") and the JSON summary has the final figures. ``drill_report`` is a one-format drill.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from queries.recall import forward_trace
from queries.report import RecallReport, build_report, check_prepared_by
from queries.report_render import check_format, filename, render
from queries.results import Trigger
from schemas.errors import InvalidInputError
from sinks.chain import Verifier

__all__ = ["DrillResult", "drill_documents", "drill_report", "run_drill", "timings_json"]

T = TypeVar("T")
NO_LAG_SOURCE = "no lag source given to the drill"


@dataclass
class DrillResult:
    report: RecallReport
    files: dict[str, Path]  # format -> report file
    summary_path: Path | None
    timings: list[tuple[str, float, str]] = field(default_factory=list)  # (step, seconds, note)

    @property
    def total_seconds(self) -> float:
        return sum(s for _, s, _ in self.timings)

    @property
    def query_seconds(self) -> float:
        return sum(s for step, s, _ in self.timings if not step.startswith("render"))

    def as_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "document_number": r.document_number,
            "trigger": {
                "kind": r.trigger.kind,
                "id": r.trigger.id,
                "from": r.trigger.window_start.isoformat() if r.trigger.window_start else None,
                "to": r.trigger.window_end.isoformat() if r.trigger.window_end else None,
            },
            "ran_at": r.generated_at.isoformat(),
            "units_now": len(r.now_units),
            "units_past": len(r.past_units),
            "systems": r.systems,
            "by_status": r.by_status,
            "by_customer": r.by_customer,
            "steps": timings_json(self.timings),
            "query_seconds": round(self.query_seconds, 6),
            "total_seconds": round(self.total_seconds, 6),
            "files": {k: str(v) for k, v in self.files.items()},
        }


class _Clock:
    def __init__(self) -> None:
        self.steps: list[tuple[str, float, str]] = []

    def run(self, step: str, fn: Callable[[], T], note: Callable[[T], str] | str = "") -> T:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        self.steps.append((step, dt, note(out) if callable(note) else note))
        return out


def _query_steps(
    store: Any,
    trigger: Trigger,
    clock: _Clock,
    *,
    lag: Mapping[str, int] | None,
    lag_note: str | None,
    prepared_by: str,
    verifier: Verifier | None = None,
) -> RecallReport:
    # the analyst's first look at a lot: where it went (not needed to build the report)
    if trigger.kind == "lot":
        clock.run(
            "forward trace",
            lambda: forward_trace(store, trigger.id),
            lambda ft: f"{len(ft.lots)} lots, {len(ft.units)} units, {len(ft.systems)} systems",
        )
    report = build_report(
        store,
        trigger,
        freshness=lag,
        lag_note=lag_note,
        prepared_by=prepared_by,
        drill=True,
        step=clock.run,
        verifier=verifier,
    )
    report.query_seconds = sum(s for _, s, _ in clock.steps)
    return report


def _render_timed(report: RecallReport, clock: _Clock, fmt: str, pending: Sequence[str]) -> bytes:
    # the document shows every step measured so far, itself as "this document", later ones pending
    report.drill_timings = [
        *clock.steps,
        (f"render {fmt}", None, "this document (final figure in the drill summary)"),
        *((f"render {p}", None, "after this document") for p in pending),
    ]
    return clock.run(f"render {fmt}", lambda: render(report, fmt), lambda b: f"{len(b):,} bytes")


def drill_documents(
    store: Any,
    trigger: Trigger,
    formats: Sequence[str] = ("html", "pdf", "csv"),
    *,
    lag: Mapping[str, int] | None = None,
    lag_note: str | None = NO_LAG_SOURCE,
    prepared_by: str,
    verifier: Verifier | None = None,
) -> tuple[RecallReport, dict[str, bytes], list[tuple[str, float, str]]]:
    """Run a drill for ``trigger`` once and render it in each of ``formats``, in memory: the
    report, ``{format: bytes}`` (one document number in every format) and the step timings
    ``(step, seconds, note)``, the renders last. Formats and ``prepared_by`` are checked before
    anything is read (``InvalidInputError``). ``verifier``: the chain key the report's
    verification status is checked with (``queries.report.build_report``). Issuing (signing and
    registering) the documents is the caller's: ``queries.report_render.issue_documents``."""
    order = [check_format(f) for f in dict.fromkeys(formats)]
    if not order:
        raise InvalidInputError("no report format given: use html, pdf or csv", "format")
    prepared_by = check_prepared_by(prepared_by)
    clock = _Clock()
    report = _query_steps(
        store, trigger, clock, lag=lag, lag_note=lag_note, prepared_by=prepared_by, verifier=verifier
    )
    documents = {fmt: _render_timed(report, clock, fmt, order[i + 1 :]) for i, fmt in enumerate(order)}
    report.drill_timings = list(clock.steps)
    return report, documents, list(clock.steps)


def timings_json(timings: Sequence[tuple[str, float | None, str]]) -> list[dict[str, Any]]:
    """Step timings as JSON values: ``[{"step", "seconds", "note"}]``."""
    return [{"step": s, "seconds": None if t is None else round(t, 6), "note": n} for s, t, n in timings]


def run_drill(
    store: Any,
    trigger: Trigger,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = ("html", "pdf", "csv"),
    lag: Mapping[str, int] | None = None,
    lag_note: str | None = NO_LAG_SOURCE,
    prepared_by: str,
    verifier: Verifier | None = None,
) -> DrillResult:
    """Run a mock recall for ``trigger`` (``drill_documents``); write the reports and the drill
    summary to ``out_dir``."""
    report, documents, timings = drill_documents(
        store, trigger, formats, lag=lag, lag_note=lag_note, prepared_by=prepared_by, verifier=verifier
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for fmt, content in documents.items():
        path = out / filename(report, fmt)
        path.write_bytes(content)
        files[fmt] = path
    result = DrillResult(report=report, files=files, summary_path=None, timings=timings)
    summary = out / f"{report.document_number}_drill.json"
    summary.write_text(json.dumps(result.as_dict(), indent=2))
    result.summary_path = summary
    return result


def drill_report(
    store: Any,
    trigger: Trigger,
    fmt: str,
    *,
    lag: Mapping[str, int] | None = None,
    lag_note: str | None = None,
    prepared_by: str,
    verifier: Verifier | None = None,
) -> tuple[RecallReport, bytes, list[dict[str, Any]]]:
    """One format of a drill, in memory: the report, its bytes, the step timings as JSON values.
    Several formats of one drill: ``drill_documents`` (one document number)."""
    report, documents, timings = drill_documents(
        store, trigger, [fmt], lag=lag, lag_note=lag_note, prepared_by=prepared_by, verifier=verifier
    )
    return report, documents[fmt], timings_json(timings)
