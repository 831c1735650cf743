"""The one UII function: how a serialised unit is named everywhere.

Serials are unique per part number in the real world, so a unit's key is the MIL-STD-130
style UII ``"<part_number>:<serial_number>"``: two parts with the same serial text do not
collide. Events, rows, genealogy commands, queries and alerts all name units with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["uii", "uii_of"]


def uii(part_number: str, serial_number: str) -> str:
    """The unit key ``"<part_number>:<serial_number>"``."""
    return f"{part_number}:{serial_number}"


def uii_of(ref: Mapping[str, Any]) -> str:
    """The UII of a unit reference as it appears in an event record (``part_number``,
    ``serial_number``)."""
    return uii(ref["part_number"], ref["serial_number"])
