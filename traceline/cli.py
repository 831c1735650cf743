"""The ``traceline`` command line.

Thin wiring only: it builds the settings once, then calls the packages that hold the logic.
Exit codes: 0 ok, 1 some input was invalid (reported line by line), 2 wrong arguments,
3 a service (Kafka / ClickHouse) is unreachable or events are still waiting in the outbox.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from producers.outbox import Outbox
from producers.publisher import Publisher, Row
from producers.simulator import simulate as run_simulation
from producers.simulator import write_jsonl
from schemas.errors import TracelineError
from schemas.jsonform import parse_event, parse_line
from schemas.serde import AvroSerde
from schemas.signing import GatewayKey
from traceline import localstack
from traceline.backend import local_bootstrap
from traceline.cli_alerts import alerts_app
from traceline.cli_common import (
    BootstrapOpt,
    DataDirOpt,
    DsnOpt,
    RegistryOpt,
    TopicOpt,
    err,
    fail,
    handled,
    out,
    progress,
    resolve_bootstrap,
    settings_for,
)
from traceline.cli_gateway_key import gateway_key_app
from traceline.cli_query import recall_app, trace_app
from traceline.cli_report import drill_command, report_command
from traceline.cli_sql_access import sql_access_command
from traceline.cli_status import status_command
from traceline.cli_token import token_app
from traceline.cli_verify import report_verify_command, verify_command
from traceline.cli_worker import worker_app
from traceline.errors import EXIT_INVALID_EVENTS, EXIT_SERVICE, EXIT_USAGE, classify
from traceline.localstack_secure import SecureStackError
from traceline.localstack_secure import load as load_secure
from traceline.serve import ServeOptions, Server
from traceline.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    help="traceline: serial- and lot-level traceability over Kafka and ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
)
stack_app = typer.Typer(help="The local Kafka broker (KRaft, from Maven Central jars, no Docker).")
app.add_typer(stack_app, name="stack")


# -- stack ------------------------------------------------------------------------------
@stack_app.command("up")
@handled
def stack_up(
    data_dir: DataDirOpt = None,
    port: Annotated[
        int | None, typer.Option(help="broker port (default: a free one, kept across restarts)")
    ] = None,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="SASL_SSL (SCRAM-SHA-512) with locally generated TLS certificates, ACLs (gateways may only "
            "write the events topic), no topic auto-creation; only for a new data dir",
        ),
    ] = False,
) -> None:
    """Assemble Kafka from Maven Central (once), format KRaft storage, start the broker."""
    s = settings_for(data_dir=data_dir)
    try:
        bootstrap = localstack.up(s.kafka_dir, port=port, secure=secure, events_topic=s.kafka.events_topic)
    except (localstack.LocalStackError, SecureStackError) as exc:
        raise fail(str(exc)) from exc
    out.print(f"Kafka is up: bootstrap [bold]{bootstrap}[/] (logs: {s.kafka_dir / 'kafka.log'})")
    out.print(f"export TRACELINE_KAFKA_BOOTSTRAP={bootstrap}")
    material = load_secure(s.kafka_dir)
    if material is not None:
        out.print(
            "SASL_SSL with ACLs. traceline's own commands on this data dir use the [bold]pipeline[/] "
            "principal by themselves; elsewhere load its settings: "
            f"[bold]set -a; . {material.env_file('pipeline')}; set +a[/]. "
            f"A gateway's (write the events topic only): {material.env_file('gateway')}. "
            f"CA certificate: {material.ca_file}"
        )


@stack_app.command("down")
@handled
def stack_down(data_dir: DataDirOpt = None) -> None:
    """Stop the local broker (also cleans up a stale one)."""
    s = settings_for(data_dir=data_dir)
    localstack.down(s.kafka_dir)
    out.print("Kafka is down.")


@stack_app.command("status")
@handled
def stack_status(data_dir: DataDirOpt = None) -> None:
    """Say whether the local broker runs, and where."""
    s = settings_for(data_dir=data_dir)
    state = localstack.status(s.kafka_dir)
    if not state:
        out.print("Kafka is not running.")
        raise typer.Exit(EXIT_SERVICE)
    out.print(json.dumps(state))


# -- publish ----------------------------------------------------------------------------
def _open_input(file: str) -> BinaryIO:
    # bytes: a line that is not UTF-8 is reported as an invalid line, not a crash
    if file == "-":
        return sys.stdin.buffer
    p = Path(file)
    if not p.is_file():
        raise fail(f"no such file: {file}", EXIT_USAGE)
    return p.open("rb")


_DELIVER_LATER = (
    "start a broker (`traceline stack up`, or set TRACELINE_KAFKA_BOOTSTRAP / --bootstrap) and deliver "
    "them with `traceline outbox flush`"
)


def _kafka_target(s: Settings) -> tuple[str | None, str | None]:
    """Where to send: ``(bootstrap, None)`` for a configured broker or the running local one;
    with neither, the local broker's last bootstrap (or None if it never ran) and why nothing
    answers there now. Never an error: publishing stores the events either way."""
    boot = local_bootstrap(s)
    if boot:
        return boot, None
    last = localstack.last_bootstrap(s.kafka_dir)
    if last:
        return last, f"no Kafka broker is configured and the local one (last on {last}) is stopped"
    return None, "no Kafka broker is configured and the local one never ran"


def _unreachable(pub: Publisher, why: str | None) -> str | None:
    """``why`` unless the broker answers after all (a quick probe), None if there is no reason."""
    if why is None or pub.bootstrap is None:
        return why
    try:
        pub.check_broker(timeout=3.0)
    except TracelineError:
        return why
    return None


class _Notes:
    """Per-line notes on stderr, at most ``limit`` of each kind, then a count of the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def add(self, kind: str, text: str) -> None:
        n = self.counts[kind] = self.counts.get(kind, 0) + 1
        if n <= self.limit:
            # the text quotes the input: never interpret it as rich markup
            err.print(text, markup=False, highlight=False)

    def rest(self) -> None:
        for kind, n in self.counts.items():
            if n > self.limit:
                err.print(f"... and {n - self.limit} more {kind}", markup=False, highlight=False)


