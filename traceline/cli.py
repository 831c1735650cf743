"""The ``traceline`` command line.

Thin wiring only: it builds the settings once, then calls the packages that hold the logic.
Exit codes: 0 ok, 1 some input was invalid (reported line by line), 2 wrong arguments,
3 a service (Kafka / ClickHouse) is unreachable or events are still waiting in the outbox.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas.errors import TracelineError
from traceline.cli_options import (
    BenchOpt,
    BootstrapOpt,
    DataDirOpt,
    DsnOpt,
    FromOpt,
    LotOpt,
    OperatorOpt,
    RegistryOpt,
    SerialOpt,
    StationOpt,
    SupplierLotOpt,
    SupplierOpt,
    ToOpt,
    TopicOpt,
    as_utc,
    err,
    fail,
    out,
    settings_for,
    store_settings,
    trigger_from_options,
)
from traceline.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    help="traceline: serial- and lot-level traceability over Kafka and ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
)
stack_app = typer.Typer(help="The local Kafka broker (KRaft, from Maven Central jars, no Docker).")
app.add_typer(stack_app, name="stack")

# shared with the command modules beside this one (cli_report, cli_alerts)
_settings = settings_for
_fail = fail


def resolve_bootstrap(settings: Settings) -> str:
    """The configured bootstrap, else the running local stack's, else a clear error."""
    if settings.kafka.bootstrap:
        return settings.kafka.bootstrap
    from traceline import localstack

    state = localstack.status(settings.kafka_dir)
    if state:
        return str(state["bootstrap"])
    raise _fail(
        "no Kafka broker configured and the local one is not running: "
        "run `traceline stack up` (or `make stack-up`), or set TRACELINE_KAFKA_BOOTSTRAP / --bootstrap"
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


# -- stack ------------------------------------------------------------------------------
@stack_app.command("up")
def stack_up(
    data_dir: DataDirOpt = None,
    port: Annotated[
        int | None, typer.Option(help="broker port (default: a free one, kept across restarts)")
    ] = None,
) -> None:
    """Assemble Kafka from Maven Central (once), format KRaft storage, start the broker."""
    from traceline import localstack

    s = _settings(data_dir=data_dir)
    try:
        bootstrap = localstack.up(s.kafka_dir, port=port)
    except localstack.LocalStackError as exc:
        raise _fail(str(exc)) from exc
    out.print(f"Kafka is up: bootstrap [bold]{bootstrap}[/] (logs: {s.kafka_dir / 'kafka.log'})")
    out.print(f"export TRACELINE_KAFKA_BOOTSTRAP={bootstrap}")


@stack_app.command("down")
def stack_down(data_dir: DataDirOpt = None) -> None:
    """Stop the local broker (also cleans up a stale one)."""
    from traceline import localstack

    s = _settings(data_dir=data_dir)
    localstack.down(s.kafka_dir)
    out.print("Kafka is down.")


@stack_app.command("status")
def stack_status(data_dir: DataDirOpt = None) -> None:
    """Say whether the local broker runs, and where."""
    from traceline import localstack

    s = _settings(data_dir=data_dir)
    state = localstack.status(s.kafka_dir)
    if not state:
        out.print("Kafka is not running.")
        raise typer.Exit(3)
    out.print(json.dumps(state))


# -- publish ----------------------------------------------------------------------------
def _open_input(file: str) -> BinaryIO:
    # bytes: a line that is not UTF-8 is reported as an invalid line, not a crash
    if file == "-":
        return sys.stdin.buffer
    p = Path(file)
    if not p.is_file():
        raise _fail(f"no such file: {file}", code=2)
    return p.open("rb")


@app.command()
def publish(
    file: Annotated[str, typer.Option("--file", "-f", help="JSON Lines file of events, or - for stdin")],
    bootstrap: BootstrapOpt = None,
    topic: TopicOpt = None,
    data_dir: DataDirOpt = None,
    schema_registry: RegistryOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for Kafka to acknowledge")] = 60.0,
    max_errors_shown: Annotated[int, typer.Option(help="invalid lines to print in full")] = 50,
) -> None:
    """Validate and publish events from a JSON Lines file (see schemas/README.md).

    Each valid event is stored in the local outbox before it is sent, so nothing is lost
    when the broker is down: it is delivered by this or the next run. Invalid lines are
    reported with their line number and reason and do not stop the valid ones.
    """
    from producers.publisher import Publisher
    from schemas.jsonform import parse_line
    from schemas.serde import AvroSerde

    s = _settings(bootstrap, data_dir, topic, schema_registry)
    stream = _open_input(file)  # a missing file is a usage error (2), checked before Kafka
    boot = resolve_bootstrap(s)
    size = Path(file).stat().st_size if file != "-" else None
    serde = AvroSerde(registry_url=s.schema_registry.url, topic=s.kafka.events_topic)
    pub = Publisher(boot, s.outbox_path, topic=s.kafka.events_topic, serde=serde)
    if len(pub.outbox):
        err.print(
            f"{len(pub.outbox)} events from an earlier run are pending in the outbox; sending them first"
        )
    bad = valid = 0
    batch: list[Any] = []
    try:
        with _progress() as progress:
            task = progress.add_task("publishing", total=size, rate="")
            for lineno, line in enumerate(stream, 1):
                if size is not None:
                    progress.update(task, advance=len(line), rate=f"{valid} events")
                if not line.strip():
                    continue
                try:
                    batch.append(parse_line(line))
                except TracelineError as exc:
                    bad += 1
                    if bad <= max_errors_shown:
                        # the reason quotes the input: never interpret it as rich markup
                        err.print(f"line {lineno}: {exc}", markup=False, highlight=False)
                    continue
                valid += 1
                if len(batch) >= 2000:
                    pub.publish_many(batch)
                    batch = []
            if batch:
                pub.publish_many(batch)
            pub.flush(timeout, progress=lambda n: progress.update(task, rate=f"{n} delivered"))
    finally:
        remaining = pub.close(0)  # flushed above; stops the producer, undelivered rows stay on disk
        if stream is not sys.stdin.buffer:
            stream.close()
    if bad > max_errors_shown:
        err.print(f"... and {bad - max_errors_shown} more invalid lines")
    out.print(f"{valid} valid events stored, {pub.delivered_total} delivered to Kafka, {bad} invalid lines")
    if remaining:
        raise _fail(
            f"{remaining} events are still in the outbox ({s.outbox_path}); Kafka at {boot} did not "
            f"acknowledge them in {timeout:.0f}s ({pub.last_error or 'no answer'}). They are safe on disk "
            "and go out with the next `traceline publish` or `traceline outbox flush`."
        )
    if bad:
        raise typer.Exit(1)


@app.command("outbox")
def outbox_cmd(
    action: Annotated[str, typer.Argument(help="status | flush")] = "status",
    bootstrap: BootstrapOpt = None,
    data_dir: DataDirOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for Kafka")] = 60.0,
) -> None:
    """Show or deliver the events waiting in the local outbox."""
    from producers.outbox import Outbox
    from producers.publisher import Publisher

    s = _settings(bootstrap, data_dir)
    if action == "status":
        box = Outbox(s.outbox_path)
        out.print(f"{len(box)} events pending in {s.outbox_path}")
        box.close()
        return
    if action != "flush":
        raise _fail(f"unknown action {action!r}: use status or flush", code=2)
    pub = Publisher(resolve_bootstrap(s), s.outbox_path, topic=s.kafka.events_topic)
    remaining = pub.close(timeout)
    out.print(f"{pub.delivered_total} delivered, {remaining} still pending")
    if remaining:
        raise typer.Exit(3)


# -- simulate ---------------------------------------------------------------------------
@app.command()
def simulate(
    units: Annotated[int, typer.Option("--units", "-n", min=1, help="serialised units to make (all levels)")],
    seed: Annotated[int, typer.Option(help="random seed: same seed, same plant")] = 0,
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="write JSON Lines here (- for stdout)")
    ] = None,
    do_publish: Annotated[
        bool, typer.Option("--publish", help="publish to Kafka through the outbox")
    ] = False,
    bootstrap: BootstrapOpt = None,
    topic: TopicOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Simulate a defense electronics plant: lots, components, assemblies, tests, rework, shipments."""
    from producers.simulator import simulate as run_simulation
    from producers.simulator import write_jsonl

    if (out_file is None) == (not do_publish):
        raise _fail("give exactly one of --out FILE or --publish", code=2)
    with _progress() as progress:
        task = progress.add_task("simulating", total=units, rate="")

        def tick(done: int) -> None:
            progress.update(task, completed=min(done, units))

        events = run_simulation(units, seed, progress=tick)
        if out_file is not None:
            n = write_jsonl(events, sys.stdout if str(out_file) == "-" else out_file)
            progress.update(task, completed=units)
            err.print(f"{n} events written to {out_file}")
            return
        from producers.publisher import Publisher
        from schemas.jsonform import parse_event

        s = _settings(bootstrap, data_dir, topic)
        pub = Publisher(resolve_bootstrap(s), s.outbox_path, topic=s.kafka.events_topic)
        n = 0
        batch = []
        for ev in events:
            batch.append(parse_event(ev))
            if len(batch) >= 5000:
                pub.publish_many(batch)
                n += len(batch)
                batch = []
        if batch:
            pub.publish_many(batch)
            n += len(batch)
        remaining = pub.close(120)
        progress.update(task, completed=units)
    err.print(f"{n} events published, {remaining} still pending in the outbox")
    if remaining:
        raise typer.Exit(3)


# -- serve ------------------------------------------------------------------------------
@app.command()
def serve(
    bootstrap: BootstrapOpt = None,
    data_dir: DataDirOpt = None,
    topic: TopicOpt = None,
    schema_registry: RegistryOpt = None,
    dsn: Annotated[
        str | None, typer.Option("--clickhouse-dsn", help="[env TRACELINE_CLICKHOUSE_DSN]")
    ] = None,
    host: Annotated[str, typer.Option(help="API bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8640,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="do not run the stream processors")] = False,
    no_sink: Annotated[bool, typer.Option("--no-sink", help="do not run the ClickHouse sink")] = False,
) -> None:
    """Run the stream processors, the ClickHouse sink and the query API (Ctrl-C stops all)."""
    from traceline.serve import ServeOptions, Server

    s = _settings(bootstrap, data_dir, topic, schema_registry)
    if dsn:
        s.clickhouse.dsn = dsn
    boot = resolve_bootstrap(s)
    server = Server(
        s, ServeOptions(boot, host=host, port=port, with_worker=not no_worker, with_sink=not no_sink)
    )
    server.start()
    err.print(
        f"traceline serving: Kafka {boot}, ClickHouse {s.clickhouse_dsn}, API http://{host}:{port} "
        f"(OpenAPI at /docs); stream worker log: {s.data_dir / 'streams.log'}"
    )
    server.run_forever()


# -- queries ----------------------------------------------------------------------------
trace_app = typer.Typer(help="Forward and backward traces.")
app.add_typer(trace_app, name="trace")

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output for tools")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="CSV output (one row per affected unit)")]


def _query(settings: Settings, path: str, params: dict[str, Any], local: Any) -> Any:
    """Through the running server's API if there is one (it owns an embedded store), else directly."""
    from traceline.serve import serve_state

    state = serve_state(settings.data_dir)
    if state:
        import httpx

        try:
            r = httpx.get(
                state["url"] + path, params={k: v for k, v in params.items() if v is not None}, timeout=60
            )
        except httpx.HTTPError as exc:
            raise _fail(f"the running server at {state['url']} did not answer: {exc}") from exc
        if r.status_code >= 400:
            raise _fail(
                f"{r.status_code}: {r.json().get('detail', r.text)}", code=2 if r.status_code == 422 else 3
            )
        return r.json()
    from queries import to_jsonable
    from sinks.store import Store

    try:
        store = Store.open(settings.clickhouse_dsn, settings.clickhouse.database)
    except TracelineError as exc:
        raise _fail(f"cannot open ClickHouse at {settings.clickhouse_dsn}: {exc}") from exc
    try:
        return to_jsonable(local(store))
    except ValueError as exc:
        raise _fail(str(exc), code=2) from exc
    finally:
        store.close()


