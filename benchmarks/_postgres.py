"""A throwaway PostgreSQL peer for ``benchmarks.recall --peers postgres``.

The same plant's edges, as an ERP would keep them at its best, in a PostgreSQL started from
Debian's package (``apt-get install -y postgresql`` when no server binary is found), run as the
``postgres`` user (``runuser``) with its data directory under a temp dir, listening on a free
loopback port only (trust auth: nothing but this process can reach it):

* ``lot_consumption (lot_id, uii)``        a lot -> the units whose operations consumed it
* ``lot_lineage (input_lot, output_lot)``  a lot -> the lots made from it
* ``unit_parent (uii, parent)``            the CURRENT genealogy: each unit's latest parent
* ``unit_consumption (consumed, consumer)`` a serialised unit -> the unit that consumed it
* ``shipments (uii, customer_id, shipment_id)``

loaded with COPY (``fsync``/``synchronous_commit``/``full_page_writes`` off for the load only,
switched back on with a reload before any query is timed), then btree indexes on every walk
key in both directions (composite, so the walks are index-only scans), ``VACUUM ANALYZE``
(statistics and the visibility map index-only scans need). JIT is off: it only ever costs
milliseconds on queries of this size. Stopped (``pg_ctl stop -m fast``) and the temp dir
removed on exit, on an error, on Ctrl-C and on SIGTERM.

Each question is ONE ``WITH RECURSIVE`` statement (``UNION ALL`` with a depth guard, server-
side prepared), see ``RECALL_SQL`` / ``FORWARD_SQL`` / ``BACKWARD_SQL``.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MAX_DEPTH = 16  # the depth guard of every walk (traceline's MAX_HOPS is of the same order)

#: what is read from the traceline store and COPYed, per peer table
EXPORTS: dict[str, str] = {
    "lot_consumption": "SELECT DISTINCT lot_id, uii FROM lot_consumption",
    "lot_lineage": "SELECT DISTINCT input_lot_id AS input_lot, output_lot_id AS output_lot FROM lot_lineage",
    # latest genealogy row per unit (argMax over a tuple: a NULL parent - a root - must win too)
    "unit_parent": "SELECT uii, p.1 AS parent FROM (SELECT uii, argMax(tuple(parent_uii), seq) AS p"
    " FROM unit_genealogy GROUP BY uii) WHERE p.1 IS NOT NULL",
    "unit_consumption": "SELECT DISTINCT consumed_uii AS consumed, consumer_uii AS consumer"
    " FROM unit_consumption",
    "shipments": "SELECT uii, argMax(customer_id, event_time) AS customer_id,"
    " argMax(shipment_id, event_time) AS shipment_id FROM shipments GROUP BY uii",
}

DDL = """
CREATE UNLOGGED TABLE lot_consumption (lot_id text NOT NULL, uii text NOT NULL);
CREATE UNLOGGED TABLE lot_lineage (input_lot text NOT NULL, output_lot text NOT NULL);
CREATE UNLOGGED TABLE unit_parent (uii text NOT NULL, parent text NOT NULL);
CREATE UNLOGGED TABLE unit_consumption (consumed text NOT NULL, consumer text NOT NULL);
CREATE UNLOGGED TABLE shipments (uii text NOT NULL, customer_id text, shipment_id text);
"""
# How the server is tuned for point walks (what a DBA does for an OLTP genealogy): the planner
# cannot estimate the rows of a recursive CTE's work table (it guesses hundreds to thousands),
# so left alone it hashes whole tables (a seq scan of unit_parent / lot_consumption per call:
# 20-45 ms at 50k serials); with hash and merge joins off every step of a walk is an index
# lookup per row. Everything is in memory: random reads cost what sequential ones do.
WALK_SETTINGS = (
    "enable_hashjoin=off",
    "enable_mergejoin=off",
    "random_page_cost=1.1",
    "effective_cache_size=8GB",
)
# the walk keys, both directions, composite so the walks never touch the heap
INDEXES = """
CREATE UNIQUE INDEX lot_consumption_lot ON lot_consumption (lot_id, uii);
CREATE INDEX lot_consumption_uii ON lot_consumption (uii, lot_id);
CREATE UNIQUE INDEX lot_lineage_in ON lot_lineage (input_lot, output_lot);
CREATE INDEX lot_lineage_out ON lot_lineage (output_lot, input_lot);
CREATE UNIQUE INDEX unit_parent_uii ON unit_parent (uii) INCLUDE (parent);
CREATE INDEX unit_parent_parent ON unit_parent (parent, uii);
CREATE UNIQUE INDEX unit_consumption_consumed ON unit_consumption (consumed, consumer);
CREATE INDEX unit_consumption_consumer ON unit_consumption (consumer, consumed);
CREATE UNIQUE INDEX shipments_uii ON shipments (uii) INCLUDE (customer_id, shipment_id);
"""

# Recall of a lot: the lot and every lot made from it -> the units that consumed them -> the
# units that consumed those (serialised parts) -> each affected unit's current ancestors up to
# its root; one row per affected unit with its root and the customer of the closest shipped
# unit on its chain (the unit itself first).
_WALK = f"""
WITH RECURSIVE lots(lot_id, from_lot, depth) AS (
    SELECT %(lot)s::text, NULL::text, 0
  UNION ALL
    SELECT l.output_lot, l.input_lot, lots.depth + 1
    FROM lots JOIN lot_lineage l ON l.input_lot = lots.lot_id
    WHERE lots.depth < {MAX_DEPTH}
), hit(uii, lot_id, depth) AS (
    SELECT c.uii, c.lot_id, 0 FROM lots JOIN lot_consumption c ON c.lot_id = lots.lot_id
  UNION ALL
    SELECT uc.consumer, hit.lot_id, hit.depth + 1
    FROM hit JOIN unit_consumption uc ON uc.consumed = hit.uii
    WHERE hit.depth < {MAX_DEPTH}
), affected AS (
    SELECT uii, min(lot_id) AS lot_id FROM hit GROUP BY uii
), chain(uii, lot_id, node, path, shipment_id, customer_id, depth) AS (
    -- each affected unit up its current ancestors; the closest shipment is carried up
    SELECT a.uii, a.lot_id, a.uii, ARRAY[]::text[], s.shipment_id, s.customer_id, 0
    FROM affected a LEFT JOIN shipments s ON s.uii = a.uii
  UNION ALL
    SELECT chain.uii, chain.lot_id, p.parent, chain.path || p.parent,
           CASE WHEN chain.shipment_id IS NULL THEN s.shipment_id ELSE chain.shipment_id END,
           CASE WHEN chain.shipment_id IS NULL THEN s.customer_id ELSE chain.customer_id END,
           chain.depth + 1
    FROM chain JOIN unit_parent p ON p.uii = chain.node LEFT JOIN shipments s ON s.uii = p.parent
    WHERE chain.depth < {MAX_DEPTH}
)"""
# the top of each unit's chain is its root (DISTINCT ON: one sort, no per-unit aggregate)
RECALL_SQL = f"""{_WALK}
SELECT DISTINCT ON (uii) uii, node AS root_uii, customer_id FROM chain ORDER BY uii, depth DESC
"""
# forward trace: the same walk (no join back to a CTE: with hash joins off that is a nested
# loop over the CTE, 1.5 s for a 2,500-unit lot), each unit with the lot it was reached through, its whole
# current path (parent first, root last), its root and the closest shipment
FORWARD_SQL = f"""{_WALK}
SELECT DISTINCT ON (uii) uii, lot_id, path, node AS root_uii, shipment_id, customer_id
FROM chain ORDER BY uii, depth DESC
"""
# backward trace of a unit: recursive descent over the current children and the serialised
# units they consumed, then the lots those units consumed and the lots those were made from.
# One statement; rows tagged U (unit, parent, depth), L (unit, lot), I (lot, input lot, depth).
BACKWARD_SQL = f"""
WITH RECURSIVE tree(uii, parent, depth) AS (
    SELECT %(uii)s::text, NULL::text, 0
  UNION ALL
    SELECT e.child, e.parent, tree.depth + 1
    FROM tree JOIN (SELECT uii AS child, parent FROM unit_parent
                    UNION ALL SELECT consumed, consumer FROM unit_consumption) e ON e.parent = tree.uii
    WHERE tree.depth < {MAX_DEPTH}
), used AS (
    SELECT c.uii, c.lot_id FROM tree JOIN lot_consumption c ON c.uii = tree.uii
), up(lot_id, input_lot, depth) AS (
    SELECT l.output_lot, l.input_lot, 1 FROM (SELECT DISTINCT lot_id FROM used) u
      JOIN lot_lineage l ON l.output_lot = u.lot_id
  UNION ALL
    SELECT l.output_lot, l.input_lot, up.depth + 1
    FROM up JOIN lot_lineage l ON l.output_lot = up.input_lot
    WHERE up.depth < {MAX_DEPTH}
)
SELECT 'U' AS k, uii AS a, parent AS b, depth FROM tree
UNION ALL SELECT 'L', uii, lot_id, 0 FROM used
UNION ALL SELECT 'I', lot_id, input_lot, depth FROM up
"""


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] postgres: {msg}", file=sys.stderr, flush=True)


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        _log("no server binary: apt-get install -y postgresql")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True, env=env)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not found:
            raise SystemExit("postgresql installed, but no /usr/lib/postgresql/*/bin/postgres")
    return Path(found[-1]).parent  # the newest major version


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, text=True, **kw)


_REAPER = """
import os, shutil, subprocess, sys, time
pid, pg_ctl, data, tmp = int(sys.argv[1]), *sys.argv[2:]
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "stop", "-m", "fast", "-w", "-D", data],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
shutil.rmtree(tmp, ignore_errors=True)
"""


class _Terminated(BaseException):
    pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


@contextlib.contextmanager
def postgres_server() -> Iterator[dict[str, Any]]:
    """Start a private PostgreSQL; yields {"dsn", "version", "port"}; always stopped after."""
    import psycopg

    bindir = _bindir()
    pw = pwd.getpwnam("postgres")
    tmp = Path(tempfile.mkdtemp(prefix="traceline-pg-"))
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    data, log = tmp / "data", tmp / "server.log"
    port = _free_port()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    started = False
    try:
        _as_postgres(
            str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync", stdout=subprocess.DEVNULL,
        )  # fmt: skip
        # the load-only settings go in postgresql.conf, where ALTER SYSTEM (load()) overrides
        # them; a -c option would win over ALTER SYSTEM
        with open(data / "postgresql.conf", "a") as f:
            f.write("\n# traceline benchmark: load only, switched back on by load()\n")
            f.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        opts = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp}"
            " -c shared_buffers=512MB -c maintenance_work_mem=512MB -c work_mem=64MB"
            " -c max_wal_size=4GB -c jit=off -c max_parallel_workers_per_gather=0"
            f" -c {' -c '.join(WALK_SETTINGS)}"
        )
        # its own session: a Ctrl-C reaches this process only, which stops the server in order
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "start", "-w", "-t", "60",
             "-D", str(data), "-l", str(log), "-o", opts],
            check=True, text=True, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        started = True
        # chdb may take SIGTERM over, and SIGKILL skips every finally: a reaper in its own session
        # stops the server and removes the temp dir when this process is gone however it ended
        reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(os.getpid()), str(bindir / "pg_ctl"), str(data), str(tmp)],
            start_new_session=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        with psycopg.connect(dsn) as c:
            version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        _log(f"PostgreSQL {version} on 127.0.0.1:{port}, data in {data}")
        yield {"dsn": dsn, "version": version, "port": port, "bindir": str(bindir)}
    finally:
        try:
            if started:
                subprocess.run(
                    ["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "stop", "-m", "fast",
                     "-w", "-t", "60", "-D", str(data)],
                    check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                _log("stopped")
                reaper.kill()
                reaper.wait()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            signal.signal(signal.SIGTERM, old_term)


def load(conn: Any, export: Callable[[str], Any]) -> dict[str, Any]:
    """COPY the plant's edges in (``export(sql)`` -> a pyarrow Table from the traceline store),
    index, VACUUM ANALYZE, then fsync back on. Returns rows per table and the seconds taken."""
    import pyarrow.csv as pacsv

    t0 = time.perf_counter()
    rows: dict[str, int] = {}
    conn.autocommit = True
    conn.execute(DDL)
    for table, sql in EXPORTS.items():
        t = time.perf_counter()
        data = export(sql)
        buf = io.BytesIO()
        pacsv.write_csv(data, buf)
        cols = ", ".join(data.column_names)
        copy = f"COPY {table} ({cols}) FROM STDIN (FORMAT csv, HEADER true)"
        with conn.cursor() as cur, cur.copy(copy) as cp:
            view = buf.getbuffer()
            for i in range(0, len(view), 1 << 20):
                cp.write(view[i : i + (1 << 20)])
        rows[table] = data.num_rows
        _log(f"  COPY {table}: {data.num_rows:,} rows, {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    conn.execute(INDEXES)
    # logged tables from here on (as an ERP keeps them), then statistics and the visibility map
    for table in EXPORTS:
        conn.execute(f"ALTER TABLE {table} SET LOGGED")
    _log(f"  indexes + SET LOGGED: {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    conn.execute("VACUUM (ANALYZE, FREEZE)")
    conn.execute("ALTER SYSTEM SET fsync = on")
    conn.execute("ALTER SYSTEM SET synchronous_commit = on")
    conn.execute("ALTER SYSTEM SET full_page_writes = on")
    conn.execute("SELECT pg_reload_conf()")
    conn.execute("CHECKPOINT")
    time.sleep(0.2)
    fsync = conn.execute("SHOW fsync").fetchone()[0]
    _log(f"  VACUUM ANALYZE + checkpoint: {time.perf_counter() - t:.1f}s; fsync now {fsync}")
    return {"rows": rows, "load_s": round(time.perf_counter() - t0, 1), "fsync_after_load": fsync}
