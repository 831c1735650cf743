"""Versioned ClickHouse DDL for traceline, rendered from the declarations in ``sinks.tables``.

The DDL, the column lists the row builder must produce (``table_columns``) and ``docs/TABLES.md``
(``render_markdown``) are all rendered from that one declaration of the tables.

Migrations are applied in order and idempotently: every statement is ``IF NOT EXISTS`` and
the applied versions are recorded in ``schema_migrations``. ``apply_ddl`` can run any
number of times, from any number of processes.

Engine settings live in one place (``EngineOptions``). ``EngineOptions(cluster="name")`` is
the single hook for cluster mode: it switches MergeTree engines to their Replicated*
counterparts and adds ``ON CLUSTER``. (Distributed tables over shards are not rendered yet.)
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sinks.tables import (
    ALERT_TABLES,
    DERIVED,
    INTEGRITY_TABLES,
    TABLES,
    TS,
    VIEWS,
    Column,
    Table,
    View,
)

__all__ = [
    "DEDUP_WINDOW",
    "MIGRATIONS",
    "EngineOptions",
    "apply_ddl",
    "applied_versions",
    "backfill_statements",
    "lot_units_backfill",
    "render_markdown",
    "table_columns",
    # declared in sinks.tables, importable from here as before
    "TABLES",
    "DERIVED",
    "ALERT_TABLES",
    "INTEGRITY_TABLES",
    "VIEWS",
    "View",
    "Table",
    "Column",
]

log = logging.getLogger(__name__)

#: How many recent insert blocks per table MergeTree remembers to drop a retried block
#: carrying the same ``insert_deduplication_token``. Each batch writes one block per table
#: (one per partition touched), so this covers the last few thousand batches.
DEDUP_WINDOW = 10_000


@dataclass(frozen=True)
class EngineOptions:
    """All engine settings in one place.

    cluster: None for a single server / chdb; a cluster name switches to Replicated* engines
    with ``ON CLUSTER`` (the Keeper path uses the ``{shard}``/``{replica}`` macros).
    """

    cluster: str | None = None
    dedup_window: int = DEDUP_WINDOW
    index_granularity: int = 8192
    keeper_path: str = "/clickhouse/tables/{shard}/{database}/{table}"
    extra_settings: dict[str, Any] = field(default_factory=dict)

    def on_cluster(self) -> str:
        return f" ON CLUSTER {_ident(self.cluster)}" if self.cluster else ""

    def engine(self, table: Table, database: str) -> str:
        args: list[str] = []
        name = table.engine
        if self.cluster:
            name = f"Replicated{name}"
            path = self.keeper_path.replace("{database}", database).replace("{table}", table.name)
            args += [_quote(path), "'{replica}'"]
        if table.version_column:
            args.append(table.version_column)
        return f"{name}({', '.join(args)})"

    def settings(self, table: Table | None = None) -> str:
        s: dict[str, Any] = {"index_granularity": self.index_granularity}
        if self.cluster:
            s["replicated_deduplication_window"] = self.dedup_window
        else:
            s["non_replicated_deduplication_window"] = self.dedup_window
        s.update(self.extra_settings)
        if table is not None:
            s.update(dict(table.settings))
        return ", ".join(f"{k} = {v}" for k, v in s.items())


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"bad identifier {name!r}")
    return name


# the columns of unit_facts, as the views' SELECTs produce them (the backfill's INSERT list)
_FACT_COLS = "uii, kind, link, root_uii, path, seq, event_time, event_id, attrs"

# the migration runner's own bookkeeping
_META = Table(
    "schema_migrations",
    "Applied DDL migrations",
    (
        Column("version", "UInt32", "Migration number"),
        Column("name", "String", "Migration name"),
        Column("checksum", "String", "sha256 of the rendered statements"),
        Column("applied_at", TS, "When it was applied"),
    ),
    "version",
    engine="ReplacingMergeTree",
    kind="meta",
)

_BY_NAME = {t.name: t for t in TABLES + DERIVED + ALERT_TABLES + INTEGRITY_TABLES}


def table_columns(name: str) -> list[str]:
    """Column names of a table as the row builder must produce them (defaults excluded)."""
    return [c.name for c in _BY_NAME[name].columns if c.default is None]


def _create_table(t: Table, database: str, opts: EngineOptions, upto: int | None = None) -> str:
    cols = []
    for c in t.columns:
        if upto is not None and c.since > upto:
            continue
        default = f" DEFAULT {c.default}" if c.default else ""
        cols.append(f"    `{c.name}` {c.type}{default} COMMENT {_quote(c.comment)}")
    body = ",\n".join(cols + [f"    {ix}" for ix in t.indexes])
    parts = [
        f"CREATE TABLE IF NOT EXISTS `{database}`.`{t.name}`{opts.on_cluster()}\n(\n{body}\n)",
        f"ENGINE = {opts.engine(t, database)}",
    ]
    if t.partition_by:
        parts.append(f"PARTITION BY {t.partition_by}")
    parts.append(f"ORDER BY {t.order_by}")
    parts.append(f"SETTINGS {opts.settings(t)}")
    parts.append(f"COMMENT {_quote(t.comment)}")
    return "\n".join(parts)


# A migration is (version, name, function(database, opts) -> statements). Append only; never
# edit an applied one (its checksum is recorded and a change is logged as a warning).
def _m1(database: str, opts: EngineOptions) -> list[str]:
    return [_create_table(t, database, opts, upto=1) for t in TABLES if t.since == 1]


def _create_view(v: View, database: str, opts: EngineOptions) -> str:
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.`{v.name}`{opts.on_cluster()}"
        f" TO `{database}`.`{v.target}` AS {v.render_select(database)}"
        f" COMMENT {_quote(v.comment)}"
    )


def backfill_statements(view: View, database: str) -> list[str]:
    """``INSERT ... SELECT`` that fills a view's target from what its source already holds."""
    return [f"INSERT INTO `{database}`.`{view.target}` ({_FACT_COLS}) {view.render_select(database)}"]


