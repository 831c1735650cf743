# ruff: noqa: E501 - the plant generator is SQL text
"""Recall / trace latency at scale, with the product's own DDL and query functions.

    python -m benchmarks.recall --serials 10000000 [--dsn chdb:///abs/path] [--lots 100]

1. Opens the store with ``sinks.store.Store.open`` (so ``sinks.ddl.apply_ddl`` creates the
   product tables) and, unless the store already holds a plant of this size, generates one
   inside ClickHouse with ``INSERT ... SELECT FROM numbers(N)`` into the product tables.
2. Runs ``queries.recall.recall_impact`` / ``forward_trace`` for random lots and
   ``backward_trace`` for random systems, cold (ClickHouse caches dropped before each call,
   each lot touched for the first time) and warm (repeated), and prints p50/p99 as one JSON
   line plus a table, with the statements each call ran and the engine's floor timed between
   the warm calls (``SELECT 1`` and a one-key read of ``lot_units``): on chdb every statement
   costs that floor before it reads anything, and the floor moves with the box's load (the
   same plant measured 2-3x apart on different days), so read the latencies against it.

Plant shape (per final system): 2 LRUs, 3 modules per LRU, 4 boards per module = 33 serials;
every 50th module also consumes a serialised sensor. Serial numbers are fixed-width and
sequential (``PCB:00001234``), as plants number them. Lots, by the number of units that
consumed them directly (contiguous production ranges):

  boards:  K0 kit lots (200 boards), split 5 ways from raw lot R0 (1,000 boards)
           C1 (1,000 boards), C2 (2,500 boards)
           K3 (100 boards) <- split 3 ways from M3 <- split 4 ways from raw R3 (1,200 boards)
  modules: C4 (300 modules); LRUs: C5 (500 LRUs); sensors: C6 (100 sensors)

Genealogy as the stream processor writes it: one ``unit_genealogy`` / ``root_members`` row per
root change (a board is under its module, then its LRU, then its system), so
``root_members`` keeps stale rows under old roots. ``lot_units`` is filled after the load by
the product's own backfill (``sinks.ddl.lot_units_backfill``, migration 4: what a store
upgraded to it holds; the same rows the sink and the processor leave after merges); a plant
built before migration 4 gets it when the store is opened. One board in 250 was reworked: it sat in
another system's module first (assembled, removed 'rework', assembled again), which gives
"past holders". 70 % of the systems are shipped; 90 % have a final test (PASS).

``--peers postgres`` also loads the plant's edges into a private PostgreSQL
(``benchmarks._postgres``) and times its one ``WITH RECURSIVE`` statement per question against
the same keys, interleaved with traceline's functions and the point read, comparing the answers
key by key; it prints one more JSON line (``recall_p50_ms``, ``recall_over_postgres``, ...).

The OS page cache is not dropped for "cold" (the machine is shared): cold means ClickHouse's
own caches (marks, uncompressed blocks, primary index, query condition) are dropped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from queries.results import to_jsonable
from sinks.ddl import lot_units_backfill
from sinks.store import Store

UNITS_PER_SYSTEM = 33  # 1 system + 2 LRUs + 6 modules + 24 boards
BASE = "toDateTime64('2026-01-05 00:00:00', 3, 'UTC')"
#: tables the recall / trace queries read (what --optimize merges)
RECALL_TABLES = (
    "lot_units",
    "lot_consumption",
    "lot_lineage",
    "unit_facts",
    "root_members",
    "operations",
    "unit_tests",
    "lot_transformed",
    "material_received",
    "unit_genealogy",
    "unit_consumption",
    "shipments",
    "assembly_events",
)
CACHE_DROPS = (
    "SYSTEM DROP MARK CACHE",
    "SYSTEM DROP UNCOMPRESSED CACHE",
    "SYSTEM DROP PRIMARY INDEX CACHE",
    "SYSTEM DROP QUERY CONDITION CACHE",
    "SYSTEM DROP INDEX MARK CACHE",
    "SYSTEM DROP INDEX UNCOMPRESSED CACHE",
    "SYSTEM DROP MMAP CACHE",
)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ plant


def _shape(serials: int) -> dict[str, int]:
    s = max(1, serials // UNITS_PER_SYSTEM)
    return {"systems": s, "lrus": 2 * s, "modules": 6 * s, "boards": 24 * s}


def _t(seconds: str) -> str:
    return f"addSeconds({BASE}, {seconds})"


_HDR = "'bench' AS source, 'plant-a' AS site, 'PRG-1' AS program"
_KAFKA = "now64(3, 'UTC') AS ingest_time, 'traceline.events' AS kafka_topic, 0 AS kafka_partition, 0 AS kafka_offset"


def _plant_sql(n: dict[str, int]) -> list[tuple[str, str]]:
    """(label, statement) pairs that build the plant. Only integers are formatted in."""
    S, L, M, B = n["systems"], n["lrus"], n["modules"], n["boards"]
    # unit times (seconds after BASE): board b at 2b, module m at 8m+600, LRU l at 24l+1200,
    # system s at 48s+1800, sensor of module m at 8m+300.
    tb, tm, tl, ts = "(2 * b)", "(8 * m + 600)", "(24 * l + 1200)", "(48 * s + 1800)"
    n_r0, n_c1, n_c2 = B // 1000 + 1, (B + 137) // 1000 + 1, (B + 911) // 2500 + 1
    n_r3, n_c4, n_c5, n_c6 = B // 1200 + 1, M // 300 + 1, L // 500 + 1, M // 5000 + 1
    n_k0, n_m3, n_k3 = B // 200 + 1, B // 300 + 1, B // 100 + 1
    rework = "(b % 250 = 7)"
    old_m = f"((m + 12) % {M})"  # the module a reworked board sat in first (another system)

    def ops(
        alias: str, count: int, uii: str, pn: str, t: str, lots: str, units: str, st: str, extra: str
    ) -> str:
        return (
            "INSERT INTO operations (event_id, event_time, source, site, program, uii, part_number,"
            " serial_number, work_order, operation, station_id, operator_id, started_at, finished_at,"
            " creates_unit, consumed_lot_ids, consumed_lot_quantities, consumed_uiis, ingest_time,"
            " kafka_topic, kafka_partition, kafka_offset)"
            f" SELECT concat('op-', uii) AS event_id, {_t(t)} AS event_time, {_HDR}, {uii} AS uii,"
            f" '{pn}' AS part_number, splitByChar(':', uii)[2] AS serial_number,"
            f" concat('WO-{pn}-', toString(intDiv(number, 1000))) AS work_order, '0010 build' AS operation,"
            f" {st} AS station_id, concat('OP-', toString(intDiv(number, 5000) % 40)) AS operator_id,"
            f" {_t(t)} - toIntervalMinute(5) AS started_at, {_t(t)} AS finished_at, true AS creates_unit,"
            f" {lots} AS consumed_lot_ids, arrayMap(x -> 1.0, consumed_lot_ids) AS consumed_lot_quantities,"
            f" {units} AS consumed_uiis, {_KAFKA}"
            f" FROM (SELECT number, {extra} FROM numbers({count})) AS {alias}"
        )

    boards = ops(
        "bd",
        B,
        "concat('PCB:', leftPad(toString(b), 8, '0'))",
        "PCB",
        tb,
        "[concat('K0-', toString(intDiv(b, 200))), concat('C1-', toString(intDiv(b + 137, 1000))),"
        " concat('C2-', toString(intDiv(b + 911, 2500))), concat('K3-', toString(intDiv(b, 100)))]",
        "CAST([], 'Array(String)')",
        "concat('SMT-', toString(b % 8))",
        "number AS b",
    )
    modules = ops(
        "md",
        M,
        "concat('MOD:', leftPad(toString(m), 8, '0'))",
        "MOD",
        tm,
        "[concat('C4-', toString(intDiv(m, 300)))]",
        "if(m % 50 = 0, [concat('SNS:', leftPad(toString(m), 8, '0'))], CAST([], 'Array(String)'))",
        "concat('MODASM-', toString(m % 4))",
        "number AS m",
    )
    lrus = ops(
        "lr",
        L,
        "concat('LRU:', leftPad(toString(l), 8, '0'))",
        "LRU",
        tl,
        "[concat('C5-', toString(intDiv(l, 500)))]",
        "CAST([], 'Array(String)')",
        "concat('LRUASM-', toString(l % 2))",
        "number AS l",
    )
    systems = ops(
        "sy",
        S,
        "concat('SYS:', leftPad(toString(s), 8, '0'))",
        "SYS",
        ts,
        "CAST([], 'Array(String)')",
        "CAST([], 'Array(String)')",
        "'INTEG-1'",
        "number AS s",
    )
    sensors = ops(
        "sn",
        M // 50 + 1,
        "concat('SNS:', leftPad(toString(m), 8, '0'))",
        "SNS",
        "(8 * m + 300)",
        "[concat('C6-', toString(intDiv(m, 5000)))]",
        "CAST([], 'Array(String)')",
        "'SNS-1'",
        "number * 50 AS m",
    )
    raw_lots = " UNION ALL ".join(
        f"SELECT concat('{p}-', toString(number)) AS lot_id, '{p}' AS pn FROM numbers({k})"
        for p, k in (
            ("R0", n_r0),
            ("C1", n_c1),
            ("C2", n_c2),
            ("R3", n_r3),
            ("C4", n_c4),
            ("C5", n_c5),
            ("C6", n_c6),
        )
    )
    received = (
        "INSERT INTO material_received (event_id, event_time, source, site, program, lot_id, part_number,"
        " supplier_id, supplier_lot, quantity, unit_of_measure, coc_reference, inspection_result,"
        " ingest_time, kafka_topic, kafka_partition, kafka_offset)"
        f" SELECT concat('mr-', lot_id), {BASE} - toIntervalDay(3), {_HDR}, lot_id, pn,"
        " concat('SUP-', pn), concat('SL-', lot_id), 5000.0, 'EA', concat('COC-', lot_id), 'ACCEPTED',"
        f" {_KAFKA} FROM ({raw_lots})"
    )
    splits = " UNION ALL ".join(
        f"SELECT concat('{o}-', toString(number)) AS lot_id, concat('{i}-', toString(intDiv(number, {k})))"
        f" AS input_lot, '{o}' AS pn FROM numbers({c})"
        for o, i, k, c in (("K0", "R0", 5, n_k0), ("M3", "R3", 4, n_m3), ("K3", "M3", 3, n_k3))
    )
    transformed = (
        "INSERT INTO lot_transformed (event_id, event_time, source, site, program, lot_id, part_number,"
        " transformation, input_lot_ids, input_quantities, quantity, unit_of_measure, work_order,"
        " station_id, ingest_time, kafka_topic, kafka_partition, kafka_offset)"
        f" SELECT concat('lt-', lot_id), {BASE} - toIntervalDay(2), {_HDR}, lot_id, pn, 'SPLIT',"
        f" [input_lot], [100.0], 100.0, 'EA', NULL, 'KIT-1', {_KAFKA} FROM ({splits})"
    )
    lineage = (
        "INSERT INTO lot_lineage SELECT input_lot_id, lot_id, input_quantity, transformation, part_number,"
        " station_id, event_id, event_time, site, program FROM lot_transformed"
        " ARRAY JOIN input_lot_ids AS input_lot_id, input_quantities AS input_quantity"
    )
    consumption = (
        "INSERT INTO lot_consumption SELECT lot_id, uii, part_number, q, work_order, operation, station_id,"
        " operator_id, event_id, event_time, site, program FROM operations"
        " ARRAY JOIN consumed_lot_ids AS lot_id, consumed_lot_quantities AS q"
    )
    unit_consumption = (
        "INSERT INTO unit_consumption SELECT c, uii, work_order, operation, station_id, operator_id,"
        " event_id, event_time, site, program FROM operations ARRAY JOIN consumed_uiis AS c"
    )
    # genealogy change records (uii, parent, root, path, seq, time) per root change
    gen_src = f"""
        SELECT concat('PCB:', leftPad(toString(b), 8, '0')) AS uii, arrayJoin(
          if({rework},
            [tuple(concat('MOD:', leftPad(toString({old_m}), 8, '0')), [concat('MOD:', leftPad(toString({old_m}), 8, '0')),
                   concat('LRU:', leftPad(toString(intDiv({old_m}, 3)), 8, '0')), concat('SYS:', leftPad(toString(intDiv({old_m}, 6)), 8, '0'))],
                   1, 48 * intDiv({old_m}, 6) + 1800),
             tuple(NULL, CAST([], 'Array(String)'), 2, 48 * intDiv({old_m}, 6) + 1800 + 86400),
             tuple(concat('MOD:', leftPad(toString(m), 8, '0')), [concat('MOD:', leftPad(toString(m), 8, '0')), concat('LRU:', leftPad(toString(l), 8, '0')),
                   concat('SYS:', leftPad(toString(s), 8, '0'))], 3, 48 * intDiv({old_m}, 6) + 1800 + 90000)],
            [tuple(concat('MOD:', leftPad(toString(m), 8, '0')), [concat('MOD:', leftPad(toString(m), 8, '0'))], 1, {tm}),
             tuple(concat('MOD:', leftPad(toString(m), 8, '0')), [concat('MOD:', leftPad(toString(m), 8, '0')), concat('LRU:', leftPad(toString(l), 8, '0'))], 2, {tl}),
             tuple(concat('MOD:', leftPad(toString(m), 8, '0')), [concat('MOD:', leftPad(toString(m), 8, '0')), concat('LRU:', leftPad(toString(l), 8, '0')),
                   concat('SYS:', leftPad(toString(s), 8, '0'))], 3, {ts})])) AS g
        FROM (SELECT number AS b, intDiv(b, 4) AS m, intDiv(b, 12) AS l, intDiv(b, 24) AS s FROM numbers({B}))
        UNION ALL
        SELECT concat('MOD:', leftPad(toString(m), 8, '0')), arrayJoin(
            [tuple(concat('LRU:', leftPad(toString(l), 8, '0')), [concat('LRU:', leftPad(toString(l), 8, '0'))], 1, {tl}),
             tuple(concat('LRU:', leftPad(toString(l), 8, '0')), [concat('LRU:', leftPad(toString(l), 8, '0')), concat('SYS:', leftPad(toString(s), 8, '0'))], 2, {ts})])
        FROM (SELECT number AS m, intDiv(m, 3) AS l, intDiv(m, 6) AS s FROM numbers({M}))
        UNION ALL
        SELECT concat('LRU:', leftPad(toString(l), 8, '0')),
            tuple(concat('SYS:', leftPad(toString(s), 8, '0')), [concat('SYS:', leftPad(toString(s), 8, '0'))], 1, {ts})
        FROM (SELECT number AS l, intDiv(l, 2) AS s FROM numbers({L}))
        UNION ALL
        SELECT concat('SYS:', leftPad(toString(s), 8, '0')), tuple(CAST(NULL, 'Nullable(String)'), CAST([], 'Array(String)'), 1, {ts})
        FROM (SELECT number AS s FROM numbers({S}))
    """
    genealogy = (
        "INSERT INTO unit_genealogy (uii, parent_uii, root_uii, path, depth, seq, version_time,"
        " version_event_id) SELECT uii, g.1, if(empty(g.2), uii, g.2[-1]), g.2, length(g.2), g.3,"
        f" {_t('g.4')}, concat('asm-', uii, '-', toString(g.3)) FROM ({gen_src})"
    )
    members = (  # from the change records, not the table: merges collapse the table's old versions
        f"INSERT INTO root_members SELECT if(empty(g.2), uii, g.2[-1]), uii, g.3 FROM ({gen_src})"
    )

    def asm(action: str, child: str, parent: str, t: str, reason: str, src: str, tag: str) -> str:
        return (
            "INSERT INTO assembly_events (event_id, event_time, source, site, program, action, uii,"
            " part_number, serial_number, parent_uii, parent_part_number, parent_serial_number, position,"
            " reason, work_order, station_id, operator_id, ingest_time, kafka_topic, kafka_partition,"
            f" kafka_offset) SELECT concat('{tag}-', c), {_t(t)}, {_HDR}, '{action}', c AS c_,"
            " splitByChar(':', c)[1], splitByChar(':', c)[2], p, splitByChar(':', p)[1],"
            f" splitByChar(':', p)[2], 'A1', {reason}, NULL, NULL, NULL, {_KAFKA} FROM ({src})"
        )

    board_src = (
        f"SELECT concat('PCB:', leftPad(toString(b), 8, '0')) AS c, {{p}} AS p, b, m, l, s FROM (SELECT number AS b,"
        f" intDiv(b, 4) AS m, intDiv(b, 12) AS l, intDiv(b, 24) AS s FROM numbers({B})) {{w}}"
    )
    old_t = f"(48 * intDiv({old_m}, 6) + 1800)"
    assembly = [
        asm(
            "ASSEMBLED",
            "c",
            "p",
            f"if({rework}, {old_t} + 90000, {tm})",
            "NULL",
            board_src.format(p="concat('MOD:', leftPad(toString(m), 8, '0'))", w=""),
            "as1",
        ),
        asm(
            "ASSEMBLED",
            "c",
            "p",
            f"{old_t} - 1800",
            "NULL",
            board_src.format(p=f"concat('MOD:', leftPad(toString({old_m}), 8, '0'))", w=f"WHERE {rework}"),
            "as0",
        ),
        asm(
            "REMOVED",
            "c",
            "p",
            f"{old_t} + 86400",
            "'rework'",
            board_src.format(p=f"concat('MOD:', leftPad(toString({old_m}), 8, '0'))", w=f"WHERE {rework}"),
            "rm0",
        ),
        asm(
            "ASSEMBLED",
            "c",
            "p",
            tl,
            "NULL",
            f"SELECT concat('MOD:', leftPad(toString(m), 8, '0')) AS c, concat('LRU:', leftPad(toString(l), 8, '0')) AS p, m, l FROM"
            f" (SELECT number AS m, intDiv(m, 3) AS l FROM numbers({M}))",
            "as1",
        ),
        asm(
            "ASSEMBLED",
            "c",
            "p",
            ts,
            "NULL",
            f"SELECT concat('LRU:', leftPad(toString(l), 8, '0')) AS c, concat('SYS:', leftPad(toString(s), 8, '0')) AS p, l, s FROM"
            f" (SELECT number AS l, intDiv(l, 2) AS s FROM numbers({L}))",
            "as1",
        ),
    ]

    def tests(count: int, uii: str, var: str, t: str, verdict: str, bench: str, where: str = "") -> str:
        return (
            "INSERT INTO unit_tests (event_id, event_time, source, site, program, uii, part_number,"
            " serial_number, bench_id, procedure_id, procedure_version, calibration_id, calibration_due,"
            " operator_id, started_at, finished_at, verdict, `measurements.name`, `measurements.value`,"
            " `measurements.unit`, `measurements.low_limit`, `measurements.high_limit`,"
            " `measurements.passed`, ingest_time, kafka_topic, kafka_partition, kafka_offset)"
            f" SELECT concat('ut-', u), {_t(t)} + toIntervalMinute(30), {_HDR}, u,"
            " splitByChar(':', u)[1], splitByChar(':', u)[2], "
            f"{bench}, 'TP-1', 'A', 'CAL-1', {BASE} + toIntervalDay(400), NULL,"
            f" {_t(t)} + toIntervalMinute(20), {_t(t)} + toIntervalMinute(30), {verdict},"
            " ['VCC', 'ICC'], [3.3, 0.12], ['V', 'A'], [3.2, 0.0], [3.4, 0.2],"
            f" [{verdict} = 'PASS', true], {_KAFKA}"
            f" FROM (SELECT number AS {var}, {uii} AS u FROM numbers({count}) {where})"
        )

    unit_tests = [
        tests(
            B,
            "concat('PCB:', leftPad(toString(b), 8, '0'))",
            "b",
            tb,
            "if(b % 97 = 0, 'FAIL', 'PASS')",
            "concat('ICT-', toString(b % 6))",
        ),
        tests(
            S,
            "concat('SYS:', leftPad(toString(s), 8, '0'))",
            "s",
            ts,
            "'PASS'",
            "'FINAL-1'",
            "WHERE s % 10 != 9",
        ),
    ]
    shipments = (
        "INSERT INTO shipments (event_id, event_time, source, site, program, uii, part_number,"
        " serial_number, shipment_id, customer_id, contract, destination_site, end_system, ingest_time,"
        " kafka_topic, kafka_partition, kafka_offset)"
        f" SELECT concat('sh-', u), {_t(ts)} + toIntervalDay(2), {_HDR}, u, 'SYS', toString(s),"
        " concat('SHP-', toString(intDiv(s, 20))), concat('CUST-', toString(s % 37)), 'C-1',"
        " concat('BASE-', toString(s % 11)), concat('TAIL-', toString(s)), "
        f"{_KAFKA} FROM (SELECT number AS s, concat('SYS:', leftPad(toString(s), 8, '0')) AS u FROM numbers({S})"
        " WHERE s % 10 < 7)"
    )
    return [
        ("material_received", received),
        ("lot_transformed", transformed),
        ("lot_lineage", lineage),
        ("operations: boards", boards),
        ("operations: modules", modules),
        ("operations: LRUs", lrus),
        ("operations: systems", systems),
        ("operations: sensors", sensors),
        ("lot_consumption", consumption),
        ("unit_consumption", unit_consumption),
        ("unit_genealogy", genealogy),
        ("root_members", members),
        *[(f"assembly_events {i + 1}/{len(assembly)}", a) for i, a in enumerate(assembly)],
        *[(f"unit_tests {i + 1}/{len(unit_tests)}", u) for i, u in enumerate(unit_tests)],
        ("shipments", shipments),
    ]


def build_plant(store: Store, serials: int, marker: Path) -> dict[str, Any]:
    """Generate the plant unless ``marker`` says this store already holds it. Returns its shape."""
    shape = _shape(serials)
    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("shape") == shape and meta.get("complete"):
            _log(f"reusing the plant in {marker.parent} ({meta['serials']:,} serials)")
            return meta
        raise SystemExit(f"{marker.parent} holds another or an incomplete plant; use another --data-dir")
    if store.count("operations"):
        raise SystemExit("the store is not empty and has no benchmark marker; use another --data-dir")
    t0 = time.perf_counter()
    steps = _plant_sql(shape) + [("lot_units (backfill)", sql) for sql in lot_units_backfill(store.database)]
    for i, (label, sql) in enumerate(steps, 1):
        t = time.perf_counter()
        store.command(sql)
        _log(f"  [{i}/{len(steps)}] {label}: {time.perf_counter() - t:.1f}s")
    counts = {
        t: store.count(t)
        for t in (
            "operations",
            "lot_consumption",
            "lot_lineage",
            "unit_genealogy",
            "root_members",
            "assembly_events",
            "unit_tests",
            "shipments",
            "material_received",
            "lot_transformed",
            "unit_consumption",
            "lot_units",
        )
    }
    total = shape["systems"] + shape["lrus"] + shape["modules"] + shape["boards"] + shape["modules"] // 50 + 1
    meta = {
        "serials": total,
        "requested": serials,
        "shape": shape,
        "rows": counts,
        "load_s": round(time.perf_counter() - t0, 1),
        "complete": True,
    }
    marker.write_text(json.dumps(meta, indent=2))
    _log(f"plant built in {meta['load_s']}s: {counts}")
    return meta


# ------------------------------------------------------------------------------ timing


_UNSUPPORTED_DROPS: set[str] = set()


def _drop_caches(store: Store) -> None:
    for stmt in CACHE_DROPS:
        if stmt in _UNSUPPORTED_DROPS:
            continue
        try:
            store.command(stmt)
        except Exception as exc:  # noqa: BLE001 - not every build knows every cache
            _UNSUPPORTED_DROPS.add(stmt)
            print(
                f"note: {stmt!r} not supported here ({type(exc).__name__}); cold runs skip it",
                file=sys.stderr,
            )


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def _stats(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50_ms": round(_pct(xs, 50) * 1e3, 2),
        "p99_ms": round(_pct(xs, 99) * 1e3, 2),
        "max_ms": round(max(xs) * 1e3, 2),
        "mean_ms": round(statistics.fmean(xs) * 1e3, 2),
    }


class _Counting:
    """The store as the query functions see it, counting the statements they run and the wall
    time spent inside them (the rest of a call is Python: reduction, closures, result objects)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.statements = 0
        self.seconds = 0.0

    def reset(self) -> None:
        self.statements = 0
        self.seconds = 0.0

    def query(self, sql: str, params: Any = None) -> Any:
        self.statements += 1
        t = time.perf_counter()
        try:
            return self._store.query(sql, params)
        finally:
            self.seconds += time.perf_counter() - t

    def query_arrow(self, sql: str, params: Any = None) -> Any:
        self.statements += 1
        t = time.perf_counter()
        try:
            return self._store.query_arrow(sql, params)
        finally:
            self.seconds += time.perf_counter() - t


