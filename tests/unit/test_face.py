"""The face's pure parts: the one error translation, and typed results read back from the API's JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from queries import (
    AffectedUnit,
    BackwardTrace,
    ForwardTrace,
    LotHop,
    PastHolder,
    RecallImpact,
    Trigger,
    from_jsonable,
    to_jsonable,
)
from schemas.errors import (
    BrokerUnavailableError,
    EventValidationError,
    InvalidInputError,
    MalformedRecordError,
    TracelineError,
)
from sinks.store import StoreUnavailableError
from traceline.errors import EXIT_INVALID_EVENTS, EXIT_SERVICE, EXIT_USAGE, classify
from traceline.settings import ChdbSettings


@pytest.mark.parametrize(
    ("error", "status", "exit_code"),
    [
        (InvalidInputError("unknown trigger kind 'nope'", "kind"), 422, EXIT_USAGE),
        (ValueError("a bare ValueError from a validator"), 422, EXIT_USAGE),
        (EventValidationError("quantity: must be >= 0", "quantity"), 422, EXIT_INVALID_EVENTS),
        (BrokerUnavailableError("127.0.0.1:9", "timed out"), 503, EXIT_SERVICE),
        (StoreUnavailableError("connection refused", operation="connect"), 503, EXIT_SERVICE),
        (MalformedRecordError(b"\x00", "truncated"), 503, EXIT_SERVICE),
        (TracelineError("anything else traceline raised on purpose"), 503, EXIT_SERVICE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_one_translation_of_errors(error: BaseException, status: int, exit_code: int) -> None:
    failure = classify(error)
    assert failure is not None
    assert (failure.status, failure.exit_code) == (status, exit_code)
    assert failure.message == str(error)


def test_a_setting_that_does_not_parse_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELINE_CHDB_UNCOMPRESSED_CACHE_MB", "lots")
    with pytest.raises(ValidationError) as caught:
        ChdbSettings()
    failure = classify(caught.value)
    assert failure is not None and (failure.status, failure.exit_code) == (422, EXIT_USAGE)
    assert "uncompressed_cache_mb" in failure.message and "'lots'" in failure.message


def test_an_unexpected_error_is_not_translated() -> None:
    assert classify(KeyError("a bug")) is None  # keeps its traceback
    assert issubclass(InvalidInputError, TracelineError) and issubclass(InvalidInputError, ValueError)


def test_trigger_kind_is_checked_as_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="unknown trigger kind"):
        Trigger("nope", "x")


T = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def _impact() -> RecallImpact:
    unit = AffectedUnit(
        uii="PCB:1",
        part_number="PCB",
        trace=["lot:L1", "uii:PCB:1"],
        parent_uii="LRU:1",
        root_uii="SYS:1",
        path=["LRU:1", "SYS:1"],
        status="shipped",
        site="plant-a",
        customer_id="C1",
    )
    past = PastHolder(
        uii="LRU:9", child_uii="PCB:1", affected_uii="PCB:1", root_uii="LRU:9", status="in_work", removed_at=T
    )
    return RecallImpact(
        trigger=Trigger("lot", "L1", T, None),
        units=[unit],
        past=[past],
        systems=[{"root_uii": "SYS:1", "units": 1}],
        by_customer={"C1": 1},
        by_site={"plant-a": 1},
        by_status={"shipped": 1},
        lots=[LotHop("L1", None, 0)],
    )


def test_typed_results_survive_the_api_json() -> None:
    """The CLI reads the server's JSON back into the same typed results the store gives."""
    impact = _impact()
    assert from_jsonable(RecallImpact, to_jsonable(impact)) == impact
    ft = ForwardTrace("L1", impact.lots, impact.units, impact.systems, impact.past)
    assert from_jsonable(ForwardTrace, to_jsonable(ft)) == ft
    bt = BackwardTrace("SYS:1", "SYS:1", [{"uii": "SYS:1", "depth": 0}], [], [], [], [], [])
    assert from_jsonable(BackwardTrace, to_jsonable(bt)) == bt
    assert from_jsonable(RecallImpact, to_jsonable(impact)).past[0].removed_at == T  # aware, exact
