"""The ClickHouse tables of traceline, declared once, as data.

``Column`` / ``Table`` / ``View`` describe a table or a materialized view; ``TABLES`` holds the
raw event tables, the genealogy and fact tables and ``dead_letters`` (written by the sink),
``DERIVED`` the recall index ``unit_facts`` that the materialized views of ``VIEWS`` fill inside
ClickHouse, ``ALERT_TABLES`` the alerts landed from the alerts topic, ``INTEGRITY_TABLES`` the
hash chain over the landed rows, its signed heads and the issued reports. The DDL and its
migrations, the column lists the row builder must produce and docs/TABLES.md are all rendered
from these declarations (``sinks.ddl``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "TS",
    "LC",
    "Column",
    "Table",
    "View",
    "TABLES",
    "DEAD_LETTERS",
    "UNIT_FACTS",
    "DERIVED",
    "VIEWS",
    "ALERTS",
    "ALERT_TABLES",
    "EVENT_CHAIN",
    "CHAIN_HEADS",
    "ISSUED_REPORTS",
    "QUERY_AUDIT",
    "CHAIN_START",
    "INTEGRITY_TABLES",
]

TS = "DateTime64(3, 'UTC')"
LC = "LowCardinality(String)"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    comment: str
    default: str | None = None  # a DEFAULT expression; the row builder may omit the column
    since: int = 1  # the migration that added the column (earlier migrations render without it)


@dataclass(frozen=True)
class Table:
    name: str
    comment: str
    columns: tuple[Column, ...]
    order_by: str
    engine: str = "MergeTree"  # MergeTree | ReplacingMergeTree
    version_column: str | None = None  # for ReplacingMergeTree(version)
    partition_by: str | None = None
    indexes: tuple[str, ...] = ()
    kind: str = "raw"  # raw | fact | genealogy | meta | derived | alert | integrity
    since: int = 1  # the migration that created the table
    settings: tuple[tuple[str, Any], ...] = ()  # table-specific engine settings (override opts)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class View:
    """A materialized view that keeps a derived table filled from a source table on insert.

    ``select`` reads ``{source}`` (rendered with the database); its column names are the
    target's. The same SELECT backfills the target when the view is created."""

    name: str
    comment: str
    source: str
    target: str
    select: str

    def render_select(self, database: str) -> str:
        return self.select.format(source=f"`{database}`.`{self.source}`")


# ---------------------------------------------------------------------------------------
# Column groups

_HEADER = (
    Column("event_id", "String", "Event UUID; the idempotency key (a re-sent event carries the same id)"),
    Column("event_time", TS, "When it happened on the floor (UTC)"),
    Column("source", LC, "Bench / gateway / system that captured the event"),
    Column("site", LC, "Plant / business location"),
    Column("program", LC, "Contract or programme (need-to-know separation)"),
)
_KAFKA = (
    Column("ingest_time", TS, "When the sink read the event from Kafka (UTC)"),
    Column("kafka_topic", LC, "Kafka topic the event was read from"),
    Column("kafka_partition", "UInt32", "Kafka partition"),
    Column("kafka_offset", "UInt64", "Kafka offset within the partition"),
    Column(
        "content_hash",
        "UInt64",
        "First 64 bits of the sha256 of the record's Avro body: a re-used event_id with another"
        " hash is a conflict, dead-lettered (0: landed before migration 5)",
        since=5,
    ),
    Column(
        "verified_source",
        LC,
        "The source a valid gateway signature proved (equal to `source`): Ed25519 over the record's"
        " bytes, with a registered, unrevoked key of that source; '' when the event was unsigned"
        " (or landed before migration 7)",
        since=7,
    ),
    Column(
        "signing_key_id",
        LC,
        "The id of the gateway key whose signature verified (`traceline gateway-key list`); '' when unsigned",
        since=7,
    ),
)


def _unit(prefix: str = "", what: str = "unit") -> tuple[Column, ...]:
    return (
        Column(f"{prefix}uii", "String", f"UII of the {what}: '<part_number>:<serial_number>'"),
        Column(f"{prefix}part_number", LC, f"Part number of the {what}"),
        Column(f"{prefix}serial_number", "String", f"Serial number of the {what} (unique per part number)"),
    )


