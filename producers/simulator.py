"""Deterministic plant simulator: realistic traceability events at any scale.

``simulate(units, seed)`` streams the events of a defense electronics plant in the JSON form
of ``schemas/README.md`` (plain dicts: ``"type"``, the common header, ISO-8601 timestamps with
millisecond precision and ``Z``, ``UnitRef`` as ``{"part_number", "serial_number"}``);
``write_jsonl`` writes them to a file. The plant itself (programmes, parts, BOMs, materials,
sites, stations, benches, customers) is ``producers.plant``; ids, timestamps, the run's
counters and the file writer are ``producers.output``.

What the plant does
-------------------
Every batch builds systems of one programme, level by level, from the dies and boards up.
Material arrives as supplier lots (``MaterialReceived`` with CoC and incoming inspection; a
few are rejected or accepted conditionally); IC reels are split into kits, solder paste is
conditioned (``PROCESS``), two-part coating is mixed (``MERGE``). Some lots go on hold or
quarantine and are released or scrapped within days; nonconformances are raised on lots,
supplier lots, suppliers, stations, operators, benches and serials, and the review board
decides a pending one within days (a second record of the ``ncr_id``). Tests fail now and then
and are retested; a failing module / LRU / system is reworked: a child is removed (reason
``"rework"``), the parent gets a replacement, and the repaired child is later installed into
another parent. Benches carry calibration ids and due dates; a few tests run past due.
Systems ship to customers (contract, destination, end system), through a working quality gate
with a few deliberate breaches (``producers.plant.QualityGate``); some LRUs ship as spares;
some systems stay in work or in stock.

Serial numbers restart at ``SN000001`` for every part number, so the same serial text exists
under many part numbers: identity must be part number + serial.

Scale and determinism
---------------------
Production runs in batches of systems, one batch per takt (default 4 h of plant time); each
batch's flow spans about a day. Events are kept in a time-ordered heap only until the plant
clock passes them, so memory is bounded by the work in flight (a few thousand events), not by
``units``. Output is non-decreasing in ``event_time``. Every random choice, event id included,
comes from one ``random.Random(seed)``: the same arguments give a byte-identical sequence.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from producers.output import SimulationStats, time_formatter, to_ms, uuid4_str, write_jsonl
from producers.plant import (
    ASSY_GROUP,
    CUSTOMERS,
    DAY,
    DEFAULT_SITES,
    DEFAULT_START,
    FOREVER,
    GATING,
    HOLD_REASONS,
    HOUR,
    MEAS,
    MIN,
    NC_FAIL_TEXT,
    OPS,
    P_HOLD_IGNORED,
    P_REWORK,
    P_SHIP_ANYWAY,
    REJECT_REASONS,
    SPARES_CUSTOMERS,
    STAGE,
    STATION_COUNT,
    SUPPLIERS,
    TESTS,
    Batch,
    Lot,
    Mat,
    MatState,
    Nc,
    Part,
    Program,
    QualityGate,
    Trace,
    build_benches,
    build_catalogue,
)

__all__ = [
    "Simulation",
    "simulate",
    "write_jsonl",  # producers.output's, importable from here as before
]

_SHIP = "_ShipCheck"  # an internal heap entry: a unit about to ship (never yielded)
Unit = tuple[str, str]


# ---------------------------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------------------------


class Simulation:
    """An iterator over the events of one simulated run, with its :class:`SimulationStats`.

    Iterate it once (``for ev in sim``); ``sim.stats`` is complete when the iteration ends.
    """

    def __init__(
        self,
        units: int,
        seed: int = 0,
        *,
        start: datetime | None = None,
        sites: Sequence[str] = DEFAULT_SITES,
        programs: Sequence[str] | None = None,
        systems_per_batch: int = 6,
        takt: timedelta = timedelta(hours=4),
        progress: Callable[[int], None] | None = None,
        progress_every: int = 10_000,
    ) -> None:
        if units < 0:
            raise ValueError("units must be >= 0")
        if not sites:
            raise ValueError("at least one site is needed")
        if any(":" in s for s in sites):
            raise ValueError("site names may not contain ':'")
        if systems_per_batch < 1:
            raise ValueError("systems_per_batch must be >= 1")
        self.units_target = units
        self.seed = seed
        self.sites = tuple(sites)
        self.start_ms = to_ms(start or DEFAULT_START)
        self.takt_ms = max(MIN, int(takt / timedelta(milliseconds=1)))
        self.systems_per_batch = systems_per_batch
        self.progress = progress
        self.progress_every = max(1, progress_every)
        self.rng = random.Random(seed)
        self._rnd = self.rng.random
        self._bits = self.rng.getrandbits
        self._fmt = time_formatter()
        self._heap: list[tuple[int, int, dict[str, Any]]] = []
        self._seq = 0
        self._wm = self.start_ms  # nothing may be emitted before this (already yielded up to here)
        self._lot_seq = 0
        self._counters: Counter[str] = Counter()
        self._mstate: dict[tuple[int, int, int, str], MatState] = {}
        self._pool: dict[str, deque[tuple[int, Unit, Trace]]] = {}
        self._pool_cap = 16
        self._supplier_lot_seq: Counter[str] = Counter()
        self._gate = QualityGate()
        self.quality: Counter[str] = Counter()
        self._end_system_seq: Counter[tuple[str, str]] = Counter()

        self._programs = build_catalogue(self.rng, len(self.sites), programs)
        self._weights = [p.weight for p in self._programs]
        self._codes = [chr(ord("A") + i) if i < 26 else f"S{i}" for i in range(len(self.sites))]
        self._operators = [[f"OP-{c}{i:03d}" for i in range(1, 41)] for c in self._codes]
        self._stations = [
            {g: [f"{c}-{g}-{i:02d}" for i in range(1, n + 1)] for g, n in STATION_COUNT.items()}
            for c in self._codes
        ]
        self._sources = [
            {"erp": f"{s}-erp", "mes": f"{s}-mes", "qms": f"{s}-qms"} for s in self.sites
        ]
        self._benches = build_benches(self.rng, self._codes, self.start_ms)
        self.stats = SimulationStats(
            seed=seed, units_target=units, programs=tuple(p.program for p in self._programs),
            sites=self.sites,
        )
        self._gen = self._run()

    # -- iteration ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._gen

    def __next__(self) -> dict[str, Any]:
        return next(self._gen)

    def summary(self) -> dict[str, Any]:
        """The run's stats, and what its quality system did (``quality``: shipments gated,
        delayed, kept back, shipped anyway; holds not honoured)."""
        return {**self.stats.as_dict(), "quality": dict(sorted(self.quality.items()))}

    def _run(self) -> Iterator[dict[str, Any]]:
        stats = self.stats
        counts = stats.events_by_type
        heap = self._heap
        pop = heapq.heappop
        next_report = self.progress_every
        batch_no = 0
        ev: dict[str, Any] | None = None
        try:
            while True:
                more = stats.units < self.units_target
                horizon = FOREVER  # the last round: everything left
                if more:
                    t_batch = self.start_ms + batch_no * self.takt_ms
                    self._wm = t_batch
                    self._gate.prune(t_batch)
                    self._batch(batch_no, t_batch)
                    batch_no += 1
                    stats.batches = batch_no
                    horizon = t_batch + self.takt_ms
                while heap and heap[0][0] < horizon:
                    t, _seq, e = pop(heap)
                    if e["type"] == _SHIP:  # a unit about to ship: the gate decides, nothing is yielded
                        self._check_shipment(t, e)
                        continue
                    ev = e
                    counts[ev["type"]] += 1
                    if stats.first_event_time is None:
                        stats.first_event_time = ev["event_time"]
                    yield ev
                if not more:
                    break
                if ev is not None:
                    stats.last_event_time = ev["event_time"]
                if self.progress is not None and stats.units >= next_report:
                    self.progress(stats.units)
                    next_report = (stats.units // self.progress_every + 1) * self.progress_every
        finally:
            if ev is not None:
                stats.last_event_time = ev["event_time"]
        if self.progress is not None:
            self.progress(stats.units)

    # -- event plumbing -------------------------------------------------------------------------

    def _ev(self, typ: str, t: int, source: str, site: str, program: str,
            ts: str | None = None) -> dict[str, Any]:
        """Queue a new event at ``t`` (``ts``: ``t`` already formatted) and return it for filling."""
        if t < self._wm:
            t = self._wm
            ts = None
        self._seq += 1
        d = {
            "type": typ,
            "event_id": uuid4_str(self._bits(128)),
            "event_time": ts or self._fmt(t),
            "source": source,
            "site": site,
            "program": program,
        }
        heapq.heappush(self._heap, (t, self._seq, d))
        return d

    def _next_lot_id(self, site_i: int) -> str:
        self._lot_seq += 1
        return f"L{self._codes[site_i]}{self._lot_seq:08d}"

    def _ncr(self, t: int, site_i: int, prog: Program, kind: str, target: str, severity: str,
             disposition: str, description: str, window: tuple[int, int] | None = None,
             decided: tuple[int, str] | None = None, gates: bool = True) -> None:
        """Raise an NC; ``decided`` = (when, final disposition) of the review board's decision if it
        is pending (a second record of the same NC). While it gates (``GATING``) the floor does
        not ship what it matches (``gates=False``: material that never reaches the floor)."""
        self.stats.nonconformances += 1
        t = max(t, self._wm)
        d = self._ev("NonconformanceRaised", t, self._sources[site_i]["qms"], self.sites[site_i],
                     prog.program)
        d["ncr_id"] = f"NCR-{self._codes[site_i]}-{self.stats.nonconformances:06d}"
        d["target_kind"] = kind
        d["target_id"] = target
        d["window_start"] = self._fmt(window[0]) if window else None
        d["window_end"] = self._fmt(window[1]) if window else None
        d["severity"] = severity
        d["disposition"] = disposition
        d["description"] = description
        closes = t if disposition not in GATING else FOREVER
        if decided is not None and disposition == "PENDING":
            closes = max(decided[0], t + MIN)
            final = self._ev("NonconformanceRaised", closes, d["source"], d["site"], d["program"])
            final.update({k: v for k, v in d.items() if k not in final}, disposition=decided[1])
            if decided[1] in GATING:
                closes = FOREVER
        if gates and closes > t:
            self._gate.add(Nc(kind, target, window, t, closes))

    def _status(self, t: int, site_i: int, prog: Program, lot_id: str, status: str, reason: str) -> None:
        d = self._ev("LotStatusChanged", t, self._sources[site_i]["qms"], self.sites[site_i], prog.program)
        d["lot_id"] = lot_id
        d["status"] = status
        d["reason"] = reason

    # -- material -------------------------------------------------------------------------------

    def _receive(self, mat: Mat, prog: Program, site_i: int, t: int) -> Lot:
        rng = self.rng
        stats = self.stats
        while True:
            if t < self._wm:
                t = self._wm
            supplier = mat.suppliers[0] if len(mat.suppliers) == 1 else rng.choice(mat.suppliers)
            self._supplier_lot_seq[supplier] += 1
            n_sl = self._supplier_lot_seq[supplier]
            supplier_lot = f"{SUPPLIERS[supplier]}{rng.randint(24, 26)}-{n_sl:06d}"
            lot_id = self._next_lot_id(site_i)
            r = rng.random()
            result = "REJECTED" if r < 0.015 else "CONDITIONAL" if r < 0.04 else "ACCEPTED"
            coc: str | None = f"COC-{SUPPLIERS[supplier]}-{rng.randrange(10**7):07d}"
            if (result == "CONDITIONAL" and rng.random() < 0.5) or rng.random() < 0.005:
                coc = None
            d = self._ev("MaterialReceived", t, self._sources[site_i]["erp"], self.sites[site_i],
                         prog.program)
            d["lot_id"] = lot_id
            d["part_number"] = mat.part_number
            d["supplier_id"] = supplier
            d["supplier_lot"] = supplier_lot
            d["quantity"] = float(mat.receipt_qty)
            d["unit_of_measure"] = mat.uom
            d["coc_reference"] = coc
            d["inspection_result"] = result
            stats.lots_received += 1
            if result == "REJECTED":
                stats.lots_rejected += 1
                tq = t + rng.randint(10 * MIN, 60 * MIN)
                reason = rng.choice(REJECT_REASONS)
                self._status(tq, site_i, prog, lot_id, "QUARANTINE", reason)
                self._ncr(tq + MIN, site_i, prog, "SUPPLIER_LOT", f"{supplier}:{supplier_lot}", "MAJOR",
                          "RETURN_TO_SUPPLIER", f"{mat.part_number}: {reason}", gates=False)
                if rng.random() < 0.5:  # the supplier's other deliveries of the day are checked
                    self._ncr(tq + 2 * MIN, site_i, prog, "SUPPLIER", supplier, "MINOR", "PENDING",
                              f"Supplier corrective action requested after rejection of {supplier_lot}",
                              (t - DAY, t), (tq + rng.randint(DAY, 3 * DAY), "USE_AS_IS"))
                self._status(tq + rng.randint(DAY, 3 * DAY), site_i, prog, lot_id, "SCRAPPED",
                             "Returned to supplier")
                t = tq + rng.randint(30 * MIN, 90 * MIN)  # a replacement lot arrives
                continue
            if result == "CONDITIONAL":
                stats.lots_conditional += 1
            lot = Lot(lot_id, mat.receipt_qty, (), supplier, supplier_lot, t)
            if rng.random() < 0.03:
                self._hold(lot, prog, site_i, t + rng.randint(2 * HOUR, 3 * DAY))
            return lot

    def _hold(self, lot: Lot, prog: Program, site_i: int, th: int) -> None:
        """Put a lot on hold at ``th``; the review board releases or scraps it within days."""
        rng = self.rng
        self.stats.lot_holds += 1
        th = max(th, self._wm)
        status = "HOLD" if rng.random() < 0.7 else "QUARANTINE"
        reason = rng.choice(HOLD_REASONS)
        if rng.random() < P_HOLD_IGNORED:
            self.quality["holds_not_honoured"] += 1  # the floor keeps using it (alerts!)
        else:
            lot.blocked_from = th
        self._status(th, site_i, prog, lot.lot_id, status, reason)
        t_end = th + rng.randint(4 * HOUR, 4 * DAY)
        scrap = rng.random() < 0.2
        lot.held_from, lot.held_until = th, (None if scrap else t_end)
        if rng.random() < 0.6:
            severity = "CRITICAL" if rng.random() < 0.3 else "MAJOR"
            self._ncr(th + 5 * MIN, site_i, prog, "LOT", lot.lot_id, severity, "PENDING", reason,
                      decided=(t_end, "SCRAP" if scrap else "USE_AS_IS"))
        self._status(t_end, site_i, prog, lot.lot_id, "SCRAPPED" if scrap else "RELEASED",
                     "MRB disposition: scrap" if scrap else "MRB disposition: use as is")

    def _source_lot(self, st: MatState, i: int, mat: Mat, prog: Program, site_i: int, t: int,
                    t_open: int) -> Lot:
        src = st.sources[i]
        if src is None or src.remaining <= 0 or t >= src.blocked_from:
            t_recv = t_open - self.rng.randint(2 * HOUR, 4 * HOUR)
            src = st.sources[i] = self._receive(mat, prog, site_i, t_recv)
        return src

    def _make_usable(self, st: MatState, mat: Mat, prog: Program, site_i: int, t: int,
                     t_open: int) -> Lot:
        """A new lot to consume from at ``t``; it is received / made before ``t_open`` (<= ``t``)."""
        rng = self.rng
        if mat.kind == "recv":
            return self._receive(mat, prog, site_i, t_open - rng.randint(2 * HOUR, 4 * HOUR))
        inputs: list[dict[str, Any]] = []
        srcs: list[Lot] = []
        total = 0
        if mat.kind == "merge":
            for i, (imat, q) in enumerate(mat.inputs):
                while q > 0:
                    src = self._source_lot(st, i, imat, prog, site_i, t, t_open)
                    take = min(q, src.remaining)
                    src.remaining -= take
                    q -= take
                    total += take
                    inputs.append({"lot_id": src.lot_id, "quantity": float(take)})
                    srcs.append(src)
            transformation = "MERGE"
        else:
            src = self._source_lot(st, 0, mat, prog, site_i, t, t_open)
            take = min(mat.sub_qty, src.remaining)
            src.remaining -= take
            total = take
            inputs.append({"lot_id": src.lot_id, "quantity": float(take)})
            srcs.append(src)
            transformation = "SPLIT" if mat.kind == "split" else "PROCESS"
        lot = Lot(self._next_lot_id(site_i), total, tuple(srcs))
        self.stats.lots_transformed += 1
        station = self._stations[site_i].get(mat.station)
        if station is None:
            station = self._stations[site_i][mat.station] = [f"{self._codes[site_i]}-{mat.station}-01"]
        d = self._ev("LotTransformed", t_open - rng.randint(30 * MIN, 60 * MIN), self._sources[site_i]["mes"],
                     self.sites[site_i], prog.program)
        d["lot_id"] = lot.lot_id
        d["part_number"] = mat.part_number
        d["transformation"] = transformation
        d["inputs"] = inputs
        d["quantity"] = float(total)
        d["unit_of_measure"] = mat.uom
        d["work_order"] = f"WO-MAT-{self._lot_seq:08d}"
        d["station_id"] = station[0]
        return lot

    def _consume(self, prog: Program, site_i: int, lvl: int, bom: list[tuple[Mat, int]], t: int,
                 t_open: int, tr: Trace) -> list[dict[str, Any]]:
        """Consume ``bom`` at ``t``. Each level (production area) keeps its own open lots; lots
        opened now exist from before ``t_open``, the start of the batch's stage for that level, so
        every unit of the stage (whatever its own time) finds them."""
        out: list[dict[str, Any]] = []
        mstate = self._mstate
        for mat, qty in bom:
            key = (prog.idx, site_i, lvl, mat.part_number)
            st = mstate.get(key)
            if st is None:
                st = mstate[key] = MatState(max(1, len(mat.inputs)))
            while qty > 0:
                lot = st.usable
                if lot is None or lot.remaining <= 0 or t >= lot.blocked_from:
                    lot = st.usable = self._make_usable(st, mat, prog, site_i, t, t_open)
                take = qty if qty <= lot.remaining else lot.remaining
                lot.remaining -= take
                qty -= take
                out.append({"lot_id": lot.lot_id, "quantity": float(take)})
                tr.lots.append(lot)
        return out

    # -- units ----------------------------------------------------------------------------------

    def _op(self, unit: Unit, prog: Program, site_i: int, station: str, operator: str, wo: str,
            name: str, t0: int, t1: int, creates: bool, lots: list[dict[str, Any]],
            units: list[dict[str, str]], tr: Trace) -> None:
        tr.ops.append((station, operator, t0, t1))
        fmt = self._fmt
        f1 = fmt(t1)
        d = self._ev("OperationCompleted", t1, station, self.sites[site_i], prog.program, f1)
        d["unit"] = {"part_number": unit[0], "serial_number": unit[1]}
        d["work_order"] = wo
        d["operation"] = name
        d["station_id"] = station
        d["operator_id"] = operator
        d["started_at"] = fmt(t0)
        d["finished_at"] = f1
        d["creates_unit"] = creates
        d["consumed_lots"] = lots
        d["consumed_units"] = units

    def _link(self, typ: str, t: int, child: tuple[str, str], parent: tuple[str, str], position: str,
              prog: Program, site_i: int, station: str, operator: str, wo: str) -> None:
        d = self._ev(typ, t, station, self.sites[site_i], prog.program)
        d["unit"] = {"part_number": child[0], "serial_number": child[1]}
        d["parent"] = {"part_number": parent[0], "serial_number": parent[1]}
        d["position"] = position
        if typ == "UnitRemoved":
            d["reason"] = "rework"
        d["work_order"] = wo
        d["station_id"] = station
        d["operator_id"] = operator

    def _test(self, unit: Unit, part: Part, site_i: int, t: int, operator: str, tr: Trace,
              retest: bool = False, force_pass: bool = False) -> tuple[str, int]:
        rnd = self._rnd
        stats = self.stats
        lvl = part.level
        _prefix, _n, lo, hi, p_fail = TESTS[lvl]
        benches = self._benches[(site_i, lvl)]
        bench = benches[int(rnd() * len(benches))]
        k, due = bench.calibration(t)
        t1 = t + int((lo + (hi - lo) * rnd()) * MIN)
        if t1 > due:
            stats.tests_past_calibration += 1
        elif k > bench.reported and bench.late(k) and k >= 1:
            # the bench was recalibrated late: raise it once, for the window it ran past due
            bench.reported = k
            prev_due = bench.t0 + k * bench.period
            t_nc = max(t1, prev_due + bench.overrun) + 30 * MIN
            decided = (t_nc + self.rng.randint(DAY, 3 * DAY), "USE_AS_IS" if rnd() < 0.85 else "REWORK")
            self._ncr(t_nc, site_i, part.program, "BENCH", bench.bench_id, "MAJOR", "PENDING",
                      f"Tests run after calibration due date on {bench.bench_id}",
                      (prev_due, prev_due + bench.overrun), decided)
        r = rnd()
        if force_pass:
            verdict = "PASS"
        elif r < 0.004:
            verdict = "ABORTED"
        elif r < (p_fail * 0.5 if retest else p_fail):
            verdict = "FAIL"
        else:
            verdict = "PASS"
        meas: list[dict[str, Any]] = []
        if verdict != "ABORTED":
            specs = MEAS[lvl]
            bad = int(rnd() * len(specs)) if verdict == "FAIL" else -1
            for i, (name, u, nominal, spread, low, high) in enumerate(specs):
                if i == bad:
                    if u == "count":
                        value = float(1 + int(3 * rnd()))
                    elif high is not None and (low is None or rnd() < 0.5):
                        value = high + max(spread, 1.0) * (0.1 + rnd())
                    else:
                        assert low is not None
                        value = low - max(spread, 1.0) * (0.1 + rnd())
                    ok = False
                else:
                    value = nominal + spread * (2.0 * rnd() - 1.0) if spread else nominal
                    ok = True
                meas.append({"name": name, "value": round(value, 4), "unit": u, "low_limit": low,
                             "high_limit": high, "passed": ok})
        stats.tests += 1
        if verdict == "FAIL":
            stats.tests_failed += 1
        fmt = self._fmt
        f1 = fmt(t1)
        d = self._ev("UnitTested", t1, bench.bench_id, self.sites[site_i], part.program.program, f1)
        d["unit"] = {"part_number": unit[0], "serial_number": unit[1]}
        d["bench_id"] = bench.bench_id
        d["procedure_id"] = part.procedure_id
        d["procedure_version"] = part.procedure_version
        d["calibration_id"] = f"CAL-{bench.bench_id}-{k:03d}"
        d["calibration_due"] = fmt(due)
        d["operator_id"] = operator
        d["started_at"] = fmt(t)
        d["finished_at"] = f1
        d["measurements"] = meas
        d["verdict"] = verdict
        tr.tests.append((bench.bench_id, t, t1))
        return verdict, t1

    def _new_unit(self, part: Part) -> tuple[str, str]:
        sn = f"SN{part.next_serial:06d}"
        part.next_serial += 1
        stats = self.stats
        stats.units += 1
        stats.units_by_level[part.level] += 1
        stats.units_by_part[part.part_number] += 1
        return (part.part_number, sn)

    def _from_pool(self, part: Part, t: int) -> tuple[Unit, Trace] | None:
        dq = self._pool.get(part.part_number)
        if dq and dq[0][0] <= t and self._rnd() < 0.7:
            self.stats.rework_reinstalls += 1
            _t, unit, tr = dq.popleft()
            return unit, tr
        return None

    def _to_pool(self, part: Part, unit: Unit, tr: Trace, t_avail: int) -> None:
        dq = self._pool.setdefault(part.part_number, deque())
        if len(dq) >= self._pool_cap:
            old_t, old, old_tr = dq.popleft()
            if part.level == 3:
                self._ship(old, old_tr, part.program, max(old_t, t_avail) + HOUR, spare=True)
            # lower levels simply stay in stock
        dq.append((t_avail, unit, tr))

    def _wo(self, b: Batch, part: Part) -> str:
        wo = b.wos.get(part.code)
        if wo is None:
            wo = b.wos[part.code] = f"WO-{part.program.code}{b.no:07d}-{part.code}"
        return wo

    def _build(self, part: Part, b: Batch, in_work: bool = False) -> tuple[Unit, int, Trace]:
        """Make one unit (and, first, whatever it is made of). Returns the unit, when it is done
        and its trace (what the quality gate checks when it ships)."""
        rnd = self._rnd
        prog = b.prog
        lvl = part.level
        site_i = prog.site_for_level[lvl]
        t = b.cursor[lvl]
        b.cursor[lvl] = t + int(b.step[lvl] * (0.5 + rnd()))
        kids: list[tuple[str, Unit, Part, Trace]] = []
        ready = t
        for cpart, positions in part.children:
            for pos in positions:
                got = self._from_pool(cpart, t)
                if got is None:
                    u, fin, ctr = self._build(cpart, b)
                    if fin + 5 * MIN > ready:
                        ready = fin + 5 * MIN
                else:
                    u, ctr = got
                kids.append((pos, u, cpart, ctr))
        consumed_units: list[dict[str, str]] = []
        dies: list[Trace] = []
        for dpart in part.dies:
            u, fin, dtr = self._build(dpart, b)
            consumed_units.append({"part_number": u[0], "serial_number": u[1]})
            dies.append(dtr)
            if fin + 5 * MIN > ready:
                ready = fin + 5 * MIN
        t = ready
        stage_start = b.start + lvl * STAGE
        unit = self._new_unit(part)
        tr = Trace(f"{unit[0]}:{unit[1]}")
        operators = self._operators[site_i]
        operator = operators[int(rnd() * len(operators))]
        wo = self._wo(b, part)
        stations = self._stations[site_i]
        line = int(rnd() * 3)
        for i, (name, group, lo, hi) in enumerate(OPS[lvl]):
            st_list = stations[group]
            station = st_list[line % len(st_list)]
            t1 = t + int((lo + (hi - lo) * rnd()) * MIN)
            if i == 0:
                lots = self._consume(prog, site_i, lvl, part.bom, t, stage_start, tr)
                self._op(unit, prog, site_i, station, operator, wo, name, t, t1, True, lots, consumed_units,
                         tr)
                t = t1 + int((1 + 4 * rnd()) * MIN)
                if kids:
                    assy = stations[ASSY_GROUP[lvl]][line % len(stations[ASSY_GROUP[lvl]])]
                    for pos, u, _c, _t in kids:
                        self._link("UnitAssembled", t, u, unit, pos, prog, site_i, assy, operator, wo)
                        t += int((2 + 4 * rnd()) * MIN)
                if in_work:
                    return unit, t, tr
            else:
                coat = part.coat if group == "CC" else []
                lots = self._consume(prog, site_i, lvl, coat, t, stage_start, tr)
                self._op(unit, prog, site_i, station, operator, wo, name, t, t1, False, lots, [], tr)
                t = t1 + int((1 + 9 * rnd()) * MIN)
        # test, retest, rework
        attempt = 0
        while True:
            verdict, t = self._test(unit, part, site_i, t, operator, tr, retest=attempt > 0,
                                    force_pass=attempt >= 3)
            if verdict == "PASS":
                tr.kids = [k[3] for k in kids] + dies
                return unit, t, tr
            attempt += 1
            if verdict == "FAIL" and kids and rnd() < P_REWORK[lvl]:
                t = self._rework(unit, part, b, kids, t, site_i, operator)
            else:
                if verdict == "FAIL" and lvl >= 3 and rnd() < 0.3:
                    self._ncr(t + 10 * MIN, site_i, prog, "SERIAL", f"{unit[0]}:{unit[1]}", "MINOR", "REPAIR",
                              NC_FAIL_TEXT[lvl])
                t += int((10 + 35 * rnd()) * MIN)

    def _rework(self, unit: Unit, part: Part, b: Batch, kids: list[tuple[str, Unit, Part, Trace]], t: int,
                site_i: int, operator: str) -> int:
        rng = self.rng
        prog = b.prog
        stats = self.stats
        stats.reworks += 1
        idx = rng.randrange(len(kids))
        pos, child, cpart, ctr = kids[idx]
        station = self._stations[site_i][ASSY_GROUP[part.level]][0]
        rwo = f"RW-{prog.code}{stats.reworks:07d}"
        t += rng.randint(20 * MIN, 60 * MIN)
        self._link("UnitRemoved", t, child, unit, pos, prog, site_i, station, operator, rwo)
        if rng.random() < 0.5:
            self._ncr(t + 5 * MIN, site_i, prog, "SERIAL", f"{child[0]}:{child[1]}", "MINOR", "REWORK",
                      f"{NC_FAIL_TEXT[part.level]} on {unit[0]}:{unit[1]}, traced to {pos}")
        # the parent gets a replacement (a repaired unit from stock, or a new one)
        t_ins = t + rng.randint(30 * MIN, 90 * MIN)
        got = self._from_pool(cpart, t_ins)
        if got is None:
            rep, fin, rtr = self._build(cpart, b)
            t_ins = max(t_ins, fin + 10 * MIN)
        else:
            rep, rtr = got
        self._link("UnitAssembled", t_ins, rep, unit, pos, prog, site_i, station, operator, rwo)
        kids[idx] = (pos, rep, cpart, rtr)
        # the removed child is repaired and retested, then waits in stock for another parent
        c_site = prog.site_for_level[cpart.level]
        t_rw = t + rng.randint(6 * HOUR, 36 * HOUR)
        c_station = self._stations[c_site].get("RWK")
        if c_station is None:
            c_station = self._stations[c_site]["RWK"] = [f"{self._codes[c_site]}-RWK-01"]
        c_op = rng.choice(self._operators[c_site])
        t_rw1 = t_rw + rng.randint(20 * MIN, 90 * MIN)
        self._op(child, prog, c_site, c_station[0], c_op, rwo, "0900 Rework and repair", t_rw, t_rw1, False,
                 [], [], ctr)
        _v, t_avail = self._test(child, cpart, c_site, t_rw1 + 10 * MIN, c_op, ctr, force_pass=True)
        self._to_pool(cpart, child, ctr, t_avail + 30 * MIN)
        return t_ins + rng.randint(10 * MIN, 20 * MIN)

    # -- shipping: the quality gate ----------------------------------------------------------------

    def _ship(self, unit: Unit, tr: Trace, prog: Program, t: int, spare: bool) -> None:
        """The unit is ready to ship at ``t``; the gate decides then (``_check_shipment``)."""
        self._seq += 1
        c = {"type": _SHIP, "unit": unit, "trace": tr, "prog": prog, "spare": spare, "checked": False}
        heapq.heappush(self._heap, (max(t, self._wm), self._seq, c))

    def _check_shipment(self, t: int, c: dict[str, Any]) -> None:
        """Ship if nothing the unit holds gates at ``t``; else wait for the review board (check
        again after its last decision), or stay in stock if one gates for good; a few leave anyway."""
        causes = self._gate.blocking(c["trace"], t)
        q = self.quality
        if causes and not c["checked"]:
            c["checked"] = True
            q["shipments_gated"] += 1
            if self._rnd() < P_SHIP_ANYWAY:
                q["shipped_despite_gate"] += 1
                causes = []
        if not causes:
            self._emit_shipment(c["unit"], c["prog"], t, c["spare"])
        elif None in causes:
            q["kept_back"] += 1  # holds scrapped material: reworked later, not shipped in this run
            self.stats.systems_in_stock += not c["spare"]
        else:
            q["shipment_delays"] += 1
            self._seq += 1
            t_next = max(x for x in causes if x is not None) + self.rng.randint(HOUR, 4 * HOUR)
            heapq.heappush(self._heap, (t_next, self._seq, c))

    def _emit_shipment(self, unit: Unit, prog: Program, t: int, spare: bool) -> None:
        rng = self.rng
        stats = self.stats
        site_i = prog.site_for_level[4]
        if spare:
            customer = rng.choice(SPARES_CUSTOMERS)
            end_system = None
            contract = f"CTR-{CUSTOMERS[customer][0]}-{prog.code}-SPARES"
            stats.spares_shipped += 1
        else:
            customer = rng.choice(prog.customers)
            short = CUSTOMERS[customer][0]
            self._end_system_seq[(prog.code, customer)] += 1
            end_system = f"{prog.platform}-{short}{self._end_system_seq[(prog.code, customer)]:04d}"
            contract = f"CTR-{short}-{prog.code}-{2026 + prog.idx}-{prog.idx * 7 + len(short):03d}"
            stats.systems_shipped += 1
        d = self._ev("UnitShipped", t, self._sources[site_i]["erp"], self.sites[site_i], prog.program)
        d["unit"] = {"part_number": unit[0], "serial_number": unit[1]}
        d["shipment_id"] = f"SHP-{self.stats.systems_shipped + stats.spares_shipped:08d}"
        d["customer_id"] = customer
        d["contract"] = contract
        d["destination_site"] = rng.choice(CUSTOMERS[customer][1])
        d["end_system"] = end_system

    def _batch(self, no: int, t_batch: int) -> None:
        rng = self.rng
        stats = self.stats
        progs = self._programs
        prog = progs[0] if len(progs) == 1 else rng.choices(progs, self._weights)[0]
        n_sys = self.systems_per_batch
        b = Batch(no, t_batch, prog, n_sys)
        assert prog.system is not None
        for _ in range(n_sys):
            in_work = rng.random() < 0.03
            unit, t, tr = self._build(prog.system, b, in_work=in_work)
            stats.systems += 1
            if in_work:
                stats.systems_in_work += 1
            elif rng.random() < 0.9:
                self._ship(unit, tr, prog, t + rng.randint(HOUR, 6 * HOUR), spare=False)
            else:
                stats.systems_in_stock += 1
        if rng.random() < 0.5:  # a spare LRU, mostly shipped to a depot, else kept in stock
            lru = rng.choice(prog.lrus)
            unit, t, tr = self._build(lru, b)
            if rng.random() < 0.85:
                self._ship(unit, tr, prog, t + rng.randint(HOUR, 4 * HOUR), spare=True)
        # floor-level nonconformances
        board_site = prog.site_for_level[1]
        if rng.random() < 0.04:
            oven = rng.choice(self._stations[board_site]["RFL"])
            t_found = t_batch + 2 * STAGE
            disposition = "PENDING" if rng.random() < 0.5 else "USE_AS_IS"
            mrb = (t_found + rng.randint(8 * HOUR, 2 * DAY), "USE_AS_IS" if rng.random() < 0.8 else "REWORK")
            self._ncr(t_found, board_site, prog, "STATION", oven, "MAJOR", disposition,
                      "Reflow profile excursion: peak temperature above limit",
                      (t_batch + STAGE - 3 * HOUR, t_batch + STAGE + 2 * HOUR), mrb)
        if rng.random() < 0.03:
            op = rng.choice(self._operators[board_site])
            t_found = t_batch + 2 * STAGE
            self._ncr(t_found, board_site, prog, "OPERATOR", op, "MINOR", "PENDING",
                      "IPC J-STD-001 certification lapsed", (t_found - 3 * DAY, t_found),
                      (t_found + rng.randint(DAY, 3 * DAY), "USE_AS_IS"))


def simulate(
    units: int,
    seed: int = 0,
    *,
    start: datetime | None = None,
    sites: Sequence[str] = DEFAULT_SITES,
    programs: Sequence[str] | None = None,
    systems_per_batch: int = 6,
    takt: timedelta = timedelta(hours=4),
    progress: Callable[[int], None] | None = None,
    progress_every: int = 10_000,
) -> Simulation:
    """Stream the events of a simulated plant making about ``units`` serialised units (all levels).

    Returns a :class:`Simulation`: an iterator of event dicts (JSON form of schemas/README.md,
    non-decreasing ``event_time``) whose ``.stats`` / ``.summary()`` describe the run.
    ``programs`` limits the run to some programmes (ids like ``"PRG-AESA"`` or codes like
    ``"RDR"``). ``progress(units_so_far)`` is called about every ``progress_every`` units and at
    the end. Same arguments, same byte-identical sequence.
    """
    return Simulation(units, seed, start=start, sites=sites, programs=programs,
                      systems_per_batch=systems_per_batch, takt=takt, progress=progress,
                      progress_every=progress_every)