#: the engine's floor, timed between the calls of the warm rounds (same box, same moment): a
#: statement that reads no table, and the cheapest read of a product table (one key of lot_units)
FLOOR_STATEMENTS = {
    "select_1": "SELECT 1 AS x",
    "point_read": "SELECT count() AS n FROM lot_units WHERE lot_id = {l:String}",
}


def _time(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.dsn:
        dsn = args.dsn
        marker_dir = Path(args.data_dir or tempfile.gettempdir())
    else:
        data_dir = Path(args.data_dir or Path(tempfile.gettempdir()) / f"traceline-bench-{args.serials}")
        data_dir.mkdir(parents=True, exist_ok=True)
        dsn = f"chdb://{data_dir.resolve() / 'ch'}"
        marker_dir = data_dir
    _log(f"store {dsn}")
    store = Store.open(dsn, args.database)
    meta = build_plant(store, args.serials, marker_dir / f"plant-{args.database}.json")
    if args.optimize:
        for t in RECALL_TABLES:
            t0 = time.perf_counter()
            store.command(f"OPTIMIZE TABLE `{t}` FINAL")
            _log(f"  OPTIMIZE {t}: {time.perf_counter() - t0:.1f}s")
    parts = {
        r["table"]: int(r["parts"])
        for r in store.query(
            "SELECT table, count() AS parts FROM system.parts WHERE active AND database = {db:String}"
            " GROUP BY table",
            {"db": args.database},
        )
    }
    rng = random.Random(args.seed)
    lots = sorted(
        r["lot_id"]
        for r in store.query(
            "SELECT lot_id FROM material_received UNION ALL SELECT lot_id FROM lot_transformed"
        )
    )
    systems = meta["shape"]["systems"]
    lot_sample = rng.sample(lots, min(args.lots, len(lots)))
    sys_sample = [f"SYS:{rng.randrange(systems):08d}" for _ in range(args.systems)]
    # a separate, disjoint sample for the cold runs: first touch of those keys
    rest = sorted(set(lots) - set(lot_sample))
    cold_lots = rng.sample(rest, min(args.cold, len(rest)))
    cold_sys = [f"SYS:{rng.randrange(systems):08d}" for _ in range(args.cold)]

    # several query modules (--queries a,b) run interleaved, key by key, so they share the load
    mods = [(name, importlib.import_module(name)) for name in args.queries.split(",")]
    multi = len(mods) > 1

    def cases_of(q: Any) -> dict[str, tuple[Callable[[str], Any], list[str], list[str]]]:
        return {
            "recall_impact(lot)": (
                lambda k: q.recall_impact(counted, q.Trigger("lot", k)),
                lot_sample,
                cold_lots,
            ),
            "forward_trace(lot)": (lambda k: q.forward_trace(counted, k), lot_sample, cold_lots),
            "backward_trace(system)": (lambda k: q.backward_trace(counted, k), sys_sample, cold_sys),
        }

    counted = _Counting(store)
    per_mod = [(mname, cases_of(q)) for mname, q in mods]
    results: dict[str, Any] = {}
    sizes: dict[str, list[int]] = {}
    stmts: dict[str, list[int]] = {}
    floor: dict[str, list[float]] = {k: [] for k in FLOOR_STATEMENTS}
    checked = {"compared": 0, "differ": 0}

    def check(name: str, key: str, outs: list[Any]) -> None:
        """--check: every module's answer for ``key`` equals the first module's."""
        if not (args.check and multi):
            return
        first = to_jsonable(outs[0])
        for (m, _c), out in zip(per_mod[1:], outs[1:], strict=True):
            checked["compared"] += 1
            if to_jsonable(out) != first:
                checked["differ"] += 1
                _log(f"ANSWERS DIFFER: {name}({key}): {per_mod[0][0]} vs {m}")

    for name, (_fn, keys, cold_keys) in per_mod[0][1].items():
        label = {m: f"{m}:{name}" if multi else name for m, _c in per_mod}
        cold: dict[str, list[float]] = {m: [] for m, _c in per_mod}
        for i, k in enumerate(cold_keys, 1):
            outs = []
            for m, cases in per_mod:
                _drop_caches(store)
                dt, out = _time(lambda k=k, fn=cases[name][0]: fn(k))
                cold[m].append(dt)
                outs.append(out)
            check(name, k, outs)
            if i % 25 == 0:
                _log(f"{name}: cold {i}/{len(cold_keys)}")
        for k in keys:  # first touch of the warm sample (not counted), then warm rounds
            check(name, k, [cases[name][0](k) for _m, cases in per_mod])
        warm: dict[str, list[float]] = {m: [] for m, _c in per_mod}
        n_units: list[int] = []
        n_stmts: dict[str, list[int]] = {m: [] for m, _c in per_mod}
        in_stmts: dict[str, list[float]] = {m: [] for m, _c in per_mod}
        for r in range(args.rounds):
            for k in keys:
                for m, cases in per_mod:
                    counted.reset()
                    dt, out = _time(lambda k=k, fn=cases[name][0]: fn(k))
                    warm[m].append(dt)
                    in_stmts[m].append(counted.seconds)
                    if r == 0:
                        n_stmts[m].append(counted.statements)
                        if m == per_mod[0][0]:
                            n_units.append(len(out.units))
                for f, sql in FLOOR_STATEMENTS.items():
                    floor[f].append(_time(lambda sql=sql: store.query_arrow(sql, {"l": lot_sample[0]}))[0])
            _log(f"{name}: warm round {r + 1}/{args.rounds}")
        for m, _c in per_mod:
            results[label[m]] = {
                "warm": _stats(warm[m]),
                "cold": _stats(cold[m]) if cold[m] else None,
                # warm: the p50 of the time spent inside the statements, and of the rest (Python)
                "warm_in_statements_p50_ms": round(_pct(in_stmts[m], 50) * 1e3, 2),
                "warm_python_p50_ms": round(
                    _pct([w - i for w, i in zip(warm[m], in_stmts[m], strict=True)], 50) * 1e3, 2
                ),
            }
            sizes[label[m]] = n_units
            stmts[label[m]] = n_stmts[m]
    peer = _compare_postgres(args, store, meta, lot_sample, sys_sample, mods[0][1]) if args.peers else None
    store.close()
    summary = {
        "benchmark": "recall",
        "queries": args.queries,
        "date": time.strftime("%Y-%m-%d"),
        "dsn": dsn.split("://")[0],
        "serials": meta["serials"],
        "rows": meta["rows"],
        "active_parts": {t: parts.get(t, 0) for t in RECALL_TABLES},
        "lots_sampled": len(lot_sample),
        "systems_sampled": len(sys_sample),
        "cold_samples": args.cold,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "units_per_call": {k: {"p50": int(_pct(v, 50)), "max": max(v)} for k, v in sizes.items() if v},
        "statements_per_call": {k: {"p50": int(_pct(v, 50)), "max": max(v)} for k, v in stmts.items() if v},
        "floor": {k: _stats(v) for k, v in floor.items() if v},
        "results": results,
    }
    if args.check and multi:
        summary["answers"] = checked
    if peer is not None:
        summary["peer_postgres"] = peer
    return summary


# ------------------------------------------------------------------------------ peers


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def _compare_postgres(
    args: argparse.Namespace,
    store: Store,
    meta: dict[str, Any],
    lot_sample: list[str],
    sys_sample: list[str],
    q: Any,
) -> dict[str, Any]:
    """The same plant in PostgreSQL (``benchmarks._postgres``), the same keys, interleaved.

    Per key and round: traceline's function, the one-key point read (the engine's floor) and the
    peer's one ``WITH RECURSIVE`` statement, in an order that rotates every round so none always
    runs right after another. Warm: every key is touched once first (untimed; that touch is also
    where the answers are compared). Answers: the affected units of every lot (traceline's units
    now vs the peer's set, and each unit's root and customer), the units of every backward trace;
    a difference is counted, logged and makes the exit status 1."""
    import psycopg

    from benchmarks import _postgres as pg

    load_before = [round(x, 2) for x in os.getloadavg()]
    counted = _Counting(store)
    point_sql = FLOOR_STATEMENTS["point_read"]
    with pg.postgres_server() as server, psycopg.connect(server["dsn"], autocommit=True) as conn:
        loaded = pg.load(conn, store.query_arrow)

        def peer(sql: str, name: str) -> Callable[[str], list[tuple[Any, ...]]]:
            def call(k: str) -> list[tuple[Any, ...]]:
                return conn.execute(sql, {name: k}, prepare=True).fetchall()

            return call

        cases: dict[str, tuple[Callable[[str], Any], Callable[[str], list[tuple[Any, ...]]], list[str]]] = {
            "recall": (
                lambda k: q.recall_impact(counted, q.Trigger("lot", k)),
                peer(pg.RECALL_SQL, "lot"),
                lot_sample,
            ),
            "forward": (lambda k: q.forward_trace(counted, k), peer(pg.FORWARD_SQL, "lot"), lot_sample),
            "backward": (lambda k: q.backward_trace(counted, k), peer(pg.BACKWARD_SQL, "uii"), sys_sample),
        }
        failures: list[str] = []
        out: dict[str, Any] = {}
        detail: dict[str, Any] = {}
        for name, (ours, theirs, keys) in cases.items():
            compared = differ = 0
            n_units: list[int] = []
            for k in keys:  # first touch, untimed: the answers are compared here
                mine, other = ours(k), theirs(k)
                compared += 1
                if name == "backward":
                    a = {u["uii"] for u in mine.units}
                    b = {r[1] for r in other if r[0] == "U"}
                    extra = ""
                else:
                    a = {u.uii for u in mine.units}
                    b = {r[0] for r in other}
                    if name == "recall":  # (root, customer) of each unit
                        ra = {u.uii: (u.root_uii, u.customer_id) for u in mine.units}
                        rb = {r[0]: (r[1], r[2]) for r in other}
                    else:  # (path, root, shipment, customer) of each unit
                        ra = {u.uii: (u.path, u.root_uii, u.shipment_id, u.customer_id) for u in mine.units}
                        rb = {r[0]: (list(r[2]), r[3], r[4], r[5]) for r in other}
                    wrong = sorted(u for u in a & b if ra[u] != rb[u])
                    extra = f", rows differ for {len(wrong)} units (e.g. {wrong[:3]})" if wrong else ""
                n_units.append(len(a))
                if a != b or extra:
                    differ += 1
                    msg = (
                        f"ANSWERS DIFFER: {name}({k}): traceline {len(a)} units, postgres {len(b)}"
                        f" (only traceline: {sorted(a - b)[:3]}, only postgres: {sorted(b - a)[:3]}){extra}"
                    )
                    failures.append(msg)
                    _log(msg)
            ts: dict[str, list[float]] = {"ours": [], "point": [], "peer": []}
            stmts: list[int] = []
            ins: list[float] = []  # seconds of each traceline call spent inside its statements
            steps: dict[str, Callable[[str], Any]] = {
                "ours": ours,
                "point": lambda _k: store.query_arrow(point_sql, {"l": lot_sample[0]}),
                "peer": theirs,
            }
            order = list(steps)
            for r in range(args.rounds):
                rot = order[r % 3 :] + order[: r % 3]
                for k in keys:
                    for s in rot:
                        counted.reset()
                        dt, _ = _time(lambda fn=steps[s], k=k: fn(k))
                        ts[s].append(dt)
                        if s == "ours":
                            ins.append(counted.seconds)
                            if r == 0:
                                stmts.append(counted.statements)
                _log(f"postgres peer, {name}: warm round {r + 1}/{args.rounds}")
            p50 = {s: _pct(v, 50) * 1e3 for s, v in ts.items()}
            out[f"{name}_p50_ms"] = round(p50["ours"], 2)
            out[f"{name}_point_read_p50_ms"] = round(p50["point"], 2)
            out[f"{name}_postgres_p50_ms"] = round(p50["peer"], 2)
            out[f"{name}_over_point_read"] = _ratio(p50["ours"], p50["point"])
            out[f"{name}_over_postgres"] = _ratio(p50["ours"], p50["peer"])
            detail[name] = {
                "keys": len(keys),
                "compared": compared,
                "differ": differ,
                "units_p50": int(_pct(n_units, 50)) if n_units else 0,
                "units_max": max(n_units, default=0),
                "statements_p50": int(_pct(stmts, 50)) if stmts else 0,
                "statements_max": max(stmts, default=0),
                "in_statements_p50_ms": round(_pct(ins, 50) * 1e3, 2) if ins else None,
                "traceline": _stats(ts["ours"]),
                "point_read": _stats(ts["point"]),
                "postgres": _stats(ts["peer"]),
            }
    # the names the brief and docs/BENCHMARKS.md use: recall_* without a prefix for the floor
    out["point_read_p50_ms"] = out["recall_point_read_p50_ms"]
    return {
        "benchmark": "recall-vs-postgres",
        **out,
        "serials": meta["serials"],
        "lots": len(lot_sample),
        "systems": len(sys_sample),
        "rounds": args.rounds,
        "machine": {"cores": os.cpu_count(), "postgres": server["version"]},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "postgres_rows": loaded["rows"],
        "postgres_load_s": loaded["load_s"],
        "detail": detail,
        "answers": {
            "compared": sum(d["compared"] for d in detail.values()),
            "differ": sum(d["differ"] for d in detail.values()),
        },
        "failures": failures,
    }


def _table(summary: dict[str, Any]) -> str:
    w = max(24, *(len(n) for n in summary["results"]))
    lines = [
        f"recall benchmark: {summary['serials']:,} serials ({summary['dsn']}), load avg {summary['load_avg']}",
        f"{'query':<{w}} {'warm p50':>9} {'warm p99':>9} {'cold p50':>9} {'cold p99':>9} {'units p50/max':>14}"
        f" {'stmts p50/max':>14} {'in stmts / python p50':>22}",
    ]
    for name, r in summary["results"].items():
        c = r["cold"] or {"p50_ms": float("nan"), "p99_ms": float("nan")}
        u = summary["units_per_call"].get(name, {"p50": 0, "max": 0})
        n = summary["statements_per_call"].get(name, {"p50": 0, "max": 0})
        lines.append(
            f"{name:<{w}} {r['warm']['p50_ms']:>7.2f}ms {r['warm']['p99_ms']:>7.2f}ms"
            f" {c['p50_ms']:>7.2f}ms {c['p99_ms']:>7.2f}ms {u['p50']:>7}/{u['max']:<6}"
            f" {n['p50']:>7}/{n['max']:<6}"
            f" {r.get('warm_in_statements_p50_ms', float('nan')):>9.2f} / {r.get('warm_python_p50_ms', float('nan')):.2f}ms"
        )
    fl = summary.get("floor", {})
    if fl:
        lines.append(
            "engine floor, timed between the warm calls: "
            + ", ".join(f"{k} p50 {v['p50_ms']:.2f}ms p99 {v['p99_ms']:.2f}ms" for k, v in fl.items())
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.recall",
        description="Build a plant of N serials with the product DDL (INSERT ... SELECT inside "
        "ClickHouse) and time recall_impact / forward_trace / backward_trace, cold and warm.",
    )
    p.add_argument("--serials", type=int, default=1_000_000, help="units in the plant (default 1,000,000)")
    p.add_argument("--dsn", default="", help="ClickHouse DSN (default: chdb under --data-dir)")
    p.add_argument(
        "--data-dir",
        default="",
        help="where the chdb store (and the plant marker) lives; default <tmp>/traceline-bench-<N>. "
        "An existing plant of the same size is reused.",
    )
    p.add_argument("--database", default="traceline", help="database name (default traceline)")
    p.add_argument("--lots", type=int, default=100, help="random lots for the warm runs (default 100)")
    p.add_argument(
        "--systems", type=int, default=100, help="random systems for backward traces (default 100)"
    )
    p.add_argument(
        "--cold", type=int, default=30, help="first-touch calls after dropping caches (default 30)"
    )
    p.add_argument("--rounds", type=int, default=3, help="warm rounds over the sample (default 3)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--optimize",
        action="store_true",
        help="OPTIMIZE ... FINAL the tables the queries read before timing (a store whose background "
        "merges caught up); without it the parts left by the load are read as they are",
    )
    p.add_argument(
        "--queries",
        default="queries",
        help="module providing Trigger / recall_impact / forward_trace / backward_trace "
        "(default queries); several, comma-separated, run interleaved key by key so they "
        "share the machine's load (e.g. an older copy of the module to compare)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="with several --queries modules: compare their answers (as JSON) on every key of the "
        "cold runs and the first warm touch; differences are logged and make the exit status 1",
    )
    p.add_argument(
        "--peers",
        default="",
        choices=["", "postgres"],
        help="also load the same plant's edges into a private PostgreSQL (Debian's package, "
        "installed if missing) and time its one WITH RECURSIVE statement per recall / forward / "
        "backward trace against traceline's functions and the point-read floor, interleaved, "
        "comparing the answers key by key (a difference makes the exit status 1)",
    )
    args = p.parse_args(argv)
    summary = run(args)
    print(json.dumps(summary, sort_keys=True))
    print(_table(summary))
    peer = summary.get("peer_postgres")
    if peer is not None:
        flat = {k: v for k, v in peer.items() if k not in ("detail", "failures")}
        print(json.dumps(flat, sort_keys=True))
        for f in peer["failures"]:
            print(f"FAILURE: {f}")
        if peer["failures"]:
            return 1
    if "answers" in summary:
        a = summary["answers"]
        print(f"answers compared: {a['compared']}, differ: {a['differ']}")
        return 1 if a["differ"] else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