def _m2(database: str, opts: EngineOptions) -> list[str]:
    # The views first, then the backfill: rows inserted in between are written twice, which
    # the ReplacingMergeTree key (and the duplicate-insensitive recall logic) absorbs.
    out = [_create_table(t, database, opts) for t in DERIVED]
    out += [_create_view(v, database, opts) for v in VIEWS]
    for v in VIEWS:
        out += backfill_statements(v, database)
    return out


def _m3(database: str, opts: EngineOptions) -> list[str]:
    out = [_create_table(t, database, opts) for t in ALERT_TABLES]
    for t in TABLES:
        for c in t.columns:
            if c.since == 3:
                default = f" DEFAULT {c.default}" if c.default else ""
                out.append(
                    f"ALTER TABLE `{database}`.`{t.name}`{opts.on_cluster()} ADD COLUMN IF NOT EXISTS"
                    f" `{c.name}` {c.type}{default} COMMENT {_quote(c.comment)}"
                )
    return out


def lot_units_backfill(database: str) -> list[str]:
    """``INSERT ... SELECT`` that fills ``lot_units`` from what a store already holds: every
    (lot, unit) of ``lot_consumption`` with the unit's latest ``unit_genealogy`` row (seq 0 and
    its own root when it has none). The same rows the sink and the genealogy processor leave
    after merges; later change records (higher seq) supersede them."""
    db = f"`{database}`"
    return [
        f"INSERT INTO {db}.`lot_units` (lot_id, uii, site, parent_uii, root_uii, path, seq)"
        " SELECT c.lot_id, c.uii, c.site, if(g.seq IS NULL, NULL, g.parent_uii),"
        " if(g.seq IS NULL, c.uii, g.root_uii), if(g.seq IS NULL, [], g.path), ifNull(g.seq, 0)"
        f" FROM (SELECT lot_id, uii, min(site) AS site FROM {db}.`lot_consumption` GROUP BY lot_id, uii) AS c"
        " LEFT JOIN (SELECT uii, t.1 AS parent_uii, t.2 AS root_uii, t.3 AS path, t.4 AS seq FROM"
        " (SELECT uii, argMax(tuple(parent_uii, root_uii, path, seq), seq) AS t"
        f" FROM {db}.`unit_genealogy` GROUP BY uii)) AS g ON g.uii = c.uii SETTINGS join_use_nulls = 1"
    ]


def _m4(database: str, opts: EngineOptions) -> list[str]:
    out = [_create_table(t, database, opts) for t in TABLES if t.since == 4]
    return out + lot_units_backfill(database)


def _added_columns(database: str, opts: EngineOptions, version: int) -> list[str]:
    """``ADD COLUMN`` for every column of the tables that migration ``version`` added."""
    return [
        f"ALTER TABLE `{database}`.`{t.name}`{opts.on_cluster()} ADD COLUMN IF NOT EXISTS"
        f" `{c.name}` {c.type} COMMENT {_quote(c.comment)}"
        for t in TABLES
        for c in t.columns
        if c.since == version
    ]


def _m5(database: str, opts: EngineOptions) -> list[str]:
    # raw tables: content_hash (rows landed before read 0: "not known", a re-use is a duplicate);
    # dead_letters: raw_size / raw_sha256 / raw_truncated (older rows: 0 / '' / false)
    return _added_columns(database, opts, 5)