def _raw(
    name: str, comment: str, cols: tuple[Column, ...], order_by: str, indexes: tuple[str, ...] = ()
) -> Table:
    # Raw tables are ReplacingMergeTree with event_id last in the sorting key: a producer that
    # re-sends an event (same event_id) in a later batch is collapsed at merge time; a retried
    # batch is dropped at insert time by the dedup token. Queries needing exactness before a
    # merge use FINAL or LIMIT 1 BY event_id.
    return Table(
        name=name,
        comment=comment,
        columns=_HEADER + cols + _KAFKA,
        order_by=f"({order_by}, event_id)",
        engine="ReplacingMergeTree",
        partition_by="toYYYYMM(event_time)",
        indexes=indexes,
        kind="raw",
    )


_BF = "TYPE bloom_filter(0.01) GRANULARITY 4"

TABLES: tuple[Table, ...] = (
    # ---------------------------------------------------------------- raw event tables
    _raw(
        "material_received",
        "MaterialReceived events: a lot received from a supplier",
        (
            Column("lot_id", "String", "Plant-internal lot number"),
            Column("part_number", LC, "Part number of the material"),
            Column("supplier_id", LC, "Supplier"),
            Column("supplier_lot", "String", "The supplier's own lot number"),
            Column("quantity", "Float64", "Quantity received"),
            Column("unit_of_measure", LC, "Unit of measure of quantity"),
            Column("coc_reference", "Nullable(String)", "Certificate of conformance reference"),
            Column("inspection_result", LC, "Incoming inspection: ACCEPTED / REJECTED / CONDITIONAL"),
        ),
        "lot_id, event_time",
        (f"INDEX ix_supplier_lot (supplier_id, supplier_lot) {_BF}",),
    ),
    _raw(
        "lot_transformed",
        "LotTransformed events: an output lot made from input lots (split, merge, processing)",
        (
            Column("lot_id", "String", "The output lot"),
            Column("part_number", LC, "Part number of the output lot"),
            Column("transformation", LC, "SPLIT / MERGE / PROCESS"),
            Column("input_lot_ids", "Array(String)", "Input lots"),
            Column(
                "input_quantities",
                "Array(Float64)",
                "Quantity taken from each input lot (parallel to input_lot_ids)",
            ),
            Column("quantity", "Float64", "Output quantity"),
            Column("unit_of_measure", LC, "Unit of measure"),
            Column("work_order", "Nullable(String)", "Work order"),
            Column("station_id", "Nullable(String)", "Station / machine"),
        ),
        "lot_id, event_time",
        (f"INDEX ix_station station_id {_BF}",),
    ),
    _raw(
        "operations",
        "OperationCompleted events (creates_unit = 1 is 'UnitProduced')",
        _unit()
        + (
            Column("work_order", "String", "Work order"),
            Column("operation", "String", "Operation, e.g. '0010 SMT placement'"),
            Column("station_id", LC, "Station / machine"),
            Column("operator_id", LC, "Operator"),
            Column("started_at", TS, "Operation start (UTC)"),
            Column("finished_at", TS, "Operation end (UTC)"),
            Column("creates_unit", "Bool", "This operation made the unit"),
            Column("consumed_lot_ids", "Array(String)", "Lots consumed"),
            Column("consumed_lot_quantities", "Array(Float64)", "Quantity of each consumed lot (parallel)"),
            Column("consumed_uiis", "Array(String)", "Serialised units consumed (UIIs)"),
        ),
        "uii, event_time",
        (
            f"INDEX ix_station station_id {_BF}",
            f"INDEX ix_operator operator_id {_BF}",
            f"INDEX ix_work_order work_order {_BF}",
            "INDEX ix_started started_at TYPE minmax GRANULARITY 1",
            "INDEX ix_finished finished_at TYPE minmax GRANULARITY 1",
        ),
    ),
    _raw(
        "unit_tests",
        "UnitTested events with their measurements",
        _unit()
        + (
            Column("bench_id", LC, "Test bench"),
            Column("procedure_id", LC, "Test procedure"),
            Column("procedure_version", LC, "Test procedure version"),
            Column("calibration_id", "String", "Calibration record of the bench"),
            Column("calibration_due", TS, "Calibration due date of the bench (UTC)"),
            Column("operator_id", "Nullable(String)", "Operator"),
            Column("started_at", TS, "Test start (UTC)"),
            Column("finished_at", TS, "Test end (UTC)"),
            Column("verdict", LC, "PASS / FAIL / ABORTED"),
            Column("measurements.name", "Array(String)", "Measurement names (Nested measurements)"),
            Column("measurements.value", "Array(Float64)", "Measured values"),
            Column("measurements.unit", "Array(String)", "Units of the values"),
            Column("measurements.low_limit", "Array(Nullable(Float64))", "Lower limits (NULL: none)"),
            Column("measurements.high_limit", "Array(Nullable(Float64))", "Upper limits (NULL: none)"),
            Column("measurements.passed", "Array(Bool)", "Per-measurement pass flags"),
            Column(
                "out_of_calibration",
                "Bool",
                "The test ended after the bench's calibration due date (finished_at > calibration_due)",
                default="finished_at > calibration_due",
                since=3,
            ),
        ),
        "uii, event_time",
        (
            f"INDEX ix_bench bench_id {_BF}",
            "INDEX ix_started started_at TYPE minmax GRANULARITY 1",
            "INDEX ix_finished finished_at TYPE minmax GRANULARITY 1",
        ),
    ),
    _raw(
        "assembly_events",
        "UnitAssembled and UnitRemoved events (action), keyed by the child unit",
        (Column("action", LC, "ASSEMBLED or REMOVED"),)
        + _unit(what="child unit")
        + _unit("parent_", "parent unit")
        + (
            Column("position", "Nullable(String)", "Position / reference designator"),
            Column("reason", "Nullable(String)", "Reason for a removal, e.g. 'rework'"),
            Column("work_order", "Nullable(String)", "Work order"),
            Column("station_id", "Nullable(String)", "Station"),
            Column("operator_id", "Nullable(String)", "Operator"),
        ),
        "uii, event_time",
        (f"INDEX ix_parent parent_uii {_BF}",),
    ),
    _raw(
        "shipments",
        "UnitShipped events",
        _unit()
        + (
            Column("shipment_id", "String", "Shipment"),
            Column("customer_id", LC, "Customer"),
            Column("contract", LC, "Contract"),
            Column("destination_site", LC, "Destination site"),
            Column("end_system", "Nullable(String)", "Platform / tail / hull number"),
        ),
        "uii, event_time",
        (f"INDEX ix_customer customer_id {_BF}",),
    ),
    _raw(
        "lot_status",
        "LotStatusChanged events",
        (
            Column("lot_id", "String", "Lot"),
            Column("status", LC, "HOLD / QUARANTINE / RELEASED / SCRAPPED"),
            Column("reason", "String", "Reason"),
        ),
        "lot_id, event_time",
    ),
    _raw(
        "nonconformances",
        "NonconformanceRaised events",
        (
            Column("ncr_id", "String", "Nonconformance report id"),
            Column("target_kind", LC, "LOT / SUPPLIER_LOT / SERIAL / STATION / OPERATOR / BENCH / SUPPLIER"),
            Column(
                "target_id",
                "String",
                "Target id (UII for SERIAL, '<supplier_id>:<supplier_lot>' for SUPPLIER_LOT)",
            ),
            Column("window_start", f"Nullable({TS})", "Start of the suspect time window"),
            Column("window_end", f"Nullable({TS})", "End of the suspect time window"),
            Column("severity", LC, "MINOR / MAJOR / CRITICAL"),
            Column("disposition", LC, "PENDING / USE_AS_IS / REWORK / REPAIR / SCRAP / RETURN_TO_SUPPLIER"),
            Column("description", "String", "Description"),
        ),
        "target_kind, target_id, event_time",
    ),
    # ---------------------------------------------------------------- facts for the recall path
    Table(
        "lot_consumption",
        "Fact: lot -> unit, one row per consumed lot of an OperationCompleted",
        (
            Column("lot_id", "String", "Consumed lot"),
            Column("uii", "String", "Unit that consumed the lot"),
            Column("part_number", LC, "Part number of the unit"),
            Column("quantity", "Float64", "Quantity consumed"),
            Column("work_order", "String", "Work order"),
            Column("operation", "String", "Operation"),
            Column("station_id", LC, "Station"),
            Column("operator_id", LC, "Operator"),
            _HEADER[0],
            _HEADER[1],
            _HEADER[3],
            _HEADER[4],
        ),
        "(lot_id, uii, event_id)",
        engine="ReplacingMergeTree",
        kind="fact",
    ),
    Table(
        "lot_lineage",
        "Fact: input lot -> output lot, one row per input of a LotTransformed",
        (
            Column("input_lot_id", "String", "Input lot"),
            Column("output_lot_id", "String", "Output lot"),
            Column("input_quantity", "Float64", "Quantity taken from the input lot"),
            Column("transformation", LC, "SPLIT / MERGE / PROCESS"),
            Column("part_number", LC, "Part number of the output lot"),
            Column("station_id", "Nullable(String)", "Station"),
            _HEADER[0],
            _HEADER[1],
            _HEADER[3],
            _HEADER[4],
        ),
        "(input_lot_id, output_lot_id, event_id)",
        engine="ReplacingMergeTree",
        kind="fact",
    ),
    Table(
        "unit_consumption",
        "Fact: consumed unit -> consuming unit, from OperationCompleted.consumed_units",
        (
            Column("consumed_uii", "String", "Serialised unit consumed"),
            Column("consumer_uii", "String", "Unit that consumed it"),
            Column("work_order", "String", "Work order"),
            Column("operation", "String", "Operation"),
            Column("station_id", LC, "Station"),
            Column("operator_id", LC, "Operator"),
            _HEADER[0],
            _HEADER[1],
            _HEADER[3],
            _HEADER[4],
        ),
        "(consumed_uii, consumer_uii, event_id)",
        engine="ReplacingMergeTree",
        kind="fact",
    ),
    # ---------------------------------------------------------------- genealogy
    Table(
        "unit_genealogy",
        "Current place of every unit in the assembly tree "
        "(one live row per uii; use FINAL or argMax(..., seq))",
        (
            Column("uii", "String", "Unit"),
            Column("parent_uii", "Nullable(String)", "Current parent; NULL when the unit is a root"),
            Column(
                "root_uii", "String", "Final system (top of the tree); the unit itself when it has no parent"
            ),
            Column(
                "path", "Array(String)", "Ancestors from the parent up to the root (root last); [] for a root"
            ),
            Column("depth", "UInt16", "Number of ancestors (length of path)"),
            Column("seq", "UInt64", "Monotonic sequence per uii; the ReplacingMergeTree version"),
            Column("version_time", TS, "Event time of the assembly fact that set the parent"),
            Column("version_event_id", "String", "Event id of the assembly fact that set the parent"),
            Column("updated_at", TS, "When the sink wrote the row", default="now64(3, 'UTC')"),
        ),
        "uii",
        engine="ReplacingMergeTree",
        version_column="seq",
        kind="genealogy",
    ),
    Table(
        "root_members",
        "Index root system -> units (candidates; a unit that moved keeps a stale row under its old root: "
        "confirm against unit_genealogy)",
        (
            Column("root_uii", "String", "Final system"),
            Column("uii", "String", "Unit that had this root at seq"),
            Column("seq", "UInt64", "unit_genealogy.seq of the change that put the unit under this root"),
        ),
        "(root_uii, uii)",
        engine="ReplacingMergeTree",
        version_column="seq",
        kind="genealogy",
    ),
    Table(
        "lot_units",
        "Recall index lot -> unit -> place in the assembly tree: one row per (consumed lot, unit) and "
        "genealogy version; the sink writes a seq-0 row (the unit as its own root) with every "
        "OperationCompleted, the genealogy processor one row per change record for each of the unit's "
        "lots. Exact: the row with the highest seq per (lot_id, uii), site = min(site)",
        (
            Column("lot_id", "String", "Consumed lot"),
            Column("uii", "String", "Unit that consumed the lot"),
            Column(
                "site",
                LC,
                "Site of the operation that consumed the lot (several: the smallest on rows of seq > 0)",
            ),
            Column("parent_uii", "Nullable(String)", "Current parent at seq; NULL when the unit is a root"),
            Column("root_uii", "String", "Final system at seq; the unit itself when it has no parent"),
            Column("path", "Array(String)", "Ancestors from the parent up to the root at seq (root last)"),
            Column("seq", "UInt64", "unit_genealogy.seq of the change record (0: written by the sink)"),
        ),
        "(lot_id, uii)",
        engine="ReplacingMergeTree",
        version_column="seq",
        kind="genealogy",
        since=4,
        # compact parts: read by point lookups on lot_id only (one file per part, not per column)
        settings=(
            ("min_bytes_for_wide_part", 10**12),
            ("min_rows_for_wide_part", 10**12),
        ),
    ),
)

