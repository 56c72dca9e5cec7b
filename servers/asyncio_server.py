"""asyncio Protocol echo: callbacks driven by an event loop (the stdlib one: selectors + epoll).

`EchoProtocol` and `AsyncioServer` are shared with the uvloop model, which only swaps the loop,
so the two measure the loop implementation and nothing else.

Per readable event the stdlib loop does recvfrom and sendto, and also mmap, mremap and munmap:
its transport reads into a fresh 256 KiB bytes object, above glibc's mmap threshold, then
shrinks it. That cost is part of what stdlib asyncio Protocol code pays, so it is kept.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import cast

from servers.base import EchoServer, ServerOptions
from servers.connection import HIGH_WATER

_SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class EchoProtocol(asyncio.Protocol):
    """Write back whatever arrives; stop reading while the peer is not draining its echo."""

    def __init__(self, transports: set[asyncio.Transport]) -> None:
        self._transports = transports
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        # With the default high-water mark (64 KiB) a client that writes more than the socket
        # buffers hold (~9 MiB on loopback here) before it reads deadlocks with us; 16 MiB, as
        # in the other models, keeps it working and still bounds memory per client.
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.transport = transport
        self._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        # False: the transport closes itself once everything already written is flushed.
        return False

    def pause_writing(self) -> None:
        # The write buffer passed the high-water mark: reading more would only grow it.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self._transports.discard(self.transport)


class AsyncioServer(EchoServer):
    name = "asyncio"
    category = "I/O multiplexing (event loop)"
    supports_workers = True
    mechanism = "stdlib asyncio Protocol on the selector event loop (epoll); transport.write buffers"

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transports: set[asyncio.Transport] = set()

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this model runs on; the only thing a subclass needs to change."""
        return asyncio.SelectorEventLoop()

    def serve(self, listener: socket.socket) -> None:
        loop = self._loop = self.new_event_loop()
        asyncio.set_event_loop(loop)
        stopped = loop.create_future()
        # The base's handler raises ServerShutdown, which asyncio would swallow (and log) if
        # it fired inside a callback; the loop's own handlers wake it through its self-pipe.
        for sig in _SHUTDOWN_SIGNALS:
            loop.add_signal_handler(sig, _resolve, stopped)
        try:
            loop.run_until_complete(self._serve(listener, stopped))
        finally:
            for sig in _SHUTDOWN_SIGNALS:
                loop.remove_signal_handler(sig)
                # As in the base: a second signal must not abort the clean-up.
                signal.signal(sig, signal.SIG_IGN)

    async def _serve(self, listener: socket.socket, stopped: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        # Given a socket, create_server calls listen() again, with a default backlog of 100.
        server = await loop.create_server(
            lambda: EchoProtocol(self._transports), sock=listener, backlog=self.options.backlog
        )
        try:
            await stopped
        finally:
            server.close()
            for transport in list(self._transports):
                transport.abort()

    def close(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Let the aborted transports run connection_lost and close their sockets.
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