_UNIT_COLUMNS = [
    "uii",
    "status",
    "root_uii",
    "parent_uii",
    "customer_id",
    "destination_site",
    "site",
    "trace",
]


def _emit_units(result: dict[str, Any], as_json: bool, as_csv: bool, title: str, limit: int) -> None:
    if as_json:
        out.print_json(data=result)
        return
    units = result.get("units", [])
    if as_csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(_UNIT_COLUMNS + ["now_or_past"])
        for u in units:
            w.writerow([_cell(u.get(c)) for c in _UNIT_COLUMNS] + ["now"])
        for p in result.get("past", []):
            w.writerow(
                [
                    p.get("uii"),
                    p.get("status"),
                    p.get("root_uii"),
                    "",
                    p.get("customer_id"),
                    "",
                    "",
                    f"held {p.get('child_uii')} until {p.get('removed_at')}",
                    "past",
                ]
            )
        return
    from rich.table import Table

    for key, label in (("by_status", "status"), ("by_customer", "customer"), ("by_site", "site")):
        counts = result.get(key)
        if counts:
            t = Table(title=f"{title}: units by {label}")
            t.add_column(label)
            t.add_column("units", justify="right")
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1]):
                t.add_row(str(k), str(v))
            out.print(t)
    t = Table(title=f"{title}: {len(units)} affected units (part installed now)")
    for c in ("uii", "status", "final system", "customer", "path from trigger"):
        t.add_column(c)
    for u in units[:limit]:
        t.add_row(
            u["uii"],
            u.get("status", ""),
            u.get("root_uii", ""),
            str(u.get("customer_id") or ""),
            " -> ".join(u.get("trace") or []),
        )
    out.print(t)
    if len(units) > limit:
        out.print(f"... {len(units) - limit} more (use --json or --csv for all)")
    past = result.get("past", [])
    if past:
        out.print(f"{len(past)} units held an affected part in the PAST (removed in rework); see --json")


