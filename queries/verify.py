"""``traceline verify``: is the store what the sink landed? And the quick check a report prints.

:func:`verify_store` reads the store as it is and checks, per chained (topic, partition):

* **the rows against their chain entries**: every raw row (the raw event tables, and
  ``alerts``) is re-hashed from the stored values (``sinks.chain.row_hashes``, the function the
  sink hashed it with) and met with the ``event_chain`` entry at its offset: a different hash is
  an *altered* row, an entry without its row a *deleted* one, a row without an entry an
  *inserted* one; rows at or below what ``chain_start`` recorded when the chain began are
  *unchained* (landed before it) and counted against it: more is an insertion, fewer a deletion;
* **the chain itself**: each entry must follow from the one before (``sha256(prev ||
  row_hash)`` from ``sinks.chain.genesis``); an entry that does not is an edited, deleted or
  inserted chain entry; two different entries at one offset are an inserted one;
* **the signed heads**: each ``chain_heads`` row must carry a valid Ed25519 signature of the
  sink's key and name a chain hash the chain holds at that offset (a rewritten chain, or a
  truncated one, fails here); a chain with no valid head at all is a finding; entries after the
  last signed head are the *unsigned tail* (reported, not a finding).

And the **derived tables** against the raw rows they come from (exact, in SQL: ``EXCEPT
DISTINCT`` both ways): ``lot_consumption`` and ``unit_consumption`` (from ``operations``),
``lot_lineage`` (from ``lot_transformed``), ``lot_units`` (its (lot, unit) pairs from
``operations``' consumed lots; seq-0 rows as the sink writes them; later rows against the
``unit_genealogy`` version they name) and ``unit_facts`` (from its materialized views'
sources). Not covered: ``unit_genealogy`` and ``root_members`` (the genealogy processor's
output: the changes topic is not chained; checked only for consistency with ``lot_units`` and
``unit_facts``), ``dead_letters``, ``issued_reports`` (each row is signed: ``queries.
report_render.verify_report_file``).

:func:`quick_check` is the cheap part a report prints: the latest signed head of every chain
verified and found in the chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa

from sinks.audit import check as check_audit
from sinks.chain import CHAINED_TABLES, Verifier, genesis, head_message, link, row_hashes
from sinks.rows import RAW_TABLES, SCHEMAS
from sinks.tables import VIEWS

__all__ = [
    "EXIT_TAMPERED",
    "ChainCheck",
    "ChainStatus",
    "DerivedCheck",
    "Finding",
    "Verification",
    "DERIVED_COVERED",
    "quick_check",
    "verify_store",
]

#: the exit code of ``traceline verify`` / ``traceline report verify`` when tampering is found
EXIT_TAMPERED = 5
#: the derived tables :func:`verify_store` checks against their sources
DERIVED_COVERED = ("lot_consumption", "unit_consumption", "lot_lineage", "lot_units", "unit_facts")


class _Store(Protocol):
    database: str

    def query_rows(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table: ...


@dataclass(frozen=True)
class Finding:
    """One sign of tampering. ``kind``: altered | deleted | inserted (a row of ``table``),
    chain (an ``event_chain`` entry that does not follow), head (a signed head that fails)."""

    kind: str
    table: str
    key: str
    topic: str = ""
    partition: int | None = None
    offset: int | None = None
    detail: str = ""

    @property
    def text(self) -> str:
        where = f" at {self.topic}[{self.partition}]@{self.offset}" if self.offset is not None else ""
        return f"{self.kind.upper()} {self.table} {self.key}{where}: {self.detail}".rstrip(": ")


@dataclass
class ChainCheck:
    topic: str
    partition: int
    entries: int = 0
    rows: int = 0  # raw rows met with their entry
    first_offset: int | None = None
    head_offset: int | None = None
    signed_offset: int | None = None  # latest valid signed head
    unsigned_tail: int = 0  # entries after it
    unchained: int = 0  # rows below the chain's start, landed before it began
    collapsed: int = 0  # entries whose row the engine merged into an equal re-send


@dataclass
class DerivedCheck:
    table: str
    source: str
    findings: int = 0
    unverifiable: int = 0  # rows naming a genealogy version merged away since


@dataclass
class Verification:
    findings: list[Finding] = field(default_factory=list)
    chains: list[ChainCheck] = field(default_factory=list)
    derived: list[DerivedCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    key_id: str | None = None

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else EXIT_TAMPERED


# ----------------------------------------------------------------------------- chains


def _chain_keys(store: _Store) -> tuple[list[tuple[str, int]], str]:
    """Every (topic, partition) that has chain entries or chained rows; the alerts topic."""
    keys = {
        (str(t), int(p))
        for t, p in store.query_rows("SELECT DISTINCT kafka_topic, kafka_partition FROM event_chain")[1]
    }
    _n, rows = store.query_rows("SELECT DISTINCT kafka_topic FROM event_chain WHERE raw_table = 'alerts'")
    alerts_topic = str(rows[0][0]) if rows else "(alerts topic)"
    for table in RAW_TABLES:
        keys |= {
            (str(t), int(p))
            for t, p in store.query_rows(f"SELECT DISTINCT kafka_topic, kafka_partition FROM {table}")[1]
        }  # noqa: S608 - fixed names
    keys |= {
        (alerts_topic, int(p)) for (p,) in store.query_rows("SELECT DISTINCT kafka_partition FROM alerts")[1]
    }
    return sorted(keys), alerts_topic


def _stored_rows(store: _Store, table: str, topic: str, part: int, alerts: bool) -> list[tuple[Any, ...]]:
    """(offset, key, row_hash) of ``table``'s rows at (topic, partition)."""
    names = SCHEMAS[table].names
    cols = ", ".join(f"`{n}`" for n in names)
    where = "kafka_partition = {p:UInt32}" + ("" if alerts else " AND kafka_topic = {t:String}")
    data = store.query_arrow(f"SELECT {cols} FROM {table} WHERE {where}", {"t": topic, "p": part})  # noqa: S608
    if not data.num_rows:
        return []
    hashes = row_hashes(table, data)
    offsets = data.column("kafka_offset").to_pylist()
    if alerts:
        ids = [
            f"{a}:{v}"
            for a, v in zip(
                data.column("alert_id").to_pylist(), data.column("version").to_pylist(), strict=True
            )
        ]
    else:
        ids = data.column("event_id").to_pylist()
    return list(zip(offsets, ids, hashes, strict=True))


