"""Input faults: poison records of every kind, an event id re-used with other content (and
identical repeats), a publisher whose clock runs ahead."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos.harness import (
    Ctx,
    Pipeline,
    Result,
    genealogy_check,
    landed_ids,
    log,
    measure,
    sink_figures,
    wait_caught_up,
    wait_until,
)
from chaos.load import Plant, PublisherProcess

__all__ = ["poison", "conflicts", "clock_skew", "poison_records", "produce_raw", "raw_producer", "altered"]

POISON_SIZE = 5 * 1024 * 1024


# ----------------------------------------------------------------------------- poison


def poison_records(plant: Plant) -> list[tuple[str, bytes | None, str]]:
    """(kind, value, expected error) of every poison kind; built from real events of ``plant``."""
    from schemas.serde import schema_fingerprint

    v0, v1, v2 = (r[2] for r in plant.rows[:3])
    body = v1[10:]  # the Avro body without the single-object header
    filler = b"this is not an Avro body, it only looks like one at first glance. "
    big = (
        b"\xc3\x01" + schema_fingerprint("OperationCompleted") + filler * (POISON_SIZE // len(filler) + 1)
    )[:POISON_SIZE]
    return [
        ("garbage bytes", b"\xffthis is not an event\x00\x01\x02", "MalformedRecordError"),
        ("empty value", b"", "MalformedRecordError"),
        ("null value (tombstone)", None, "DecodeError"),
        ("unknown schema fingerprint", b"\xc3\x01" + bytes(8) + body, "UnknownSchemaError"),
        ("truncated Avro", v0[: len(v0) // 2], "MalformedRecordError"),
        ("Avro with trailing bytes", v2 + b"\x00\x00\x07", "MalformedRecordError"),
        ("JSON text", json.dumps(plant.events[0]).encode(), "MalformedRecordError"),
        (
            "Confluent magic byte 0, no registry",
            b"\x00" + (7).to_bytes(4, "big") + body,
            "UnknownSchemaError",
        ),
        ("5 MB lz4-compressed", big, "MalformedRecordError"),
    ]


def raw_producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    from schemas.kafka import producer_config

    return Producer(
        producer_config(bootstrap, **{"compression.type": "lz4", "message.max.bytes": 8 * 1024 * 1024})
    )


def produce_raw(
    producer: Any, topic: str, records: list[tuple[bytes, bytes | None]]
) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` records in order; their (partition, offset), or raise."""
    positions: list[Any] = [None] * len(records)
    errors: list[str] = []

    def report(i: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                positions[i] = (msg.partition(), msg.offset())

        return cb

    for i, (key, value) in enumerate(records):
        producer.produce(topic, key=key, value=value, on_delivery=report(i))
        producer.poll(0)
    left = producer.flush(120)
    if left or errors or any(p is None for p in positions):
        raise RuntimeError(f"the broker did not take the records: {left} left, errors {errors[:3]}")
    return positions


def poison(ctx: Ctx) -> Result:
    """Every poison kind is produced raw (a confluent Producer, lz4, 8 MB message.max.bytes),
    then half the plant through an outbox publisher, the poison again, the other half. Every
    valid event must land; every poison record must be in ``dead_letters`` exactly once (by
    its source partition and offset) with the expected error."""
    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + 500)
    kinds = poison_records(plant)
    pipe = Pipeline(ctx)
    try:
        server = pipe.start()
        topic = pipe.topic
        producer = raw_producer(ctx.bootstrap)
        rows = plant.outbox_rows(topic)
        half = len(rows) // 2
        assert pipe.sampler is not None
        pipe.sampler.mark("fault_start")
        where: dict[tuple[int, int], tuple[str, str]] = {}
        for rnd, part in ((1, rows[:half]), (2, rows[half:])):
            recs = [(f"poison-{rnd}-{i}".encode(), v) for i, (_k, v, _e) in enumerate(kinds)]
            for pos, (name, _v, err) in zip(produce_raw(producer, topic, recs), kinds, strict=True):
                where[pos] = (f"{name} ({rnd})", err)
            log(f"round {rnd}: {len(kinds)} poison records produced; publishing {len(part):,} valid events")
            figures = PublisherProcess(ctx.bootstrap, ctx.work, part, name=f"publisher-{rnd}").start().join()
            res.publisher(figures, key=f"publisher_{rnd}")
        pipe.sampler.mark("fault_end")
        caught = wait_caught_up(pipe, plant.ids, timeout=600)
        res.recovered(pipe.sampler, caught, "the pipeline did not catch up within 600 s")
        res.details["sink"] = sink_figures(pipe)
        measure(pipe.store, topic, plant.ids, res)
        dl = pipe.store.query(
            "SELECT source_partition AS p, source_offset AS o, error, raw_truncated, raw_size FROM dead_letters"  # noqa: E501
            " WHERE source_topic = {t:String}",
            {"t": topic},
        )
        got: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in dl:
            got.setdefault((int(r["p"]), int(r["o"])), []).append(r)
        per_kind = {}
        for pos, (name, err) in where.items():
            found = got.get(pos, [])
            per_kind[name] = [r["error"] for r in found]
            if len(found) != 1:
                res.fail(f"poison '{name}' at {pos} is in dead_letters {len(found)} times")
            elif found[0]["error"] != err:
                res.note(f"poison '{name}': dead-lettered as {found[0]['error']}, expected {err}")
        res.details["poison_dead_letters"] = per_kind
        stray = set(got) - set(where)
        if stray:
            res.fail(f"{len(stray)} dead letters for records that were not poison, e.g. {sorted(stray)[:3]}")
        if res.dead_letters != len(where):
            res.fail(f"{res.dead_letters} dead letters for {len(where)} poison records")
        big = [r for r in dl if r["raw_truncated"]]
        res.details["by_reference"] = [(int(r["p"]), int(r["o"]), int(r["raw_size"])) for r in big]
        if caught is not None:
            genealogy_check(pipe.store, plant.events, res)
        res.details["worker_restarts"] = server.worker.restarts if server.worker else None
        pipe.sampler.settle(res)
        pipe.sampler.summarize(res, must_notice=False)
        return res
    finally:
        pipe.close()


