"""The simulated defense electronics plant: what it makes, from what, where and for whom.

Three programmes (an AESA radar, an EW self-protection suite, a mission-computer suite), each
with its own part numbers at five levels (``PROGRAMMES``, turned into ``Program`` / ``Part``
objects with their BOMs by ``build_catalogue``):

* level 0 ``<PRG>-D....`` GaN dies (radar only), consumed as serialised units by a board;
* level 1 ``<PRG>-P....`` circuit boards: SMT placement (creates the unit; consumes bare-board,
  solder-paste, IC-kit and passive-kit lots), reflow, AOI, conformal coating (mixed coating lot),
  in-circuit test;
* level 2 ``<PRG>-M....`` modules, level 3 ``<PRG>-L....`` LRUs, level 4 ``<PRG>-S4000`` systems:
  a creating operation, ``UnitAssembled`` of the children at reference designators / slots,
  further operations and an acceptance test each.

Material (``Mat``) comes from ``SUPPLIERS`` as received lots, or is made from them: IC reels
split into kits, solder paste conditioned (``PROCESS``), two-part coating mixed (``MERGE``).
Boards are made at one site, the higher levels at the next. Per level: the operations
(``OPS``) at station groups (``STATION_COUNT``), the test benches (``TESTS``, calibrated:
``Bench``, ``build_benches``) and their measurements (``MEAS``). ``CUSTOMERS`` with their
destination sites; the reason texts of holds, rejections and test-failure NCRs.

The plant's quality system (``Lot``, ``Trace``, ``Nc``, ``QualityGate``): what the floor
knows when a unit is about to ship. Each lot knows its hold (from, until) and the lots it was
made from; each unit's ``Trace`` holds what its backward trace will show (its lots, operations,
tests and components); the gate knows every NC that gates, and when its review-board decision
releases it. A shipment waits until nothing it holds gates any more (or stays in stock when
something gates for good); ``P_SHIP_ANYWAY`` of gated shipments leave anyway and
``P_HOLD_IGNORED`` of holds are not honoured on the floor: the deliberate breaches the alert
engine must catch.

Plant time is epoch milliseconds (``SEC`` ... ``DAY``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "SEC",
    "MIN",
    "HOUR",
    "DAY",
    "DEFAULT_START",
    "DEFAULT_SITES",
    "STAGE",
    "SUPPLIERS",
    "Mat",
    "SOLDER_PASTE",
    "CC_BASE",
    "CC_HARDENER",
    "CC_MIX",
    "PASSIVES",
    "GAN_WAFER",
    "CONNECTOR",
    "FASTENERS",
    "GAP_PAD",
    "Part",
    "Program",
    "PROGRAMMES",
    "CUSTOMERS",
    "SPARES_CUSTOMERS",
    "OPS",
    "STATION_COUNT",
    "ASSY_GROUP",
    "TESTS",
    "P_REWORK",
    "MEAS",
    "HOLD_REASONS",
    "REJECT_REASONS",
    "NC_FAIL_TEXT",
    "Bench",
    "build_catalogue",
    "build_benches",
    "FOREVER",
    "GATING",
    "P_HOLD_IGNORED",
    "P_SHIP_ANYWAY",
    "Lot",
    "MatState",
    "Batch",
    "Trace",
    "Nc",
    "QualityGate",
]

SEC = 1_000
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000

DEFAULT_START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
DEFAULT_SITES: tuple[str, ...] = ("plant-a", "plant-b", "plant-c")
STAGE = 4 * HOUR  # plant time between the start of one level's work and the next level's

# ---------------------------------------------------------------------------------------------
# Catalogue
# ---------------------------------------------------------------------------------------------

# supplier id -> prefix of its own lot numbers
SUPPLIERS: dict[str, str] = {
    "SUP-NORDPCB": "NP",
    "SUP-ALPHACHEM": "AC",
    "SUP-INDICHEM": "IC",
    "SUP-COATECH": "CT",
    "SUP-SEMIDIST": "SD",
    "SUP-AEROCOMP": "AE",
    "SUP-GANFAB": "GF",
    "SUP-MILCONN": "MC",
    "SUP-CHASSISWORKS": "CW",
    "SUP-CABLETEC": "CB",
    "SUP-THERMIX": "TX",
}


@dataclass(frozen=True, slots=True)
class Mat:
    """A material part number and how its lots come about."""

    part_number: str
    kind: str  # "recv" (use received lots) | "split" | "process" | "merge"
    uom: str
    receipt_qty: int  # size of a received lot
    sub_qty: int = 0  # size of a kit / conditioned batch (split, process)
    suppliers: tuple[str, ...] = ()
    inputs: tuple[tuple[Mat, int], ...] = ()  # merge: (input material, quantity per batch)
    station: str = "KIT"  # station group of the transformation


def _m(pn: str, kind: str, uom: str, qty: int, sub: int, *suppliers: str, station: str = "KIT") -> Mat:
    return Mat(pn, kind, uom, qty, sub, tuple(suppliers), station=station)


SOLDER_PASTE = _m("MAT-SP-SAC305", "process", "g", 5000, 500, "SUP-ALPHACHEM", "SUP-INDICHEM",
                  station="PASTE")
CC_BASE = _m("MAT-CC-BASE", "recv", "mL", 8000, 0, "SUP-COATECH")
CC_HARDENER = _m("MAT-CC-HARDENER", "recv", "mL", 2000, 0, "SUP-COATECH")
CC_MIX = Mat("MAT-CC-MIX", "merge", "mL", 0, 0, (), ((CC_BASE, 800), (CC_HARDENER, 200)), "CCMIX")
PASSIVES = _m("CMP-PASSIVE-KIT", "split", "pcs", 20000, 1000, "SUP-AEROCOMP", "SUP-SEMIDIST")
GAN_WAFER = _m("WFR-GAN-025", "split", "pcs", 400, 50, "SUP-GANFAB")
CONNECTOR = _m("CON-M83513-25", "recv", "pcs", 400, 0, "SUP-MILCONN")
FASTENERS = _m("HW-NAS1352-KIT", "recv", "pcs", 2000, 0, "SUP-MILCONN", "SUP-AEROCOMP")
GAP_PAD = _m("MAT-GAPPAD-5W", "recv", "cm2", 10000, 0, "SUP-THERMIX")


def _ic(pn: str) -> Mat:
    return _m(pn, "split", "pcs", 500, 25, "SUP-SEMIDIST", "SUP-AEROCOMP")


@dataclass(slots=True)
class Part:
    program: Program
    code: str
    level: int
    name: str
    children: list[tuple[Part, tuple[str, ...]]] = field(default_factory=list)
    dies: list[Part] = field(default_factory=list)
    bom: list[tuple[Mat, int]] = field(default_factory=list)  # consumed by the creating op
    coat: list[tuple[Mat, int]] = field(default_factory=list)  # consumed by conformal coating
    part_number: str = ""
    procedure_id: str = ""
    procedure_version: str = ""
    next_serial: int = 1


@dataclass(slots=True)
class Program:
    idx: int
    program: str
    code: str
    name: str
    weight: float
    platform: str
    customers: tuple[str, ...]
    parts: dict[str, Part] = field(default_factory=dict)
    system: Part | None = None
    lrus: list[Part] = field(default_factory=list)
    site_for_level: tuple[int, ...] = ()
    per_level: tuple[float, ...] = ()  # units per system at each level


# (programme id, code, name, weight, platform prefix, customers, ICs, structure)
# structure: part code -> (name, [(child code, positions)], [die codes])
PROGRAMMES: tuple[tuple[Any, ...], ...] = (
    ("PRG-AESA", "RDR", "AESA fire-control radar", 0.45, "FGT",
     ("CUST-UK-MOD", "CUST-DE-BAAINBW", "CUST-PRIME-AIRFRAME", "CUST-NSPA-DEPOT"),
     ("IC-FPGA-XCKU060", "IC-ADC-AD9208", "IC-PLL-LMX2594", "IC-LDO-LT3045"),
     {
         "S4000": ("Radar system", [("L3100", ("LRU1",)), ("L3200", ("LRU2",)), ("L3300", ("LRU3",))], []),
         "L3100": ("Receiver/exciter", [("M2100", ("A1", "A2")), ("M2110", ("A3",))], []),
         "L3200": ("Radar signal processor", [("M2200", ("A1", "A2"))], []),
         "L3300": ("Power supply unit", [("M2300", ("A1",))], []),
         "M2100": ("T/R channel module", [("P1100", ("J1", "J2"))], []),
         "M2110": ("Frequency synthesiser", [("P1110", ("J1",))], []),
         "M2200": ("Processor module", [("P1200", ("J1",)), ("P1210", ("J2",))], []),
         "M2300": ("Power conversion module", [("P1300", ("J1",))], []),
         "P1100": ("T/R board", [], ["D0100"]),
         "P1110": ("Synthesiser board", [], []),
         "P1200": ("FPGA processing board", [], []),
         "P1210": ("I/O board", [], []),
         "P1300": ("Power board", [], []),
         "D0100": ("GaN HPA die", [], []),
     }),
    ("PRG-EWSP", "EWS", "EW self-protection suite", 0.35, "HEL",
     ("CUST-DE-BAAINBW", "CUST-FR-DGA", "CUST-NSPA-DEPOT"),
     ("IC-FPGA-XCVU9P", "IC-ADC-AD9213", "IC-DAC-AD9176", "IC-LDO-LT3045"),
     {
         "S4000": ("EW suite", [("L3100", ("LRU1", "LRU2")), ("L3200", ("LRU3",)), ("L3300", ("LRU4",))],
                   []),
         "L3100": ("Radar warning receiver", [("M2100", ("A1", "A2")), ("M2120", ("A3",))], []),
         "L3200": ("Techniques generator", [("M2200", ("A1",)), ("M2120", ("A2",))], []),
         "L3300": ("Countermeasure dispenser controller", [("M2300", ("A1",))], []),
         "M2100": ("Wideband receiver module", [("P1100", ("J1",))], []),
         "M2120": ("Digitiser module", [("P1120", ("J1",)), ("P1130", ("J2",))], []),
         "M2200": ("DRFM module", [("P1200", ("J1", "J2"))], []),
         "M2300": ("Controller module", [("P1300", ("J1",))], []),
         "P1100": ("RF downconverter board", [], []),
         "P1120": ("ADC board", [], []),
         "P1130": ("FPGA board", [], []),
         "P1200": ("DRFM board", [], []),
         "P1300": ("Controller board", [], []),
     }),
    ("PRG-MSNC", "AVN", "Mission computer suite", 0.20, "MPA",
     ("CUST-UK-MOD", "CUST-FR-DGA", "CUST-PRIME-AIRFRAME"),
     ("IC-CPU-T2080", "IC-DDR4-MT40A", "IC-FPGA-A7", "IC-LDO-LT3045"),
     {
         "S4000": ("Mission system rack", [("L3100", ("LRU1", "LRU2")), ("L3200", ("LRU3",))], []),
         "L3100": ("Mission computer", [("M2100", ("A1", "A2")), ("M2110", ("A3",)), ("M2120", ("A4",))],
                   []),
         "L3200": ("Display processor", [("M2200", ("A1",)), ("M2120", ("A2",))], []),
         "M2100": ("CPU module", [("P1100", ("J1",))], []),
         "M2110": ("MIL-STD-1553 I/O module", [("P1110", ("J1",))], []),
         "M2120": ("Power supply module", [("P1120", ("J1",))], []),
         "M2200": ("Graphics module", [("P1200", ("J1",)), ("P1210", ("J2",))], []),
         "P1100": ("CPU board", [], []),
         "P1110": ("1553 interface board", [], []),
         "P1120": ("PSU board", [], []),
         "P1200": ("GPU board", [], []),
         "P1210": ("Video I/O board", [], []),
     }),
)

_LEVEL_OF = {"D": 0, "P": 1, "M": 2, "L": 3, "S": 4}

# customer -> (short code, destination sites)
CUSTOMERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "CUST-UK-MOD": ("UK", ("RAF-CONINGSBY", "RAF-LOSSIEMOUTH", "HMNB-PORTSMOUTH")),
    "CUST-DE-BAAINBW": ("DE", ("FLB-NEUBURG", "FLB-LAAGE", "HSG-FASSBERG")),
    "CUST-FR-DGA": ("FR", ("BA-118-MONT-DE-MARSAN", "BAN-LANDIVISIAU")),
    "CUST-PRIME-AIRFRAME": ("PA", ("PRIME-FAL-SEVILLE", "PRIME-FAL-WARTON")),
    "CUST-NSPA-DEPOT": ("NS", ("NSPA-CAPELLEN",)),
}
SPARES_CUSTOMERS = ("CUST-NSPA-DEPOT", "CUST-UK-MOD")

# per level: operations (name, station group, min minutes, max minutes); the first one creates the unit
OPS: dict[int, tuple[tuple[str, str, float, float], ...]] = {
    0: (("0010 Die singulation and attach", "DIE", 4, 9),),
    1: (("0010 SMT placement", "SMT", 4, 9), ("0020 Reflow soldering", "RFL", 6, 10),
        ("0030 AOI", "AOI", 2, 4), ("0040 Conformal coating", "CC", 8, 15)),
    2: (("0010 Module build", "MOD", 15, 30), ("0020 Torque and inspection", "MOD", 5, 10)),
    3: (("0010 LRU integration", "INT", 30, 60), ("0020 Environmental stress screening", "ESS", 50, 80)),
    4: (("0010 System integration", "SYS", 45, 90), ("0020 Final inspection", "SYS", 10, 20)),
}
STATION_COUNT = {"DIE": 1, "SMT": 3, "RFL": 3, "AOI": 3, "CC": 2, "MOD": 4, "INT": 3, "ESS": 2, "SYS": 2}
ASSY_GROUP = {2: "MOD", 3: "INT", 4: "SYS"}

# per level: test bench prefix, number of benches, min/max minutes, fail probability
TESTS: dict[int, tuple[str, int, float, float, float]] = {
    0: ("PRB", 1, 1, 3, 0.02),
    1: ("ICT", 3, 3, 8, 0.025),
    2: ("FCT", 3, 10, 20, 0.04),
    3: ("ATE", 2, 30, 60, 0.07),
    4: ("SAT", 1, 60, 120, 0.06),
}
_PROC_PREFIX = {0: "TP-PRB", 1: "TP-ICT", 2: "TP-FCT", 3: "ATP", 4: "SAT"}
# probability that a failing parent is reworked by swapping a child (else adjusted and retested)
P_REWORK = {2: 0.4, 3: 0.7, 4: 0.7}

# (name, unit, nominal, spread, low limit, high limit)
MEAS: dict[int, tuple[tuple[str, str, float, float, float | None, float | None], ...]] = {
    0: (("IDQ", "mA", 120.0, 6.0, 100.0, 140.0), ("GAIN", "dB", 13.5, 0.3, 12.5, 14.5)),
    1: (("V_3V3", "V", 3.3, 0.03, 3.2, 3.4), ("V_1V0", "V", 1.0, 0.008, 0.97, 1.03),
        ("I_IDLE", "A", 0.85, 0.05, None, 1.0), ("R_ISO", "MOhm", 500.0, 60.0, 100.0, None)),
    2: (("GAIN", "dB", 25.0, 0.5, 23.5, 26.5), ("NOISE_FIGURE", "dB", 2.4, 0.2, None, 3.0),
        ("P_OUT", "dBm", 33.0, 0.4, 31.5, None), ("I_SUPPLY", "A", 2.1, 0.1, None, 2.5)),
    3: (("TX_POWER", "W", 250.0, 5.0, 235.0, None), ("RX_SENSITIVITY", "dBm", -102.0, 1.0, None, -98.0),
        ("BIT_FAULTS", "count", 0.0, 0.0, 0.0, 0.0), ("TEMP_RISE", "degC", 18.0, 2.0, None, 25.0)),
    4: (("BIT_FAULTS", "count", 0.0, 0.0, 0.0, 0.0), ("DETECT_RANGE", "km", 185.0, 4.0, 170.0, None),
        ("POWER_IN", "kW", 3.2, 0.08, None, 3.6), ("BOOT_TIME", "s", 42.0, 3.0, None, 60.0)),
}

HOLD_REASONS = (
    "Supplier advisory: possible counterfeit date codes",
    "Solderability test failure on sample",
    "Shelf life exceeded at point of use",
    "Moisture sensitivity: dry-pack breached",
    "Supplier CoC does not match drawing revision",
    "Customer source inspection pending",
)
REJECT_REASONS = (
    "Incoming inspection rejected: dimensions out of tolerance",
    "Incoming inspection rejected: damaged packaging / ESD bag breached",
    "Incoming inspection rejected: CoC missing",
    "Incoming inspection rejected: wrong part marking",
)
NC_FAIL_TEXT = {
    0: "Die probe parametric failure",
    1: "ICT failure: solder short / open",
    2: "Module functional test failure",
    3: "LRU acceptance test failure",
    4: "System acceptance test failure",
}


class Bench:
    """A test bench whose calibration history is a pure function of time (consistent even when
    tests are generated out of time order): calibration k is valid from ``t0 + k * period``;
    at a few boundaries the recalibration is late by ``overrun`` and tests keep the old id."""

    __slots__ = ("bench_id", "t0", "period", "overrun", "salt", "reported")

    def __init__(self, bench_id: str, t0: int, period: int, overrun: int, salt: int) -> None:
        self.bench_id = bench_id
        self.t0 = t0
        self.period = period
        self.overrun = overrun
        self.salt = salt
        self.reported = -1  # last calibration index whose overrun was raised as an NCR

    def late(self, k: int) -> bool:
        return k >= 1 and (self.salt + 7 * k) % 6 == 0

    def calibration(self, t: int) -> tuple[int, int]:
        """(calibration index, due date) in force for a test at ``t``."""
        k = (t - self.t0) // self.period
        if self.late(k) and t - (self.t0 + k * self.period) < self.overrun:
            k -= 1
        return k, self.t0 + (k + 1) * self.period


def build_catalogue(rng: random.Random, n_sites: int, only: Sequence[str] | None) -> list[Program]:
    """The programmes of ``PROGRAMMES`` (all, or those ``only`` names by id or code) with their
    parts, BOMs and sites among ``n_sites`` plants (boards at one, modules / LRUs / systems at the
    next); procedure versions and BOM quantities are drawn from ``rng``."""
    progs: list[Program] = []
    defs = [d for d in PROGRAMMES if only is None or d[0] in only or d[1] in only]
    if not defs:
        raise ValueError(f"no known programme in {only!r}")
    for idx, (pid, code, name, weight, platform, customers, ics, structure) in enumerate(defs):
        prog = Program(idx, pid, code, name, weight, platform, tuple(customers))
        board_site = idx % n_sites
        final_site = (idx + 1) % n_sites
        prog.site_for_level = (board_site, board_site, final_site, final_site, final_site)
        ic_mats = [_ic(pn) for pn in ics]
        for pcode, (pname, _children, _dies) in structure.items():
            lvl = _LEVEL_OF[pcode[0]]
            part = Part(prog, pcode, lvl, pname)
            part.part_number = f"{code}-{pcode}"
            part.procedure_id = f"{_PROC_PREFIX[lvl]}-{part.part_number}"
            part.procedure_version = f"{rng.choice('ABC')}.{rng.randint(1, 9)}"
            if lvl == 0:
                part.bom = [(GAN_WAFER, 1)]
            elif lvl == 1:
                pwb = _m(f"PWB-{code}-{pcode}", "recv", "pcs", 200, 0, "SUP-NORDPCB")
                chosen = rng.sample(ic_mats, 2)
                part.bom = [(pwb, 1), (SOLDER_PASTE, rng.randint(2, 5)), (PASSIVES, rng.randint(80, 200))]
                part.bom += [(m, rng.randint(1, 4)) for m in chosen]
                part.coat = [(CC_MIX, rng.randint(15, 35))]
            elif lvl == 2:
                hsg = _m(f"HSG-{code}-{pcode}", "recv", "pcs", 50, 0, "SUP-CHASSISWORKS")
                part.bom = [(hsg, 1), (CONNECTOR, 2), (FASTENERS, 8)]
            elif lvl == 3:
                chs = _m(f"CHS-{code}-{pcode}", "recv", "pcs", 20, 0, "SUP-CHASSISWORKS")
                hrn = _m(f"HRN-{code}-{pcode}", "recv", "pcs", 20, 0, "SUP-CABLETEC")
                part.bom = [(chs, 1), (hrn, 1), (GAP_PAD, 40), (FASTENERS, 12)]
            else:
                cbl = _m(f"CBL-{code}-{pcode}", "recv", "pcs", 10, 0, "SUP-CABLETEC")
                part.bom = [(cbl, 1), (FASTENERS, 24)]
            prog.parts[pcode] = part
        for pcode, (_pname, children, dies) in structure.items():
            part = prog.parts[pcode]
            part.children = [(prog.parts[c], tuple(pos)) for c, pos in children]
            part.dies = [prog.parts[d] for d in dies]
            if part.level == 4:
                prog.system = part
            elif part.level == 3:
                prog.lrus.append(part)
        per_level = [0.0] * 5

        def count(p: Part, mult: float, per_level: list[float] = per_level) -> None:
            per_level[p.level] += mult
            for c, pos in p.children:
                count(c, mult * len(pos))
            for d in p.dies:
                count(d, mult)

        assert prog.system is not None
        count(prog.system, 1.0)
        prog.per_level = tuple(per_level)
        progs.append(prog)
    return progs


def build_benches(
    rng: random.Random, codes: Sequence[str], start_ms: int
) -> dict[tuple[int, int], list[Bench]]:
    """The test benches of each site (``codes``: the sites' codes) and level, keyed (site index,
    level), with calibration periods and first due dates around ``start_ms`` drawn from ``rng``."""
    benches: dict[tuple[int, int], list[Bench]] = {}
    for si, code in enumerate(codes):
        for lvl, (prefix, n, *_rest) in TESTS.items():
            lst = []
            for i in range(1, n + 1):
                period = rng.randint(90, 180) * DAY
                overrun = rng.randint(4 * HOUR, 2 * DAY)
                salt = rng.randrange(6)
                # first due date somewhere in the first period
                t0 = start_ms + rng.randint(6 * HOUR, period) - period
                if lvl == 3 and i == 1:
                    # the first ATE of each site is due early and recalibrated late
                    t0 = start_ms + rng.randint(6 * HOUR, 20 * HOUR) - period
                    overrun = rng.randint(6 * HOUR, 12 * HOUR)
                    salt = (6 - 7 % 6) % 6  # late(1) is True
                lst.append(Bench(f"{code}-{prefix}-{i:02d}", t0, period, overrun, salt))
            benches[(si, lvl)] = lst
    return benches


# ---------------------------------------------------------------------------------------------
# The quality system: what the floor knows when a unit is about to ship
# ---------------------------------------------------------------------------------------------

FOREVER = 1 << 62
GATING = frozenset({"PENDING", "SCRAP", "RETURN_TO_SUPPLIER"})  # NC dispositions that stop shipping
P_HOLD_IGNORED = 0.05  # a hold the floor does not honour: the lot is used while held
P_SHIP_ANYWAY = 0.02  # a shipment the gate stops that leaves anyway


class Lot:
    """A lot on the floor: what is left, its hold, and what it was made from / received as."""

    __slots__ = ("lot_id", "remaining", "blocked_from", "held_from", "held_until", "inputs", "supplier",
                 "supplier_lot", "received")  # fmt: skip

    def __init__(self, lot_id: str, remaining: int, inputs: tuple[Lot, ...] = (), supplier: str = "",
                 supplier_lot: str = "", received: int = 0) -> None:  # fmt: skip
        self.lot_id = lot_id
        self.remaining = remaining
        self.blocked_from = FOREVER  # the floor stops using the lot from this time (held)
        self.held_from = FOREVER  # on hold / quarantine from (its status events) ...
        self.held_until: int | None = FOREVER  # ... until released (None: scrapped, for good)
        self.inputs = inputs
        self.supplier = supplier
        self.supplier_lot = supplier_lot
        self.received = received



class MatState:
    """A production area's open lot of one material, and the lots it is made from."""

    __slots__ = ("usable", "sources")

    def __init__(self, n: int) -> None:
        self.usable: Lot | None = None
        self.sources: list[Lot | None] = [None] * n


