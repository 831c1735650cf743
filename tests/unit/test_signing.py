"""Attributable events without a broker: gateway keys, the signature format, the sink's judgement.

* ``schemas.signing.attest``: a valid signature of a registered key of the event's source is
  attributed; a changed value, an unknown key, a revoked key, another source's key and malformed
  headers are refused with their error class whether signatures are required or not; an
  unsigned event is accepted unattributed, or refused with ``require_signed``;
* key files are written owner-only and refused when others may read them; the registry is
  owner-only, reread when it changes (a revocation counts at once), holds rotations;
* the publisher signs what it stores (kept in the outbox, sent as headers), refuses another
  source's event; an outbox from before signatures opens and sends its rows unsigned;
* the sink (fake Kafka and store): a signed event lands with ``verified_source``; refused ones are
  dead-lettered with the reason and counted in a balanced ledger; the row hash covers the new
  columns only when set, so rows chained before them keep their hash.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from producers.outbox import Outbox
from producers.publisher import Publisher, _headers
from schemas.errors import EventValidationError, InvalidInputError
from schemas.jsonform import to_json_line
from schemas.kafka import read_dead_letter_headers
from schemas.signing import (
    BAD_SIGNATURE,
    KEY_ID_HEADER,
    REVOKED_KEY,
    SIG_HEADER,
    SOURCE_MISMATCH,
    UNKNOWN_KEY,
    UNSIGNED,
    UNSIGNED_EVENT,
    Attestation,
    GatewayKey,
    Refusal,
    RegisteredKey,
    SigningKeyError,
    attest,
    signed_message,
)
from sinks.chain import hashed_columns, row_hashes
from sinks.gateway_keys import GatewayKeyRegistry, default_key_file
from sinks.ledger import entry_gap
from sinks.rows import SinkRecord, rows_for_batch
from tests.unit.test_sink_land import SERDE, TOPICS, Msg, event, rig
from traceline.cli import app

BENCH = GatewayKey.generate("ict-bench-3")
CELL = GatewayKey.generate("cell-7-gw")
VALUE = b"\xc3\x01an avro record"


def registered(*keys: GatewayKey, revoked: tuple[str, ...] = ()) -> dict[str, RegisteredKey]:
    return {k.key_id: RegisteredKey(k.key_id, k.source, k.public, k.key_id in revoked) for k in keys}


KEYS = registered(BENCH, CELL)


def _refused(got: Attestation | Refusal) -> str:
    assert isinstance(got, Refusal), got
    return got.error


# ----------------------------------------------------------------------------- attest (pure)


def test_a_valid_signature_of_the_source_s_key_is_attributed() -> None:
    headers = BENCH.headers(VALUE)
    assert [n for n, _v in headers] == [SIG_HEADER, KEY_ID_HEADER]
    got = attest(headers, VALUE, "ict-bench-3", KEYS)
    assert got == Attestation("ict-bench-3", BENCH.key_id)
    assert attest(dict(headers), VALUE, "ict-bench-3", KEYS, require_signed=True) == got  # dict headers too
    # the wire format, as a gateway in another language computes it
    assert BENCH.key_id == hashlib.sha256(BENCH.public.public_bytes_raw()).hexdigest()[:16]
    BENCH.public.verify(dict(headers)[SIG_HEADER], b"traceline/event-signature/v1\x00" + VALUE)
    assert signed_message(VALUE) == b"traceline/event-signature/v1\x00" + VALUE


@pytest.mark.parametrize("required", [False, True])
def test_a_signature_that_does_not_hold_is_refused_with_its_reason(required: bool) -> None:
    kw = {"require_signed": required}
    tampered = attest(BENCH.headers(VALUE), VALUE + b"x", "ict-bench-3", KEYS, **kw)
    assert _refused(tampered) == BAD_SIGNATURE and "does not match" in tampered.reason  # type: ignore[union-attr]
    stranger = GatewayKey.generate("ict-bench-3")
    assert _refused(attest(stranger.headers(VALUE), VALUE, "ict-bench-3", KEYS, **kw)) == UNKNOWN_KEY
    revoked = registered(BENCH, CELL, revoked=(BENCH.key_id,))
    assert _refused(attest(BENCH.headers(VALUE), VALUE, "ict-bench-3", revoked, **kw)) == REVOKED_KEY
    # cell-7-gw's key signing an event that claims to come from the bench: a spoofed source
    spoof = attest(CELL.headers(VALUE), VALUE, "ict-bench-3", KEYS, **kw)
    assert _refused(spoof) == SOURCE_MISMATCH
    assert "'ict-bench-3'" in spoof.reason and "'cell-7-gw'" in spoof.reason  # type: ignore[union-attr]
    # a signature made with another key but naming the bench's key id
    forged = [(SIG_HEADER, CELL.sign(VALUE)), (KEY_ID_HEADER, BENCH.key_id.encode())]
    assert _refused(attest(forged, VALUE, "ict-bench-3", KEYS, **kw)) == BAD_SIGNATURE


@pytest.mark.parametrize(
    "headers",
    [
        [(SIG_HEADER, b"\0" * 64)],  # no key id
        [(KEY_ID_HEADER, b"abc")],  # no signature
        [(SIG_HEADER, b"\0" * 63), (KEY_ID_HEADER, b"abc")],  # not 64 bytes
        [(SIG_HEADER, None), (KEY_ID_HEADER, b"abc")],
        [*BENCH.headers(VALUE), *CELL.headers(VALUE)],  # two signatures: which one?
        [(SIG_HEADER, b"\0" * 64), (KEY_ID_HEADER, b"\xff\xfe")],
    ],
    ids=["no-key-id", "no-sig", "short", "null", "two", "not-ascii"],
)
def test_malformed_signature_headers_are_a_bad_signature_even_when_not_required(headers: Any) -> None:
    assert _refused(attest(headers, VALUE, "ict-bench-3", KEYS)) == BAD_SIGNATURE


def test_an_unsigned_event_is_unattributed_or_refused_when_signatures_are_required() -> None:
    assert attest(None, VALUE, "ict-bench-3", KEYS) is UNSIGNED
    assert attest([("event_id", b"x")], VALUE, "ict-bench-3", {}) == Attestation("", "")
    got = attest([("event_id", b"x")], VALUE, "ict-bench-3", KEYS, require_signed=True)
    assert _refused(got) == UNSIGNED_EVENT and "'ict-bench-3'" in got.reason  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- key files, registry


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_key_file_is_owner_only_never_overwritten_and_refused_when_others_can_read_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys" / "gw" / "bench.json"
    BENCH.save(path)
    assert (_mode(path), _mode(path.parent)) == (0o600, 0o700)
    back = GatewayKey.load(path)
    assert (back.source, back.key_id) == (BENCH.source, BENCH.key_id)
    assert back.sign(VALUE) == BENCH.sign(VALUE)  # Ed25519 is deterministic: the same key
    with pytest.raises(SigningKeyError, match="never overwritten"):
        CELL.save(path)
    path.chmod(0o640)
    with pytest.raises(SigningKeyError, match="accessible to others"):
        GatewayKey.load(path)
    path.chmod(0o600)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "key_id": CELL.key_id}))
    with pytest.raises(SigningKeyError, match="not its key's"):
        GatewayKey.load(path)
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "x.json").chmod(0o600)
    with pytest.raises(SigningKeyError, match="not a traceline gateway key"):
        GatewayKey.load(tmp_path / "x.json")


def test_the_registry_registers_rotates_revokes_and_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "data" / "gateway_keys.json"
    sink_side = GatewayKeyRegistry(path)  # what the sink holds
    assert dict(sink_side.keys()) == {}
    admin = GatewayKeyRegistry(path)  # what the CLI opens
    old = GatewayKey.generate("ict-bench-3")
    new = GatewayKey.generate("ict-bench-3")
    admin.create(old, default_key_file(tmp_path / "keys", old.source, old.key_id))
    assert _mode(path) == 0o600
    assert attest(old.headers(VALUE), VALUE, "ict-bench-3", sink_side.keys()) == Attestation(
        "ict-bench-3", old.key_id
    )
    admin.create(new, tmp_path / "keys" / "new.json")  # a rotation: both verify
    assert {k: v.revoked for k, v in sink_side.keys().items()} == {old.key_id: False, new.key_id: False}
    with pytest.raises(InvalidInputError, match="registered already"):
        admin.register("ict-bench-3", old.public_pem())
    assert [r.key_id for r in admin.revoke("ict-bench-3", old.key_id)] == [old.key_id]
    assert _refused(attest(old.headers(VALUE), VALUE, "ict-bench-3", sink_side.keys())) == REVOKED_KEY
    assert attest(new.headers(VALUE), VALUE, "ict-bench-3", sink_side.keys()).source == "ict-bench-3"  # type: ignore[union-attr]
    admin.revoke("ict-bench-3")
    assert all(not r.active for r in sink_side.records())
    with pytest.raises(InvalidInputError, match="no active key"):
        admin.revoke("ict-bench-3")
    with pytest.raises(InvalidInputError, match="not a source name"):
        admin.register("bad\nsource", new.public_pem())
    path.chmod(0o620)
    with pytest.raises(SigningKeyError, match="written by others"):
        GatewayKeyRegistry(path).keys()


def test_gateway_key_create_list_revoke_on_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    made = runner.invoke(app, ["gateway-key", "create", "ict-bench-3", "--data-dir", str(data)])
    assert made.exit_code == 0, made.output
    key_file = Path(made.stdout.strip().splitlines()[-1])
    key = GatewayKey.load(key_file)
    assert key.source == "ict-bench-3" and key_file.parent == data / "keys" / "gateways"
    assert (_mode(key_file), _mode(key_file.parent)) == (0o600, 0o700)
    listed = runner.invoke(app, ["gateway-key", "list", "--json", "--data-dir", str(data)])
    [row] = json.loads(listed.stdout)
    assert (row["source"], row["key_id"], row["revoked_at"]) == ("ict-bench-3", key.key_id, None)
    gone = runner.invoke(app, ["gateway-key", "revoke", "ict-bench-3", "--data-dir", str(data)])
    assert gone.exit_code == 0 and key.key_id in gone.output
    again = runner.invoke(app, ["gateway-key", "revoke", "ict-bench-3", "--data-dir", str(data)])
    assert again.exit_code == 2 and "no active key" in " ".join(again.output.split())


# ----------------------------------------------------------------------------- publisher, outbox


def test_the_publisher_signs_what_it_stores_and_refuses_another_source(tmp_path: Path) -> None:
    e = event("UnitTested")  # source ict-bench-3
    pub = Publisher(None, tmp_path / "outbox.sqlite", topic=TOPICS.events, serde=SERDE, signer=BENCH)
    assert pub.publish_many([e]) == 1
    with pytest.raises(EventValidationError, match="not this gateway's"):
        pub.encode(event("OperationCompleted"))  # cell-7-gw's
    [row] = pub.outbox.pending()
    assert row.key_id == BENCH.key_id and row.signature == BENCH.sign(row.value)
    headers = _headers(row)
    assert attest(headers, row.value, e.source, KEYS) == Attestation(e.source, BENCH.key_id)
    pub.close()


def test_an_outbox_from_before_signatures_opens_and_sends_its_rows_unsigned(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with sqlite3.connect(path) as db:  # the outbox as it was created before signatures
        db.executescript(
            "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,"
            " topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);"
        )
        db.execute("INSERT INTO outbox(event_id, topic, key, value) VALUES ('e1', 't', NULL, x'01')")
    box = Outbox(path)
    [row] = box.pending()
    assert (row.event_id, row.signature, row.key_id) == ("e1", None, None)
    assert _headers(row) == [("event_id", "e1")]
    assert box.add([("e2", "t", None, b"\x02")], [(b"s" * 64, "k")]).added == 1
    assert box.pending()[-1].signature == b"s" * 64
    box.close()


def test_publish_with_a_key_signs_every_line_and_refuses_other_sources(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    key_file = tmp_path / "gw" / "bench.json"
    BENCH.save(key_file)
    src = tmp_path / "e.jsonl"
    src.write_text(
        to_json_line(event("UnitTested")) + "\n" + to_json_line(event("OperationCompleted")) + "\n"
    )
    result = runner.invoke(
        app, ["publish", "--file", str(src), "--data-dir", str(data), "--key", str(key_file)]
    )
    text = " ".join(result.output.split())
    assert "line 2" in text and "not this gateway's" in text, text
    box = Outbox(data / "outbox.sqlite")
    [row] = box.pending()  # stored (no broker): signed
    assert row.key_id == BENCH.key_id and row.signature == BENCH.sign(row.value)
    box.close()


# ----------------------------------------------------------------------------- the sink's judgement


class Keys:
    def __init__(self, keys: dict[str, RegisteredKey]) -> None:
        self.current = keys

    def keys(self) -> dict[str, RegisteredKey]:
        return self.current


def _signed(e: Any, off: int, key: GatewayKey | None, value: bytes | None = None) -> Msg:
    v = SERDE.encode_event(e)
    headers = key.headers(v) if key is not None else [("event_id", e.event_id.encode())]
    return Msg(TOPICS.events, 0, off, value or v, key=e.event_id.encode(), headers=headers)


@pytest.mark.parametrize("required", [False, True])
def test_the_sink_lands_verified_sources_and_dead_letters_what_does_not_hold(required: bool) -> None:
    r = rig()
    r.sink.gateway_keys = Keys(registered(BENCH, CELL))
    r.sink.require_signed = required
    bench, cell = event("UnitTested"), event("OperationCompleted")
    good = SERDE.encode_event(bench)
    tampered = good.replace(b"ict-bench-3", b"ict-bench-4")  # same length: still decodes
    assert tampered != good
    r.consumer.queued = [
        _signed(bench, 0, BENCH),  # lands, verified
        _signed(cell, 1, CELL),  # lands, verified
        _signed(event("UnitTested", 2), 2, CELL),  # the cell's key, the bench's source: spoofed
        _signed(event("UnitTested", 3), 3, BENCH, value=tampered),  # changed after signing
        _signed(event("LotStatusChanged"), 4, None),  # unsigned
        _signed(event("UnitTested", 5), 5, GatewayKey.generate("ict-bench-3")),  # unknown key
    ]
    assert r.sink.poll_once() == 6
    tests = r.rows("unit_tests")
    assert [(t["event_id"], t["verified_source"], t["signing_key_id"]) for t in tests] == [
        (bench.event_id, "ict-bench-3", BENCH.key_id)
    ]
    assert [(o["verified_source"], o["signing_key_id"]) for o in r.rows("operations")] == [
        ("cell-7-gw", CELL.key_id)
    ]
    dead = {
        read_dead_letter_headers(list(p.headers))["source_offset"]: read_dead_letter_headers(list(p.headers))
        for p in r.producer.to(TOPICS.deadletter)
    }
    expected = {2: SOURCE_MISMATCH, 3: BAD_SIGNATURE, 5: UNKNOWN_KEY}
    if required:
        expected[4] = UNSIGNED_EVENT
    else:  # unsigned, not required: lands unattributed
        assert [(x["verified_source"], x["signing_key_id"]) for x in r.rows("lot_status")] == [("", "")]
    assert {off: d["error"] for off, d in dead.items()} == expected
    assert all(d["reason"] for d in dead.values())
    entry = r.sink.stats.ledger[0]
    assert entry_gap(entry) == 0 and entry["landed"] == 6 - len(expected)
    assert entry["dead_lettered"] == {e: list(expected.values()).count(e) for e in expected.values()}


def test_a_revocation_counts_from_the_sink_s_next_batch() -> None:
    r = rig()
    keys = Keys(registered(BENCH))
    r.sink.gateway_keys = keys
    r.consumer.queued = [_signed(event("UnitTested"), 0, BENCH)]
    r.sink.poll_once()
    assert r.rows("unit_tests")[0]["verified_source"] == "ict-bench-3"
    keys.current = registered(BENCH, revoked=(BENCH.key_id,))
    r.consumer.queued = [_signed(event("UnitTested", 1), 1, BENCH)]
    r.sink.poll_once()
    [d] = r.producer.to(TOPICS.deadletter)
    assert read_dead_letter_headers(list(d.headers))["error"] == REVOKED_KEY
    assert entry_gap(r.sink.stats.ledger[0]) == 0


# ----------------------------------------------------------------------------- the row hash


def _unit_tests(verified: str = "", key_id: str = "") -> pa.Table:
    e = event("UnitTested")
    type_name, rec = SERDE.decode(SERDE.encode_event(e))
    now = rec["event_time"]
    return rows_for_batch([SinkRecord(type_name, rec, "t", 0, 0, now, 7, verified, key_id)])["unit_tests"]


def test_the_row_hash_covers_the_verified_source_only_when_it_is_set() -> None:
    unsigned, signed = _unit_tests(), _unit_tests("ict-bench-3", BENCH.key_id)
    assert "verified_source" in hashed_columns("unit_tests")
    # an unsigned row hashes exactly as sinks.chain.row_hashes did before migration 7 (its text
    # copied here, table-name prefix included), so rows chained before still verify
    before = unsigned.drop(["verified_source", "signing_key_id"])
    names = [n for n in hashed_columns("unit_tests") if n not in ("verified_source", "signing_key_id")]
    row = json.dumps([_plain(before, n) for n in names], separators=(",", ":"), ensure_ascii=True)
    old = "[" + json.dumps("unit_tests")[:-1] + "," + row[1:]
    assert row_hashes("unit_tests", unsigned) == [hashlib.sha256(old.encode("ascii")).digest()]
    # setting it on an unsigned row, clearing it on a signed one, or naming another key: all seen
    hashes = {
        row_hashes("unit_tests", t)[0]
        for t in (unsigned, signed, _unit_tests("ict-bench-3"), _unit_tests("", BENCH.key_id))
    }
    assert len(hashes) == 4
    both = pa.concat_tables([unsigned, signed])
    assert row_hashes("unit_tests", both) == row_hashes("unit_tests", unsigned) + row_hashes(
        "unit_tests", signed
    )


def _plain(t: pa.Table, name: str) -> Any:
    col = t.column(name)
    if pa.types.is_timestamp(col.type):
        return col.cast(pa.int64())[0].as_py()
    return col[0].as_py()
