"""One scenario run in a process of its own (started by ``python -m chaos``)::

    python -m chaos.runner --scenario NAME --rep I --work DIR --bootstrap B --broker-dir D \\
        --events N --seed S --out result.json

Progress goes to stderr (lines starting ``[chaos``); the product's own logging goes to
``<work>/run.log``; the :class:`chaos.harness.Result` is written to ``--out`` as JSON, also when
the scenario raised (verdict ``error`` with the traceback).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import sys
import time
import traceback
from pathlib import Path

from chaos.harness import Ctx, Result, log
from chaos.scenarios import by_name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.runner")
    p.add_argument("--scenario", required=True)
    p.add_argument("--rep", type=int, default=0)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--broker-dir", type=Path, required=True)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--health-every", type=float, default=1.0)
    p.add_argument("--broker-down", type=float, default=5.0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=a.work / "run.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    # a crash of native code (librdkafka, chdb) leaves every thread's Python stack here
    crash_log = (a.work / "crash.log").open("w")
    faulthandler.enable(file=crash_log, all_threads=True)
    ctx = Ctx(
        a.scenario, a.rep, a.work, a.events, a.seed, a.bootstrap, a.broker_dir, a.health_every, a.broker_down
    )
    t0 = time.monotonic()
    try:
        result = by_name(a.scenario).load()(ctx)
    except Exception as exc:  # noqa: BLE001 - the row says so, with the traceback
        result = Result(ctx.label, verdict="error", problems=[f"{type(exc).__name__}: {exc}"])
        result.details["traceback"] = traceback.format_exc()
        log(f"{ctx.label} raised: {traceback.format_exc()}")
    result.details["wall_s"] = round(time.monotonic() - t0, 1)
    a.out.write_text(json.dumps(result.as_dict(), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