class Batch:
    """One batch of systems of a programme: where each level's work stands, its work orders."""

    __slots__ = ("no", "start", "prog", "cursor", "step", "wos")

    def __init__(self, no: int, start: int, prog: Program, n_sys: int) -> None:
        self.no = no
        self.start = start
        self.prog = prog
        self.cursor = [start + lvl * STAGE for lvl in range(5)]
        # spread the starts of each level's units over ~100 minutes of its stage
        self.step = [int(100 * MIN / max(1.0, prog.per_level[lvl] * n_sys)) for lvl in range(5)]
        self.wos: dict[str, str] = {}


Op = tuple[str, str, int, int]  # station, operator, start, end
Test = tuple[str, int, int]  # bench, start, end


class Trace:
    """What a unit's backward trace shows: its lots, operations (station, operator, start, end),
    tests (bench, start, end), and its components and consumed units (their traces)."""

    __slots__ = ("uii", "lots", "ops", "tests", "kids")

    def __init__(self, uii: str) -> None:
        self.uii = uii
        self.lots: list[Lot] = []
        self.ops: list[Op] = []
        self.tests: list[Test] = []
        self.kids: list[Trace] = []

    def contents(self) -> tuple[set[str], list[Lot], list[Op], list[Test]]:
        """Units, lots (with the lots they were made from), operations and tests of the tree."""
        units: set[str] = set()
        direct: list[Lot] = []
        ops: list[Op] = []
        tests: list[Test] = []
        stack = [self]
        while stack:
            x = stack.pop()
            units.add(x.uii)
            direct += x.lots
            ops += x.ops
            tests += x.tests
            stack += x.kids
        lots: dict[int, Lot] = {}
        todo = direct
        while todo:
            lot = todo.pop()
            if id(lot) not in lots:
                lots[id(lot)] = lot
                todo += lot.inputs
        return units, list(lots.values()), ops, tests


