"""``make demo``: the whole product on one machine, end to end.

1. starts the local Kafka broker (assembled from Maven Central on first use);
2. runs ``traceline serve`` in this process: the faust stream worker (child process), the
   ClickHouse sink and the query API over the embedded store;
3. simulates a defense electronics plant and publishes it through the durable outbox;
4. waits until the genealogy and the store have caught up (consumer lag shown);
5. raises a nonconformance on the supplier lot that reached the most fielded systems;
6. prints the recall impact (counts by customer and status, then the first affected units
   with their paths) and how to query further; serves until Ctrl-C.

The API needs a token (``traceline.auth``): the demo creates an administrator token
``demo-admin`` (every programme; a re-run revokes the previous one) and prints how to use it
(``export TRACELINE_TOKEN=...``), so the commands it suggests just work.

Re-running it is harmless: the plant is deterministic for a seed, so re-published events
carry the same event ids and are deduplicated.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producers.publisher import Publisher
from producers.simulator import simulate
from queries import Trigger, recall_impact
from schemas.errors import InvalidInputError, TracelineError
from schemas.jsonform import parse_event
from schemas.kafka import pipeline_lag
from schemas.models import NonconformanceRaised
from traceline import localstack
from traceline.auth import TokenStore
from traceline.serve import ServeOptions, Server
from traceline.settings import load_settings

console = Console(width=max(Console().width, 140))


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m traceline.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None, help="local state (default: var/)")
    p.add_argument("--units", type=int, default=60_000, help="serialised units to simulate (~25 per system)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--port", type=int, default=8640, help="API port")
    p.add_argument("--no-wait", action="store_true", help="stop after printing the recall (do not serve)")
    return p.parse_args(argv)


def _pick_lot(store) -> tuple[str, str, str]:  # noqa: ANN001
    """The received supplier lot whose consumption reached the most shipped systems."""
    rows = store.query(
        """
        SELECT m.lot_id AS lot_id, any(m.supplier_id) AS supplier_id, any(m.supplier_lot) AS supplier_lot,
               uniqExact(c.uii) AS units
        FROM material_received AS m
        INNER JOIN lot_consumption AS c ON c.lot_id = m.lot_id
        GROUP BY m.lot_id
        ORDER BY units DESC, lot_id
        LIMIT 1
        """
    )
    if not rows:
        raise TracelineError("no lot consumption landed yet: nothing to recall")
    r = rows[0]
    return str(r["lot_id"]), str(r["supplier_id"]), str(r["supplier_lot"])


def _wait_for_nc(server: Server, ncr_id: str, timeout: float = 60.0) -> None:
    """Until the NC has landed and its alert is raised (the report and `alerts list` show them)."""
    assert server.store is not None
    deadline = time.monotonic() + timeout
    landed = alerted = False
    while time.monotonic() < deadline and not (landed and alerted):
        landed = bool(
            server.store.query(
                "SELECT 1 FROM nonconformances WHERE ncr_id = {n:String} LIMIT 1", {"n": ncr_id}
            )
        )
        alerted = bool(
            server.store.query(
                "SELECT 1 FROM alerts WHERE alert_id = {a:String} LIMIT 1", {"a": f"NC_RAISED:{ncr_id}"}
            )
        )
        time.sleep(0.25)
    what = "landed and alerted" if landed and alerted else "landed" if landed else "NOT landed yet"
    console.print(f"    {ncr_id}: {what}")


def _demo_token(tokens: TokenStore) -> str:
    """A fresh administrator token for the demo (the previous demo token revoked)."""
    with contextlib.suppress(InvalidInputError):  # none yet
        tokens.revoke("demo-admin")
    return tokens.create("demo-admin", "administrator", "*")[1]


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    s = load_settings(data_dir=args.data_dir)
    console.rule("[bold]traceline demo")
    token = _demo_token(TokenStore(s.tokens_path))
    console.print("1/6 starting the local Kafka broker (first run downloads Kafka's jars from Maven Central)")
    bootstrap = s.kafka.bootstrap or localstack.up(s.kafka_dir)
    console.print(f"    Kafka at {bootstrap}")

    console.print(f"2/6 starting traceline serve: stream worker, sink, API on http://127.0.0.1:{args.port}")
    server = Server(s, ServeOptions(bootstrap, port=args.port))
    server.start()
    try:
        console.print(f"3/6 simulating a plant of ~{args.units:,} serialised units and publishing it")
        t0 = time.monotonic()
        pub = Publisher(bootstrap, s.outbox_path, topic=s.kafka.events_topic)
        n = 0
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("    units", total=args.units)
            sim = simulate(args.units, args.seed, progress=lambda u: progress.update(task, completed=u))
            batch = []
            for ev in sim:
                batch.append(parse_event(ev))
                if len(batch) >= 5000:
                    pub.publish_many(batch)
                    n += len(batch)
                    batch = []
            pub.publish_many(batch)
            n += len(batch)
            progress.update(task, completed=args.units)
        remaining = pub.close(120)
        st = sim.stats
        console.print(
            f"    {n:,} events published in {time.monotonic() - t0:.1f}s ({remaining} pending): "
            f"{st.units:,} units, {st.systems:,} systems ({st.systems_shipped:,} shipped), "
            f"{st.lots_received:,} lots received, {st.reworks} reworks, {st.tests_failed} failed tests"
        )

        console.print("4/6 waiting until the genealogy and the store have caught up")
        t1 = time.monotonic()
        quiet_since = None
        while True:
            lag = pipeline_lag(bootstrap, s.topics, app_id=s.app_id, sink_group=s.sink_group)
            stats = server.sink.stats if server.sink else None
            console.print(
                f"    lag: stream worker {lag['streams']:,}, sink {lag['sink']:,}; "
                f"landed {stats.events_landed if stats else 0:,} events",
                end="\r",
            )
            if lag["streams"] == 0 and lag["sink"] == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 3:
                    break
            else:
                quiet_since = None
            if server.sink_error:
                raise TracelineError(f"the sink stopped: {server.sink_error}")
            time.sleep(1)
        console.print(f"\n    caught up in {time.monotonic() - t1:.1f}s")

        assert server.store is not None
        lot, supplier, supplier_lot = _pick_lot(server.store)
        console.print(
            f"5/6 raising a nonconformance on supplier lot {supplier}:{supplier_lot} (plant lot {lot})"
        )
        ncr = NonconformanceRaised(
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"traceline-demo-ncr:{lot}")),
            event_time=datetime.now(UTC),
            source="demo-quality",
            site="plant-a",
            program="PRG-AESA",
            ncr_id=f"NCR-DEMO-{lot}",
            target_kind="SUPPLIER_LOT",
            target_id=f"{supplier}:{supplier_lot}",
            severity="CRITICAL",
            disposition="PENDING",
            description="Supplier notified a latent defect in this lot: recall everything made from it",
        )
        pub = Publisher(bootstrap, s.outbox_path, topic=s.kafka.events_topic)
        pub.publish(ncr)
        pub.close(30)
        _wait_for_nc(server, ncr.ncr_id)

        console.print("6/6 recall impact")
        t2 = time.perf_counter()
        impact = recall_impact(server.store, Trigger("supplier_lot", f"{supplier}:{supplier_lot}"))
        ms = (time.perf_counter() - t2) * 1000
        units = impact.units
        console.print(
            f"    {len(units):,} units hold a part from this lot now, in {len(impact.systems):,} final "
            f"systems; {len(impact.past)} held one in the past (rework). Query took {ms:.0f} ms."
        )
        for counts, label in ((impact.by_customer, "customer"), (impact.by_status, "status")):
            t = Table(title=f"affected units by {label}")
            t.add_column(label)
            t.add_column("units", justify="right")
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1]):
                t.add_row(str(k), f"{v:,}")
            console.print(t)
        t = Table(title="first affected units")
        for c in ("unit", "status", "final system", "customer", "path from the lot"):
            t.add_column(c, overflow="fold")
        for u in units[:15]:
            t.add_row(u.uii, u.status, u.root_uii, str(u.customer_id or ""), " -> ".join(u.trace))
        console.print(t)
        console.rule("query further")
        # absolute paths: the commands work from any directory
        exe = Path(sys.executable).parent / "traceline"
        dd = f" --data-dir {s.data_dir.resolve()}"
        system = units[0].root_uii if units else "PN:SN"
        console.print(
            "  The API and the CLI need a token; the demo made an administrator token (every programme)."
            f" In the shell you query from:\n    export TRACELINE_TOKEN={token}\n"
            f"  (more: {exe} token create --name NAME --role analyst --programs PRG-AESA{dd})",
            soft_wrap=True,
            highlight=False,
        )
        console.print(
            f"  {exe} recall --supplier-lot {supplier}:{supplier_lot}{dd}\n"
            f"  {exe} trace forward --lot {lot}{dd} --csv > recall.csv\n"
            f"  {exe} trace backward --serial {system}{dd}\n"
            f"  {exe} recall report --lot {lot} --format pdf --prepared-by 'Your Name'{dd}\n"
            f"  {exe} alerts list{dd}\n"
            f'  curl -H "Authorization: Bearer $TRACELINE_TOKEN" '
            f"'http://127.0.0.1:{args.port}/recall?kind=lot&id={lot}'   (API docs: /docs)\n"
            f"  the analyst workbench in a browser: http://127.0.0.1:{args.port}/ (sign in with the token)",
            soft_wrap=True,
            highlight=False,
        )
        if args.no_wait:
            return 0
        console.print("[bold]serving; Ctrl-C stops everything.")
        server.run_forever()
        return 0
    except KeyboardInterrupt:
        return 0
    except TracelineError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 3
    finally:
        server.stop()
        console.print("stopped (the Kafka broker keeps running: `make stack-down` stops it)")


if __name__ == "__main__":
    sys.exit(main())
