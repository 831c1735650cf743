"""The one translation of errors into what a caller sees: an HTTP status and a CLI exit code.

| error | HTTP | exit | meaning |
| --- | --- | --- | --- |
| :class:`InvalidInputError` (any ``ValueError``) | 422 | 2 | a wrong argument or parameter |
| :class:`EventValidationError` | 422 | 1 | an event does not match the contract |
| :class:`NotFoundError` | 404 | 4 | a trigger or unit the store has never seen (with suggestions) |
| any other :class:`TracelineError` | 503 | 3 | a service (Kafka, ClickHouse, ...) failed |
| ``traceline verify`` / ``report verify`` found tampering | - | 5 | evidence was altered |

Exit code 0 is success; ``traceline publish`` also exits 1 when some lines were invalid and 3
when events are still waiting in the outbox. The API and the CLI both call :func:`classify`,
so the same failure reads the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from schemas.errors import EventValidationError, InvalidInputError, NotFoundError, TracelineError

__all__ = [
    "Failure",
    "classify",
    "EXIT_OK",
    "EXIT_INVALID_EVENTS",
    "EXIT_USAGE",
    "EXIT_SERVICE",
    "EXIT_NOT_FOUND",
    "EXIT_TAMPERED",
]

EXIT_OK = 0
EXIT_INVALID_EVENTS = 1
EXIT_USAGE = 2
EXIT_SERVICE = 3
EXIT_NOT_FOUND = 4
EXIT_TAMPERED = 5  # traceline verify / report verify: evidence was altered (queries.verify)


@dataclass(frozen=True)
class Failure:
    status: int  # HTTP status
    exit_code: int  # CLI exit code
    message: str


def classify(exc: BaseException) -> Failure | None:
    """The status, exit code and message for an error traceline raised on purpose, or None for
    an unexpected one (a bug: let it propagate with its traceback)."""
    if isinstance(exc, EventValidationError):
        return Failure(422, EXIT_INVALID_EVENTS, str(exc))
    if isinstance(exc, ValidationError):  # settings or parameters that do not parse
        return Failure(422, EXIT_USAGE, _validation_text(exc))
    if isinstance(exc, InvalidInputError | ValueError):
        return Failure(422, EXIT_USAGE, str(exc))
    if isinstance(exc, NotFoundError):
        return Failure(404, EXIT_NOT_FOUND, str(exc))
    if isinstance(exc, TracelineError):
        return Failure(503, EXIT_SERVICE, str(exc))
    return None


def _validation_text(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ())) or exc.title
        parts.append(f"{where}: {e.get('msg', '')} (got {e.get('input')!r})")
    return f"invalid {exc.title}: " + "; ".join(parts)
