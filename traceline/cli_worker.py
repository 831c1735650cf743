"""Commands for the faust stream worker's local state: ``worker_app`` (a typer app of its own,
for ``traceline worker ...``; also ``python -m traceline.worker reset-state``).

``reset-state`` deletes the worker's local state directory (``<data dir>/streams/<app id>``,
see ``traceline.worker``); at its next start faust rebuilds the genealogy table from its
changelog topic in Kafka, which is the table's source of truth. That is the recovery when the
worker stops with "local state ... is inconsistent with Kafka" (exit code 78).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streams.app import changelog_topic, local_state_dir, reset_local_state
from traceline.cli_common import DataDirOpt, env, fail, handled, out
from traceline.errors import EXIT_USAGE
from traceline.settings import load_settings

__all__ = ["worker_app"]

worker_app = typer.Typer(
    help="The faust stream worker (genealogy writer): its local state.",
    no_args_is_help=True,
    add_completion=False,
)

TopicPrefixOpt = Annotated[
    str | None,
    typer.Option("--topic-prefix", help=f"the pipeline's topic prefix {env('TRACELINE_KAFKA_TOPIC_PREFIX')}"),
]


@worker_app.callback()
def _worker() -> None:
    """The faust stream worker (genealogy writer): its local state."""


@worker_app.command("reset-state")
@handled
def reset_state(
    data_dir: DataDirOpt = None,
    topic_prefix: TopicPrefixOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    legacy: Annotated[
        bool, typer.Option("--legacy", help="also delete <data dir>/streams/v1 (state of earlier versions)")
    ] = False,
) -> None:
    """Delete the stream worker's local state; faust rebuilds it from the changelog topic.

    Stop the worker (`traceline serve`) first: a running worker's state is not deleted.
    """
    s = load_settings(data_dir=data_dir, kafka__topic_prefix=topic_prefix)
    targets = [local_state_dir(s.data_dir, s.app_id)]
    if legacy:
        targets.append(s.data_dir / "streams" / "v1")
    present = [p for p in targets if p.exists()]
    if not present:
        out.print(f"no local state to reset in {targets[0]}" + (f" or {targets[1]}" if legacy else ""))
        return
    topic = changelog_topic(s.app_id)
    if not yes:
        listed = ", ".join(str(p) for p in present)
        if not typer.confirm(f"delete {listed}? (the table is rebuilt from {topic} at the next start)"):
            raise fail("nothing deleted", EXIT_USAGE)
    for path in present:
        _reset(path)
        out.print(f"deleted {path}")
    out.print(f"the stream worker rebuilds its table from the changelog topic {topic} at its next start")


def _reset(path: Path) -> None:
    reset_local_state(path)  # LocalStateInUseError while a worker holds it: one line, exit 3
