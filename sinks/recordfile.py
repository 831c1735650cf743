"""An owner-only JSON file of records: the API's token file (``traceline.auth.TokenStore``) and
the gateway key registry (``sinks.gateway_keys.GatewayKeyRegistry``).

Read again whenever it changed on disk (inode, mtime, size), so a running server sees a revoked
token or key from its next request or batch; changed under an exclusive lock (a second command
waits), written atomically (a 0600 temporary file renamed over the old one, fsynced); refused,
when read or changed, if group or others may write it: whoever may write it decides who gets in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["RecordFile"]

R = TypeVar("R")
_MISSING = (-1, -1, -1)


class RecordFile(Generic[R]):
    """``{"version": 1, <field>: [record, ...]}`` at ``path``; records are dataclasses made with
    ``make(**dict)``; a problem with the file raises ``error(message)`` (``what`` names the file
    in it, ``hint`` says what to check)."""

    def __init__(
        self,
        path: Path,
        field: str,
        make: Callable[..., R],
        error: Callable[[str], Exception],
        what: str,
        hint: str,
    ) -> None:
        self.path = Path(path)
        self.field, self.make, self.error, self.what, self.hint = field, make, error, what, hint
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None

    def read_if_changed(self) -> list[R] | None:
        """The records when the file changed since the last call ([] when there is none), None
        when it did not."""
        try:
            st = self.path.stat()
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            st, seen = None, _MISSING
        with self._lock:
            if seen == self._seen:
                return None
            self._seen = seen
        if st is None:
            return []
        self._check_mode(st)
        return self._read()

    @contextlib.contextmanager
    def changing(self) -> Iterator[list[R]]:
        """The records to change in place, written back when the block ends without an error."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records: list[R] = []
            if self.path.exists():
                self._check_mode(self.path.stat())
                records = self._read()
            yield records
            self._write(records)
        finally:
            os.close(lock)  # releases the lock
        with self._lock:
            self._seen = None  # the next read takes what was written

    def _check_mode(self, st: os.stat_result) -> None:
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise self.error(
                f"{self.what} {self.path} may be written by others than its owner: refused "
                f"(chmod 600 {self.path}, and {self.hint})"
            )

    def _read(self) -> list[R]:
        try:
            data: Any = json.loads(self.path.read_text())
            return [self.make(**r) for r in data.get(self.field, [])]
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise self.error(f"{self.what} {self.path} cannot be read: {exc}") from exc

    def _write(self, records: list[R]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, self.field: [asdict(r) for r in records]}, f, indent=2)  # type: ignore[call-overload]  # R: a dataclass
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)  # whatever the umask did
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