DEAD_LETTERS = Table(
    "dead_letters",
    "Events that could not be decoded or validated, with the reason (from the dead-letter topic)",
    (
        Column("source_topic", LC, "Topic the bad record was read from"),
        Column("source_partition", "Int32", "Its partition"),
        Column("source_offset", "Int64", "Its offset"),
        Column("error", LC, "Error type (UnknownSchemaError, MalformedRecordError, GenealogyCycle, ...)"),
        Column("reason", "String", "Human-readable reason"),
        Column("key", "String", "The record's Kafka key, as received"),
        Column("raw", "String", "The record's bytes, as received"),
        Column("dlq_topic", LC, "Dead-letter topic"),
        Column("dlq_partition", "UInt32", "Partition in the dead-letter topic"),
        Column("dlq_offset", "UInt64", "Offset in the dead-letter topic"),
        Column("ingest_time", TS, "When the sink read it"),
        Column(
            "raw_size",
            "UInt64",
            "Size of the bad record in bytes (raw holds all of it unless raw_truncated)",
            since=5,
        ),
        Column("raw_sha256", "String", "sha256 of the bad record's bytes (hex)", since=5),
        Column(
            "raw_truncated",
            "Bool",
            "Dead-lettered by reference: the record was too large to copy, raw is its first bytes",
            since=5,
        ),
    ),
    "(source_topic, source_partition, source_offset)",
    engine="ReplacingMergeTree",
    kind="meta",
)
TABLES = TABLES + (DEAD_LETTERS,)

