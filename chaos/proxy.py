"""A loopback TCP proxy that can be cut and restored: a network partition on one machine.

``TcpProxy(listen_port, target_port).start()`` forwards ``127.0.0.1:listen_port`` to
``127.0.0.1:target_port`` (asyncio, in a thread of its own). ``cut()`` is a partition, not a
refusal: established connections stop carrying bytes in either direction (what a client sends
stays unanswered, as when packets are dropped), and new connections are accepted but never
reach the target. ``restore()`` ends it: the connections that lived through the cut are reset
(as their peers would have timed them out) and new ones go through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

__all__ = ["TcpProxy"]


@dataclass(eq=False)
class _Conn:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    cut: bool = False  # lived through a cut: reset on restore

    def abort(self) -> None:
        for w in self.writers:
            transport = w.transport
            with contextlib.suppress(Exception):
                transport.abort()


class TcpProxy:
    def __init__(self, listen_port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.listen_port = listen_port
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._open: asyncio.Event | None = None
        self._conns: set[_Conn] = set()
        self.connections = 0  # accepted, in all
        self.is_cut = False

    def _call(self, coro: object, timeout: float = 10.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> TcpProxy:
        self._thread.start()

        async def listen() -> None:
            self._open = asyncio.Event()
            self._open.set()
            self._server = await asyncio.start_server(self._handle, self.host, self.listen_port)

        self._call(listen())
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        self.connections += 1
        conn = _Conn([writer], cut=self.is_cut)
        self._conns.add(conn)
        try:
            await self._open.wait()  # accepted during a cut: it never reaches the target until restored
            if conn.cut:
                return
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            conn.writers.append(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer, conn), self._pipe(up_reader, writer, conn))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.discard(conn)
            conn.abort()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn) -> None:
        assert self._open is not None
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                await self._open.wait()  # during a cut the bytes go nowhere (held, then dropped)
                if conn.cut:
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            conn.abort()

    def cut(self) -> None:
        async def do() -> None:
            assert self._open is not None
            self.is_cut = True
            self._open.clear()
            for c in self._conns:
                c.cut = True

        self._call(do())

    def restore(self) -> None:
        async def do() -> None:
            assert self._open is not None
            for c in list(self._conns):
                if c.cut:
                    c.abort()
            self.is_cut = False
            self._open.set()

        self._call(do())

    def stop(self) -> None:
        async def do() -> None:
            if self._server is not None:
                self._server.close()
            for c in list(self._conns):
                c.abort()

        with contextlib.suppress(Exception):
            self._call(do())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