Start = dict[tuple[str, str, int], tuple[int, int]]  # (table, topic, partition) -> (max offset, keys)


def _chain_start(store: _Store) -> Start:
    """What migration 6 recorded: each chained table's rows landed before the chain began."""
    _n, rows = store.query_rows(
        "SELECT raw_table, kafka_topic, kafka_partition, max(max_offset), max(keys) FROM chain_start"
        " GROUP BY raw_table, kafka_topic, kafka_partition"
    )
    return {(str(t), str(tp), int(p)): (int(o), int(k)) for t, tp, p, o, k in rows}


def _check_chain(
    store: _Store,
    topic: str,
    part: int,
    alerts_topic: str,
    starts: Start,
    verifier: Verifier | None,
    out: Verification,
) -> None:
    c = ChainCheck(topic, part)
    out.chains.append(c)
    find = out.findings

    def bad(kind: str, table: str, key: str, off: int | None, detail: str) -> None:
        find.append(Finding(kind, table, key, topic, part, off, detail))

    _n, entries = store.query_rows(
        "SELECT kafka_offset, event_id, raw_table, hex(row_hash), hex(chain_hash) FROM event_chain"
        " WHERE kafka_topic = {t:String} AND kafka_partition = {p:UInt32} ORDER BY kafka_offset",
        {"t": topic, "p": part},
    )
    by_off: dict[int, list[tuple[str, str, bytes, bytes]]] = {}
    for off, eid, table, rh, ch in entries:
        got = by_off.setdefault(int(off), [])
        e = (str(eid), str(table), bytes.fromhex(rh), bytes.fromhex(ch))
        if e not in got:
            got.append(e)
    prev = genesis(topic, part)
    for off, es in by_off.items():  # in offset order
        for e in es[1:]:
            bad("inserted", "event_chain", e[0], off, "a second, different chain entry at this offset")
        follows = [e for e in es if link(prev, e[2]) == e[3]]
        if not follows:
            e = es[0]
            bad(
                "chain",
                "event_chain",
                e[0],
                off,
                "does not follow from the entry before: edited, or an entry before it deleted or inserted",
            )
        prev = (follows or es)[0][3]
    c.entries = len(by_off)
    if by_off:
        c.first_offset, c.head_offset = min(by_off), max(by_off)
    # the rows
    tables = ["alerts"] if topic == alerts_topic else [t for t in CHAINED_TABLES if t != "alerts"]
    seen: set[int] = set()  # offsets whose row matched its entry
    for table in tables:
        start = starts.get((table, "" if table == "alerts" else topic, part))
        before: set[str] = set()  # keys of the rows landed before the chain began
        rows = _stored_rows(store, table, topic, part, table == "alerts")
        hashes_by_id: dict[str, set[bytes]] = {}
        for _off, key, rh in rows:
            hashes_by_id.setdefault(key, set()).add(rh)
        matched = [any(e[1] == table and e[2] == rh for e in by_off.get(off, [])) for off, _k, rh in rows]
        for (off, _k, _rh), ok in zip(rows, matched, strict=True):
            if ok and off not in seen:  # an equal row twice (a replay before a merge): one entry
                seen.add(off)
                c.rows += 1
        for (off, key, _rh), ok in zip(rows, matched, strict=True):
            es = [e for e in by_off.get(off, []) if e[1] == table]
            if ok:
                continue
            if off in seen:
                bad("inserted", table, key, off, "a second, different row at an offset whose row is intact")
            elif es:
                bad("altered", table, key, off, "its content differs from what the sink landed")
            elif by_off.get(off):
                bad("inserted", table, key, off, f"the chain holds a {by_off[off][0][1]} row at this offset")
            elif start is not None and off <= start[0]:
                before.add(key)
                c.unchained += 1
            else:
                bad("inserted", table, key, off, "no chain entry: not landed by the sink")
        if start is not None and len(before) != start[1]:
            more = len(before) > start[1]
            bad(
                "inserted" if more else "deleted",
                table,
                f"{abs(len(before) - start[1])} rows landed before the chain began",
                None,
                f"{len(before)} distinct keys at or below offset {start[0]}; {start[1]} when the chain began",
            )
        at = {r[0] for r in rows}
        for off, es in by_off.items():
            for eid, etable, rh, _ch in es:
                if etable != table or off in seen or off in at:
                    continue
                if rh in hashes_by_id.get(eid, ()):  # the engine merged it into an equal re-send
                    c.collapsed += 1
                else:
                    bad("deleted", table, eid, off, "the chain holds this row; the table does not")
    _check_heads(store, c, by_off, verifier, out)


