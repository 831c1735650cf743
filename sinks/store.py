"""The ClickHouse store handle: open (and migrate), idempotent batch writes, bound queries.

One client API, clickhouse-connect; the DSN picks the engine:

* ``chdb:///abs/path`` - embedded ClickHouse (chdb) in this process. One process owns a path;
  this is the only place traceline assumes one process sees all data.
* ``http(s)://user:pass@host:8123`` - a ClickHouse server or cluster.

Idempotent writes: ``write_batch(tables, token)`` inserts every table with
``insert_deduplication_token = f"{token}:{table}"`` (and ``insert_deduplicate = 1``,
``async_insert = 0``). The tables carry ``non_replicated_deduplication_window`` (see
``sinks.ddl``), so a replayed batch with the same token is dropped per table, also after a
restart (measured on chdb 4.4 / ClickHouse 26.9 and asserted in
tests/integration/test_store.py). The token must be a pure function of the batch content,
e.g. ``f"{topic}:{partition}:{first_offset}-{last_offset}"``, and batch boundaries must be
reproducible on replay. As a second line, raw and fact tables are ReplacingMergeTree keyed
with ``event_id``, so an event that arrives twice in *different* batches (a producer re-send)
collapses at merge time (exact queries: FINAL / LIMIT 1 BY event_id / DISTINCT).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from schemas.errors import InvalidInputError, TracelineError
from sinks.ddl import EngineOptions, apply_ddl

__all__ = [
    "Store",
    "check_time",
    "TIME_MIN",
    "TIME_MAX",
    "StoreError",
    "StoreMissingError",
    "StoreUnavailableError",
    "StoreQueryError",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# ClickHouse error codes worth retrying: the server is busy or briefly unreachable.
_TRANSIENT_CODES = {
    "159",  # TIMEOUT_EXCEEDED
    "164",  # READONLY (replica in read-only mode)
    "202",  # TOO_MANY_SIMULTANEOUS_QUERIES
    "209",  # SOCKET_TIMEOUT
    "210",  # NETWORK_ERROR
    "241",  # MEMORY_LIMIT_EXCEEDED
    "242",  # TABLE_IS_READ_ONLY
    "252",  # TOO_MANY_PARTS
    "285",  # TOO_FEW_LIVE_REPLICAS
    "319",  # UNKNOWN_STATUS_OF_INSERT
    "425",  # SYSTEM_ERROR
    "999",  # KEEPER_EXCEPTION
}

INSERT_SETTINGS = {"insert_deduplicate": 1, "async_insert": 0}

#: embedded engine (chdb): size of ClickHouse's uncompressed-block cache, which chdb leaves at 0
#: (``Store.open(uncompressed_cache_mb=)``, from TRACELINE_CHDB_UNCOMPRESSED_CACHE_MB; 0 turns it
#: off). Warm recall / trace reads
#: decompress the same blocks again and again; with the cache on, interleaved A/B at 10M
#: serials: recall_impact p50 82 -> 72 ms, backward_trace p50 85 -> 70 ms (docs/BENCHMARKS.md).
CHDB_UNCOMPRESSED_CACHE_MB = 1024


#: embedded engine (chdb): the Arrow results the queries read (``Store.query_arrow``) are moved
#: within this process, so ClickHouse's default LZ4 frame compression of Arrow output is pure
#: cost: a recall's facts statement (276 units with their paths) 38 -> 25 ms p50 without it,
#: interleaved (docs/BENCHMARKS.md, 2026-12-05). A session default of the embedded engine, so it
#: costs no per-call ``SET`` (clickhouse-connect's chdb backend brackets per-call settings with
#: a read of ``system.settings``, a ``SET`` and a restore: three more engine calls).
CHDB_SESSION_OPTIONS = {"output_format_arrow_compression_method": "none"}

#: embedded engine (chdb): its caches of marks and primary indexes, in MiB. ClickHouse sizes
#: each at 5 GiB by default, so a long-running ``traceline serve`` could grow by up to 15 GiB
#: of caches alone; at 10M serials every table's marks take a few MiB.
CHDB_MARK_CACHE_MB = 256
CHDB_PRIMARY_INDEX_CACHE_MB = 256
CHDB_INDEX_MARK_CACHE_MB = 64


def _chdb_client_args(mb: int, max_memory_mb: int = 0) -> dict[str, Any]:
    """The client arguments of an embedded engine: its session defaults and memory bounds (the
    uncompressed-block cache ``mb``, 0: off; the caches above; all of its memory at most
    ``max_memory_mb``, 0: ClickHouse's own limit, 90 % of RAM). A query over the limit fails
    with MEMORY_LIMIT_EXCEEDED, which the sink retries as a transient error."""
    options: dict[str, Any] = {
        **CHDB_SESSION_OPTIONS,
        "mark_cache_size": CHDB_MARK_CACHE_MB << 20,
        "primary_index_cache_size": CHDB_PRIMARY_INDEX_CACHE_MB << 20,
        "index_mark_cache_size": CHDB_INDEX_MARK_CACHE_MB << 20,
    }
    if max_memory_mb > 0:
        options["max_server_memory_usage"] = max_memory_mb << 20
    if mb <= 0:
        return {"chdb_options": options}
    options["uncompressed_cache_size"] = mb << 20
    return {"chdb_options": options, "settings": {"use_uncompressed_cache": 1}}


#: the instants a ``DateTime64(3, 'UTC')`` column holds; a bound parameter outside them is an
#: error in ClickHouse, so a caller's time outside them is bad input (``check_time``)
TIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)


def check_time(value: datetime | None, field: str) -> datetime | None:
    """``value`` as an aware UTC-comparable time the store can compare with (naive = UTC), or
    :class:`InvalidInputError` when it lies outside what the store's time columns hold."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not TIME_MIN <= value <= TIME_MAX:
        raise InvalidInputError(
            f"{field} {value.isoformat()} is outside the times the store holds "
            f"({TIME_MIN.date().isoformat()} .. {TIME_MAX.date().isoformat()})",
            field,
        )
    return value


class StoreError(TracelineError):
    """A ClickHouse operation failed for a reason a retry will not fix."""

    def __init__(self, reason: str, *, operation: str = "", table: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.operation = operation
        self.table = table


class StoreMissingError(StoreError, ValueError):
    """There is no traceline store where the settings point (a reader never creates one).

    A ``ValueError`` too: it is a wrong argument or setting (exit 2), not a failed service."""

    def __init__(self, dsn: str, database: str, why: str) -> None:
        super().__init__(
            f"no traceline store at {dsn} ({why}): check --data-dir / TRACELINE_DATA_DIR or "
            "--clickhouse-dsn / TRACELINE_CLICKHOUSE_DSN; `traceline serve` creates the store",
            operation="connect",
        )
        self.dsn = dsn
        self.database = database


def _has_database(client: Any, database: str) -> bool:
    rows = client.query(
        "SELECT count() FROM system.databases WHERE name = {d:String}", parameters={"d": database}
    ).result_rows
    return bool(rows and rows[0][0])


class StoreUnavailableError(StoreError):
    """ClickHouse did not accept the operation after all retries (transient failures)."""

    def __init__(
        self, reason: str, *, operation: str = "", table: str | None = None, attempts: int = 0
    ) -> None:
        super().__init__(reason, operation=operation, table=table)
        self.attempts = attempts


class StoreQueryError(StoreError):
    """A query was rejected (bad SQL, bad parameter, unknown table)."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError):  # connection refused / reset / timeouts
        return True
    if isinstance(exc, DatabaseError):
        msg = str(exc)
        return any(f"Code: {c}." in msg or f"code: {c}" in msg for c in _TRANSIENT_CODES)
    return isinstance(exc, ConnectionError | TimeoutError)


def _aware(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    # chdb may return DateTime64('UTC') values as naive datetimes; our columns are UTC.
    out = []
    for row in rows:
        if any(isinstance(v, datetime) and v.tzinfo is None for v in row):
            row = tuple(
                v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v for v in row
            )
        out.append(row)
    return out


class Store:
    """A handle on the traceline ClickHouse database. Build with :meth:`open`."""

    def __init__(
        self,
        client: Any,
        database: str,
        *,
        dsn: str = "",
        retries: int = 5,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.client = client
        self.database = database
        self.dsn = dsn
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # one handle may serve the sink thread and the API thread (an embedded store has one
        # owner process); every call on the client is serialised
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        dsn: str,
        database: str = "traceline",
        *,
        engine: EngineOptions | None = None,
        migrate: bool = True,
        retries: int = 5,
        backoff_s: float = 0.2,
        uncompressed_cache_mb: int = CHDB_UNCOMPRESSED_CACHE_MB,
        create: bool = True,
        max_memory_mb: int = 0,
    ) -> Store:
        """Connect, create the database and apply pending DDL migrations.

        ``uncompressed_cache_mb`` sizes the embedded engine's uncompressed-block cache (0: off)
        and ``max_memory_mb`` caps all of its memory (0: ClickHouse's own limit); both are
        ignored for a ClickHouse server, which has its own configuration. With
        ``create=False`` (readers: the CLI's queries) a store that does not exist yet is an
        error (:class:`StoreMissingError`), never a new empty one: an embedded store's
        directory must exist and hold the database."""
        import clickhouse_connect

        if dsn.startswith("chdb://"):
            path = Path(dsn[len("chdb://") :])
            if not path.is_dir():
                if not create:
                    raise StoreMissingError(dsn, database, f"{path} does not exist")
                path.mkdir(mode=0o700, parents=True)  # owner-only: programme data

        def connect() -> Any:
            extra = _chdb_client_args(uncompressed_cache_mb, max_memory_mb) if dsn.startswith("chdb:") else {}
            return clickhouse_connect.get_client(dsn=dsn, **extra)

        probe = cls(None, database, dsn=dsn, retries=retries, backoff_s=backoff_s)
        client = probe._retry("connect", connect)
        store = cls(client, database, dsn=dsn, retries=retries, backoff_s=backoff_s)
        try:
            if not create and not store._retry("connect", lambda: _has_database(client, database)):
                raise StoreMissingError(dsn, database, f"it holds no database {database!r}")
            if migrate:
                store._retry("migrate", lambda: apply_ddl(client, database, engine))
            client.database = database
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        # under the lock: a thread still inside a query (an alert engine that did not stop
        # within its join timeout) finishes it first; the client is never closed under a query
        with self._lock:
            if self.client is not None:
                try:
                    self.client.close()
                finally:
                    self.client = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ retry

    def _retry(self, operation: str, fn: Callable[[], T], table: str | None = None) -> T:
        delay = self.backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._lock:
                    return fn()
            except (DatabaseError, ConnectionError, TimeoutError) as exc:
                if not _is_transient(exc):
                    if operation in ("query", "command"):
                        raise StoreQueryError(str(exc), operation=operation, table=table) from exc
                    raise StoreError(str(exc), operation=operation, table=table) from exc
                if attempt > self.retries:
                    raise StoreUnavailableError(
                        f"{operation} failed after {attempt} attempts: {exc}",
                        operation=operation,
                        table=table,
                        attempts=attempt,
                    ) from exc
                log.warning(
                    "%s%s failed (attempt %d), retrying in %.2fs: %s",
                    operation,
                    f" {table}" if table else "",
                    attempt,
                    delay,
                    exc,
                )
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    # ------------------------------------------------------------------ writes

    def write_batch(self, tables: Mapping[str, pa.Table | Mapping[str, Any]], token: str) -> dict[str, int]:
        """Insert each table of a batch, idempotently. Returns rows sent per table.

        Call with the same ``token`` when replaying the same batch (after a crash or a failed
        attempt): rows ClickHouse already has are dropped, the rest is written. Commit Kafka
        offsets only after this returns.
        """
        if not token:
            raise ValueError("write_batch needs a non-empty, batch-stable token")
        sent: dict[str, int] = {}
        for name, data in tables.items():
            tbl = data if isinstance(data, pa.Table) else pa.table(dict(data))
            if tbl.num_rows == 0:
                continue
            settings: dict[str, Any] = dict(INSERT_SETTINGS, insert_deduplication_token=f"{token}:{name}")
            self._retry("insert", partial(self._insert_arrow, name, tbl, settings), table=name)
            sent[name] = tbl.num_rows
        return sent

    def _insert_arrow(self, table: str, data: pa.Table, settings: dict[str, Any]) -> Any:
        return self.client.insert_arrow(table, data, database=self.database, settings=settings)

    # ------------------------------------------------------------------ reads

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT with server-side bound parameters (``{name:Type}``); rows as dicts."""
        res = self._retry("query", lambda: self.client.query(sql, parameters=dict(params or {})))
        names = res.column_names
        return [dict(zip(names, row, strict=True)) for row in _aware(res.result_rows)]

    def query_rows(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and row tuples (for tables / CSV)."""
        res = self._retry("query", lambda: self.client.query(sql, parameters=dict(params or {})))
        return list(res.column_names), _aware(res.result_rows)

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        return self._retry("query", lambda: self.client.query_arrow(sql, parameters=dict(params or {})))

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._retry("command", lambda: self.client.command(sql, parameters=dict(params or {})))

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT count() AS n FROM `{self.database}`.`{table}`")[0]["n"])
