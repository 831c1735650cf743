"""Query side: recall queries over the documented ClickHouse tables (docs/TABLES.md)."""

from queries.recall import (
    TRIGGER_KINDS,
    AffectedUnit,
    BackwardTrace,
    ForwardTrace,
    LotHop,
    PastHolder,
    RecallImpact,
    Trigger,
    backward_trace,
    backward_traces,
    forward_trace,
    recall_impact,
    recall_impacts,
    to_jsonable,
)

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
    "to_jsonable",
]