def _fingerprint(row: Row) -> bytes:
    """What makes two rows with one event id the same event: topic, key and value."""
    h = hashlib.blake2b(digest_size=16)
    for part in (row[1].encode(), row[2] or b"", row[3]):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


@app.command()
@handled
def publish(
    file: Annotated[str, typer.Option("--file", "-f", help="JSON Lines file of events, or - for stdin")],
    bootstrap: BootstrapOpt = None,
    topic: TopicOpt = None,
    data_dir: DataDirOpt = None,
    schema_registry: RegistryOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for Kafka to acknowledge")] = 60.0,
    max_errors_shown: Annotated[int, typer.Option(help="invalid lines (and repeats) to print in full")] = 50,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="the gateway's key file (traceline gateway-key create): sign every event; events of "
            "another source are invalid lines [env: TRACELINE_GATEWAY_KEY_FILE]",
        ),
    ] = None,
) -> None:
    """Validate and publish events from a JSON Lines file (see schemas/README.md).

    Each valid event is stored in the local outbox before it is sent, so nothing is lost
    when the broker is down (or none is configured): it waits on disk and is delivered by this
    or the next run, or by `traceline outbox flush`. Invalid lines are reported with their line
    number and reason and do not stop the valid ones. An event id on more than one line is
    reported too: an identical repeat is dropped (counted), a repeat with other content is a
    conflict and refused (both line numbers, exit 1). Exit codes: 0 all delivered, 1 invalid
    lines or conflicts, 3 events still waiting in the outbox.
    """
    s = settings_for(bootstrap, data_dir, topic, schema_registry)
    stream = _open_input(file)  # a missing file is a usage error (2), checked before Kafka
    boot, down = _kafka_target(s)
    size = Path(file).stat().st_size if file != "-" else None
    serde = AvroSerde(registry_url=s.schema_registry.url, topic=s.kafka.events_topic)
    key_file = key or s.gateway.key_file
    signer = GatewayKey.load(key_file) if key_file else None
    pub = Publisher(boot, s.outbox_path, topic=s.kafka.events_topic, serde=serde, signer=signer)
    down = _unreachable(pub, down)
    if len(pub.outbox):
        err.print(
            f"{len(pub.outbox)} events from an earlier run are pending in the outbox; "
            + ("they keep waiting" if down else "sending them first")
        )
    notes = _Notes(max_errors_shown)
    bad = valid = stored = identical = conflicts = 0
    seen: dict[str, tuple[int, bytes]] = {}  # event id -> (its first line, fingerprint)
    batch: list[tuple[int, Row]] = []

    def store(rows: list[tuple[int, Row]]) -> None:
        nonlocal stored, identical, conflicts
        result = pub.publish_rows([row for _n, row in rows])
        stored += result.added
        for r in result.repeats:  # repeats in the file are caught below: these were pending before
            lineno = rows[r.index][0]
            if r.identical:
                identical += 1
                notes.add(
                    "identical repeats",
                    f"line {lineno}: event {r.event_id} is already waiting in the outbox (an earlier "
                    "run): identical, not stored again",
                )
            else:
                conflicts += 1
                notes.add(
                    "conflicts",
                    f"line {lineno}: event id {r.event_id} is already waiting in the outbox (an earlier "
                    "run) with other content: refused",
                )

    try:
        with progress() as bar:
            task = bar.add_task("publishing", total=size, rate="")
            for lineno, line in enumerate(stream, 1):
                if size is not None:
                    bar.update(task, advance=len(line), rate=f"{valid} events")
                if not line.strip():
                    continue
                try:
                    row = pub.encode(parse_line(line))
                except TracelineError as exc:
                    bad += 1
                    notes.add("invalid lines", f"line {lineno}: {exc}")
                    continue
                valid += 1
                eid, fp = row[0], _fingerprint(row)
                first = seen.setdefault(eid, (lineno, fp))
                if first[0] != lineno:
                    if first[1] == fp:
                        identical += 1
                        notes.add(
                            "identical repeats",
                            f"line {lineno}: repeats line {first[0]} (event {eid}, identical): dropped",
                        )
                    else:
                        conflicts += 1
                        notes.add(
                            "conflicts",
                            f"line {lineno}: event id {eid} is also on line {first[0]} with other "
                            f"content: line {lineno} refused",
                        )
                    continue
                batch.append((lineno, row))
                if len(batch) >= 2000:
                    store(batch)
                    batch = []
            if batch:
                store(batch)
            if not down:
                pub.flush(timeout, progress=lambda n: bar.update(task, rate=f"{n} delivered"))
    finally:
        remaining = pub.close(0)  # flushed above; stops the producer, undelivered rows stay on disk
        if stream is not sys.stdin.buffer:
            stream.close()
    notes.rest()
    out.print(
        f"{valid} valid events: {stored} stored, {identical} identical repeats dropped, "
        f"{conflicts} conflicting repeats refused; {pub.delivered_total} delivered to Kafka, "
        f"{bad} invalid lines"
    )
    if remaining and down:
        raise fail(
            f"{remaining} events wait on disk in the outbox ({s.outbox_path}): {down}; {_DELIVER_LATER}."
        )
    if remaining:
        raise fail(
            f"{remaining} events are still in the outbox ({s.outbox_path}); Kafka at {boot} did not "
            f"acknowledge them in {timeout:.0f}s ({pub.last_error or 'no answer'}). They are safe on disk "
            "and go out with the next `traceline publish` or `traceline outbox flush`."
        )
    if bad or conflicts:
        raise typer.Exit(EXIT_INVALID_EVENTS)


