"""Alert acknowledgements: who acknowledged which alert, and when (the workbench's feed).

An acknowledgement is a person's note, not traceability data: it is kept beside the tokens,
in ``<data dir>/alert_acks.jsonl`` (one JSON line per acknowledgement, appended; owner-only),
or in memory when the API runs without a data dir (tests). The latest line per alert wins.
``version`` counts every acknowledgement taken, so a feed can tell that something changed.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Ack", "AckStore", "ACK_FILE"]

ACK_FILE = "alert_acks.jsonl"


@dataclass(frozen=True)
class Ack:
    alert_id: str
    alert_version: int  # the version of the alert that was acknowledged
    by: str  # the caller's token name (or OIDC subject)
    at: str  # ISO-8601 UTC
    note: str = ""


class AckStore:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._acks: dict[str, Ack] = {}
        self.version = 0
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    ack = Ack(**json.loads(line))
                    self._acks[ack.alert_id] = ack
                    self.version += 1

    def get(self, alert_ids: list[str]) -> dict[str, Ack]:
        with self._lock:
            return {a: self._acks[a] for a in alert_ids if a in self._acks}

    def add(self, alert_id: str, alert_version: int, by: str, note: str = "") -> Ack:
        ack = Ack(alert_id, alert_version, by, datetime.now(UTC).isoformat(timespec="seconds"), note[:500])
        with self._lock:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a") as f:
                    f.write(json.dumps(asdict(ack)) + "\n")
            self._acks[alert_id] = ack
            self.version += 1
        return ack