def _check_heads(
    store: _Store,
    c: ChainCheck,
    by_off: Mapping[int, list[tuple[str, str, bytes, bytes]]],
    verifier: Verifier | None,
    out: Verification,
) -> None:
    _n, heads = store.query_rows(
        "SELECT kafka_offset, hex(chain_hash), key_id, hex(signature), signed_at FROM chain_heads"
        " WHERE kafka_topic = {t:String} AND kafka_partition = {p:UInt32} ORDER BY kafka_offset",
        {"t": c.topic, "p": c.partition},
    )
    if verifier is None:
        return
    for off, ch, key_id, sig, at in heads:
        off, ch = int(off), bytes.fromhex(ch)
        if key_id != verifier.key_id or not verifier.verify(
            bytes.fromhex(sig), head_message(c.topic, c.partition, off, ch, _aware(at))
        ):
            out.findings.append(
                Finding(
                    "head",
                    "chain_heads",
                    f"key {key_id}",
                    c.topic,
                    c.partition,
                    off,
                    detail="signature does not verify with the sink's key: forged or edited",
                )
            )
            continue
        if not any(e[3] == ch for e in by_off.get(off, [])):
            out.findings.append(
                Finding(
                    "head",
                    "event_chain",
                    f"signed head {ch.hex()[:16]}",
                    c.topic,
                    c.partition,
                    off,
                    detail="the chain no longer holds the signed head: rewritten or truncated",
                )
            )
            continue
        c.signed_offset = off
    if c.entries and c.signed_offset is None:
        out.findings.append(
            Finding(
                "head",
                "chain_heads",
                "no valid signed head",
                c.topic,
                c.partition,
                c.head_offset,
                "the chain has entries but no head signed with the sink's key",
            )
        )
    elif c.signed_offset is not None:
        c.unsigned_tail = sum(1 for o in by_off if o > (c.signed_offset or 0))


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- derived tables

