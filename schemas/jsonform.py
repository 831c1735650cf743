"""The JSON form of events (one object per line), for connectors that cannot speak Avro.

``"type"`` names the event; timestamps are ISO-8601 with an offset or integer epoch
milliseconds; nullable fields may be left out. Every failure is an
:class:`~schemas.errors.EventValidationError` whose reason names the field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.errors import EventValidationError
from schemas.models import EVENT_MODELS, EventBase

__all__ = ["parse_event", "parse_line", "to_json", "to_json_line", "format_timestamp"]


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) and parts:
            parts[-1] = f"{parts[-1]}[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def _describe(err: dict[str, Any]) -> tuple[str | None, str]:
    field = _loc(tuple(err.get("loc", ()))) or None
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "missing":
        return field, f"{field}: required field is missing"
    if kind == "extra_forbidden":
        return field, f"{field}: unknown field (not in the schema)"
    inp = err.get("input")
    shown = repr(inp)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    if field is None:
        return None, msg
    return field, f"{field}: {msg} (got {shown})"


def parse_event(obj: Any) -> EventBase:
    """Validate one JSON-form event (a dict) into its model.

    Raises :class:`EventValidationError` with a reason naming the field.
    """
    if not isinstance(obj, dict):
        raise EventValidationError(f"an event must be a JSON object, not {type(obj).__name__}", raw=obj)
    type_name = obj.get("type")
    if type_name is None:
        raise EventValidationError(
            "type: required field is missing (it names the event)", field="type", raw=obj
        )
    model = EVENT_MODELS.get(type_name) if isinstance(type_name, str) else None
    if model is None:
        known = ", ".join(EVENT_MODELS)
        raise EventValidationError(
            f"type: unknown event type {type_name!r} (known: {known})", field="type", raw=obj
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        described = [_describe(dict(e)) for e in exc.errors(include_url=False)]
        field = described[0][0] if described else None
        reason = f"{type_name}: " + "; ".join(r for _, r in described)
        raise EventValidationError(reason, field=field, raw=obj) from None


def parse_line(line: str | bytes) -> EventBase:
    """Parse and validate one line of JSON-lines input."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventValidationError(f"not valid JSON: {exc}", raw=line) from None
    return parse_event(obj)


def format_timestamp(dt: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: ``2026-11-26T10:15:00.123Z``."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def to_json(event: EventBase) -> dict[str, Any]:
    """The documented JSON form of an event (``type`` first, ISO timestamps with ``Z``, nulls kept)."""
    return _jsonable(event.model_dump())


def to_json_line(event: EventBase) -> str:
    """One compact JSON line (no trailing newline)."""
    return json.dumps(to_json(event), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
