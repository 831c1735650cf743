"""``python -m chaos [--scenarios a,b,...] [--events N] [--json]``: run the fault scenarios.

Starts one local Kafka broker for the suite (``traceline.localstack``, under the work dir),
runs every chosen scenario in a child process (``chaos.runner``), one at a time, prints one
row per run (and a JSON line with ``--json``, on stdout) and a markdown table at the end. The
exit code is 1 when a row shows loss, duplication or a blind health (FAIL) or a run broke
(error). Scenario names: ``python -m chaos --list``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.harness import log
from chaos.scenarios import SCENARIOS, by_name

_REPO = Path(__file__).resolve().parents[1]

COLUMNS = (
    ("scenario", "scenario"),
    ("sent", "sent"),
    ("present", "present"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("dead_letters", "dead letters"),
    ("conflicts", "conflicts"),
    ("quarantined", "quarantined"),
    ("recovery_s", "recovery s"),
    ("health", "health from the fault to recovery"),
    ("verdict", "verdict"),
)


def _cell(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None or v == "":
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(t for _k, t in COLUMNS) + " |"
    sep = "|" + "|".join(" --- " for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r, k) for k, _t in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def one_line(r: dict[str, Any]) -> str:
    return (
        f"{r['scenario']}: sent {r['sent']:,} present {r['present']:,} lost {r['lost']} "
        f"duplicated {r['duplicated']} dead letters {r['dead_letters']} conflicts {r['conflicts']} "
        f"quarantined {r['quarantined']} recovery {_cell(r, 'recovery_s')} s health {r['health'] or '-'} "
        f"=> {r['verdict']}" + (f" ({'; '.join(r['problems'])})" if r.get("problems") else "")
    )


def _pump(stream: Any, log_path: Path) -> None:
    """Echo the child's progress lines; everything else (client library noise) into a file."""
    with log_path.open("a", encoding="utf-8", errors="replace") as f:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            if line.startswith("[chaos"):
                sys.stderr.write(line)
                sys.stderr.flush()
            f.write(line)
            f.flush()


def _leftovers(run_dir: Path) -> None:
    """After a run: stop processes that still name the run's dir (brokers or a serve of a run
    that crashed) and unmount what it mounted there."""
    import signal

    mine = str(run_dir)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace")
            pid = int(cmdline.parent.name)
        except (OSError, ValueError):
            continue
        if mine in args and pid != os.getpid():
            log(f"stopping a leftover process of the run: pid {pid}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            where = line.split()[1]
            if where.startswith(mine):
                log(f"unmounting a leftover mount of the run: {where}")
                subprocess.run(["umount", "-l", where], check=False)


def run_one(
    name: str, rep: int, work: Path, a: argparse.Namespace, bootstrap: str, broker_dir: Path
) -> dict[str, Any]:
    label = f"{name} #{rep}" if rep else name
    run_dir = work / (f"{name}-{rep}" if rep else name)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out = run_dir / "result.json"
    cmd = [
        sys.executable, "-m", "chaos.runner", "--scenario", name, "--rep", str(rep), "--work", str(run_dir),
        "--bootstrap", bootstrap, "--broker-dir", str(broker_dir), "--events", str(a.events),
        "--seed", str(a.seed), "--health-every", str(a.health_every), "--broker-down", str(a.broker_down),
        "--out", str(out),
    ]  # fmt: skip
    log(f"=== {label}: {by_name(name).summary}")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=_REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pump = threading.Thread(target=_pump, args=(proc.stderr, run_dir / "stderr.log"), daemon=True)
    pump.start()
    try:
        code = proc.wait(a.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        log(f"{label}: killed after {a.timeout:.0f}s")
    pump.join(10)
    _leftovers(run_dir)
    try:
        row = dict(json.loads(out.read_text()))
    except (OSError, ValueError):
        row = {
            "scenario": label, "sent": 0, "present": 0, "lost": 0, "duplicated": 0, "dead_letters": 0,
            "conflicts": 0, "quarantined": 0, "recovery_s": None, "health": "", "verdict": "error",
            "problems": [f"the run ended with exit code {code} and no result (see {run_dir}/stderr.log)"],
            "notes": [], "details": {},
        }  # fmt: skip
    row["details"]["run_dir"] = run_dir.name  # relative to the suite's work dir (results.json beside it)
    row["details"]["process_s"] = round(time.monotonic() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="", help="comma-separated names (default: all, in order)")
    p.add_argument("--events", type=int, default=20_000, help="events per scenario (default 20000)")
    p.add_argument("--json", action="store_true", help="a JSON line per scenario run on stdout")
    p.add_argument("--repeats", type=int, default=0, help="runs per scenario (default: its own, 1 or 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--health-every", type=float, default=1.0, help="health sampling period (s)")
    p.add_argument("--broker-down", type=float, default=5.0, help="seconds a killed broker stays down (5)")
    p.add_argument("--work", type=Path, default=None, help="work dir (default: var/chaos/<time>)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (default: only the results)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is killed")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = p.parse_args(argv)
    if a.list:
        for s in SCENARIOS:
            print(f"{s.name:22} x{s.repeats}  {s.summary}")
        return 0
    names = [n.strip() for n in a.scenarios.split(",") if n.strip()] or [s.name for s in SCENARIOS]
    chosen = [by_name(n) for n in names]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = (a.work or _REPO / "var" / "chaos" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    from traceline import localstack

    broker_dir = work / "kafka"
    log(f"work dir {work}; starting the suite's broker")
    bootstrap = localstack.up(broker_dir)
    rows: list[dict[str, Any]] = []
    t_suite = time.monotonic()
    try:
        for s in chosen:
            n = a.repeats or s.repeats
            for rep in range(1, n + 1) if n > 1 else [0]:
                if localstack.status(broker_dir) is None:  # a broker fault left it down: bring it back
                    log("the suite's broker is down: starting it again")
                    localstack.up(broker_dir)
                row = run_one(s.name, rep, work, a, bootstrap, broker_dir)
                rows.append(row)
                log("ROW " + one_line(row))
                if a.json:
                    print(json.dumps(row, default=str), flush=True)
    finally:
        localstack.down(broker_dir)
        summary = {
            "command": "python -m chaos " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
            "events": a.events,
            "suite_s": round(time.monotonic() - t_suite, 1),
            "rows": rows,
        }
        # paths inside the work dir written relative to it: the results can be kept or moved
        text = json.dumps(summary, indent=1, default=str).replace(json.dumps(str(work) + "/")[1:-1], "")
        (work / "results.json").write_text(text)
        (work / "table.md").write_text(table(rows) + "\n")
        if not a.keep:  # the runs that passed leave only their row; the others keep their logs
            shutil.rmtree(broker_dir, ignore_errors=True)
            for r in rows:
                name = str(r["details"].get("run_dir", ""))
                run_dir = work / name
                if name and r["verdict"] in ("pass", "skipped") and run_dir.is_dir():
                    shutil.rmtree(run_dir, ignore_errors=True)
    print()
    print(f"chaos: {len(rows)} runs, {summary['date']}, {os.cpu_count()} cores, {a.events:,} events per run")
    print()
    print(table(rows))
    bad = [r for r in rows if r["verdict"] in ("FAIL", "error")]
    for r in bad:
        print(f"\n{r['scenario']}: {r['verdict']}: " + "; ".join(r.get("problems", [])))
    print(f"\nresults: {work / 'results.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
