"""``traceline verify`` on the real engine (chdb): a simulated plant landed by the real sink
(``SinkWorker`` with fake Kafka clients, a signing key), then tampered with the way the user
found it done, with ``ALTER TABLE ... UPDATE / DELETE`` (``mutations_sync = 2``) and forged
``INSERT``s, on raw rows, derived rows and the chain itself. Every case must be reported with
its table, key and (for chained rows) offset; the untouched store must verify clean.

Each test lands the plant in a store of its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from producers.simulator import simulate
from queries import Trigger
from queries.report import build_report
from queries.report_render import issue_report, render
from queries.verify import EXIT_TAMPERED, Finding, quick_check, verify_store
from schemas.alert import Alert, AlertRule, AlertSeverity, encode_alert
from schemas.jsonform import parse_event
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from sinks import chain, ddl
from sinks.chain import Signer, Verifier, chain_key_path, genesis, link, report_key_path
from sinks.ingest import SinkWorker
from sinks.rows import RAW_TABLES, SinkRecord, rows_for_batch
from sinks.store import Store
from tests.samples import sample_events
from tests.support import run_genealogy
from tests.unit.test_report import _report
from traceline.cli_verify import report_verify_command, verify_command

pytestmark = pytest.mark.integration

TOPICS = TopicNames(events="v.events", prefix="v.")
SERDE = AvroSerde()
PARTS = 3


@dataclass
class Msg:
    t: str
    p: int
    o: int
    v: bytes
    k: bytes | None = None

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes:
        return self.v

    def headers(self) -> None:
        return None

    def error(self) -> None:
        return None


class Consumer:
    def __init__(self, msgs: list[Msg]) -> None:
        self.queued = list(msgs)

    def subscribe(self, topics: list[str], on_assign: Any = None) -> None:
        pass

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Msg]:
        got, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return got

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        pass

    def close(self) -> None:
        pass


class Producer:
    def produce(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        partition: int = -1,
        on_delivery: Any = None,
        headers: Any = None,
    ) -> None:
        if on_delivery is not None:
            on_delivery(None, None)

    def flush(self, timeout: float = -1) -> int:
        return 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return SimpleNamespace(
            topics={TOPICS.commands: SimpleNamespace(error=None, partitions={i: object() for i in range(3)})}
        )

    def close(self) -> None:
        pass


def plant_messages(units: int = 24, seed: int = 5) -> list[Msg]:
    """The simulator's events over PARTS partitions, their genealogy change records and two
    alerts, as the sink reads them."""
    events = [parse_event(d) for d in simulate(units, seed=seed)]
    next_off = [0] * PARTS
    msgs: list[Msg] = []
    for i, e in enumerate(events):
        p = i % PARTS
        msgs.append(Msg(TOPICS.events, p, next_off[p], SERDE.encode_event(e), e.event_id.encode()))
        next_off[p] += 1
    changes: list[dict[str, Any]] = []
    run_genealogy(({**e.to_avro(), "type": e.type} for e in events), changes=changes)
    for n, start in enumerate(range(0, len(changes), 40)):
        msgs.append(Msg(TOPICS.changes, 0, n, json.dumps(changes[start : start + 40]).encode()))
    for n in range(2):
        alert = Alert(
            alert_id=f"NC_RAISED:L{n}",
            rule=AlertRule.NC_RAISED,
            severity=AlertSeverity.WARNING,
            title=f"NC on lot L{n}",
            subject_kind="lot",
            subject_id=f"L{n}",
            raised_at=datetime(2026, 1, 6, tzinfo=UTC),
            event_time=datetime(2026, 1, 6, tzinfo=UTC),
            trigger_event_id="e",
            trigger_type="NonconformanceRaised",
            site="plant-a",
            program="P",
            details={"b": "2", "a": "1"},
        )
        msgs.append(Msg(TOPICS.alerts, 0, n, encode_alert(alert)))
    return msgs


def land(store: Store, msgs: list[Msg], signer: Signer | None, batch_size: int = 150) -> SinkWorker:
    sink = SinkWorker(
        "fake:9092",
        store,
        topics=TOPICS,
        serde=SERDE,
        batch_size=batch_size,
        batch_seconds=0.01,
        consumer=Consumer(msgs),  # type: ignore[arg-type]
        producer=Producer(),  # type: ignore[arg-type]
        chain_signer=signer,
        chain_sign_seconds=3600,  # signed once per chain in a batch, the rest when idle
    )
    while sink.poll_once():
        pass
    sink.poll_once()  # idle: signs the heads
    return sink


@pytest.fixture(scope="module")
def messages() -> list[Msg]:
    return plant_messages()


@pytest.fixture
def copy(messages: list[Msg], tmp_path: Path) -> Iterator[tuple[Store, Verifier]]:
    """A store the sink landed the plant in, with its chain key."""
    store = Store.open(f"chdb://{tmp_path / 'ch'}", "traceline")
    try:
        sink = land(store, messages, Signer.load_or_create(chain_key_path(tmp_path)))
        assert sink.stats.events_landed > 500 and sink.stats.alerts_landed == 2
        verifier = Verifier.load(chain_key_path(tmp_path))
        assert verifier is not None
        yield store, verifier
    finally:
        store.close()


def mutate(store: Store, sql: str) -> None:
    store.command(f"{sql} SETTINGS mutations_sync = 2")


def one(store: Store, sql: str) -> tuple[Any, ...]:
    rows = store.query_rows(sql)[1]
    assert rows, sql
    return rows[0]


def kinds(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.kind, f.table) for f in findings}


def consuming_op(store: Store) -> tuple[str, int, int]:
    """An operation that consumed lots: (event_id, partition, offset)."""
    eid, p, o = one(
        store,
        "SELECT event_id, kafka_partition, kafka_offset FROM operations WHERE notEmpty(consumed_lot_ids)"
        " ORDER BY kafka_partition, kafka_offset LIMIT 1",
    )
    return str(eid), int(p), int(o)


# ----------------------------------------------------------------------------- clean


def test_the_store_the_sink_landed_verifies_clean(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    v = verify_store(store, verifier)
    assert v.findings == [] and v.exit_code == 0
    events = {c.partition: c for c in v.chains if c.topic == TOPICS.events}
    assert set(events) == set(range(PARTS))
    raw = sum(
        n
        for (n,) in store.query_rows(
            "SELECT count() FROM (SELECT event_id FROM operations UNION ALL SELECT event_id FROM unit_tests"
            " UNION ALL SELECT event_id FROM material_received UNION ALL SELECT event_id FROM lot_transformed"
            " UNION ALL SELECT event_id FROM assembly_events UNION ALL SELECT event_id FROM shipments"
            " UNION ALL SELECT event_id FROM lot_status UNION ALL SELECT event_id FROM nonconformances)"
        )[1]
    )
    assert sum(c.rows for c in events.values()) == raw  # every raw row met its entry
    assert all(c.signed_offset == c.head_offset and c.unsigned_tail == 0 for c in v.chains)
    [alerts] = [c for c in v.chains if c.topic == TOPICS.alerts]
    assert alerts.rows == 2
    assert {d.table for d in v.derived} == {
        "lot_consumption",
        "unit_consumption",
        "lot_lineage",
        "lot_units",
        "unit_facts",
    }
    assert (
        int(one(store, "SELECT count() FROM lot_units WHERE seq > 0")[0]) > 0
    )  # the genealogy's rows are checked too
    status = quick_check(store, verifier)
    assert status.verified and len(status.heads) == PARTS + 1, status
    # a report built on it says so, with the heads it rests on
    lot = one(store, "SELECT lot_id FROM lot_consumption ORDER BY lot_id LIMIT 1")[0]
    report = build_report(store, Trigger("lot", lot), prepared_by="Q. Engineer", verifier=verifier)
    assert report.verification == status
    page = render(report, "html").decode()
    assert "verified: the signed heads of all 4 chains verify" in page and status.heads[0][3][:16] in page
    unverified = build_report(store, Trigger("lot", lot), prepared_by="Q. Engineer")
    assert "not verified: no chain key" in render(unverified, "html").decode()
    # without the key the heads are not checked, and it says so
    assert "no chain key" in verify_store(store, None).notes[0]
    assert not quick_check(store, None).verified


# ----------------------------------------------------------------------------- raw rows


def test_an_updated_operation_is_reported_with_its_key_and_offset(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    eid, p, o = consuming_op(store)
    mutate(store, f"ALTER TABLE operations UPDATE station_id = 'X' WHERE event_id = '{eid}'")
    v = verify_store(store, verifier)
    assert v.exit_code == EXIT_TAMPERED
    assert (
        Finding(
            "altered", "operations", eid, TOPICS.events, p, o, "its content differs from what the sink landed"
        )
        in v.findings
    )
    # and the facts derived from it no longer match it
    assert ("altered", "lot_consumption") in kinds(v.findings)
    assert quick_check(store, verifier).verified  # the heads still verify: the quick check is not a re-hash


def test_a_deleted_operation_is_reported(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    eid, p, o = consuming_op(store)
    mutate(store, f"ALTER TABLE operations DELETE WHERE event_id = '{eid}'")
    v = verify_store(store, verifier)
    assert any(
        f.kind == "deleted"
        and f.table == "operations"
        and f.key == eid
        and f.offset == o
        and f.partition == p
        for f in v.findings
    ), v.findings
    # its lot_consumption rows now come from nowhere
    assert ("inserted", "lot_consumption") in kinds(v.findings)


def test_a_forged_operation_is_reported(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    eid, p, _o = consuming_op(store)
    store.command(
        "INSERT INTO operations SELECT * REPLACE ('forged-1' AS event_id, toUInt64(1000000) AS kafka_offset)"
        f" FROM (SELECT * FROM operations WHERE event_id = '{eid}')"
    )
    v = verify_store(store, verifier)
    assert any(
        f.kind == "inserted" and f.table == "operations" and f.key == "forged-1" and f.offset == 1_000_000
        for f in v.findings
    ), v.findings
    assert ("deleted", "lot_consumption") in kinds(v.findings)  # the forged row's facts are missing


def test_an_updated_alert_is_reported(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    mutate(store, "ALTER TABLE alerts UPDATE title = 'nothing to see' WHERE alert_id = 'NC_RAISED:L1'")
    v = verify_store(store, verifier)
    assert [(f.kind, f.table, f.key, f.topic, f.offset) for f in v.findings] == [
        ("altered", "alerts", "NC_RAISED:L1:1", TOPICS.alerts, 1)
    ]


# ----------------------------------------------------------------------------- derived rows


def test_lot_consumption_update_delete_insert_are_reported(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    lots = store.query_rows(
        "SELECT lot_id, uii, event_id FROM lot_consumption ORDER BY lot_id, uii, event_id LIMIT 2"
    )[1]
    (l1, u1, e1), (l2, u2, e2) = lots
    mutate(
        store,
        "ALTER TABLE lot_consumption UPDATE quantity = quantity + 1"
        f" WHERE event_id = '{e1}' AND lot_id = '{l1}'",
    )
    mutate(store, f"ALTER TABLE lot_consumption DELETE WHERE event_id = '{e2}' AND lot_id = '{l2}'")
    store.command(
        "INSERT INTO lot_consumption SELECT * REPLACE ('L-FORGED' AS lot_id)"
        f" FROM (SELECT * FROM lot_consumption WHERE event_id = '{e1}' AND lot_id = '{l1}')"
    )
    v = verify_store(store, verifier)
    got = {(f.kind, f.key) for f in v.findings if f.table == "lot_consumption"}
    assert got == {
        ("altered", f"lot_id={l1} uii={u1} event_id={e1}"),
        ("deleted", f"lot_id={l2} uii={u2} event_id={e2}"),
        ("inserted", f"lot_id=L-FORGED uii={u1} event_id={e1}"),
    }
    assert {f.table for f in v.findings} == {"lot_consumption"}  # the raw rows are intact


def test_lot_units_update_delete_insert_are_reported(copy: tuple[Store, Verifier]) -> None:
    """The user's finding: a recall lost a unit (deleted from the recall index) and a system (its
    root rewritten)."""
    store, verifier = copy
    ((lot, uii, seq),) = store.query_rows(
        "SELECT lot_id, uii, max(seq) AS s FROM lot_units GROUP BY lot_id, uii HAVING s > 0"
        " ORDER BY lot_id, uii LIMIT 1"
    )[1]
    ((lot0, uii0),) = store.query_rows(
        f"SELECT lot_id, uii FROM lot_units WHERE (lot_id, uii) != ('{lot}', '{uii}')"
        " ORDER BY lot_id DESC, uii LIMIT 1"
    )[1]
    mutate(
        store,
        "ALTER TABLE lot_units UPDATE root_uii = 'SYS:GONE'"
        f" WHERE lot_id = '{lot}' AND uii = '{uii}' AND seq = {seq}",
    )
    mutate(store, f"ALTER TABLE lot_units DELETE WHERE lot_id = '{lot0}' AND uii = '{uii0}'")
    store.command(
        "INSERT INTO lot_units SELECT * REPLACE ('L-FORGED' AS lot_id)"
        f" FROM (SELECT * FROM lot_units WHERE lot_id = '{lot}' AND uii = '{uii}' AND seq = {seq})"
    )
    v = verify_store(store, verifier)
    got = {(f.kind, f.key) for f in v.findings if f.table == "lot_units"}
    assert ("altered", f"lot_id={lot} uii={uii} seq={seq}") in got
    assert ("deleted", f"lot_id={lot0} uii={uii0} seq=-") in got
    assert ("inserted", f"lot_id=L-FORGED uii={uii} seq={seq}") in got
    assert {f.table for f in v.findings} == {"lot_units"}


def test_a_deleted_shipment_fact_in_unit_facts_is_reported(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    ((uii, eid),) = store.query_rows(
        "SELECT uii, event_id FROM unit_facts WHERE kind = 'SHIPPED' ORDER BY uii LIMIT 1"
    )[1]
    mutate(store, f"ALTER TABLE unit_facts DELETE WHERE kind = 'SHIPPED' AND uii = '{uii}'")
    v = verify_store(store, verifier)
    assert [(f.kind, f.table, f.key) for f in v.findings] == [
        ("deleted", "unit_facts", f"uii={uii} kind=SHIPPED seq=0 event_id={eid}")
    ]


# ----------------------------------------------------------------------------- the chain itself


def test_an_edited_chain_entry_is_reported(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    eid, p, o = consuming_op(store)
    # the operation edited, and its chain entry re-hashed to match: the link breaks
    mutate(store, f"ALTER TABLE operations UPDATE station_id = 'X' WHERE event_id = '{eid}'")
    data = store.query_arrow(f"SELECT * FROM operations WHERE event_id = '{eid}'")
    [rh] = chain.row_hashes("operations", data)
    mutate(
        store,
        f"ALTER TABLE event_chain UPDATE row_hash = unhex('{rh.hex()}') WHERE kafka_topic = '{TOPICS.events}'"
        f" AND kafka_partition = {p} AND kafka_offset = {o}",
    )
    v = verify_store(store, verifier)
    assert [(f.kind, f.table, f.offset) for f in v.findings if f.table in ("operations", "event_chain")] == [
        ("chain", "event_chain", o)
    ]


def test_a_rewritten_chain_tail_fails_the_signed_head(copy: tuple[Store, Verifier]) -> None:
    """Whoever edits a row and recomputes every entry after it keeps the chain consistent, but
    cannot sign the new head: the signed head is no longer in the chain."""
    store, verifier = copy
    eid, p, o = one(
        store,
        "SELECT event_id, kafka_partition, kafka_offset FROM operations ORDER BY kafka_offset DESC LIMIT 1",
    )
    mutate(store, f"ALTER TABLE operations UPDATE operator_id = 'NOBODY' WHERE event_id = '{eid}'")
    [rh] = chain.row_hashes(
        "operations", store.query_arrow(f"SELECT * FROM operations WHERE event_id = '{eid}'")
    )
    where = f"kafka_topic = '{TOPICS.events}' AND kafka_partition = {p}"
    entries = store.query_rows(
        f"SELECT kafka_offset, hex(row_hash) FROM event_chain WHERE {where} ORDER BY kafka_offset"
    )[1]
    prev = genesis(TOPICS.events, p)
    for off, h in entries:
        row = rh if off == o else bytes.fromhex(h)
        prev = link(prev, row)
        if off >= o:
            mutate(
                store,
                f"ALTER TABLE event_chain UPDATE row_hash = unhex('{row.hex()}'),"
                f" chain_hash = unhex('{prev.hex()}')"
                f" WHERE {where} AND kafka_offset = {off}",
            )
    v = verify_store(store, verifier)
    assert kinds(v.findings) == {("head", "event_chain")}, v.findings
    assert all(f.partition == p for f in v.findings)
    status = quick_check(store, verifier)
    assert not status.verified and "no longer holds the signed head" in status.reason


def test_a_deleted_chain_entry_and_a_forged_head_are_reported(copy: tuple[Store, Verifier]) -> None:
    store, verifier = copy
    eid, p, o = consuming_op(store)
    mutate(
        store,
        f"ALTER TABLE event_chain DELETE WHERE kafka_topic = '{TOPICS.events}' AND kafka_partition = {p}"
        f" AND kafka_offset = {o}",
    )
    mutate(
        store,
        "ALTER TABLE chain_heads UPDATE signed_at = signed_at + INTERVAL 1 SECOND"
        f" WHERE kafka_partition = {(p + 1) % PARTS}"
        f" AND kafka_topic = '{TOPICS.events}'",
    )
    v = verify_store(store, verifier)
    got = {(f.kind, f.table, f.partition) for f in v.findings}
    assert ("inserted", "operations", p) in got  # the row has no entry now
    assert ("chain", "event_chain", p) in got  # the next entry does not follow
    assert ("head", "chain_heads", (p + 1) % PARTS) in got  # the signature covers the time
    assert not quick_check(store, verifier).verified


def test_a_batch_that_failed_halfway_is_completed_and_chained_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain entries landed, the raw tables did not: the retry lands the rows under the
    same entries (none twice, none missing) and the store verifies clean."""
    store = Store.open(f"chdb://{tmp_path / 'ch'}", "traceline")
    try:
        msgs = [m for m in plant_messages(units=6, seed=2) if m.t == TOPICS.events]
        real = Store._insert_arrow
        failed: list[str] = []

        def flaky(self: Store, table: str, data: Any, settings: dict[str, Any]) -> Any:
            if table == "operations" and not failed:
                failed.append(table)
                raise ConnectionError("lost the server after event_chain landed")
            return real(self, table, data, settings)

        monkeypatch.setattr(Store, "_insert_arrow", flaky)
        store.retries = 0
        signer = Signer.load_or_create(chain_key_path(tmp_path))
        sink = land(store, msgs, signer, batch_size=len(msgs))
        assert failed and sink.stats.store_retries == 1
        n = int(one(store, "SELECT count() FROM event_chain")[0])
        assert (
            n
            == int(one(store, "SELECT uniqExact(kafka_partition, kafka_offset) FROM event_chain")[0])
            == len(msgs)
        )
        v = verify_store(store, Verifier.load(chain_key_path(tmp_path)))
        assert v.findings == [], v.findings
    finally:
        store.close()