def _m6(database: str, opts: EngineOptions) -> list[str]:
    # tamper evidence: the hash chain over landed rows, its signed heads, the issued reports, and
    # what each chained table held before the chain began (empty for a new store)
    out = [_create_table(t, database, opts) for t in INTEGRITY_TABLES if t.since == 6]
    cols = "raw_table, kafka_topic, kafka_partition, max_offset, keys"
    for t in TABLES:
        if t.kind == "raw":
            out.append(
                f"INSERT INTO `{database}`.`chain_start` ({cols})"
                f" SELECT '{t.name}', kafka_topic, kafka_partition, max(kafka_offset), uniqExact(event_id)"
                f" FROM `{database}`.`{t.name}` GROUP BY kafka_topic, kafka_partition"
            )
    out.append(
        f"INSERT INTO `{database}`.`chain_start` ({cols}) SELECT 'alerts', '', kafka_partition,"
        f" max(kafka_offset), uniqExact(alert_id, version) FROM `{database}`.`alerts`"
        " GROUP BY kafka_partition"
    )
    return out


def _m7(database: str, opts: EngineOptions) -> list[str]:
    # attributable events: the source a gateway signature proved and the key that proved it
    # (rows landed before read ''; sinks.chain hashes these columns only when they are set, so
    # the rows chained before verify as they did)
    return _added_columns(database, opts, 7)


def _m8(database: str, opts: EngineOptions) -> list[str]:
    # the query audit log, under its own hash chain per server (sinks.audit)
    return [_create_table(t, database, opts) for t in INTEGRITY_TABLES if t.since == 8]


MIGRATIONS: tuple[tuple[int, str, Any], ...] = (
    (1, "initial tables", _m1),
    (2, "unit_facts recall index and its materialized views", _m2),
    (3, "alerts table; unit_tests.out_of_calibration", _m3),
    (4, "lot_units recall index (lot -> unit -> root), backfilled", _m4),
    (5, "raw tables: content_hash; dead_letters: raw_size, raw_sha256, raw_truncated", _m5),
    (6, "tamper evidence: event_chain, chain_heads, issued_reports, chain_start", _m6),
    (7, "attributable events: raw tables' verified_source, signing_key_id", _m7),
    (8, "query audit log: query_audit", _m8),
)


class _Client(Protocol):  # the part of clickhouse-connect's client we use
    def command(self, cmd: str, parameters: Any = None, settings: Any = None) -> Any: ...

    def query(self, query: str, parameters: Any = None, settings: Any = None) -> Any: ...


def applied_versions(client: _Client, database: str) -> dict[int, str]:
    rows = client.query(f"SELECT version, checksum FROM `{database}`.schema_migrations FINAL").result_rows
    return {int(v): str(c) for v, c in rows}


def apply_ddl(client: _Client, database: str, opts: EngineOptions | None = None) -> list[int]:
    """Create the database and apply pending migrations in order. Returns the versions applied now."""
    opts = opts or EngineOptions()
    _ident(database)
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`{opts.on_cluster()}")
    client.command(_create_table(_META, database, opts))
    done = applied_versions(client, database)
    applied: list[int] = []
    for version, name, build in MIGRATIONS:
        statements = build(database, opts)
        checksum = hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()
        if version in done:
            if done[version] != checksum:
                log.warning("migration %s (%s) changed since it was applied; not re-applied", version, name)
            continue
        for stmt in statements:
            client.command(stmt)
        client.command(
            f"INSERT INTO `{database}`.schema_migrations (version, name, checksum, applied_at) "
            "VALUES ({v:UInt32}, {n:String}, {c:String}, {t:DateTime64(3, 'UTC')})",
            parameters={"v": version, "n": name, "c": checksum, "t": datetime.now(UTC)},
        )
        applied.append(version)
        log.info("applied migration %s: %s", version, name)
    if applied:  # one part, in version order (the table is tiny)
        client.command(f"OPTIMIZE TABLE `{database}`.schema_migrations{opts.on_cluster()} FINAL")
    return applied


def render_markdown() -> str:
    """The table reference (docs/TABLES.md body) rendered from ``TABLES``."""
    out: list[str] = []
    for t in TABLES + DERIVED + ALERT_TABLES + INTEGRITY_TABLES:
        engine = t.engine + (f"({t.version_column})" if t.version_column else "")
        out.append(f"### `{t.name}`\n")
        out.append(f"{t.comment}.\n")
        meta = f"Engine `{engine}`, ORDER BY `{t.order_by}`"
        if t.partition_by:
            meta += f", PARTITION BY `{t.partition_by}`"
        out.append(meta + ".\n")
        out.append("| column | type | meaning |")
        out.append("| --- | --- | --- |")
        for c in t.columns:
            out.append(f"| `{c.name}` | `{c.type}` | {c.comment} |")
        out.append("")
    out.append("### Materialized views\n")
    out.append("| view | from | into | what |")
    out.append("| --- | --- | --- | --- |")
    for v in VIEWS:
        out.append(f"| `{v.name}` | `{v.source}` | `{v.target}` | {v.comment} |")
    out.append("")
    return "\n".join(out)
