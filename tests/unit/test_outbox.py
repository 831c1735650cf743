"""The durable outbox: bounded (OutboxFullError, nothing dropped, nothing half-stored),
durable across reopening, one row per pending event_id. No broker."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from producers.outbox import Outbox
from producers.publisher import Publisher
from producers.simulator import simulate
from schemas.errors import OutboxFullError, TracelineError
from schemas.jsonform import parse_event
from schemas.models import EventBase

TOPIC = "t.events"


def _rows(start: int, n: int) -> list[tuple[str, str, bytes | None, bytes]]:
    return [
        (f"ev-{i:05d}", TOPIC, f"key-{i % 3}".encode(), f"value-{i}".encode())
        for i in range(start, start + n)
    ]


def _ids(box: Outbox) -> list[str]:
    return [r.event_id for r in box.pending(limit=1_000_000)]


def test_rows_come_back_in_publish_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    assert box.add_many(_rows(0, 5)) == 5
    assert box.add_many(_rows(5, 3)) == 3
    pending = box.pending()
    assert [r.event_id for r in pending] == [f"ev-{i:05d}" for i in range(8)]
    assert [r.seq for r in pending] == sorted(r.seq for r in pending)
    assert pending[2].key == b"key-2" and pending[2].value == b"value-2" and pending[2].topic == TOPIC
    assert [r.event_id for r in box.pending(after_seq=pending[4].seq, limit=2)] == ["ev-00005", "ev-00006"]
    assert box.add_many([]) == 0
    box.close()


def test_full_outbox_refuses_the_whole_batch_and_drops_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_pending=5)
    assert box.add_many(_rows(0, 3)) == 3

    with pytest.raises(OutboxFullError) as info:
        box.add_many(_rows(3, 3))  # 3 + 3 > 5: not even the 2 that would fit are stored
    assert isinstance(info.value, TracelineError)
    assert (info.value.pending, info.value.limit) == (3, 5)
    assert "outbox full" in str(info.value)
    assert len(box) == 3
    assert _ids(box) == ["ev-00000", "ev-00001", "ev-00002"]  # nothing dropped, nothing partial

    assert box.add_many(_rows(3, 2)) == 2  # exactly full is allowed
    with pytest.raises(OutboxFullError):
        box.add_many(_rows(5, 1))
    assert len(box) == 5

    # once rows are delivered (removed) the refused events go in, in order
    first_two = [r.seq for r in box.pending(limit=2)]
    assert box.remove(first_two) == 2
    assert box.add_many(_rows(5, 2)) == 2
    assert _ids(box) == [f"ev-{i:05d}" for i in range(2, 7)]
    box.close()

    # the count on disk agrees with what the outbox says
    with sqlite3.connect(tmp_path / "o.sqlite") as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 5


def test_failed_insert_leaves_no_partial_batch(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.add_many(_rows(0, 2))
    bad = [*_rows(2, 3), ("ev-bad", TOPIC, None, None)]  # value NOT NULL -> the batch fails
    with pytest.raises(sqlite3.IntegrityError):
        box.add_many(bad)  # type: ignore[arg-type]
    assert len(box) == 2
    assert _ids(box) == ["ev-00000", "ev-00001"]
    assert box.add_many(_rows(2, 3)) == 3  # the outbox is still usable
    box.close()


def test_rows_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "o.sqlite"  # parent dir is created
    box = Outbox(path)
    box.add_many(_rows(0, 10))
    box.remove([r.seq for r in box.pending(limit=4)])
    before = box.pending()
    box.close()

    again = Outbox(path)
    assert len(again) == 6
    assert again.pending() == before  # same seq, event_id, topic, key, value
    # new rows keep going after the old ones
    again.add_many(_rows(10, 1))
    assert _ids(again)[-1] == "ev-00010"
    assert again.pending()[-1].seq > before[-1].seq
    again.close()


def test_duplicate_event_id_is_stored_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_pending=10)
    assert box.add_many(_rows(0, 3)) == 3
    assert box.add_many(_rows(1, 3)) == 1  # ev-1, ev-2 already pending: only ev-3 is new
    assert box.add_many(_rows(0, 1) * 3) == 0  # repeated within one batch too
    assert len(box) == 4
    assert _ids(box) == ["ev-00000", "ev-00001", "ev-00002", "ev-00003"]
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert len(again) == 4
    again.close()


def _events(n: int) -> list[EventBase]:
    return [parse_event(d) for d in itertools.islice(simulate(50, seed=5), n)]


def test_publisher_stores_before_returning_and_refuses_a_batch_that_does_not_fit(tmp_path: Path) -> None:
    """No broker answers (port 1): publish still returns once the events are on disk."""
    events = _events(12)
    pub = Publisher("127.0.0.1:1", tmp_path / "o.sqlite", topic="t.events", max_pending=10)
    try:
        assert pub.publish_many(events[:8]) == 8
        with pytest.raises(OutboxFullError):
            pub.publish_many(events[8:12])  # 8 + 4 > 10: none of the 4 is stored
        assert pub.pending() == 8
        assert pub.publish_many(events[:2]) == 0  # already pending: not stored twice
    finally:
        assert pub.close(0) == 8  # nothing delivered, nothing dropped
    assert pub.close(0) == 8  # closing twice is harmless

    box = Outbox(tmp_path / "o.sqlite")
    assert [r.event_id for r in box.pending()] == [str(e.event_id) for e in events[:8]]
    box.close()


def test_add_says_which_rows_repeat_an_id_identically_and_which_conflict(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_pending=10)
    first = box.add(_rows(0, 3))
    assert (first.added, first.repeats) == (3, ())
    other = ("ev-00001", TOPIC, b"key-1", b"another value")  # pending id, other content
    again = _rows(4, 1)[0]
    got = box.add([_rows(2, 1)[0], other, *_rows(3, 2), again, ("ev-00004", TOPIC, None, b"x")])
    assert got.added == 2  # ev-3, ev-4
    assert [(r.index, r.event_id, r.first, r.identical) for r in got.repeats] == [
        (0, "ev-00002", None, True),  # pending from before, the same row: the same event
        (1, "ev-00001", None, False),  # pending from before, other content: a conflict
        (4, "ev-00004", 3, True),  # repeats row 3 of this call
        (5, "ev-00004", 3, False),  # conflicts with row 3 of this call
    ]
    assert (got.identical, got.conflicts) == (2, 2)
    assert got.added + got.identical + got.conflicts == 6  # every row accounted for
    rows = {r.event_id: r for r in box.pending()}
    assert rows["ev-00001"].value == b"value-1"  # the pending row is kept as it was
    assert rows["ev-00004"].value == b"value-4" and len(box) == 5
    box.close()


def test_only_new_rows_count_against_the_limit(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_pending=4)
    box.add(_rows(0, 3))
    got = box.add(_rows(0, 4))  # 3 repeats + 1 new row: fits
    assert (got.added, got.identical) == (1, 3) and len(box) == 4
    with pytest.raises(OutboxFullError):
        box.add(_rows(3, 2))  # ev-3 repeats, ev-4 would be the fifth
    assert len(box) == 4
    box.close()


def test_the_outbox_is_owner_only(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "state" / "outbox.sqlite")
    try:
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        for f in (tmp_path / "state").iterdir():
            assert f.stat().st_mode & 0o077 == 0, f  # no group/other access to pending events
    finally:
        box.close()