@app.command("outbox")
@handled
def outbox_cmd(
    action: Annotated[str, typer.Argument(help="status | flush")] = "status",
    bootstrap: BootstrapOpt = None,
    data_dir: DataDirOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for Kafka")] = 60.0,
) -> None:
    """Show or deliver the events waiting in the local outbox (exit 3 while some still wait)."""
    s = settings_for(bootstrap, data_dir)
    if action not in ("status", "flush"):
        raise fail(f"unknown action {action!r}: use status or flush", EXIT_USAGE)
    if action == "status":
        box = Outbox(s.outbox_path)
        out.print(f"{len(box)} events pending in {s.outbox_path}")
        box.close()
        return
    boot, down = _kafka_target(s)
    pub = Publisher(boot, s.outbox_path, topic=s.kafka.events_topic)
    waiting = len(pub.outbox)
    down = _unreachable(pub, down) if waiting else None
    if down:
        pub.close(0)
        raise fail(
            f"{waiting} events wait on disk in the outbox ({s.outbox_path}): {down}; {_DELIVER_LATER}."
        )
    remaining = pub.close(timeout)
    out.print(f"{pub.delivered_total} delivered, {remaining} still pending")
    if remaining:
        raise fail(
            f"{remaining} events still wait in the outbox ({s.outbox_path}): Kafka at {boot} did not "
            f"acknowledge them in {timeout:.0f}s ({pub.last_error or 'no answer'}); run `traceline outbox "
            "flush` again once it is reachable."
        )


