"""Broker faults: ``kill -9`` of the broker while a publisher publishes, and while the server
ingests a backlog; a TCP partition between the pipeline and the broker; one broker of a
three-node cluster lost under load.
"""

from __future__ import annotations

import time

from chaos.harness import (
    Ctx,
    Pipeline,
    Result,
    genealogy_check,
    landed_within,
    log,
    measure,
    sink_figures,
    wait_caught_up,
    wait_until,
)
from chaos.load import Plant, PublisherProcess
from traceline import localstack

__all__ = ["broker_kill_publish", "broker_kill_ingest"]

DOWN_FOR = 5.0  # seconds the broker stays dead before it is started again ("a few seconds")
PUBLISH_SECONDS = 20.0  # a paced publisher spreads the plant over this long


def _kill_and_restart(broker: localstack.LocalBroker, pipe: Pipeline, down_for: float = DOWN_FOR) -> float:
    """SIGKILL the broker, wait, start it again on the same port; returns the outage in s."""
    s = pipe.sampler
    assert s is not None
    t0 = s.mark("fault_start")
    log(f"kill -9 the broker ({broker.bootstrap or broker.data_dir})")
    broker.kill()
    time.sleep(down_for)
    log("starting the broker again on the same port")
    broker.start()
    t1 = s.mark("fault_end")
    log(f"broker back after {t1 - t0:.1f}s")
    return t1 - t0


def _finish(ctx: Ctx, pipe: Pipeline, plant: Plant, res: Result, *, must_notice: bool = True) -> Result:
    """Wait for the whole pipeline, measure, check the genealogy and summarise health."""
    caught = wait_caught_up(pipe, plant.ids, timeout=600)
    if caught is None:
        res.fail("the pipeline did not catch up within 600 s")
    else:
        res.details["caught_up_s"] = round(caught, 1)
    res.details["sink"] = sink_figures(pipe)
    measure(pipe.store, pipe.topic, plant.ids, res)
    if caught is not None:
        genealogy_check(pipe.store, plant.events, res)
    gap = res.details["sink"].get("ledger_gap")
    if gap:
        res.fail(f"the sink's ledger has a gap: {gap}")
    assert pipe.sampler is not None
    pipe.sampler.settle(res)
    pipe.sampler.summarize(res, must_notice=must_notice)
    return res


def broker_kill_publish(ctx: Ctx) -> Result:
    """A publisher (outbox) publishes a plant at a steady pace into a running server; the broker
    is SIGKILLed a quarter of the way in and started again on the same port after a few seconds.
    The publisher keeps publishing throughout (into its outbox) and flushes at the end."""
    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + ctx.rep)
    broker = localstack.LocalBroker(ctx.broker_dir)
    broker.bootstrap = ctx.bootstrap
    pipe = Pipeline(ctx)
    try:
        pipe.start()
        rate = max(200.0, len(plant.ids) / PUBLISH_SECONDS)
        log(f"publishing {len(plant.ids):,} events at {rate:,.0f}/s through an outbox")
        pub = PublisherProcess(ctx.bootstrap, ctx.work, plant.outbox_rows(pipe.topic), rate=rate).start()
        pub.wait_published(len(plant.ids) // 4)
        wait_until(lambda: pipe.sink_stat("events_landed") > 0, 60, 0.1)
        _kill_and_restart(broker, pipe, ctx.broker_down)
        k = pub.published
        log(f"{k:,} events were published before the broker came back; waiting for them in the store")
        rec = landed_within(pipe, plant.ids[:k])
        assert pipe.sampler is not None
        res.recovered(
            pipe.sampler,
            rec,
            "the events published before the broker came back did not all land within 600 s",
        )
        res.publisher(pub.join())
        return _finish(ctx, pipe, plant, res)
    finally:
        pipe.close()


def broker_kill_ingest(ctx: Ctx) -> Result:
    """The plant is in Kafka before the server starts; the broker is SIGKILLed while the server
    ingests that backlog (a quarter of it landed) and started again after a few seconds."""
    from schemas.kafka import ensure_topics

    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + 100 + ctx.rep)
    broker = localstack.LocalBroker(ctx.broker_dir)
    broker.bootstrap = ctx.bootstrap
    pipe = Pipeline(ctx)
    try:
        s = pipe.settings
        ensure_topics(ctx.bootstrap, s.topics, partitions=s.kafka.partitions, replication=1)
        log(f"publishing {len(plant.ids):,} events into Kafka (nothing consuming yet)")
        figures = PublisherProcess(ctx.bootstrap, ctx.work, plant.outbox_rows(pipe.topic)).start().join()
        res.publisher(figures, what="everything before the fault")
        pipe.start()
        want = len(plant.ids) // 4
        if wait_until(lambda: pipe.sink_stat("events_landed") >= want, 300, 0.05) is None:
            res.fail("the server never started ingesting")
        at_kill = pipe.sink_stat("events_landed")
        res.details["landed_at_kill"] = at_kill
        log(f"the sink has landed {at_kill:,} of {len(plant.ids):,} events")
        if at_kill >= len(plant.ids):
            res.note("the whole backlog had landed before the kill: raise --events")
        _kill_and_restart(broker, pipe, ctx.broker_down)
        rec = landed_within(pipe, plant.ids)
        assert pipe.sampler is not None
        res.recovered(pipe.sampler, rec, "the backlog did not land within 600 s of the broker's return")
        return _finish(ctx, pipe, plant, res)
    finally:
        pipe.close()