# ----------------------------------------------------------------------------- the CLI


def test_the_cli_exits_0_when_clean_and_5_when_tampered(messages: list[Msg], tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("verify")(verify_command)
    app.command("report-verify")(report_verify_command)
    dsn = f"chdb://{tmp_path / 'ch'}"
    store = Store.open(dsn, "traceline")
    report = _report()
    try:
        land(store, messages[:200], Signer.load_or_create(chain_key_path(tmp_path)))
        content = issue_report(store, report, "csv", Signer.load_or_create(report_key_path(tmp_path)))
    finally:
        store.close()
    (tmp_path / "r.csv").write_bytes(content)
    (tmp_path / "edited.csv").write_bytes(content.replace(b"PCB:1", b"PCB:9"))
    common = ["--data-dir", str(tmp_path), "--clickhouse-dsn", dsn]
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", *common])
    assert ok.exit_code == 0, ok.output
    assert "clean" in ok.output
    genuine = runner.invoke(app, ["report-verify", str(tmp_path / "r.csv"), *common])
    assert genuine.exit_code == 0 and "GENUINE" in genuine.output and report.document_number in genuine.output
    edited = runner.invoke(app, ["report-verify", str(tmp_path / "edited.csv"), *common])
    assert edited.exit_code == EXIT_TAMPERED and "NOT GENUINE" in edited.output
    store = Store.open(dsn, "traceline")
    try:
        _eid, p, o = consuming_op(store)
        mutate(store, f"ALTER TABLE operations DELETE WHERE kafka_partition = {p} AND kafka_offset = {o}")
    finally:
        store.close()
    bad = runner.invoke(app, ["verify", "--json", *common])
    assert bad.exit_code == EXIT_TAMPERED, bad.output
    got = json.loads(bad.output)
    assert not got["clean"] and any(
        f["kind"] == "deleted" and f["table"] == "operations" and f["offset"] == o for f in got["findings"]
    )


def test_a_store_upgraded_with_rows_verifies_and_its_old_rows_are_counted(
    messages: list[Msg], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows landed before migration 6 have no entry: ``chain_start`` recorded them, so they are
    counted (not verified one by one), and one added or removed below the chain's start shows."""
    dsn = f"chdb://{tmp_path / 'ch'}"
    old = rows_for_batch(
        [SinkRecord(t, r, TOPICS.events, 0, i, datetime.now(UTC)) for i, (t, r) in enumerate(_samples())]
    )
    with monkeypatch.context() as m:  # a store as migration 5 left it, with rows in it
        m.setattr(ddl, "MIGRATIONS", ddl.MIGRATIONS[:5])
        store = Store.open(dsn, "traceline")
        later_cols = {t.name: [c.name for c in t.columns if c.since > 5] for t in ddl.TABLES}
        as_v5 = {n: t.drop([c for c in later_cols.get(n, []) if c in t.column_names]) for n, t in old.items()}
        store.write_batch(as_v5, "v5")  # the columns it had then
        store.close()
    store = Store.open(dsn, "traceline")  # applies migration 6
    try:
        later = [dataclasses.replace(x, o=x.o + 100) for x in messages[:150]]
        land(store, later, Signer.load_or_create(chain_key_path(tmp_path)))
        verifier = Verifier.load(chain_key_path(tmp_path))
        v = verify_store(store, verifier)
        assert v.findings == [], v.findings
        [p0] = [c for c in v.chains if c.topic == TOPICS.events and c.partition == 0]
        assert (
            p0.unchained == sum(t.num_rows for n, t in old.items() if n in RAW_TABLES)
            and p0.first_offset == 100
        )
        eid = one(store, "SELECT event_id FROM operations WHERE kafka_offset < 100 LIMIT 1")[0]
        store.command(
            "INSERT INTO operations SELECT * REPLACE ('forged-old' AS event_id)"
            f" FROM (SELECT * FROM operations WHERE event_id = '{eid}')"
        )
        mutate(store, "ALTER TABLE shipments DELETE WHERE kafka_offset < 100")
        found = verify_store(store, verifier).findings
        raw = {(f.kind, f.table, f.key) for f in found if f.table in RAW_TABLES}
        assert raw == {
            ("inserted", "operations", "1 rows landed before the chain began"),
            ("deleted", "shipments", "1 rows landed before the chain began"),
        }
        # and what was derived from them no longer matches: the forged operation has no facts,
        # the deleted shipment's fact comes from nowhere
        assert {(f.kind, f.table) for f in found if f.table not in RAW_TABLES} == {
            ("deleted", "lot_consumption"),
            ("deleted", "unit_consumption"),
            ("inserted", "unit_facts"),
        }
    finally:
        store.close()


def _samples() -> list[tuple[str, dict[str, Any]]]:
    return [SERDE.decode(SERDE.encode_event(e)) for e in sample_events()]
