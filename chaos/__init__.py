"""The fault suite: real faults against the real pipeline, on loopback, one scenario at a time.

    python -m chaos [--scenarios a,b,...] [--events N] [--json]      # or: make chaos

Every scenario runs in a child process of its own (``python -m chaos.runner``): the embedded
store, the server's threads and a crash of either stay inside it. The parent starts one local
Kafka broker (``traceline.localstack``) that the scenarios share (the broker faults kill and
restart it on the same port); the partition and cluster scenarios start brokers of their own
(``chaos.kraft``). Each scenario prints one row: events sent and present, lost, duplicated,
dead letters, conflicts, quarantined, recovery seconds, and the ``/health`` statuses seen while
the fault lasted. See docs/RELIABILITY.md for what each scenario does and the last run.

Modules: ``harness`` (plant, pipeline, publisher process, health sampler, the measurements),
``proxy`` (a loopback TCP proxy that can be cut), ``kraft`` (KRaft brokers with a config of our
own), ``broker_faults``, ``process_faults``, ``input_faults``, ``store_faults`` (the scenarios),
``scenarios`` (their registry), ``runner`` (one scenario in a child process).
"""
