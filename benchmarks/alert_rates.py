"""Alerts per 1,000 units, by rule and severity, on a simulated plant. No Kafka.

    python -m benchmarks.alert_rates [--units 20000] [--seed 0] [--batch 2000] [--data-dir DIR]

What a quality engineer would see from the alert engine on a plant of ``--units`` units:

1. ``producers.simulator.simulate(--units, --seed)``; each event is Avro-encoded
   (``benchmarks._stack.fast_encoder``) and decoded with ``schemas.serde.AvroSerde``, exactly
   as the sink and the alert engine decode it.
2. In event-time order (the simulator's output order), in batches of ``--batch`` events (the
   engine's default batch size): the batch lands in an embedded chdb store with the sink's
   own row builder (``sinks.rows.rows_for_batch``), its genealogy as the stream processor
   would emit it (``streams.genealogy``'s commands and rule, driven in one FIFO like
   ``tests.support.run_genealogy``, but resumable from batch to batch so the genealogy lands
   with its batch; ``sinks.rows.genealogy_rows``), then
   ``queries.alerts.AlertEvaluator.evaluate_batch`` evaluates the batch's rule events
   (``streams.alerts.RULE_TYPES``), as the engine does once the sink has landed a batch.
   With ``--nc-refresh-batches K`` the open NCs are re-evaluated every K batches (the
   engine's periodic refresh; off by default).
3. Counts the admitted alerts: distinct ``alert_id`` (one incident) and versions (every
   publication: the first plus its updates), by rule and by severity (the severity of an
   alert's latest version; versions by their own), and per 1,000 units
   (``SimulationStats.units``: serialised units made, all levels). ``shipped_units_gated``
   (the units the SHIPPING_GATE alerts list) should equal the simulator's own count of
   shipments it let through its gate (``quality.shipped_despite_gate``).

Prints one JSON line (stdout) and a readable table (stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._stack import fast_encoder, log
from producers.simulator import simulate
from queries.alerts import AlertEvaluator
from schemas.alert import Alert
from schemas.serde import AvroSerde
from sinks.rows import SinkRecord, genealogy_rows, rows_for_batch
from sinks.store import Store
from streams.alerts import RULE_TYPES, AlertRules
from streams.genealogy import Change, Node, Send, apply, commands_for_event

TOPIC = "bench.events"
_GENEALOGY_TYPES = frozenset({"UnitAssembled", "UnitRemoved", "OperationCompleted"})


class Genealogy:
    """The genealogy rule in one global FIFO (``tests.support.run_genealogy`` without a
    shuffle seed), resumable: each call runs the commands of some events to quiescence on the
    nodes of every call before and returns the change records."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def feed(self, events: Sequence[Mapping[str, Any]]) -> list[Change]:
        changes: list[Change] = []
        queue: deque[Send] = deque()
        for ev in events:
            queue.extend(commands_for_event(ev))
        while queue:
            key, cmd = queue.popleft()
            node, sends, ch = apply(self.nodes.get(key), key, cmd)
            self.nodes[key] = node
            changes.extend(ch)
            queue.extend(sends)
        return changes


