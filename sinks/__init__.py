"""ClickHouse side of traceline: versioned DDL, pure row building, the store handle.

* ``sinks.ddl``   - table declarations, migrations, ``apply_ddl``; docs/TABLES.md is rendered from it.
* ``sinks.rows``  - ``rows_for_batch`` / ``genealogy_rows``: events in, Arrow tables out (pure).
* ``sinks.store`` - ``Store.open(dsn)``, ``write_batch(tables, token)`` (idempotent), ``query``.
"""

from sinks.ddl import EngineOptions, apply_ddl
from sinks.rows import RowBuildError, SinkRecord, genealogy_rows, rows_for_batch, uii
from sinks.store import Store, StoreError, StoreQueryError, StoreUnavailableError

__all__ = [
    "EngineOptions",
    "apply_ddl",
    "RowBuildError",
    "SinkRecord",
    "genealogy_rows",
    "rows_for_batch",
    "uii",
    "Store",
    "StoreError",
    "StoreQueryError",
    "StoreUnavailableError",
]