def _cell(v: Any) -> str:
    if isinstance(v, list):
        return " -> ".join(map(str, v))
    return "" if v is None else str(v)


@trace_app.command("forward")
def trace_forward(
    lot: Annotated[str, typer.Option("--lot", help="lot_id")],
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    limit: Annotated[int, typer.Option(help="rows to print")] = 50,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
) -> None:
    """Everything made from a lot: lots, units, assemblies, systems, customers."""
    from queries import forward_trace

    s = store_settings(data_dir, dsn)
    result = _query(s, "/trace/forward", {"lot": lot}, lambda st: forward_trace(st, lot))
    _emit_units(result, as_json, as_csv, f"lot {lot}", limit)


@trace_app.command("backward")
def trace_backward(
    serial: Annotated[
        str, typer.Option("--serial", help="UII '<part_number>:<serial_number>' of a unit or system")
    ],
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
) -> None:
    """Every component of a unit or system, with lots, operations and tests."""
    from queries import backward_trace

    s = store_settings(data_dir, dsn)
    result = _query(s, "/trace/backward", {"serial": serial}, lambda st: backward_trace(st, serial))
    if as_json:
        out.print_json(data=result)
        return
    from rich.table import Table

    t = Table(title=f"{serial}: {len(result['units'])} units in its tree (final system {result['root_uii']})")
    for c in ("uii", "depth", "parent"):
        t.add_column(c)
    for u in result["units"]:
        t.add_row(u["uii"], str(u.get("depth", "")), str(u.get("parent_uii") or ""))
    out.print(t)
    out.print(
        f"{len(result['lots'])} lot consumptions, {len(result['operations'])} operations, "
        f"{len(result['tests'])} tests (use --json for all)"
    )