# -- simulate ---------------------------------------------------------------------------
@app.command()
@handled
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
    if (out_file is None) == (not do_publish):
        raise fail("give exactly one of --out FILE or --publish", EXIT_USAGE)
    with progress() as bar:
        task = bar.add_task("simulating", total=units, rate="")

        def tick(done: int) -> None:
            bar.update(task, completed=min(done, units))

        events = run_simulation(units, seed, progress=tick)
        if out_file is not None:
            n = write_jsonl(events, sys.stdout if str(out_file) == "-" else out_file)
            bar.update(task, completed=units)
            err.print(f"{n} events written to {out_file}")
            return
        s = settings_for(bootstrap, data_dir, topic)
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
        bar.update(task, completed=units)
    err.print(f"{n} events published, {remaining} still pending in the outbox")
    if remaining:
        raise typer.Exit(EXIT_SERVICE)


# -- serve ------------------------------------------------------------------------------
@app.command()
@handled
def serve(
    bootstrap: BootstrapOpt = None,
    data_dir: DataDirOpt = None,
    topic: TopicOpt = None,
    schema_registry: RegistryOpt = None,
    dsn: DsnOpt = None,
    host: Annotated[str, typer.Option(help="API bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8640,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="do not run the stream processors")] = False,
    no_sink: Annotated[bool, typer.Option("--no-sink", help="do not run the ClickHouse sink")] = False,
) -> None:
    """Run the stream processors, the ClickHouse sink and the query API (Ctrl-C stops all)."""
    s = settings_for(bootstrap, data_dir, topic, schema_registry)
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


# -- reads (cli_query, cli_report) and alerts (cli_alerts) --------------------------------------
app.add_typer(trace_app, name="trace")
app.add_typer(recall_app, name="recall")
app.command("report")(report_command)
recall_app.command("report")(report_command)  # the same command as `traceline recall report`
app.command("drill")(drill_command)
app.command("status")(status_command)
app.add_typer(worker_app, name="worker")
app.add_typer(token_app, name="token")
app.add_typer(gateway_key_app, name="gateway-key")
app.command("verify")(verify_command)
app.command("report-verify")(report_verify_command)
app.command("sql-access")(sql_access_command)
app.add_typer(alerts_app, name="alerts")


def main() -> None:
    try:
        app()
    except TracelineError as exc:  # an error outside a command (settings, start-up)
        failure = classify(exc)
        assert failure is not None
        err.print(f"error: {failure.message}", style="bold red", markup=False, highlight=False)
        sys.exit(failure.exit_code)


if __name__ == "__main__":
    main()
