"""The ``traceline`` command line.

Thin wiring only: it builds the settings once, then calls the packages that hold the logic.
Exit codes: 0 ok, 1 some input was invalid (reported line by line), 2 wrong arguments,
3 a service (Kafka / ClickHouse) is unreachable or events are still waiting in the outbox.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas.errors import TracelineError
from traceline.settings import Settings, load_settings

__all__ = ["app", "main"]

app = typer.Typer(
    help="traceline: serial- and lot-level traceability over Kafka and ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
)
stack_app = typer.Typer(help="The local Kafka broker (KRaft, from Maven Central jars, no Docker).")
app.add_typer(stack_app, name="stack")

err = Console(stderr=True)
out = Console()

BootstrapOpt = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers [env TRACELINE_KAFKA_BOOTSTRAP]")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="local state dir [env TRACELINE_DATA_DIR]")]
TopicOpt = Annotated[str | None, typer.Option("--topic", help="raw events topic [env TRACELINE_KAFKA_EVENTS_TOPIC]")]
RegistryOpt = Annotated[
    str | None, typer.Option("--schema-registry", help="Confluent schema registry URL [env TRACELINE_SCHEMA_REGISTRY_URL]")
]


def _settings(
    bootstrap: str | None = None,
    data_dir: Path | None = None,
    topic: str | None = None,
    registry: str | None = None,
) -> Settings:
    return load_settings(
        data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__events_topic=topic, schema_registry__url=registry
    )


def _fail(message: str, code: int = 3) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


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
    port: Annotated[int | None, typer.Option(help="broker port (default: a free one, kept across restarts)")] = None,
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
def _open_input(file: str) -> TextIO:
    if file == "-":
        return sys.stdin
    p = Path(file)
    if not p.is_file():
        raise _fail(f"no such file: {file}", code=2)
    return p.open("r", encoding="utf-8")


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
    boot = resolve_bootstrap(s)
    stream = _open_input(file)
    size = Path(file).stat().st_size if file != "-" else None
    serde = AvroSerde(registry_url=s.schema_registry.url, topic=s.kafka.events_topic)
    pub = Publisher(boot, s.outbox_path, topic=s.kafka.events_topic, serde=serde)
    if len(pub.outbox):
        err.print(f"{len(pub.outbox)} events from an earlier run are pending in the outbox; sending them first")
    bad = valid = 0
    batch: list[Any] = []
    try:
        with _progress() as progress:
            task = progress.add_task("publishing", total=size, rate="")
            for lineno, line in enumerate(stream, 1):
                if size is not None:
                    progress.update(task, advance=len(line.encode()), rate=f"{valid} events")
                if not line.strip():
                    continue
                try:
                    batch.append(parse_line(line))
                except TracelineError as exc:
                    bad += 1
                    if bad <= max_errors_shown:
                        err.print(f"line {lineno}: {exc}")
                    continue
                valid += 1
                if len(batch) >= 2000:
                    pub.publish_many(batch)
                    batch = []
            if batch:
                pub.publish_many(batch)
            remaining = pub.flush(timeout, progress=lambda n: progress.update(task, rate=f"{n} delivered"))
    finally:
        pub.outbox.close()
        if stream is not sys.stdin:
            stream.close()
    if bad > max_errors_shown:
        err.print(f"... and {bad - max_errors_shown} more invalid lines")
    out.print(f"{valid} valid events stored, {pub.delivered_total} delivered to Kafka, {bad} invalid lines")
    if remaining:
        raise _fail(
            f"{remaining} events are still in the outbox ({s.outbox_path}); Kafka at {boot} did not acknowledge "
            f"them in {timeout:.0f}s ({pub.last_error or 'no answer'}). They are safe on disk and go out "
            "with the next `traceline publish` or `traceline outbox flush`."
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
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="write JSON Lines here (- for stdout)")] = None,
    do_publish: Annotated[bool, typer.Option("--publish", help="publish to Kafka through the outbox")] = False,
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


def main() -> None:
    try:
        app()
    except TracelineError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(3)


if __name__ == "__main__":
    main()
