"""ClickHouse side of traceline: versioned DDL, pure row building, the store handle, the ingest sink.

* ``sinks.tables`` - the table and view declarations (docs/TABLES.md is rendered from them).
* ``sinks.ddl``    - migrations, ``apply_ddl``, ``render_markdown``.
* ``sinks.rows``   - ``rows_for_batch`` / ``genealogy_rows``: events in, Arrow tables out (pure).
* ``sinks.store``  - ``Store.open(dsn)``, ``write_batch(tables, token)`` (idempotent), ``query``.
* ``sinks.ingest`` - ``SinkWorker``: Kafka batches in (running the intake), inserts, then commits.
* ``sinks.guards`` - what the sink refuses before landing: conflicting duplicates (content hash),
  implausible event times, dead letters too big to copy (kept by reference).
* ``sinks.ledger`` - ``SinkStats`` and the per-partition ledger (read = landed + accounted for).
"""

from sinks.ddl import EngineOptions, apply_ddl
from sinks.rows import RowBuildError, SinkRecord, genealogy_rows, rows_for_batch
from sinks.store import Store, StoreError, StoreQueryError, StoreUnavailableError

__all__ = [
    "EngineOptions",
    "apply_ddl",
    "RowBuildError",
    "SinkRecord",
    "genealogy_rows",
    "rows_for_batch",
    "Store",
    "StoreError",
    "StoreQueryError",
    "StoreUnavailableError",
]