# ---------------------------------------------------------------------------------------
# Derived tables: filled inside ClickHouse by materialized views (``VIEWS``), not by the sink.

UNIT_FACTS = Table(
    "unit_facts",
    "Derived recall index: every fact about a unit the recall path needs (genealogy versions, "
    "assembly / removal, consumption by another unit, shipment, test verdict), one row each, "
    "ordered by uii so one read answers for a set of units; filled by materialized views from "
    "unit_genealogy, assembly_events, unit_consumption, shipments and unit_tests. Compact parts: "
    "it is read by point lookups only",
    (
        Column("uii", "String", "Unit the fact is about"),
        Column("kind", LC, "GENEALOGY / ASSEMBLED / REMOVED / CONSUMED_BY / SHIPPED / TESTED"),
        Column(
            "link",
            "Nullable(String)",
            "GENEALOGY: parent (NULL for a root); ASSEMBLED / REMOVED: parent; CONSUMED_BY: consuming unit",
        ),
        Column("root_uii", "String", "GENEALOGY: final system (path[-1], or uii itself); '' otherwise"),
        Column("path", "Array(String)", "GENEALOGY: ancestors from the parent up to the root; [] otherwise"),
        Column("seq", "UInt64", "GENEALOGY: unit_genealogy.seq; 0 otherwise"),
        Column("event_time", TS, "GENEALOGY: version_time; TESTED: finished_at; otherwise the event time"),
        Column("event_id", "String", "Source event id (GENEALOGY: version_event_id)"),
        Column(
            "attrs",
            "Array(Nullable(String))",
            "SHIPPED: [shipment_id, customer_id, destination_site, end_system]; TESTED: [verdict]; "
            "ASSEMBLED / REMOVED: [reason]; CONSUMED_BY: [site of the consuming operation]; GENEALOGY: []",
        ),
    ),
    "(uii, kind, seq, event_id)",
    engine="ReplacingMergeTree",
    kind="derived",
    # compact parts: a point read touches one file per part, not one per column. Granules stay
    # at 8192 rows: 1024 made warm reads ~20 % faster but cold ones ~2x slower at 10M serials
    # (8x the marks to load after the mark cache is dropped).
    settings=(
        ("min_bytes_for_wide_part", 10**12),
        ("min_rows_for_wide_part", 10**12),
    ),
)
DERIVED: tuple[Table, ...] = (UNIT_FACTS,)
_NS = "CAST(NULL, 'Nullable(String)')"
_NOPATH = "CAST([], 'Array(String)') AS path, toUInt64(0) AS seq"


