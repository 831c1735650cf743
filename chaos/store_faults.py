"""Store faults: the embedded store's disk fills up while events arrive, then space returns."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from pathlib import Path

from chaos.harness import (
    Ctx,
    Pipeline,
    Result,
    landed_within,
    log,
    measure,
    sink_figures,
    wait_caught_up,
    wait_until,
)
from chaos.load import Plant, PublisherProcess

__all__ = ["disk_full"]

DISK_MB = 256
FULL_FOR = 30.0  # seconds the disk stays full


def _mount_tmpfs(where: Path, mb: int) -> str | None:
    """Mount a tmpfs of ``mb`` MiB at ``where``; None, or why it cannot be done here."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return (
            f"`mount -t tmpfs` failed (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[:300]}"
        )
    return None


def _fill(where: Path) -> int:
    """Write zeros into ``where/filler`` until the disk is full; bytes written."""
    chunk = b"\0" * (1 << 20)
    n = 0
    with open(where / "filler", "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    # the last bytes a partial write may have left
    with contextlib.suppress(OSError), open(where / "filler-tail", "wb", buffering=0) as f:
        while f.write(b"\0" * 4096):
            pass
    return n


def disk_full(ctx: Ctx) -> Result:
    """The embedded store lives on a 256 MiB tmpfs. While a publisher publishes at a steady pace,
    the tmpfs is filled to the last byte for 30 s, then the filler is deleted. Health must say
    failing while the store refuses writes; nothing may be lost once space returns."""
    res = Result(ctx.label)
    mnt = ctx.work / "store-disk"
    why = _mount_tmpfs(mnt, DISK_MB)
    if why is not None:
        res.verdict = "skipped"
        res.note(why)
        return res
    plant = Plant(ctx.events, ctx.seed + 1000)
    pipe = Pipeline(ctx, dsn=f"chdb://{mnt / 'clickhouse'}")
    try:
        pipe.start()
        rate = max(200.0, len(plant.ids) / 40.0)
        pub = PublisherProcess(ctx.bootstrap, ctx.work, plant.outbox_rows(pipe.topic), rate=rate).start()
        pub.wait_published(len(plant.ids) // 4)
        wait_until(lambda: pipe.sink_stat("events_landed") > 0, 120, 0.1)
        assert pipe.sampler is not None
        pipe.sampler.mark("fault_start")
        retries0 = pipe.sink_stat("store_retries")
        filled = _fill(mnt)
        log(f"the store's disk is full ({filled / 2**20:.0f} MiB of filler); waiting {FULL_FOR:.0f}s")
        refused = wait_until(lambda: pipe.sink_stat("store_retries") > retries0, FULL_FOR, 0.2)
        time.sleep(max(0.0, FULL_FOR - (refused or FULL_FOR)))
        res.details["store_refused_writes_after_s"] = round(refused, 1) if refused is not None else None
        res.details["store_retries_while_full"] = pipe.sink_stat("store_retries") - retries0
        if refused is None:
            res.note("the sink did not report a refused write while the disk was full")
        for name in ("filler", "filler-tail"):
            (mnt / name).unlink(missing_ok=True)
        pipe.sampler.mark("fault_end")
        k = pub.published
        log(f"space is back; {k:,} events were published by then")
        rec = landed_within(pipe, plant.ids[:k])
        res.recovered(
            pipe.sampler, rec, "the events published while the disk was full did not land within 600 s"
        )
        res.details["publisher"] = pub.join()
        caught = wait_caught_up(pipe, plant.ids, timeout=600)
        if caught is None:
            res.fail("the pipeline did not catch up within 600 s")
        res.details["sink"] = sink_figures(pipe)
        res.details["sink_last_error"] = (
            pipe.server.sink.stats.last_error if pipe.server and pipe.server.sink else None
        )
        measure(pipe.store, pipe.topic, plant.ids, res)
        if caught is not None:
            from chaos.harness import genealogy_check

            genealogy_check(pipe.store, plant.events, res)
        pipe.sampler.settle(res)
        pipe.sampler.summarize(res, must_notice=True)
        return res
    finally:
        pipe.close()
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
