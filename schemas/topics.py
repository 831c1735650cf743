"""Every Kafka topic traceline uses, named in one place (part of the contract)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TopicNames"]


@dataclass(frozen=True)
class TopicNames:
    """Every topic traceline uses. ``prefix`` keeps tests and tenants apart."""

    events: str = "traceline.events"
    prefix: str = ""

    @property
    def commands(self) -> str:
        return f"{self.prefix}traceline.genealogy.commands"

    @property
    def changes(self) -> str:
        return f"{self.prefix}traceline.genealogy.changes"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}traceline.deadletter"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}traceline.alerts"

    def all(self) -> list[str]:
        return [self.events, self.commands, self.changes, self.deadletter, self.alerts]