_TAIL = "event_id, event_time, site, program"
_LC = f"lot_id, uii, part_number, quantity, work_order, operation, station_id, operator_id, {_TAIL}"
_UC = f"consumed_uii, consumer_uii, work_order, operation, station_id, operator_id, {_TAIL}"
_LL = f"input_lot_id, output_lot_id, input_quantity, transformation, part_number, station_id, {_TAIL}"
_FACTS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "lot_consumption",
        "operations",
        _LC,
        "lot_id, uii, event_id",
        f"SELECT {_LC} FROM operations"
        " ARRAY JOIN consumed_lot_ids AS lot_id, consumed_lot_quantities AS quantity",
    ),
    (
        "unit_consumption",
        "operations",
        _UC,
        "consumed_uii, consumer_uii, event_id",
        f"SELECT {_UC} FROM (SELECT *, uii AS consumer_uii FROM operations)"
        " ARRAY JOIN consumed_uiis AS consumed_uii",
    ),
    (
        "lot_lineage",
        "lot_transformed",
        _LL,
        "input_lot_id, output_lot_id, event_id",
        f"SELECT {_LL} FROM (SELECT *, lot_id AS output_lot_id FROM lot_transformed)"
        " ARRAY JOIN input_lot_ids AS input_lot_id, input_quantities AS input_quantity",
    ),
)


def _diff(
    store: _Store, out: Verification, check: DerivedCheck, cols: str, key: str, expected: str, stored: str
) -> None:
    """``stored`` EXCEPT ``expected`` (altered when the key is expected, else inserted) and the
    keys of ``expected`` not stored (deleted)."""
    names = [c.strip() for c in key.split(",")]

    def keytext(row: Sequence[Any]) -> str:
        return " ".join(f"{n}={v}" for n, v in zip(names, row, strict=False))

    _n, extra = store.query_rows(
        f"SELECT {key}, ({key}) IN (SELECT {key} FROM ({expected})) AS known"  # noqa: S608 - fixed text
        f" FROM (SELECT {cols} FROM ({stored}) EXCEPT DISTINCT SELECT {cols} FROM ({expected}))"
    )
    for *k, known in extra:
        kind = "altered" if known else "inserted"
        why = (
            f"does not match the {check.source} row it comes from"
            if known
            else f"no {check.source} row gives it"
        )
        out.findings.append(Finding(kind, check.table, keytext(k), detail=why))
        check.findings += 1
    _n, missing = store.query_rows(
        f"SELECT {key} FROM ({expected}) EXCEPT DISTINCT SELECT {key} FROM ({stored})"  # noqa: S608
    )
    for gone in missing:
        out.findings.append(
            Finding(
                "deleted", check.table, keytext(gone), detail=f"{check.source} gives it; the table lacks it"
            )
        )
        check.findings += 1