# ----------------------------------------------------------------------------- TCP partition

PARTITION_FOR = 30.0  # seconds: longer than the consumers' session timeout (15 s)


def partition(ctx: Ctx) -> Result:
    """The pipeline reaches its broker only through a loopback proxy (a broker of its own whose
    EXTERNAL listener is advertised as the proxy's port, so no client goes around it); the
    publisher uses the broker's INTERNAL listener and keeps publishing. The proxy is cut for
    30 s while events flow (every connection stalls, new ones never arrive), then restored."""
    from chaos.kraft import free_ports, proxied_node
    from chaos.proxy import TcpProxy

    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + 800)
    (proxy_port,) = free_ports(1)
    node, internal, external = proxied_node(ctx.work / "kafka", proxy_port)
    proxy = TcpProxy(proxy_port, external).start()
    pipe = Pipeline(ctx, f"127.0.0.1:{proxy_port}")
    try:
        log(
            f"broker INTERNAL {internal}; the pipeline goes through the proxy 127.0.0.1:{proxy_port} -> {external}"  # noqa: E501
        )
        pipe.start()
        rate = max(200.0, len(plant.ids) / (PUBLISH_SECONDS * 2))
        pub = PublisherProcess(internal, ctx.work, plant.outbox_rows(pipe.topic), rate=rate).start()
        pub.wait_published(len(plant.ids) // 4)
        wait_until(lambda: pipe.sink_stat("events_landed") > 0, 120, 0.1)
        assert pipe.sampler is not None
        pipe.sampler.mark("fault_start")
        log(f"cutting the proxy for {PARTITION_FOR:.0f}s ({proxy.connections} connections so far)")
        proxy.cut()
        time.sleep(PARTITION_FOR)
        proxy.restore()
        pipe.sampler.mark("fault_end")
        k = pub.published
        log(f"proxy restored; {k:,} events were published by then")
        rec = landed_within(pipe, plant.ids[:k])
        res.recovered(
            pipe.sampler,
            rec,
            "the events published during the partition did not land within 600 s of its end",
        )
        res.publisher(pub.join())
        return _finish(ctx, pipe, plant, res)
    finally:
        pipe.close(delete=False)
        proxy.stop()
        node.stop()


# ----------------------------------------------------------------------------- 3-broker cluster


def cluster_broker_loss(ctx: Ctx) -> Result:
    """A three-node KRaft cluster (every topic replication 3, min.insync.replicas 2); while a
    publisher publishes at a steady pace, the broker leading partition 0 of the events topic is
    SIGKILLed and stays down until the end (ingest must go on with two); it is started again
    at the end and must rejoin."""
    from confluent_kafka.admin import AdminClient

    from chaos.kraft import three_node_cluster, wait_brokers

    res = Result(ctx.label)
    plant = Plant(ctx.events, ctx.seed + 900)
    nodes, bootstrap = three_node_cluster(ctx.work)
    log(f"three brokers up: {bootstrap}")
    pipe = Pipeline(ctx, bootstrap, replication=3)
    try:
        pipe.start()
        rate = max(200.0, len(plant.ids) / (PUBLISH_SECONDS * 1.5))
        pub = PublisherProcess(bootstrap, ctx.work, plant.outbox_rows(pipe.topic), rate=rate).start()
        pub.wait_published(len(plant.ids) // 3)
        meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(pipe.topic, timeout=10)
        leader = meta.topics[pipe.topic].partitions[0].leader
        victim = next(n for n in nodes if n.node_id == leader)
        assert pipe.sampler is not None
        pipe.sampler.mark("fault_start")
        log(f"kill -9 broker {leader} (leader of {pipe.topic}[0]); it stays down")
        victim.kill()
        pipe.sampler.mark("fault_end")
        k = pub.published
        rec = landed_within(pipe, plant.ids[:k])
        res.recovered(
            pipe.sampler, rec, "the events published before the broker was lost did not land within 600 s"
        )
        res.publisher(pub.join(), what="everything with two brokers")
        caught = wait_caught_up(pipe, plant.ids, timeout=600)
        res.details["caught_up_with_two_brokers_s"] = round(caught, 1) if caught is not None else None
        log("starting the lost broker again")
        victim.start()
        wait_brokers(bootstrap, 3)
        res.details["rejoined"] = True
        return _finish(ctx, pipe, plant, res, must_notice=False)
    finally:
        pipe.close(delete=False)
        for n in nodes:
            n.stop()