def _attrs(*exprs: str) -> str:
    return f"CAST([{', '.join(exprs)}], 'Array(Nullable(String))') AS attrs"


VIEWS: tuple[View, ...] = (
    View(
        "mv_unit_facts_genealogy",
        "unit_genealogy -> unit_facts (GENEALOGY)",
        "unit_genealogy",
        "unit_facts",
        "SELECT uii, 'GENEALOGY' AS kind, parent_uii AS link, root_uii, path, seq,"
        f" version_time AS event_time, version_event_id AS event_id, {_attrs()} FROM {{source}}",
    ),
    View(
        "mv_unit_facts_assembly",
        "assembly_events -> unit_facts (ASSEMBLED / REMOVED)",
        "assembly_events",
        "unit_facts",
        "SELECT uii, action AS kind, CAST(parent_uii, 'Nullable(String)') AS link, '' AS root_uii,"
        f" {_NOPATH}, event_time, event_id, {_attrs('reason')} FROM {{source}}",
    ),
    View(
        "mv_unit_facts_consumption",
        "unit_consumption -> unit_facts (CONSUMED_BY)",
        "unit_consumption",
        "unit_facts",
        "SELECT consumed_uii AS uii, 'CONSUMED_BY' AS kind, CAST(consumer_uii, 'Nullable(String)') AS link,"
        f" '' AS root_uii, {_NOPATH}, event_time, event_id, {_attrs('toString(site)')} FROM {{source}}",
    ),
    View(
        "mv_unit_facts_shipments",
        "shipments -> unit_facts (SHIPPED)",
        "shipments",
        "unit_facts",
        f"SELECT uii, 'SHIPPED' AS kind, {_NS} AS link, '' AS root_uii, {_NOPATH}, event_time, event_id,"
        f" {_attrs('shipment_id', 'toString(customer_id)', 'toString(destination_site)', 'end_system')}"
        " FROM {source}",
    ),
    View(
        "mv_unit_facts_tests",
        "unit_tests -> unit_facts (TESTED)",
        "unit_tests",
        "unit_facts",
        f"SELECT uii, 'TESTED' AS kind, {_NS} AS link, '' AS root_uii, {_NOPATH}, finished_at AS event_time,"
        f" event_id, {_attrs('toString(verdict)')} FROM {{source}}",
    ),
)
# ---------------------------------------------------------------------------------------
# Alerts: landed by the sink from the alerts topic (the topic is the source of truth).