def _check_lot_units(store: _Store, out: Verification) -> None:
    check = DerivedCheck("lot_units", "operations, unit_genealogy")
    out.derived.append(check)
    pairs = "SELECT DISTINCT lot_id, uii, site FROM operations ARRAY JOIN consumed_lot_ids AS lot_id"

    def add(kind: str, rows: list[tuple[Any, ...]], why: str) -> None:
        for lot, uii, seq in rows:
            out.findings.append(Finding(kind, "lot_units", f"lot_id={lot} uii={uii} seq={seq}", detail=why))
            check.findings += 1

    q = store.query_rows
    add(
        "inserted",
        q(
            "SELECT lot_id, uii, any(seq) FROM lot_units"  # noqa: S608 - fixed text
            f" WHERE (lot_id, uii) NOT IN (SELECT lot_id, uii FROM ({pairs})) GROUP BY lot_id, uii"
        )[1],
        "no operation consumed this lot in this unit",
    )
    gone = q(f"SELECT lot_id, uii FROM ({pairs}) EXCEPT DISTINCT SELECT lot_id, uii FROM lot_units")[1]  # noqa: S608
    add(
        "deleted",
        [(lot, uii, "-") for lot, uii in gone],
        "an operation consumed this lot in this unit; it is missing",
    )
    known = f"(l.lot_id, l.uii) IN (SELECT lot_id, uii FROM ({pairs}))"
    add(
        "altered",
        q(
            f"SELECT lot_id, uii, seq FROM lot_units AS l WHERE {known}"  # noqa: S608 - fixed text
            f" AND ((lot_id, uii, site) NOT IN ({pairs})"
            " OR (seq = 0 AND NOT (isNull(parent_uii) AND root_uii = uii AND empty(path))))"
        )[1],
        "not a row the sink or the genealogy processor wrote (its site; or a seq-0 row not its own root)",
    )
    add(
        "altered",
        q(
            "SELECT l.lot_id, l.uii, l.seq FROM lot_units AS l"  # noqa: S608 - fixed text
            " INNER JOIN unit_genealogy AS g ON g.uii = l.uii AND g.seq = l.seq"
            f" WHERE l.seq > 0 AND {known} AND NOT (g.root_uii = l.root_uii AND g.path = l.path"
            " AND ifNull(g.parent_uii, '\\0') = ifNull(l.parent_uii, '\\0'))"
        )[1],
        "its place in the tree differs from the unit_genealogy version it names",
    )
    add(
        "altered",
        q(
            "SELECT l.lot_id, l.uii, l.seq FROM lot_units AS l LEFT JOIN"
            " (SELECT uii, max(seq) AS m FROM unit_genealogy GROUP BY uii) AS g ON g.uii = l.uii"
            " WHERE l.seq > g.m"
        )[1],
        "names a genealogy version (seq) that unit_genealogy never had",
    )
    check.unverifiable = int(
        q(
            "SELECT count() FROM lot_units AS l LEFT JOIN (SELECT uii, groupArray(seq) AS seqs, max(seq) AS m"
            " FROM unit_genealogy GROUP BY uii) AS g ON g.uii = l.uii WHERE l.seq > 0 AND l.seq <= g.m"
            " AND NOT has(g.seqs, l.seq)"
        )[1][0][0]
    )


def _check_unit_facts(store: _Store, out: Verification) -> None:
    """unit_facts against its views' SELECTs; GENEALOGY rows of a version unit_genealogy merged
    away since are not checkable (counted)."""
    check = DerivedCheck(
        "unit_facts", "unit_genealogy, assembly_events, unit_consumption, shipments, unit_tests"
    )
    out.derived.append(check)
    db = store.database
    expected = " UNION ALL ".join(v.render_select(db) for v in VIEWS if v.target == "unit_facts")
    cols = "uii, kind, link, root_uii, path, seq, event_time, event_id, attrs"
    latest = "(SELECT uii, max(seq) AS m FROM unit_genealogy GROUP BY uii)"
    stored = (
        f"SELECT f.* FROM unit_facts AS f LEFT JOIN {latest} AS g ON g.uii = f.uii"
        " WHERE f.kind != 'GENEALOGY' OR f.seq >= g.m"
    )
    expected = (
        f"SELECT e.* FROM ({expected}) AS e LEFT JOIN {latest} AS g ON g.uii = e.uii"
        " WHERE e.kind != 'GENEALOGY' OR e.seq >= g.m"
    )
    check.unverifiable = int(
        store.query_rows(
            f"SELECT count() FROM unit_facts AS f LEFT JOIN {latest} AS g ON g.uii = f.uii"  # noqa: S608
            " WHERE f.kind = 'GENEALOGY' AND f.seq < g.m"
        )[1][0][0]
    )
    _diff(store, out, check, cols, "uii, kind, seq, event_id", expected, stored)


def _check_derived(store: _Store, out: Verification) -> None:
    for table, source, cols, key, expected in _FACTS:
        check = DerivedCheck(table, source)
        out.derived.append(check)
        _diff(store, out, check, cols, key, expected, f"SELECT {cols} FROM {table}")
    _check_lot_units(store, out)
    _check_unit_facts(store, out)