class Nc:
    """A nonconformance that gates from ``opened`` until ``closes`` (its review-board decision;
    ``FOREVER``: never)."""

    __slots__ = ("kind", "target", "ws", "we", "opened", "closes")

    def __init__(self, kind: str, target: str, window: tuple[int, int] | None, opened: int,
                 closes: int) -> None:  # fmt: skip
        self.kind = kind
        self.target = target
        self.ws, self.we = window if window else (-FOREVER, FOREVER)
        self.opened = opened
        self.closes = closes

    def matches(self, units: set[str], lots: list[Lot], ops: list[Op], tests: list[Test]) -> bool:
        """The backward statement of the recall rules (``streams.alerts.nc_matches``)."""
        k, tid, ws, we = self.kind, self.target, self.ws, self.we
        if k == "LOT":
            return any(x.lot_id == tid for x in lots)
        if k == "SERIAL":
            return tid in units
        if k == "SUPPLIER_LOT":
            return any(x.supplier and f"{x.supplier}:{x.supplier_lot}" == tid for x in lots)
        if k == "SUPPLIER":
            return any(x.supplier == tid and ws <= x.received <= we for x in lots)
        if k in ("STATION", "OPERATOR"):
            i = 0 if k == "STATION" else 1
            return any(op[i] == tid and op[3] >= ws and op[2] <= we for op in ops)
        if k == "BENCH":
            return any(b == tid and e >= ws and s <= we for b, s, e in tests)
        return False


class QualityGate:
    """The NCs that gate shipping, and the check a shipment passes."""

    def __init__(self) -> None:
        self.ncs: list[Nc] = []

    def add(self, nc: Nc) -> None:
        self.ncs.append(nc)

    def prune(self, t: int) -> None:
        """Forget the NCs released before ``t`` (no check comes earlier)."""
        self.ncs = [n for n in self.ncs if n.closes > t]

    def blocking(self, trace: Trace, t: int) -> list[int | None]:
        """For a shipment of ``trace`` at ``t``: when each cause that gates it stops (None: never)."""
        units, lots, ops, tests = trace.contents()
        out = [x.held_until for x in lots if x.held_from <= t and (x.held_until is None or t < x.held_until)]
        for n in self.ncs:
            if n.opened <= t < n.closes and n.matches(units, lots, ops, tests):
                out.append(None if n.closes >= FOREVER else n.closes)
        return out