ALERTS = Table(
    "alerts",
    "Alerts raised by the alert engine, one row per version (exact: FINAL, or argMax(..., version)"
    " per alert_id); landed from the alerts topic",
    (
        Column("alert_id", "String", "Stable dedup key '<RULE>:<subject...>'"),
        Column("version", "UInt32", "1 for a new alert, +1 for every change of its content (impact)"),
        Column(
            "rule",
            LC,
            "NC_RAISED / HELD_LOT_USED / LOT_HELD_AFTER_USE / SUSPECT_LOT_YIELD / OUT_OF_CALIBRATION"
            " / SHIPPING_GATE / LEDGER_GAP (the pipeline's own)",
        ),
        Column("severity", LC, "INFO / WARNING / CRITICAL"),
        Column("title", "String", "One line for a person"),
        Column(
            "subject_kind",
            LC,
            "lot / serial / station / operator / bench / supplier / supplier_lot / unit / pipeline",
        ),
        Column("subject_id", "String", "Id of the subject"),
        Column("raised_at", TS, "When the engine raised this version (UTC)"),
        Column("event_time", TS, "Floor time of the triggering event (UTC)"),
        Column("trigger_event_id", "String", "event_id of the triggering event"),
        Column("trigger_type", LC, "Event type of the triggering event"),
        Column("site", LC, "Site of the triggering event"),
        Column("program", LC, "Programme of the triggering event"),
        Column("unit_count", "UInt64", "Impacted / named units (full count)"),
        Column("units", "Array(String)", "Impacted / named units (at most the listing cap)"),
        Column("by_status", "Map(String, UInt64)", "Impacted units by status"),
        Column("by_customer", "Map(String, UInt64)", "Impacted units by customer"),
        Column("by_site", "Map(String, UInt64)", "Impacted units by site"),
        Column("reference", "Nullable(String)", "API path of the full impact list"),
        Column("out_of_calibration", "Bool", "The triggering test ran on an out-of-calibration bench"),
        Column("details", "Map(String, String)", "Rule-specific facts"),
        Column("fingerprint", "String", "Hash of the content; the engine's dedup state reloads it"),
        Column("kafka_partition", "UInt32", "Partition of the alerts topic"),
        Column("kafka_offset", "UInt64", "Offset in the alerts topic"),
        Column("ingest_time", TS, "When the sink read it"),
    ),
    "(alert_id, version)",
    engine="ReplacingMergeTree",
    version_column="version",
    kind="alert",
    since=3,
)
ALERT_TABLES: tuple[Table, ...] = (ALERTS,)
# ---------------------------------------------------------------------------------------
# Tamper evidence (migration 6): the hash chain over the landed raw rows, its signed heads and
# the register of issued reports (``sinks.chain``, ``queries.verify``; docs/SECURITY.md).

