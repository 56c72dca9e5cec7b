"""asyncio Protocol echo: callbacks driven by an event loop (the stdlib one: selectors + epoll).

`EchoProtocol` and `AsyncioServer` are shared with the uvloop model, which only swaps the loop,
so the two measure the loop implementation and nothing else.

Per readable event the stdlib loop does recvfrom and sendto, and also mmap, mremap and munmap:
its transport reads into a fresh 256 KiB bytes object, above glibc's mmap threshold, then
shrinks it. That cost is part of what stdlib asyncio Protocol code pays, so it is kept.

Connections are accepted here, not by loop.create_server: out of descriptors, CPython's
BaseSelectorEventLoop._accept_connection logs a traceback for every failed accept() and goes
on trying up to `backlog` times per wake-up (4096 here), scheduling a retry each time, which
held 70-75% of a CPU and printed 270,000 lines in 3.5 s at the limit (issue 13); uvloop's
server sheds silently through libuv, so nothing could count what it shed. The listener is
watched with add_reader and accepted through servers.shedding's gate, and each connection
handed to loop.connect_accepted_socket, a Task per connection as create_server's own path
makes. For asyncio that costs what its own path did; uvloop loses its C accept path (measured
here, connect + 64 B echo + close from 4 client threads: server CPU per connection 82 -> 85 us
for asyncio, 45 -> 63 us for uvloop). Requests on open connections do not pass through it.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
from collections.abc import Callable
from typing import cast

from servers.base import EchoServer, ServerOptions
from servers.connection import HIGH_WATER
from servers.shedding import AcceptGate

_SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class EchoProtocol(asyncio.Protocol):
    """Write back whatever arrives; stop reading while the peer is not draining its echo."""

    def __init__(self, transports: set[asyncio.Transport], on_lost: Callable[[], None]) -> None:
        self._transports = transports
        self._on_lost = on_lost
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
        self._on_lost()


class AsyncioServer(EchoServer):
    name = "asyncio"
    category = "I/O multiplexing (event loop)"
    reports_shedding = True
    supports_workers = True
    mechanism = "stdlib asyncio Protocol on the selector event loop (epoll); transport.write buffers"

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transports: set[asyncio.Transport] = set()
        # Tasks of connect_accepted_socket still running: the loop keeps only weak references.
        self._handshakes: set[asyncio.Task[object]] = set()
        self._gate: AcceptGate | None = None
        self._retry: asyncio.TimerHandle | None = None  # ends a pause at its back-off

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
        loop.add_signal_handler(signal.SIGUSR1, self._on_stats_request, signal.SIGUSR1, None)
        try:
            loop.run_until_complete(self._serve(listener, stopped))
        finally:
            for sig in (*_SHUTDOWN_SIGNALS, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
                # As in the base: a second signal must not abort the clean-up (and SIGUSR1's
                # default action, which remove_signal_handler restores, would kill the process).
                signal.signal(sig, signal.SIG_IGN)

    async def _serve(self, listener: socket.socket, stopped: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        lfd = listener.fileno()
        self._gate = self.accept_gate(
            listener, on_pause=lambda: self._pause(loop, lfd), on_resume=lambda: self._resume(loop, lfd)
        )
        loop.add_reader(lfd, self._accept)
        try:
            await stopped
        finally:
            loop.remove_reader(lfd)
            if self._retry is not None:
                self._retry.cancel()
            for transport in list(self._transports):
                transport.abort()

    def _accept(self) -> None:
        """The listener is readable: hand each connection to the loop as a transport."""
        assert self._loop is not None and self._gate is not None
        loop = self._loop
        # As many accept() calls per wake-up as CPython's own server makes (its backlog).
        for sock in self._gate.accept(self.options.backlog):
            task = loop.create_task(loop.connect_accepted_socket(self._protocol, sock))
            self._handshakes.add(task)
            task.add_done_callback(functools.partial(self._connected, sock))

    def _protocol(self) -> EchoProtocol:
        return EchoProtocol(self._transports, self._on_lost)

    def _connected(self, sock: socket.socket, task: asyncio.Task[object]) -> None:
        self._handshakes.discard(task)
        # Retrieved, so a failure is not logged as "never retrieved": the socket just goes.
        if task.cancelled() or task.exception() is not None:
            sock.close()

    def _on_lost(self) -> None:
        # A descriptor is free: a pause ends now rather than at its back-off.
        if self._gate is not None and self._gate.paused:
            self._gate.freed()
            self._gate.tick()

    def _pause(self, loop: asyncio.AbstractEventLoop, lfd: int) -> None:
        # Level-triggered: a listener still watched while accepting is paused would wake the
        # loop at once, every iteration.
        loop.remove_reader(lfd)
        self._schedule_retry(loop)

    def _schedule_retry(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._gate is not None
        if self._retry is not None:
            self._retry.cancel()
        self._retry = loop.call_later(self._gate.timeout() or 0.0, self._after_backoff, loop)

    def _after_backoff(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._gate is not None
        self._retry = None
        self._gate.tick()
        if self._gate.paused:
            # Called early: loops run a timer up to their clock's resolution (asyncio) or a
            # millisecond (libuv) before it is due, and tick() ends a pause only once it is.
            self._schedule_retry(loop)

    def _resume(self, loop: asyncio.AbstractEventLoop, lfd: int) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        loop.add_reader(lfd, self._accept)

    def close(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Let the aborted transports run connection_lost and close their sockets, and the
        # handshakes still under way end.
        handshakes = list(self._handshakes)
        for task in handshakes:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*handshakes, asyncio.sleep(0), return_exceptions=True))
        loop.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