# ----------------------------------------------------------------------------- conflicts


def altered(plant: Plant, i: int) -> bytes:
    """Event ``i`` of the plant with other content (its ``source``), same id and key."""
    from benchmarks._stack import fast_encoder

    d = dict(plant.events[i])
    d["source"] = f"{d.get('source', '')}-chaos-altered"
    eid, key, value = fast_encoder()(d)
    assert eid == plant.ids[i] and key == plant.rows[i][1] and value != plant.rows[i][2]
    return value


def conflicts(ctx: Ctx) -> Result:
    """An event id re-used with other content must land once (the first) and leave one
    ``ConflictingDuplicate`` dead letter per re-use; an identical repeat must be skipped as a
    duplicate. Re-uses of landed events, re-uses inside one batch (the original and the other
    content back to back), and re-uses after a restart of the server (its recent-id map is
    refilled from the store's content hashes)."""
    from streams.intake import content_hash_of

    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + 600)
    rng = random.Random(ctx.seed)
    n = len(plant.ids)
    half = n // 2
    first = list(range(half))
    rng.shuffle(first)
    landed_conflict, landed_repeat = first[:50], first[50:100]
    after_conflict, after_repeat = first[100:125], first[125:150]
    in_batch = list(range(half, half + 20))  # not published before: original + other content at once
    pipe = Pipeline(ctx)
    producer = raw_producer(ctx.bootstrap)
    stats: list[dict[str, Any]] = []
    try:
        pipe.start()
        topic = pipe.topic
        log(f"publishing the first {half:,} events")
        PublisherProcess(
            ctx.bootstrap, ctx.work, plant.outbox_rows(topic, plant.rows[:half]), name="pub-1"
        ).start().join()
        wanted = set(plant.ids[:half])
        if wait_until(lambda: wanted <= landed_ids(pipe.store, topic), 300) is None:
            res.fail("the first half did not land")
        assert pipe.sampler is not None
        pipe.sampler.mark("fault_start")
        recs: list[tuple[bytes, bytes | None]] = []
        recs += [(plant.rows[i][1], altered(plant, i)) for i in landed_conflict]
        recs += [(plant.rows[i][1], plant.rows[i][2]) for i in landed_repeat]
        for i in in_batch:
            recs += [(plant.rows[i][1], plant.rows[i][2]), (plant.rows[i][1], altered(plant, i))]
        log(f"re-using {len(landed_conflict)} landed ids with other content, {len(landed_repeat)} identical "
            f"repeats, {len(in_batch)} ids twice in one burst")  # fmt: skip
        produce_raw(producer, topic, recs)
        expect_conflicts = len(landed_conflict) + len(in_batch)
        wait_until(lambda: pipe.sink_stat("conflicts") >= expect_conflicts, 120, 0.2)
        time.sleep(2)
        stats.append(sink_figures(pipe))
        log("restarting the server (a new sink: its recent ids come from the store)")
        pipe.stop_server()
        pipe.start()
        recs = [(plant.rows[i][1], altered(plant, i)) for i in after_conflict]
        recs += [(plant.rows[i][1], plant.rows[i][2]) for i in after_repeat]
        produce_raw(producer, topic, recs)
        pipe.sampler.mark("fault_end")
        skip = set(in_batch)
        rest = [r for i, r in enumerate(plant.rows) if i >= half and i not in skip]
        log(f"publishing the other {len(rest):,} events")
        PublisherProcess(ctx.bootstrap, ctx.work, plant.outbox_rows(topic, rest), name="pub-2").start().join()
        caught = wait_caught_up(pipe, plant.ids, timeout=600)
        res.recovered(pipe.sampler, caught, "the pipeline did not catch up within 600 s")
        stats.append(sink_figures(pipe))
        res.details["sink_before_restart"], res.details["sink_after_restart"] = stats
        measure(pipe.store, topic, plant.ids, res)
        want_conflicts = expect_conflicts + len(after_conflict)
        want_dups = len(landed_repeat) + len(after_repeat)
        got_dups = sum(int(s.get("duplicates_skipped", 0)) for s in stats)
        res.details["expected"] = {"conflicts": want_conflicts, "identical_repeats": want_dups}
        res.details["duplicates_skipped"] = got_dups
        if res.conflicts != want_conflicts:
            res.fail(f"{res.conflicts} ConflictingDuplicate dead letters, expected {want_conflicts}")
        if got_dups < want_dups:
            res.fail(f"the sinks skipped {got_dups} identical repeats, expected {want_dups}")
        # the first content is the one that landed
        ids = [plant.ids[i] for i in landed_conflict + in_batch + after_conflict]
        union = " UNION ALL ".join(
            f"SELECT event_id, content_hash FROM {t} WHERE kafka_topic = {{t:String}}"  # noqa: S608
            for t in _raw_tables()
        )
        _n, rows = pipe.store.query_rows(
            f"SELECT event_id, groupUniqArray(content_hash) FROM ({union}) WHERE has({{ids:Array(String)}}, event_id)"  # noqa: S608, E501
            " GROUP BY event_id",
            {"t": topic, "ids": ids},
        )
        index = {e: i for i, e in enumerate(plant.ids)}
        wrong = [e for e, hashes in rows if list(hashes) != [content_hash_of(plant.rows[index[e]][2])]]
        if wrong:
            res.fail(f"{len(wrong)} re-used ids landed with the later content, e.g. {wrong[:3]}")
        res.details["first_content_kept"] = len(rows) - len(wrong)
        if caught is not None:
            genealogy_check(pipe.store, plant.events, res)
        pipe.sampler.settle(res)
        pipe.sampler.summarize(res, must_notice=False)
        return res
    finally:
        producer.flush(5)
        pipe.close()