_CHAIN_POS = (
    Column("kafka_topic", LC, "Topic of the chained row (the events topic, or the alerts topic)"),
    Column("kafka_partition", "UInt32", "Its partition: one chain per (topic, partition)"),
    Column("kafka_offset", "UInt64", "Its offset: the chain runs in offset order"),
)
EVENT_CHAIN = Table(
    "event_chain",
    "Hash chain over every landed raw row, per (topic, partition) in offset order; written in the"
    " same batch insert as the rows (before them). Plain MergeTree: nothing collapses, an entry"
    " added beside a genuine one stays visible to `traceline verify`",
    (
        *_CHAIN_POS,
        Column("event_id", "String", "event_id of the row (alert_id:version for an alert)"),
        Column("raw_table", LC, "Table the row landed in"),
        Column(
            "row_hash",
            "FixedString(32)",
            "sha256 of the row's canonical content (sinks.chain.row_hashes: every column but"
            " ingest_time and the Kafka position)",
        ),
        Column("chain_hash", "FixedString(32)", "sha256(previous entry's chain_hash || row_hash)"),
        Column("landed_at", TS, "When the sink wrote the entry (not hashed)"),
    ),
    "(kafka_topic, kafka_partition, kafka_offset)",
    kind="integrity",
    since=6,
)
CHAIN_HEADS = Table(
    "chain_heads",
    "Signed chain heads: the sink signs the head of each (topic, partition) with its Ed25519 key"
    " (<data dir>/keys/chain.ed25519) at most once per ingest.chain_sign_seconds, and when idle",
    (
        *_CHAIN_POS,
        Column("chain_hash", "FixedString(32)", "event_chain.chain_hash at that offset"),
        Column("key_id", LC, "First 16 hex of the sha256 of the signing public key"),
        Column(
            "signature", "String", "Ed25519 signature (64 bytes) over topic, partition, offset, hash, time"
        ),
        Column("signed_at", TS, "When the head was signed (part of the signed message)"),
    ),
    "(kafka_topic, kafka_partition, kafka_offset)",
    kind="integrity",
    since=6,
)
ISSUED_REPORTS = Table(
    "issued_reports",
    "Every report file traceline issued: its sha256 and an Ed25519 signature over its bytes"
    " (<data dir>/keys/report.ed25519); `traceline report verify FILE` looks a file up here",
    (
        Column("sha256", "FixedString(32)", "sha256 of the file's bytes"),
        Column("document_number", "String", "Document number printed in the file"),
        Column("format", LC, "html / pdf / csv"),
        Column("size", "UInt64", "Size of the file in bytes"),
        Column("key_id", LC, "First 16 hex of the sha256 of the signing public key"),
        Column("signature", "String", "Ed25519 signature (64 bytes) over the file's bytes"),
        Column("issued_at", TS, "When it was issued"),
        Column("prepared_by", "String", "The name on the report's 'prepared by' line"),
    ),
    "(sha256, issued_at)",
    kind="integrity",
    since=6,
)
CHAIN_START = Table(
    "chain_start",
    "What each chained table held when the chain began (migration 6 fills it): rows at or below"
    " max_offset have no chain entry; `traceline verify` counts them against keys",
    (
        Column("raw_table", LC, "Chained table"),
        Column("kafka_topic", LC, "Its topic ('' for alerts: the alerts topic)"),
        Column("kafka_partition", "UInt32", "Partition"),
        Column("max_offset", "UInt64", "Highest offset landed before the chain began"),
        Column("keys", "UInt64", "Distinct event_id (alerts: alert_id, version) at or below it"),
        Column("recorded_at", TS, "When the migration recorded it", default="now64(3, 'UTC')"),
    ),
    "(raw_table, kafka_topic, kafka_partition)",
    kind="integrity",
    since=6,
)
QUERY_AUDIT = Table(
    "query_audit",
    "Who asked what, when, with what scope and how many results: one row per API request (not"
    " /health or static files), under a hash chain per server (sinks.audit); every row signed with"
    " the chain key; `traceline verify` checks it; GET /audit shows it to administrators",
    (
        Column("server_id", LC, "The server that answered (host and data dir): one chain each"),
        Column("seq", "UInt64", "Position in the server's chain, from 1"),
        Column("at", TS, "When the request arrived (UTC)"),
        Column("principal", "String", "Token name or OIDC subject; '' when no valid credential came"),
        Column("role", LC, "Its role ('' without one)"),
        Column("programs", "Array(String)", "The programmes it may see (['*'] for all)"),
        Column("method", LC, "HTTP method"),
        Column("path", LC, "Route path, e.g. /recall"),
        Column("params", "String", "Query parameters as JSON (a token never appears here)"),
        Column("status", "UInt16", "HTTP status of the answer"),
        Column("results", "Int64", "Units / rows / alerts in the answer; -1 when not counted"),
        Column("withheld", "Int64", "Units outside the caller's programmes, counted but not shown"),
        Column("duration_ms", "Float64", "Time to answer"),
        Column("row_hash", "FixedString(32)", "sha256 of the row's content (sinks.audit.row_hash)"),
        Column("chain_hash", "FixedString(32)", "sha256(previous chain_hash || row_hash)"),
        Column("key_id", LC, "First 16 hex of the sha256 of the signing public key"),
        Column("signature", "String", "Ed25519 signature over server_id, seq and chain_hash"),
    ),
    "(server_id, seq)",
    kind="integrity",
    since=8,
)
INTEGRITY_TABLES: tuple[Table, ...] = (EVENT_CHAIN, CHAIN_HEADS, ISSUED_REPORTS, CHAIN_START, QUERY_AUDIT)
