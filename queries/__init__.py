"""Reads: recall, traces, the report and the drill, the alert context and the alert list, over the
documented ClickHouse tables (docs/TABLES.md)."""

from queries.recall import forward_trace, recall_impact, recall_impacts
from queries.results import (
    TRIGGER_KINDS,
    AffectedUnit,
    BackwardTrace,
    ForwardTrace,
    LotHop,
    PastHolder,
    RecallImpact,
    Trigger,
    from_jsonable,
    to_jsonable,
)
from queries.trace import backward_trace, backward_traces

__all__ = [
    "TRIGGER_KINDS",
    "AffectedUnit",
    "BackwardTrace",
    "ForwardTrace",
    "LotHop",
    "PastHolder",
    "RecallImpact",
    "Trigger",
    "backward_trace",
    "backward_traces",
    "forward_trace",
    "recall_impact",
    "recall_impacts",
    "from_jsonable",
    "to_jsonable",
]
