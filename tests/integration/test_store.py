"""The ClickHouse store on the real engine (chdb, or a server named by TRACELINE_CLICKHOUSE_DSN)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from schemas.serde import AvroSerde
from sinks import ddl
from sinks.rows import SinkRecord, genealogy_rows, rows_for_batch
from sinks.store import Store, StoreQueryError
from tests.samples import sample_events

pytestmark = pytest.mark.integration

INGEST = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def _target(tmp_path: Path) -> tuple[str, str]:
    dsn = os.environ.get("TRACELINE_CLICKHOUSE_DSN", "").strip()
    if dsn:
        return dsn, f"traceline_test_{uuid.uuid4().hex[:10]}"
    return f"chdb://{tmp_path / 'ch'}", "traceline"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[str, str]]:
    dsn, db = _target(tmp_path)
    yield dsn, db
    if dsn.startswith("http"):
        with Store.open(dsn, db, migrate=False) as s:
            s.command(f"DROP DATABASE IF EXISTS `{db}`")


@pytest.fixture
def store(target: tuple[str, str]) -> Iterator[Store]:
    s = Store.open(*target)
    yield s
    s.close()


def _batch(n_copies: int = 1) -> list[SinkRecord]:
    serde = AvroSerde()
    decoded = [serde.decode(serde.encode_event(e)) for e in sample_events()]
    out = []
    for k in range(n_copies):
        for i, (t, r) in enumerate(decoded):
            # spread over two months so one insert touches several partitions
            r = dict(r, event_id=f"{r['event_id']}-{k}", event_time=r["event_time"] + timedelta(days=20 * k))
            out.append(SinkRecord(t, r, "traceline.events", 0, k * 100 + i, INGEST))
    return out


def _counts(store: Store, table: str) -> tuple[int, int]:
    row = store.query(f"SELECT count() AS n, uniqExact(event_id) AS u FROM {table}")[0]
    return row["n"], row["u"]


def test_ddl_applies_twice_idempotently(store: Store) -> None:
    assert ddl.apply_ddl(store.client, store.database) == []  # already applied by open()
    assert ddl.apply_ddl(store.client, store.database) == []
    rows = store.query("SELECT version FROM schema_migrations")
    assert [r["version"] for r in rows] == [v for v, _n, _f in ddl.MIGRATIONS]
    tables = {
        r["name"]
        for r in store.query(
            "SELECT name FROM system.tables WHERE database = {db:String}", {"db": store.database}
        )
    }
    assert {t.name for t in ddl.TABLES} | {"schema_migrations"} <= tables
    # the dedup window and column comments are pinned in the DDL
    create = store.query(
        "SELECT create_table_query AS q FROM system.tables WHERE database = {db:String} "
        "AND name = 'operations'",
        {"db": store.database},
    )[0]["q"]
    assert (
        "non_replicated_deduplication_window = 10000" in create or "replicated_deduplication_window" in create
    )
    comments = store.query(
        "SELECT name, comment FROM system.columns WHERE database = {db:String} AND table = 'unit_genealogy'",
        {"db": store.database},
    )
    assert all(c["comment"] for c in comments)


def test_same_batch_twice_same_token_no_duplicates(store: Store) -> None:
    tables = rows_for_batch(_batch(n_copies=2))
    first = store.write_batch(tables, token="traceline.events:0:0-108")
    second = store.write_batch(tables, token="traceline.events:0:0-108")
    assert first == second
    for name, sent in first.items():
        if name == "lot_units":  # no event_id: equal (lot, unit, seq) rows collapse on insert
            pairs = set(zip(tables[name]["lot_id"].to_pylist(), tables[name]["uii"].to_pylist(), strict=True))
            assert store.count(name) == len(pairs), name
            continue
        n, u = _counts(store, name)
        if name in ("lot_consumption", "lot_lineage", "unit_consumption"):
            assert n == sent, name
        else:
            assert n == u == sent, name


def test_replay_after_partial_write_and_restart(target: tuple[str, str]) -> None:
    """A crash after some tables were written: the replay (new process/handle) completes the
    batch without duplicating what was already there."""
    tables = rows_for_batch(_batch())
    names = list(tables)
    with Store.open(*target) as s:
        s.write_batch({k: tables[k] for k in names[:4]}, token="b-1")
    with Store.open(*target) as s:
        s.write_batch(tables, token="b-1")
        s.write_batch(tables, token="b-1")
        for name in names:
            n = s.count(name)
            assert n == tables[name].num_rows, name


def test_different_token_is_a_new_batch(store: Store) -> None:
    tables = rows_for_batch(_batch())
    store.write_batch({"lot_status": tables["lot_status"]}, token="a")
    store.write_batch({"lot_status": tables["lot_status"]}, token="b")
    assert store.count("lot_status") == 2  # a different batch is not deduplicated at insert
    # ... but the raw tables collapse a re-sent event_id at merge time
    store.command("OPTIMIZE TABLE lot_status FINAL")
    assert store.count("lot_status") == 1


def test_genealogy_final_and_argmax(store: Store) -> None:
    def ch(uii: str, parent: str | None, root: str, path: list[str], seq: int) -> dict:
        return {
            "uii": uii,
            "parent_uii": parent,
            "root_uii": root,
            "path": path,
            "depth": len(path),
            "seq": seq,
            "version_ms": 1_764_151_200_000 + seq,
            "version_event_id": f"e{seq}",
        }

    store.write_batch(genealogy_rows([ch("P:1", "L:1", "S:1", ["L:1", "S:1"], 1)]), token="g1")
    store.write_batch(genealogy_rows([ch("P:1", None, "P:1", [], 2)]), token="g2")  # removed
    rows = store.query("SELECT uii, parent_uii, root_uii FROM unit_genealogy FINAL")
    assert rows == [{"uii": "P:1", "parent_uii": None, "root_uii": "P:1"}]
    exact = store.query(
        "SELECT uii, argMax(tuple(parent_uii, root_uii), seq) AS g FROM unit_genealogy GROUP BY uii"
    )
    assert exact[0]["g"] == (None, "P:1")


def test_query_binds_parameters(store: Store) -> None:
    rows = store.query(
        "SELECT {s:String} AS s, {a:Array(String)} AS a, {t:DateTime64(3, 'UTC')} AS t",
        {
            "s": "x'); DROP TABLE operations; --",
            "a": ["p", "q"],
            "t": datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        },
    )
    assert rows == [
        {
            "s": "x'); DROP TABLE operations; --",
            "a": ["p", "q"],
            "t": datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        }
    ]
    with pytest.raises(StoreQueryError):
        store.query("SELECT * FROM no_such_table")


def test_write_batch_accepts_column_dicts(store: Store) -> None:
    t = rows_for_batch(_batch())["lot_status"]
    store.write_batch({"lot_status": {c: t.column(c) for c in t.column_names}}, token="dict")
    assert store.count("lot_status") == 1
    assert isinstance(store.query_arrow("SELECT * FROM lot_status"), pa.Table)


def test_lot_units_backfill_matches_what_the_sink_and_processor_write(store: Store) -> None:
    """Migration 4's backfill (a store that had lot_consumption and unit_genealogy before
    lot_units existed) leaves the same latest row per (lot, unit) as the live path."""
    batch = _batch()
    op = next(b for b in batch if b.type_name.endswith("OperationCompleted"))
    unit = {**op.record["unit"], "serial_number": "SN-OTHER"}
    batch.append(op._replace(record={**op.record, "event_id": "op-2", "unit": unit}, offset=999))
    tables = rows_for_batch(batch)
    store.write_batch(tables, token="ev")
    lots = tables["lot_units"]
    pairs = sorted(set(zip(lots["lot_id"].to_pylist(), lots["uii"].to_pylist(), strict=True)))
    assert len(pairs) >= 2
    (lot_a, unit_a), (lot_b, unit_b) = pairs[0], pairs[1]
    rec = {"depth": 2, "version_ms": 0, "version_event_id": "e", "parent_uii": "LRU:1"}
    changes = [
        {**rec, "uii": unit_a, "root_uii": "SYS:1", "path": ["LRU:1", "SYS:1"], "seq": 3},
        {**rec, "uii": unit_a, "root_uii": "SYS:2", "path": ["LRU:1", "SYS:2"], "seq": 4},
    ]
    live = genealogy_rows([{**c, "lots": {lot_a: "plant-a"}} for c in changes])
    store.write_batch(genealogy_rows(changes), token="gen")  # records without lots (before migration 4)
    exact = (
        "SELECT lot_id, uii, argMax(tuple(parent_uii, root_uii, path, seq), seq) AS g, min(site) AS site"
        " FROM lot_units GROUP BY lot_id, uii ORDER BY lot_id, uii"
    )
    store.command("TRUNCATE TABLE lot_units")
    for sql in ddl.lot_units_backfill(store.database):
        store.command(sql)
    backfilled = store.query(exact)
    store.command("TRUNCATE TABLE lot_units")
    store.write_batch({"lot_units": tables["lot_units"]}, token="ev-again")
    store.write_batch({"lot_units": live["lot_units"]}, token="gen-live")
    assert backfilled == store.query(exact)
    by_pair = {(r["lot_id"], r["uii"]): r["g"] for r in backfilled}
    assert by_pair[(lot_a, unit_a)] == ("LRU:1", "SYS:2", ["LRU:1", "SYS:2"], 4)
    assert by_pair[(lot_b, unit_b)] == (None, unit_b, [], 0)  # no genealogy yet: its own root


def test_an_embedded_store_is_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new" / "ch"
    store = Store.open(f"chdb://{path}", "traceline")
    store.close()
    assert path.stat().st_mode & 0o777 == 0o700


def test_an_embedded_store_moves_arrow_results_uncompressed_and_bounds_its_memory(tmp_path: Path) -> None:
    """In-process Arrow results are not LZ4-framed (``CHDB_SESSION_OPTIONS``), also after a
    write with per-call settings; the engine's caches are bounded (ClickHouse's 5 GiB each by
    default) and ``max_memory_mb`` caps the whole engine."""
    store = Store.open(
        f"chdb://{tmp_path / 'bounded'}", "traceline", max_memory_mb=3000, uncompressed_cache_mb=64
    )
    try:
        sql = "SELECT value FROM system.settings WHERE name = 'output_format_arrow_compression_method'"
        assert store.query(sql)[0]["value"] == "none"
        store.write_batch(rows_for_batch(_batch()), "arrow-setting")
        assert store.query(sql)[0]["value"] == "none"
        assert store.query_arrow("SELECT 1 AS one").column("one").to_pylist() == [1]
        server = {
            r["name"]: int(r["value"])
            for r in store.query(
                "SELECT name, value FROM system.server_settings WHERE name IN ('mark_cache_size',"
                " 'primary_index_cache_size', 'index_mark_cache_size', 'uncompressed_cache_size',"
                " 'max_server_memory_usage')"
            )
        }
    finally:
        store.close()
    assert server == {
        "mark_cache_size": 256 << 20,
        "primary_index_cache_size": 256 << 20,
        "index_mark_cache_size": 64 << 20,
        "uncompressed_cache_size": 64 << 20,
        "max_server_memory_usage": 3000 << 20,
    }