def _raw_tables() -> tuple[str, ...]:
    from sinks.rows import RAW_TABLES

    return RAW_TABLES


# ----------------------------------------------------------------------------- clock skew

SKEW = "+400d"
_GENERATOR = """
import json, sys, uuid
from datetime import UTC, datetime, timedelta
t0 = datetime.now(UTC)  # the host's (skewed) clock
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
    for i, line in enumerate(src):
        d = json.loads(line)
        d["event_id"] = str(uuid.uuid4())
        d["event_time"] = (t0 + timedelta(milliseconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.write(json.dumps(d) + "\\n")
print(t0.isoformat())
"""


# a host whose wall clock is wrong still has a right monotonic clock; libfaketime would shift
# that too, and then every timed wait on it (threading.Event.wait, librdkafka's) never ends
_FAKETIME_ENV = {"FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _traceline(args: list[str], env: dict[str, str], faketime: str | None, log_path: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "traceline.cli", *args]
    if faketime:
        cmd = ["faketime", "-f", faketime, *cmd]
        env = {**env, **_FAKETIME_ENV}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    text = (proc.stdout + proc.stderr).strip()
    with log_path.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{text}\nexit {proc.returncode}\n\n")
    return proc.returncode, text


def _future_record_timestamp(bootstrap: str, topic: str) -> dict[str, str]:
    """What Kafka answers to a record whose *record* timestamp comes from a clock 400 days ahead
    (what a publisher on such a host sends), and to one stamped now."""
    from confluent_kafka import Producer

    from schemas.kafka import producer_config

    producer = Producer(producer_config(bootstrap))
    now = int(time.time() * 1000)
    got: dict[str, str] = {}
    for label, ts in (("stamped now", now), ("stamped +400 days", now + 400 * 86_400_000)):
        producer.produce(
            topic, key=b"clock-probe", value=b"clock probe (not an event)", timestamp=ts,
            on_delivery=lambda err, _m, label=label: got.__setitem__(label, str(err) if err else "accepted"),
        )  # fmt: skip
        producer.flush(30)  # one record per request: a refused one fails its whole batch
    return got


def clock_skew(ctx: Ctx, skewed: int = 200) -> Result:
    """A bench whose clock runs 400 days ahead: its connector (run under libfaketime, with
    ``FAKETIME_DONT_FAKE_MONOTONIC=1``) stamps ``skewed`` events with its own now, and
    ``traceline publish --file`` publishes them; plus 10 events at 9999-12-31 and 10 before
    2000-01-01. They must be quarantined (``ImplausibleEventTime``), counted and not landed;
    the plant's valid events must all land.

    ``traceline publish`` itself runs with the real clock: under libfaketime librdkafka's timed
    waits never end (also with ``FAKETIME_DONT_FAKE_MONOTONIC``/``FAKETIME_FORCE_MONOTONIC_FIX``;
    the publish hung past its ``--timeout``), a tool artefact. What Kafka does with a *record*
    timestamp from such a clock is probed directly (``_future_record_timestamp``) on a topic of
    its own."""
    res = Result(ctx.label)
    if shutil.which("faketime") is None:
        res.verdict = "skipped"
        res.note("faketime is not installed (apt-get install -y faketime)")
        return res
    plant = Plant(ctx.events, ctx.seed + 700)
    pipe = Pipeline(ctx)
    try:
        pipe.start()
        topic = pipe.topic
        tests = [d for d in plant.events if d["type"] == "UnitTested"][:skewed]
        src = ctx.work / "templates.jsonl"
        src.write_text("".join(json.dumps(d) + "\n" for d in tests))
        skewed_file = ctx.work / "skewed.jsonl"
        gen = ctx.work / "skewed_connector.py"
        gen.write_text(_GENERATOR)
        cmd_log = ctx.work / "commands.log"
        made = subprocess.run(
            ["faketime", "-f", SKEW, sys.executable, str(gen), str(src), str(skewed_file)],
            capture_output=True, text=True, check=True, timeout=60, env={**os.environ, **_FAKETIME_ENV},
        )  # fmt: skip
        res.details["skewed_clock_now"] = made.stdout.strip()
        log(f"the skewed connector's clock said {made.stdout.strip()}")
        odd = []
        for i, d in enumerate(tests[:20]):
            e = dict(d, event_id=str(uuid.uuid4()))
            e["event_time"] = "9999-12-31T23:59:59.999Z" if i < 10 else "1999-12-31T23:00:00.000Z"
            odd.append(e)
        odd_file = ctx.work / "odd_times.jsonl"
        odd_file.write_text("".join(json.dumps(d) + "\n" for d in odd))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELINE_")}
        pub_args = ["--bootstrap", ctx.bootstrap, "--topic", topic, "--timeout", "60"]
        assert pipe.sampler is not None
        pipe.sampler.mark("fault_start")
        for name, path in (("skewed_publish", skewed_file), ("odd_times_publish", odd_file)):
            code, text = _traceline(
                ["publish", "--file", str(path), "--data-dir", str(ctx.work / name), *pub_args],
                env,
                None,
                cmd_log,
            )
            res.details[name] = {"exit": code, "summary": text.splitlines()[-1][:300] if text else ""}
            log(f"`traceline publish --file {path.name}`: exit {code}")
            if code != 0:
                res.fail(f"`traceline publish --file {path.name}` exited {code}: {text[-300:]}")
        pipe.sampler.mark("fault_end")
        probe = f"{pipe.prefix}clock-probe"
        res.details["record_timestamp_400_days_ahead"] = _future_record_timestamp(ctx.bootstrap, probe)
        log(f"Kafka and a record timestamp 400 days ahead: {res.details['record_timestamp_400_days_ahead']}")
        figures = PublisherProcess(ctx.bootstrap, ctx.work, plant.outbox_rows(topic)).start().join()
        res.details["publisher"] = figures
        caught = wait_caught_up(pipe, plant.ids, timeout=600)
        res.recovered(pipe.sampler, caught, "the pipeline did not catch up within 600 s")
        res.details["sink"] = sink_figures(pipe)
        bad_ids = [json.loads(line)["event_id"] for line in skewed_file.read_text().splitlines()]
        bad_ids += [d["event_id"] for d in odd]
        measure(pipe.store, topic, plant.ids, res, forbidden=bad_ids)
        if res.quarantined != len(bad_ids):
            res.fail(f"{res.quarantined} events quarantined, expected {len(bad_ids)}")
        last = pipe.server.sink.stats.last_event_time if pipe.server and pipe.server.sink else None
        res.details["sink_last_event_time"] = last.isoformat() if last else None
        if caught is not None:
            genealogy_check(pipe.store, plant.events, res)
        pipe.sampler.settle(res)
        pipe.sampler.summarize(res, must_notice=False)
        return res
    finally:
        pipe.close()