def run(units: int, seed: int, batch_size: int, data_dir: Path, refresh_batches: int) -> dict[str, Any]:
    store = Store.open(f"chdb://{(data_dir / 'ch').resolve()}", "traceline")
    if store.count("operations"):
        raise SystemExit(f"{data_dir} holds a store already; use an empty --data-dir")
    enc, serde = fast_encoder(), AvroSerde(topic=TOPIC)
    sim = simulate(units, seed=seed)
    genealogy = Genealogy()
    t_batch: datetime | None = None
    ev = AlertEvaluator(store, AlertRules(nc_refresh_seconds=0), clock=lambda: t_batch or datetime.now(UTC))
    latest: dict[str, Alert] = {}
    versions: Counter[tuple[str, str]] = Counter()  # (rule, severity of that version)
    n_events = n_batches = 0
    t0 = time.perf_counter()
    t_land = t_eval = 0.0
    now = datetime.now(UTC)
    batch: list[tuple[str, dict[str, Any]]] = []

    def admit(alerts: list[Alert]) -> None:
        for a in alerts:
            latest[a.alert_id] = a
            versions[(str(a.rule), str(a.severity))] += 1

    def flush() -> None:
        nonlocal n_batches, t_batch, t_land, t_eval
        t = time.perf_counter()
        first = n_events - len(batch)
        recs = [SinkRecord(tn, r, TOPIC, 0, first + i, now) for i, (tn, r) in enumerate(batch)]
        store.write_batch(rows_for_batch(recs), token=f"rates:{seed}:{n_batches}")
        gen = [{**r, "type": tn} for tn, r in batch if tn in _GENEALOGY_TYPES]
        changes = genealogy.feed(gen)
        if changes:
            store.write_batch(genealogy_rows(changes), token=f"rates-gen:{seed}:{n_batches}")
        t_land += time.perf_counter() - t
        t = time.perf_counter()
        t_batch = max(r["event_time"] for _tn, r in batch)
        admit(ev.evaluate_batch([(tn, r) for tn, r in batch if tn in RULE_TYPES]))
        n_batches += 1
        if refresh_batches and n_batches % refresh_batches == 0:
            admit(ev.refresh_open_ncs())
        t_eval += time.perf_counter() - t
        batch.clear()
        if n_batches % 10 == 0:
            rate = n_events / (time.perf_counter() - t0)
            log(f"  {n_events:,} events, {len(latest):,} alerts ({rate:,.0f} events/s)")

    try:
        for d in sim:
            _eid, _key, value = enc(d)
            batch.append(serde.decode(value))
            n_events += 1
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    finally:
        store.close()
    st = sim.stats
    per = 1000.0 / max(1, st.units)
    by_rule: dict[str, dict[str, Any]] = {}
    by_sev: dict[str, dict[str, Any]] = {}
    for a in latest.values():
        for group, key in ((by_rule, str(a.rule)), (by_sev, str(a.severity))):
            group.setdefault(key, {"alerts": 0, "versions": 0})["alerts"] += 1
    for (rule, sev), n in versions.items():
        by_rule.setdefault(rule, {"alerts": 0, "versions": 0})["versions"] += n
        by_sev.setdefault(sev, {"alerts": 0, "versions": 0})["versions"] += n
    for group in (by_rule, by_sev):
        for v in group.values():
            v["alerts_per_1000_units"] = round(v["alerts"] * per, 2)
            v["versions_per_1000_units"] = round(v["versions"] * per, 2)
    rule_sev: dict[str, dict[str, int]] = {}
    for a in latest.values():
        rule_sev.setdefault(f"{a.rule}/{a.severity}", {"alerts": 0, "versions": 0})["alerts"] += 1
    for (rule, sev), n in versions.items():
        rule_sev.setdefault(f"{rule}/{sev}", {"alerts": 0, "versions": 0})["versions"] += n
    gated = {u for a in latest.values() if a.rule == "SHIPPING_GATE" for u in a.units}
    shipped = st.systems_shipped + st.spares_shipped
    return {
        "benchmark": "alert_rates",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.alert_rates " + " ".join(sys.argv[1:]),
        "units_requested": units,
        "seed": seed,
        "batch": batch_size,
        "nc_refresh_batches": refresh_batches,
        "units": st.units,
        "events": n_events,
        "batches": n_batches,
        "alerts": len(latest),
        "versions": sum(versions.values()),
        "alerts_per_1000_units": round(len(latest) * per, 2),
        "by_rule": dict(sorted(by_rule.items())),
        "by_severity": dict(sorted(by_sev.items())),
        "by_rule_and_severity": dict(sorted(rule_sev.items())),
        "shipments": shipped,
        "shipped_units_gated": len(gated),
        "quality": sim.summary().get("quality", {}),  # the simulator's gate: shipped_despite_gate, ...
        "plant": {
            k: getattr(st, k)
            for k in (
                "systems",
                "systems_shipped",
                "spares_shipped",
                "nonconformances",
                "lot_holds",
                "lots_rejected",
                "tests",
                "tests_failed",
                "tests_past_calibration",
            )
        },  # fmt: skip
        "land_s": round(t_land, 1),
        "evaluate_s": round(t_eval, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }


def _table(r: dict[str, Any]) -> str:
    per = 1000.0 / max(1, r["units"])
    lines = [
        f"alert rates: {r['units']:,} units (seed {r['seed']}), {r['events']:,} events in {r['batches']}"
        f" batches: {r['alerts']:,} alerts ({r['alerts_per_1000_units']} per 1,000 units),"
        f" {r['versions']:,} versions;"
        f" {r['shipped_units_gated']} of {r['shipments']} shipped units gated",
        f"  {'':<32} {'alerts':>7} {'/1k units':>10} {'versions':>9} {'/1k units':>10}",
    ]
    for title, group in (("by rule", r["by_rule"]), ("by severity", r["by_severity"]),
                         ("by rule and severity", r["by_rule_and_severity"])):  # fmt: skip
        lines.append(f"  {title}")
        for k, v in group.items():
            lines.append(
                f"    {k:<30} {v['alerts']:>7} {v['alerts'] * per:>10.2f} {v['versions']:>9}"
                f" {v['versions'] * per:>10.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.alert_rates", description=__doc__.split("\n\n")[0])
    p.add_argument("--units", type=int, default=20_000, help="units simulated (default 20,000)")
    p.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    p.add_argument("--batch", type=int, default=2_000, help="events per landed / evaluated batch (2,000)")
    p.add_argument("--nc-refresh-batches", type=int, default=0, help="refresh open NCs every K batches")
    p.add_argument("--data-dir", default="", help="an empty dir for the store (default: a temp dir, removed)")
    a = p.parse_args(argv)
    if a.units < 1 or a.batch < 1:
        p.error("--units and --batch must be >= 1")
    with tempfile.TemporaryDirectory(prefix="traceline-alert-rates-") as tmp:
        res = run(a.units, a.seed, a.batch, Path(a.data_dir or tmp), a.nc_refresh_batches)
    print(json.dumps(res, sort_keys=True), flush=True)
    print(_table(res), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