def verify_store(store: _Store, verifier: Verifier | None) -> Verification:
    """Check the whole store (see the module doc). ``verifier``: the sink's chain key
    (``sinks.chain.Verifier.load(chain_key_path(data_dir))``); None: heads are not checked (a
    note says so)."""
    out = Verification(key_id=verifier.key_id if verifier else None)
    if verifier is None:
        out.notes.append("signed heads not checked: no chain key (a rewrite of a whole chain would pass)")
    keys, alerts_topic = _chain_keys(store)
    starts = _chain_start(store)
    for topic, part in keys:
        _check_chain(store, topic, part, alerts_topic, starts, verifier, out)
    _check_derived(store, out)
    audit = check_audit(store, verifier)
    out.findings += [Finding(kind, "query_audit", key, detail=detail) for kind, key, detail in audit.findings]
    if audit.rows:
        out.notes.append(f"query audit log: {audit.rows} rows of {audit.servers} server(s) checked")
    unique: dict[tuple[Any, ...], Finding] = {}  # one finding per row (a row may fail two checks)
    for f in out.findings:
        unique.setdefault((f.kind, f.table, f.key, f.topic, f.partition, f.offset), f)
    out.findings = list(unique.values())
    unchained = sum(c.unchained for c in out.chains)
    if unchained:
        out.notes.append(f"{unchained} rows landed before the chain began (migration 6): not verifiable")
    tail = sum(c.unsigned_tail for c in out.chains)
    if tail:
        out.notes.append(
            f"{tail} chain entries after the last signed heads (signed when the sink is next idle)"
        )
    return out


# ----------------------------------------------------------------------------- the report's check


@dataclass(frozen=True)
class ChainStatus:
    """What a report rests on: the chain heads at report time, and whether they verified."""

    verified: bool
    reason: str  # verified: what was checked; not verified: why not
    heads: tuple[tuple[str, int, int, str], ...] = ()  # (topic, partition, offset, chain hash hex)

    @property
    def text(self) -> str:
        return ("verified: " if self.verified else "not verified: ") + self.reason

    @property
    def heads_text(self) -> str:
        if not self.heads:
            return "none"
        return "; ".join(f"{t}[{p}]@{o} {h[:16]}" for t, p, o, h in self.heads)


class _Query(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


def quick_check(store: _Query, verifier: Verifier | None) -> ChainStatus:
    """The latest signed head of every chain: its signature and its presence in the chain (a
    few point reads, not a re-hash of the rows: ``traceline verify`` does that)."""
    if verifier is None:
        return ChainStatus(False, "no chain key available to the report (run `traceline verify`)")
    chains = store.query(
        "SELECT kafka_topic AS t, kafka_partition AS p, max(kafka_offset) AS top FROM event_chain"
        " GROUP BY kafka_topic, kafka_partition ORDER BY t, p"
    )
    if not chains:
        return ChainStatus(False, "the store holds no hash chain (no rows landed since migration 6)")
    heads = store.query(
        "SELECT kafka_topic AS t, kafka_partition AS p,"
        " argMax(tuple(kafka_offset, hex(chain_hash), hex(signature), signed_at), kafka_offset) AS h"
        " FROM chain_heads WHERE key_id = {k:String} GROUP BY kafka_topic, kafka_partition",
        {"k": verifier.key_id},
    )
    signed = {(str(r["t"]), int(r["p"])): r["h"] for r in heads}
    out: list[tuple[str, int, int, str]] = []
    problems: list[str] = []
    tail = 0
    for c in chains:
        t, p = str(c["t"]), int(c["p"])
        h = signed.get((t, p))
        if h is None:
            problems.append(f"{t}[{p}] has no signed head")
            continue
        off, ch, sig, at = int(h[0]), bytes.fromhex(h[1]), bytes.fromhex(h[2]), _aware(h[3])
        if not verifier.verify(sig, head_message(t, p, off, ch, at)):
            problems.append(f"{t}[{p}]: the head's signature does not verify")
            continue
        found = store.query(
            "SELECT count() AS n FROM event_chain"
            " WHERE kafka_topic = {t:String} AND kafka_partition = {p:UInt32} AND kafka_offset = {o:UInt64}"
            " AND hex(chain_hash) = {h:String}",
            {"t": t, "p": p, "o": off, "h": ch.hex().upper()},
        )
        if not found or not int(found[0]["n"]):
            problems.append(f"{t}[{p}]@{off}: the chain no longer holds the signed head")
            continue
        tail += int(c["top"]) - off
        out.append((t, p, off, ch.hex()))
    if problems:
        return ChainStatus(False, "; ".join(problems), tuple(out))
    extra = f"; up to {tail} offsets landed after them, not yet signed" if tail else ""
    return ChainStatus(
        True, f"the signed heads of all {len(out)} chains verify and the chain holds them{extra}", tuple(out)
    )
