"""Pure row building for the ClickHouse sink (the hot path: no I/O, no pydantic).

``rows_for_batch`` turns decoded raw events into one ``pyarrow.Table`` per ClickHouse table,
including the recall facts (``lot_consumption``, ``lot_lineage``, ``unit_consumption``) derived
from the same events. ``genealogy_rows`` does the same for the genealogy change records of
the stream processor. Columns are built as Python lists in one pass and converted to Arrow
once per column; the output column names are exactly ``sinks.ddl.table_columns(table)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import pyarrow as pa

from schemas.errors import TracelineError
from schemas.uii import uii_of

__all__ = [
    "SinkRecord",
    "RowBuildError",
    "rows_for_batch",
    "genealogy_rows",
    "deadletter_rows",
    "change_problem",
    "alert_rows",
    "SCHEMAS",
    "RAW_TABLE",
    "RAW_TABLES",
]


class SinkRecord(NamedTuple):
    """One decoded raw event and where it came from."""

    type_name: str  # "MaterialReceived" or a namespaced "x.y.MaterialReceived"
    record: Mapping[str, Any]  # as fastavro decodes it (timestamps as aware UTC datetimes)
    topic: str
    partition: int
    offset: int
    ingest_time: datetime
    content_hash: int = 0  # streams.intake.content_hash_of (0: not known)
    verified_source: str = ""  # the source a gateway signature proved ('' unsigned)
    signing_key_id: str = ""  # the key that proved it


class RowBuildError(TracelineError):
    """An event the sink cannot map to a table (unknown type or missing field)."""

    def __init__(self, reason: str, *, type_name: str, topic: str, partition: int, offset: int) -> None:
        super().__init__(f"{reason} ({type_name} at {topic}[{partition}]@{offset})")
        self.reason = reason
        self.type_name = type_name
        self.topic = topic
        self.partition = partition
        self.offset = offset


# ------------------------------------------------------------------------- arrow types
_TS = pa.timestamp("ms", tz="UTC")
_S = pa.string()
_F = pa.float64()
_B = pa.bool_()

_HEADER = [("event_id", _S), ("event_time", _TS), ("source", _S), ("site", _S), ("program", _S)]
_KAFKA = [
    ("ingest_time", _TS),
    ("kafka_topic", _S),
    ("kafka_partition", pa.uint32()),
    ("kafka_offset", pa.uint64()),
    ("content_hash", pa.uint64()),
    ("verified_source", _S),
    ("signing_key_id", _S),
]
_UNIT = [("uii", _S), ("part_number", _S), ("serial_number", _S)]


def _raw(*cols: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema(_HEADER + list(cols) + _KAFKA)


_FACT_TAIL = [("event_id", _S), ("event_time", _TS), ("site", _S), ("program", _S)]

#: Arrow schema of every table the sink writes (column order = DDL order).
SCHEMAS: dict[str, pa.Schema] = {
    "material_received": _raw(
        ("lot_id", _S),
        ("part_number", _S),
        ("supplier_id", _S),
        ("supplier_lot", _S),
        ("quantity", _F),
        ("unit_of_measure", _S),
        ("coc_reference", _S),
        ("inspection_result", _S),
    ),
    "lot_transformed": _raw(
        ("lot_id", _S),
        ("part_number", _S),
        ("transformation", _S),
        ("input_lot_ids", pa.list_(_S)),
        ("input_quantities", pa.list_(_F)),
        ("quantity", _F),
        ("unit_of_measure", _S),
        ("work_order", _S),
        ("station_id", _S),
    ),
    "operations": _raw(
        *_UNIT,
        ("work_order", _S),
        ("operation", _S),
        ("station_id", _S),
        ("operator_id", _S),
        ("started_at", _TS),
        ("finished_at", _TS),
        ("creates_unit", _B),
        ("consumed_lot_ids", pa.list_(_S)),
        ("consumed_lot_quantities", pa.list_(_F)),
        ("consumed_uiis", pa.list_(_S)),
    ),
    "unit_tests": _raw(
        *_UNIT,
        ("bench_id", _S),
        ("procedure_id", _S),
        ("procedure_version", _S),
        ("calibration_id", _S),
        ("calibration_due", _TS),
        ("operator_id", _S),
        ("started_at", _TS),
        ("finished_at", _TS),
        ("verdict", _S),
        ("measurements.name", pa.list_(_S)),
        ("measurements.value", pa.list_(_F)),
        ("measurements.unit", pa.list_(_S)),
        ("measurements.low_limit", pa.list_(_F)),
        ("measurements.high_limit", pa.list_(_F)),
        ("measurements.passed", pa.list_(_B)),
    ),
    "assembly_events": _raw(
        ("action", _S),
        *_UNIT,
        ("parent_uii", _S),
        ("parent_part_number", _S),
        ("parent_serial_number", _S),
        ("position", _S),
        ("reason", _S),
        ("work_order", _S),
        ("station_id", _S),
        ("operator_id", _S),
    ),
    "shipments": _raw(
        *_UNIT,
        ("shipment_id", _S),
        ("customer_id", _S),
        ("contract", _S),
        ("destination_site", _S),
        ("end_system", _S),
    ),
    "lot_status": _raw(("lot_id", _S), ("status", _S), ("reason", _S)),
    "nonconformances": _raw(
        ("ncr_id", _S),
        ("target_kind", _S),
        ("target_id", _S),
        ("window_start", _TS),
        ("window_end", _TS),
        ("severity", _S),
        ("disposition", _S),
        ("description", _S),
    ),
    "lot_consumption": pa.schema(
        [
            ("lot_id", _S),
            ("uii", _S),
            ("part_number", _S),
            ("quantity", _F),
            ("work_order", _S),
            ("operation", _S),
            ("station_id", _S),
            ("operator_id", _S),
        ]
        + _FACT_TAIL
    ),
    "lot_lineage": pa.schema(
        [
            ("input_lot_id", _S),
            ("output_lot_id", _S),
            ("input_quantity", _F),
            ("transformation", _S),
            ("part_number", _S),
            ("station_id", _S),
        ]
        + _FACT_TAIL
    ),
    "unit_consumption": pa.schema(
        [
            ("consumed_uii", _S),
            ("consumer_uii", _S),
            ("work_order", _S),
            ("operation", _S),
            ("station_id", _S),
            ("operator_id", _S),
        ]
        + _FACT_TAIL
    ),
    "unit_genealogy": pa.schema(
        [
            ("uii", _S),
            ("parent_uii", _S),
            ("root_uii", _S),
            ("path", pa.list_(_S)),
            ("depth", pa.uint16()),
            ("seq", pa.uint64()),
            ("version_time", _TS),
            ("version_event_id", _S),
        ]
    ),
    "root_members": pa.schema([("root_uii", _S), ("uii", _S), ("seq", pa.uint64())]),
    "lot_units": pa.schema(
        [
            ("lot_id", _S),
            ("uii", _S),
            ("site", _S),
            ("parent_uii", _S),
            ("root_uii", _S),
            ("path", pa.list_(_S)),
            ("seq", pa.uint64()),
        ]
    ),
    "dead_letters": pa.schema(
        [
            ("source_topic", _S),
            ("source_partition", pa.int32()),
            ("source_offset", pa.int64()),
            ("error", _S),
            ("reason", _S),
            ("key", pa.binary()),
            ("raw", pa.binary()),
            ("dlq_topic", _S),
            ("dlq_partition", pa.uint32()),
            ("dlq_offset", pa.uint64()),
            ("ingest_time", _TS),
            ("raw_size", pa.uint64()),
            ("raw_sha256", _S),
            ("raw_truncated", _B),
        ]
    ),
}

# Order in which a batch's tables are written (facts first is not needed: each insert is
# idempotent on its own token; this just keeps the order stable).
_EVENT_TABLES = (
    "material_received",
    "lot_transformed",
    "operations",
    "unit_tests",
    "assembly_events",
    "shipments",
    "lot_status",
    "nonconformances",
    "lot_consumption",
    "lot_lineage",
    "unit_consumption",
    "lot_units",
)


class _Cols:
    """Per-table column lists, appended to in one pass."""

    __slots__ = ("cols", "n")

    def __init__(self, schema: pa.Schema) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in schema.names}
        self.n = 0


def _to_table(name: str, c: _Cols) -> pa.Table:
    schema = SCHEMAS[name]
    arrays = []
    for f in schema:
        values = c.cols[f.name]
        if f.type == _TS and values and isinstance(_first(values), int | float):
            arrays.append(pa.array(values, pa.int64()).cast(_TS))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _first(values: list[Any]) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


# ------------------------------------------------------------------------- per-type appenders
# Each appender takes (record, tables) and appends the type-specific columns of its raw table
# plus any fact rows. Header and Kafka columns are appended by the caller.


def _material_received(r: Mapping[str, Any], t: dict[str, _Cols]) -> str:
    c = t["material_received"].cols
    c["lot_id"].append(r["lot_id"])
    c["part_number"].append(r["part_number"])
    c["supplier_id"].append(r["supplier_id"])
    c["supplier_lot"].append(r["supplier_lot"])
    c["quantity"].append(r["quantity"])
    c["unit_of_measure"].append(r["unit_of_measure"])
    c["coc_reference"].append(r.get("coc_reference"))
    c["inspection_result"].append(r["inspection_result"])
    return "material_received"


def _lot_transformed(r: Mapping[str, Any], t: dict[str, _Cols]) -> str:
    c = t["lot_transformed"].cols
    inputs = r["inputs"]
    ids = [i["lot_id"] for i in inputs]
    qty = [i["quantity"] for i in inputs]
    c["lot_id"].append(r["lot_id"])
    c["part_number"].append(r["part_number"])
    c["transformation"].append(r["transformation"])
    c["input_lot_ids"].append(ids)
    c["input_quantities"].append(qty)
    c["quantity"].append(r["quantity"])
    c["unit_of_measure"].append(r["unit_of_measure"])
    c["work_order"].append(r.get("work_order"))
    station = r.get("station_id")
    c["station_id"].append(station)
    if ids:
        f = t["lot_lineage"]
        fc = f.cols
        n = len(ids)
        fc["input_lot_id"].extend(ids)
        fc["output_lot_id"].extend([r["lot_id"]] * n)
        fc["input_quantity"].extend(qty)
        fc["transformation"].extend([r["transformation"]] * n)
        fc["part_number"].extend([r["part_number"]] * n)
        fc["station_id"].extend([station] * n)
        _fact_tail(fc, r, n)
        f.n += n
    return "lot_transformed"


def _fact_tail(fc: dict[str, list[Any]], r: Mapping[str, Any], n: int) -> None:
    fc["event_id"].extend([r["event_id"]] * n)
    fc["event_time"].extend([r["event_time"]] * n)
    fc["site"].extend([r["site"]] * n)
    fc["program"].extend([r["program"]] * n)


def _unit_cols(c: dict[str, list[Any]], unit: Mapping[str, Any]) -> str:
    pn = unit["part_number"]
    sn = unit["serial_number"]
    key = f"{pn}:{sn}"
    c["uii"].append(key)
    c["part_number"].append(pn)
    c["serial_number"].append(sn)
    return key


def _operation_completed(r: Mapping[str, Any], t: dict[str, _Cols]) -> str:
    c = t["operations"].cols
    key = _unit_cols(c, r["unit"])
    lots = r.get("consumed_lots") or ()
    units = r.get("consumed_units") or ()
    lot_ids = [x["lot_id"] for x in lots]
    lot_qty = [x["quantity"] for x in lots]
    uiis = [uii_of(u) for u in units]
    wo, op, st, opr = r["work_order"], r["operation"], r["station_id"], r["operator_id"]
    c["work_order"].append(wo)
    c["operation"].append(op)
    c["station_id"].append(st)
    c["operator_id"].append(opr)
    c["started_at"].append(r["started_at"])
    c["finished_at"].append(r["finished_at"])
    c["creates_unit"].append(r["creates_unit"])
    c["consumed_lot_ids"].append(lot_ids)
    c["consumed_lot_quantities"].append(lot_qty)
    c["consumed_uiis"].append(uiis)
    if lot_ids:
        f = t["lot_consumption"]
        fc = f.cols
        n = len(lot_ids)
        fc["lot_id"].extend(lot_ids)
        fc["uii"].extend([key] * n)
        fc["part_number"].extend([r["unit"]["part_number"]] * n)
        fc["quantity"].extend(lot_qty)
        fc["work_order"].extend([wo] * n)
        fc["operation"].extend([op] * n)
        fc["station_id"].extend([st] * n)
        fc["operator_id"].extend([opr] * n)
        _fact_tail(fc, r, n)
        f.n += n
        # the unit as its own root (seq 0) under each lot: queryable before the genealogy
        # processor's change records (higher seq) place it in its assembly
        f = t["lot_units"]
        fc = f.cols
        fc["lot_id"].extend(lot_ids)
        fc["uii"].extend([key] * n)
        fc["site"].extend([r["site"]] * n)
        fc["parent_uii"].extend([None] * n)
        fc["root_uii"].extend([key] * n)
        fc["path"].extend([] for _ in range(n))
        fc["seq"].extend([0] * n)
        f.n += n
    if uiis:
        f = t["unit_consumption"]
        fc = f.cols
        n = len(uiis)
        fc["consumed_uii"].extend(uiis)
        fc["consumer_uii"].extend([key] * n)
        fc["work_order"].extend([wo] * n)
        fc["operation"].extend([op] * n)
        fc["station_id"].extend([st] * n)
        fc["operator_id"].extend([opr] * n)
        _fact_tail(fc, r, n)
        f.n += n
    return "operations"


def _unit_tested(r: Mapping[str, Any], t: dict[str, _Cols]) -> str:
    c = t["unit_tests"].cols
    _unit_cols(c, r["unit"])
    c["bench_id"].append(r["bench_id"])
    c["procedure_id"].append(r["procedure_id"])
    c["procedure_version"].append(r["procedure_version"])
    c["calibration_id"].append(r["calibration_id"])
    c["calibration_due"].append(r["calibration_due"])
    c["operator_id"].append(r.get("operator_id"))
    c["started_at"].append(r["started_at"])
    c["finished_at"].append(r["finished_at"])
    c["verdict"].append(r["verdict"])
    ms = r.get("measurements") or ()
    c["measurements.name"].append([m["name"] for m in ms])
    c["measurements.value"].append([m["value"] for m in ms])
    c["measurements.unit"].append([m["unit"] for m in ms])
    c["measurements.low_limit"].append([m.get("low_limit") for m in ms])
    c["measurements.high_limit"].append([m.get("high_limit") for m in ms])
    c["measurements.passed"].append([m["passed"] for m in ms])
    return "unit_tests"


def _assembly(action: str):  # noqa: ANN202
    def append(r: Mapping[str, Any], t: dict[str, _Cols]) -> str:
        c = t["assembly_events"].cols
        c["action"].append(action)
        _unit_cols(c, r["unit"])
        p = r["parent"]
        c["parent_uii"].append(uii_of(p))
        c["parent_part_number"].append(p["part_number"])
        c["parent_serial_number"].append(p["serial_number"])
        c["position"].append(r.get("position"))
        c["reason"].append(r.get("reason"))
        c["work_order"].append(r.get("work_order"))
        c["station_id"].append(r.get("station_id"))
        c["operator_id"].append(r.get("operator_id"))
        return "assembly_events"

    return append


def _unit_shipped(r: Mapping[str, Any], t: dict[str, _Cols]) -> str:
    c = t["shipments"].cols
    _unit_cols(c, r["unit"])
    c["shipment_id"].append(r["shipment_id"])
    c["customer_id"].append(r["customer_id"])
    c["contract"].append(r["contract"])
    c["destination_site"].append(r["destination_site"])
    c["end_system"].append(r.get("end_system"))
    return "shipments"


def _lot_status(r: Mapping[str, Any], t: dict[str, _Cols]) -> str:
    c = t["lot_status"].cols
    c["lot_id"].append(r["lot_id"])
    c["status"].append(r["status"])
    c["reason"].append(r["reason"])
    return "lot_status"


def _nonconformance(r: Mapping[str, Any], t: dict[str, _Cols]) -> str:
    c = t["nonconformances"].cols
    c["ncr_id"].append(r["ncr_id"])
    c["target_kind"].append(r["target_kind"])
    c["target_id"].append(r["target_id"])
    c["window_start"].append(r.get("window_start"))
    c["window_end"].append(r.get("window_end"))
    c["severity"].append(r["severity"])
    c["disposition"].append(r["disposition"])
    c["description"].append(r["description"])
    return "nonconformances"


_APPENDERS = {
    "MaterialReceived": _material_received,
    "LotTransformed": _lot_transformed,
    "OperationCompleted": _operation_completed,
    "UnitProduced": _operation_completed,
    "UnitTested": _unit_tested,
    "UnitAssembled": _assembly("ASSEMBLED"),
    "UnitRemoved": _assembly("REMOVED"),
    "UnitShipped": _unit_shipped,
    "LotStatusChanged": _lot_status,
    "NonconformanceRaised": _nonconformance,
}


#: The raw table each event type lands in (facts derived from it are written before it).
RAW_TABLE: dict[str, str] = {
    "MaterialReceived": "material_received",
    "LotTransformed": "lot_transformed",
    "OperationCompleted": "operations",
    "UnitProduced": "operations",
    "UnitTested": "unit_tests",
    "UnitAssembled": "assembly_events",
    "UnitRemoved": "assembly_events",
    "UnitShipped": "shipments",
    "LotStatusChanged": "lot_status",
    "NonconformanceRaised": "nonconformances",
}
RAW_TABLES: tuple[str, ...] = tuple(dict.fromkeys(RAW_TABLE.values()))


def rows_for_batch(batch: Iterable[SinkRecord | Sequence[Any]]) -> dict[str, pa.Table]:
    """Columnar rows per table for a batch of decoded raw events.

    ``batch`` items are ``SinkRecord``s (or tuples in the same order). Tables with no rows are
    left out. Raises ``RowBuildError`` (with the Kafka coordinates) for an unknown event type
    or a record missing a required field: events reaching the sink were validated upstream,
    so this is a contract break to stop on, not an event to skip.
    """
    tables = {name: _Cols(SCHEMAS[name]) for name in _EVENT_TABLES}
    for item in batch:
        if len(item) == 9:
            type_name, r, topic, partition, offset, ingest_time, content_hash, verified, key_id = item
        else:  # a shorter tuple: no signature (nor, with 6 items, a content hash)
            type_name, r, topic, partition, offset, ingest_time = item[:6]
            content_hash, verified, key_id = (item[6] if len(item) > 6 else 0), "", ""
        short = type_name.rsplit(".", 1)[-1]
        append = _APPENDERS.get(short)
        if append is None:
            raise RowBuildError(
                "unknown event type", type_name=type_name, topic=topic, partition=partition, offset=offset
            )
        try:
            name = append(r, tables)
            tb = tables[name]
            c = tb.cols
            c["event_id"].append(r["event_id"])
            c["event_time"].append(r["event_time"])
            c["source"].append(r["source"])
            c["site"].append(r["site"])
            c["program"].append(r["program"])
            c["ingest_time"].append(ingest_time)
            c["kafka_topic"].append(topic)
            c["kafka_partition"].append(partition)
            c["kafka_offset"].append(offset)
            c["content_hash"].append(content_hash)
            c["verified_source"].append(verified)
            c["signing_key_id"].append(key_id)
            tb.n += 1
        except (KeyError, TypeError) as exc:
            raise RowBuildError(
                f"malformed record: {exc!r}",
                type_name=type_name,
                topic=topic,
                partition=partition,
                offset=offset,
            ) from exc
    out: dict[str, pa.Table] = {}
    for name, cols in tables.items():
        if cols.n:
            try:
                out[name] = _to_table(name, cols)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                # A partially appended record leaves ragged columns; report the table.
                raise RowBuildError(
                    f"bad values for {name}: {exc}", type_name=name, topic="", partition=-1, offset=-1
                ) from exc
    return out


def genealogy_rows(changes: Iterable[Mapping[str, Any]]) -> dict[str, pa.Table]:
    """``unit_genealogy``, ``root_members`` and ``lot_units`` rows for genealogy change records.

    A change record: ``{"uii", "parent_uii", "root_uii", "path", "depth", "seq", "version_ms",
    "version_event_id", "lots"}`` where ``path`` lists the ancestors from the parent up to the
    root and ``lots`` maps each lot the unit consumed to the site (``{}`` or absent: none known).
    """
    g: dict[str, list[Any]] = {name: [] for name in SCHEMAS["unit_genealogy"].names}
    rm: dict[str, list[Any]] = {name: [] for name in SCHEMAS["root_members"].names}
    lu: dict[str, list[Any]] = {name: [] for name in SCHEMAS["lot_units"].names}
    n = 0
    for ch in changes:
        key = ch["uii"]
        root = ch["root_uii"]
        seq = ch["seq"]
        path = list(ch.get("path") or ())
        parent = ch.get("parent_uii")
        for lot, site in (ch.get("lots") or {}).items():
            lu["lot_id"].append(lot)
            lu["uii"].append(key)
            lu["site"].append(site)
            lu["parent_uii"].append(parent)
            lu["root_uii"].append(root)
            lu["path"].append(path)
            lu["seq"].append(seq)
        g["uii"].append(key)
        g["parent_uii"].append(parent)
        g["root_uii"].append(root)
        g["path"].append(path)
        depth = ch.get("depth")
        g["depth"].append(len(path) if depth is None else depth)
        g["seq"].append(seq)
        vms = ch.get("version_ms") or 0
        g["version_time"].append(int(vms.timestamp() * 1000) if isinstance(vms, datetime) else vms)
        g["version_event_id"].append(ch.get("version_event_id") or "")
        rm["root_uii"].append(root)
        rm["uii"].append(key)
        rm["seq"].append(seq)
        n += 1
    if not n:
        return {}
    gt = pa.Table.from_arrays(
        [
            pa.array(g[f.name], pa.int64()).cast(_TS)
            if f.name == "version_time"
            else pa.array(g[f.name], f.type)
            for f in SCHEMAS["unit_genealogy"]
        ],
        schema=SCHEMAS["unit_genealogy"],
    )
    rt = pa.Table.from_arrays(
        [pa.array(rm[f.name], f.type) for f in SCHEMAS["root_members"]], schema=SCHEMAS["root_members"]
    )
    out = {"unit_genealogy": gt, "root_members": rt}
    if lu["uii"]:
        out["lot_units"] = pa.Table.from_arrays(
            [pa.array(lu[f.name], f.type) for f in SCHEMAS["lot_units"]], schema=SCHEMAS["lot_units"]
        )
    return out


def deadletter_rows(records: Iterable[Mapping[str, Any]]) -> dict[str, pa.Table]:
    """``dead_letters`` rows: ``{"source_topic", "source_partition", "source_offset", "error",
    "reason", "key", "raw", "dlq_topic", "dlq_partition", "dlq_offset", "ingest_time"}`` and
    optionally ``"raw_size", "raw_sha256", "raw_truncated"`` (``schemas.kafka.
    read_dead_letter_reference``; when absent: ``raw`` is the whole record)."""
    names = SCHEMAS["dead_letters"].names
    cols: dict[str, list[Any]] = {n: [] for n in names}
    for r in records:
        if "raw_size" not in r:
            raw = r.get("raw") or b""
            r = {
                **r,
                "raw_size": len(raw),
                "raw_sha256": hashlib.sha256(raw).hexdigest(),
                "raw_truncated": False,
            }
        for n in names:
            cols[n].append(r.get(n))
    if not cols[names[0]]:
        return {}
    return {"dead_letters": pa.Table.from_pydict(cols, schema=SCHEMAS["dead_letters"])}


_U64 = 2**64


def _opt(ch: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> str | None:
    v = ch.get(name)
    if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
        return f"{name} is {type(v).__name__}, not {getattr(kind, '__name__', kind)}"
    return None


def change_problem(ch: Any) -> str | None:
    """Why ``genealogy_rows`` cannot land a genealogy change record, or None when it can.

    The change topic is written by our genealogy writer; a record that breaks the shape is
    dead-lettered by the sink with this reason instead of stopping the batch."""
    if not isinstance(ch, Mapping):
        return f"a change record is a JSON object, not {type(ch).__name__}"
    for name in ("uii", "root_uii"):
        if not isinstance(ch.get(name), str):
            return f"{name} is missing or not a string"
    seq = ch.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < _U64:
        return f"seq {seq!r} is not an unsigned 64-bit integer"
    for name, kind in (("parent_uii", str), ("version_event_id", str), ("version_ms", (int, datetime))):
        why = _opt(ch, name, kind)
        if why:
            return why
    vms = ch.get("version_ms")
    if isinstance(vms, int) and not -(2**63) <= vms < 2**63:
        return f"version_ms {vms} is out of range"
    depth = ch.get("depth")
    if depth is not None and (
        not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth < 2**16
    ):
        return f"depth {depth!r} is not an unsigned 16-bit integer"
    path = ch.get("path")
    if path is not None and (not isinstance(path, list) or not all(isinstance(x, str) for x in path)):
        return "path is not a list of strings"
    lots = ch.get("lots")
    if lots is not None and (
        not isinstance(lots, Mapping) or not all(isinstance(v, str) for v in lots.values())
    ):
        return "lots is not an object of lot -> site strings"
    return None


_ALERT_MAPS = {
    "by_status": pa.map_(_S, pa.uint64()),
    "by_customer": pa.map_(_S, pa.uint64()),
    "by_site": pa.map_(_S, pa.uint64()),
    "details": pa.map_(_S, _S),
}
SCHEMAS["alerts"] = pa.schema(
    [
        ("alert_id", _S),
        ("version", pa.uint32()),
        ("rule", _S),
        ("severity", _S),
        ("title", _S),
        ("subject_kind", _S),
        ("subject_id", _S),
        ("raised_at", _TS),
        ("event_time", _TS),
        ("trigger_event_id", _S),
        ("trigger_type", _S),
        ("site", _S),
        ("program", _S),
        ("unit_count", pa.uint64()),
        ("units", pa.list_(_S)),
        ("by_status", _ALERT_MAPS["by_status"]),
        ("by_customer", _ALERT_MAPS["by_customer"]),
        ("by_site", _ALERT_MAPS["by_site"]),
        ("reference", _S),
        ("out_of_calibration", _B),
        ("details", _ALERT_MAPS["details"]),
        ("fingerprint", _S),
        ("kafka_partition", pa.uint32()),
        ("kafka_offset", pa.uint64()),
        ("ingest_time", _TS),
    ]
)


def alert_rows(records: Iterable[tuple[Any, int, int, datetime]]) -> dict[str, pa.Table]:
    """``alerts`` rows for ``(alert, kafka_partition, kafka_offset, ingest_time)`` where ``alert``
    is a ``schemas.alert.Alert`` (alerts are few: one pydantic object each is fine here)."""
    schema = SCHEMAS["alerts"]
    cols: dict[str, list[Any]] = {n: [] for n in schema.names}
    for alert, part, off, ingest in records:
        d = alert.model_dump()
        d["fingerprint"] = alert.fingerprint()
        d["kafka_partition"], d["kafka_offset"], d["ingest_time"] = part, off, ingest
        for n in schema.names:
            v = d[n]
            cols[n].append(list(v.items()) if n in _ALERT_MAPS else v)
    if not cols["alert_id"]:
        return {}
    return {"alerts": pa.Table.from_pydict(cols, schema=schema)}