recall_app = typer.Typer(
    help="Recall impact of a trigger (`traceline recall --lot L`); `recall report` writes the audit report.",
    invoke_without_command=True,
)
app.add_typer(recall_app, name="recall")


@recall_app.callback()
def recall(
    ctx: typer.Context,
    lot: LotOpt = None,
    supplier_lot: SupplierLotOpt = None,
    supplier: SupplierOpt = None,
    station: StationOpt = None,
    operator: OperatorOpt = None,
    bench: BenchOpt = None,
    serial: SerialOpt = None,
    start: FromOpt = None,
    end: ToOpt = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    limit: Annotated[int, typer.Option(help="rows to print")] = 50,
    data_dir: DataDirOpt = None,
    dsn: DsnOpt = None,
) -> None:
    """Recall impact of a trigger: affected units now and in the past, by customer and status."""
    if ctx.invoked_subcommand is not None:
        return  # `recall report ...`: the subcommand takes its own trigger options
    from queries import Trigger, recall_impact

    kind, ident = trigger_from_options(
        lot=lot,
        supplier_lot=supplier_lot,
        supplier=supplier,
        station=station,
        operator=operator,
        bench=bench,
        serial=serial,
    )
    start_utc, end_utc = as_utc(start), as_utc(end)
    s = store_settings(data_dir, dsn)
    params = {
        "kind": kind,
        "id": ident,
        "from": start_utc.isoformat() if start_utc else None,
        "to": end_utc.isoformat() if end_utc else None,
    }
    result = _query(
        s, "/recall", params, lambda st: recall_impact(st, Trigger(kind, ident, start_utc, end_utc))
    )
    _emit_units(result, as_json, as_csv, f"recall {kind} {ident}", limit)


# -- reports ----------------------------------------------------------------------------
from traceline.cli_report import drill_command, report_command  # noqa: E402

app.command("report")(report_command)
recall_app.command("report")(report_command)  # the same command as `traceline recall report`
app.command("drill")(drill_command)

from traceline.cli_alerts import alerts_app  # noqa: E402

app.add_typer(alerts_app, name="alerts")


def main() -> None:
    try:
        app()
    except TracelineError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(3)


if __name__ == "__main__":
    main()
