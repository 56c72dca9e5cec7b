"""What a server does when accept() cannot give it a descriptor: shed, count, and say so.

accept(2) fails for want of resources with EMFILE (the process's RLIMIT_NOFILE is reached),
ENFILE (the system-wide fs.file-max is), ENOBUFS or ENOMEM (socket memory, man 2 accept).
Letting that error out kills the server; ignoring it is worse, because a connection waiting
in the listen queue keeps the listener readable: a level-triggered loop wakes at once, fails
again, and spins at 100% of a CPU (on Linux the descriptor is reserved before the queue is
looked at, so a blocking accept() fails at once as well, queue or no queue).

`AcceptGate` takes the connection anyway and closes it ("sheds" it), so the client learns
at once that the server is full and the queue empties: libuv's uv__emfile_trick
(src/unix/stream.c) keeps a spare descriptor open, and at EMFILE closes it, accepts and
closes what is queued, then opens it again. Where that cannot work (the spare cannot be had
back, or accept() fails even with it free: ENOMEM), the gate pauses accepting, as nginx's
ngx_event_accept disables its accept events and re-enables them from a timer
(accept_mutex_delay): until a connection of ours closes or a back-off passes, 5 ms doubling
to 1 s as Go's net/http Server.Serve sleeps on a temporary accept error.

`LEDGER` counts what was shed, in episodes (from the first connection shed, or the first
pause, to the next connection served), and prints one JSON line on stdout as each ends:

    {"event": "shed", "count": N, "errno": "EMFILE", "seconds": S}

and, at a clean exit (servers.base) or on SIGUSR1, the process's totals:

    {"event": "stats", "shed": TOTAL, "episodes": E}

A pause that sheds nothing ends its episode with count 0: connections waited, none was lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator

# A module reference, not `from servers.base import emit`: servers.base imports this module too.
from servers import base

# accept(2)'s errors that mean "no resources for the new connection" (man 2 accept).
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Seconds a paused gate waits before it tries again, doubling up to the maximum (Go's
# net/http Server.Serve uses the same 5 ms .. 1 s on temporary accept errors).
BACKOFF_MIN_S = 0.005
BACKOFF_MAX_S = 1.0
# Connections accepted per call when the caller gives no limit: bounded, so that one busy
# listener cannot starve the connections already held.
ACCEPT_BATCH = 256

_WOULD_BLOCK = (BlockingIOError, InterruptedError)
# The client gave up while queued: nothing to shed, the next one is not affected.
_ABORTED = (ConnectionAbortedError, ConnectionResetError)
# Network errors accept() passes on for the connection it was taking: "treat them like EAGAIN
# by retrying" (man 2 accept, NOTES); the C server retries the same set.
CONNECTION_ERRNOS = frozenset(
    {errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
     errno.EOPNOTSUPP, errno.ENETUNREACH, errno.EPERM}
)  # fmt: skip


def _connection_error(exc: OSError) -> bool:
    """The error concerns only the connection accept() was taking: skip it and go on."""
    return isinstance(exc, _ABORTED) or exc.errno in CONNECTION_ERRNOS


def errno_name(code: int) -> str:
    """The errno's symbolic name (EMFILE for errno.EMFILE); the number as text if it has none."""
    return errno.errorcode.get(code, str(code))


class ShedLedger:
    """Connections shed by this process, in episodes, printed as JSON lines on stdout.

    One per process (`LEDGER`): a model's accept path reports into it, and servers.base
    prints the totals at exit and on SIGUSR1. Episode lengths are monotonic seconds."""

    def __init__(self) -> None:
        self.total = 0
        self.episodes = 0
        self._cause: str | None = None  # the open episode's errno name; None when none is open
        self._count = 0
        self._started = 0.0

    @property
    def in_episode(self) -> bool:
        return self._cause is not None

    def begin(self, cause: str) -> None:
        """An episode starts (if none is open): accept is failing for `cause`."""
        if self._cause is None:
            self._cause, self._count, self._started = cause, 0, time.monotonic()
            self.episodes += 1

    def shed(self, cause: str) -> None:
        """One connection was closed because it could not be held."""
        self.begin(cause)
        self._count += 1
        self.total += 1

    def served(self) -> None:
        """A connection is being served: an open episode is over, and printed."""
        if self._cause is not None:
            self._end()

    def _end(self) -> None:
        seconds = round(time.monotonic() - self._started, 3)
        _say({"event": "shed", "count": self._count, "errno": self._cause, "seconds": seconds})
        self._cause = None

    def stats(self) -> dict[str, object]:
        return {"event": "stats", "shed": self.total, "episodes": self.episodes}

    def finish(self, clean: bool) -> None:
        """At exit: print an episode still open, then (`clean`: SIGTERM/SIGINT) the totals,
        which are then the last line on stdout."""
        if self._cause is not None:
            self._end()
        if clean:
            _say(self.stats())

    def report(self) -> None:
        """The totals on request (SIGUSR1), while serving. Called from a signal handler, which
        may have interrupted emit() itself: one os.write of the whole line, past sys.stdout's
        buffer (whose reentrant use would raise), keeps both lines whole."""
        with contextlib.suppress(OSError):  # as in _say
            os.write(1, (json.dumps(self.stats()) + "\n").encode())


def _say(message: dict[str, object]) -> None:
    # These lines are for the harness reading stdout; if it has gone (EPIPE), serving goes on.
    with contextlib.suppress(OSError):
        base.emit(message)


LEDGER = ShedLedger()


def _open_reserve() -> int:
    """The spare descriptor (/dev/null), or -1 when none can be had now."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _close_reserve(fd: int) -> None:
    os.close(fd)


def nothing() -> None:
    """The default on_pause/on_resume: a model that needs no action there."""
    return None


class AcceptGate:
    """accept() on one listener that survives running out of descriptors or memory.

    Non-blocking listeners: `accept()` / `accept_all()` from the event loop; a model whose
    multiplexer reports the listener level-triggered gets `on_pause` to stop watching it and
    `on_resume` to watch it again, and calls `tick()` once per loop iteration, waiting at most
    `timeout()` seconds, and `freed()` whenever it closes a connection. Blocking listeners:
    `accept_blocking()`, which sleeps out a pause itself.

    `serves`: a connection the gate returns is served, so it ends a shedding episode; False
    for a model that may still shed it (fork, past its cap) and calls `served()` itself.
    """

    def __init__(
        self,
        listener: socket.socket,
        *,
        on_pause: Callable[[], None] = nothing,
        on_resume: Callable[[], None] = nothing,
        serves: bool = True,
        ledger: ShedLedger = LEDGER,
    ) -> None:
        self.listener = listener
        self.ledger = ledger
        self.serves = serves
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._reserve = _open_reserve()
        self.paused = False
        self._resume_at = 0.0
        self._backoff = BACKOFF_MIN_S
        self._freed = False
        # After accept(): True when it stopped because nothing more can be taken now (the
        # queue is empty, or accepting is paused), False when it stopped at its limit.
        self.drained = False

    # -- accepting ------------------------------------------------------------------------

    def accept(self, limit: int = ACCEPT_BATCH) -> list[socket.socket]:
        """Accept up to `limit` connections from a non-blocking listener, shedding those past
        the descriptor limit; see `drained`."""
        accepted: list[socket.socket] = []
        self.drained = False
        for _ in range(limit):
            if self.paused:
                self.drained = True
                break
            sock = self._take()
            if sock is not None:
                accepted.append(sock)
            elif self.drained:
                break
        return accepted

    def accept_all(self, batch: int = ACCEPT_BATCH) -> Iterator[socket.socket]:
        """Every connection that can be taken now, `batch` accept() calls at a time: for
        edge-triggered readiness, where what is left in the queue is never reported again."""
        while True:
            yield from self.accept(batch)
            if self.drained:
                return

    def accept_blocking(self) -> socket.socket:
        """The next connection to serve from a blocking listener (threads, fork)."""
        while True:
            if self.paused:
                # Only the accepting thread waits; the connections held are served meanwhile.
                time.sleep(self.timeout() or 0.0)
                self.paused = False
            sock = self._take()
            if sock is not None:
                return sock

    def _take(self) -> socket.socket | None:
        """One accept(): the connection to serve, or None (the client gave up, it was shed,
        nothing is queued: `drained`, or accepting had to pause: `paused`)."""
        try:
            sock, _addr = self.listener.accept()
        except _WOULD_BLOCK:
            self.drained = True
            return None
        except OSError as exc:
            if _connection_error(exc):
                return None
            if exc.errno not in RESOURCE_ERRNOS:
                raise
            kept = self._over_limit(exc.errno)
            if kept is None:
                return None
            sock = kept
        if self.serves:
            self.served()
        return sock

    def _over_limit(self, code: int) -> socket.socket | None:
        """accept() failed with `code`: take one connection in the spare descriptor's place.

        Returns it when a descriptor turns out to be free after all (the spare opens again:
        another thread closed one meanwhile, or a blocking accept() waited for the next
        client while connections ended); else closes it (shed) and returns None. None also
        when nothing was queued (`drained`) or when this cannot work now (`paused`)."""
        if self._reserve < 0:
            self._reserve = _open_reserve()
            if self._reserve < 0:
                self._pause(code)
                return None
        _close_reserve(self._reserve)
        self._reserve = -1
        try:
            sock, _addr = self.listener.accept()
        except OSError as exc:
            self._reserve = _open_reserve()
            if isinstance(exc, _WOULD_BLOCK):
                self.drained = True
            elif exc.errno in RESOURCE_ERRNOS:
                self._pause(exc.errno)  # even the spare's slot does not help: ENOMEM, say
            elif not _connection_error(exc):
                raise
            return None
        self._reserve = _open_reserve()
        if self._reserve >= 0:
            return sock
        sock.close()
        self.ledger.shed(errno_name(code))
        # Taken back lazily (above) if another process got the slot first (ENFILE).
        self._reserve = _open_reserve()
        return None

    def served(self) -> None:
        """A connection is served: an open episode ends, and the back-off starts over."""
        if self.ledger.in_episode:
            self.ledger.served()
            self._backoff = BACKOFF_MIN_S

    # -- pausing --------------------------------------------------------------------------

    def _pause(self, code: int) -> None:
        self.ledger.begin(errno_name(code))
        self.paused = True
        self._freed = False
        self._resume_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        self._on_pause()

    def freed(self) -> None:
        """A connection was closed: a descriptor (and its memory) is free, so a pause can end
        at the next tick() instead of at its back-off."""
        self._freed = True

    def timeout(self) -> float | None:
        """Seconds the event loop may wait before it must call tick(); None: no limit."""
        if not self.paused:
            return None
        return max(self._resume_at - time.monotonic(), 0.0)

    def tick(self) -> None:
        """End a pause whose back-off has passed or after a connection closed (on_resume)."""
        if self.paused and (self._freed or time.monotonic() >= self._resume_at):
            self.paused = False
            self._on_resume()

    def close(self) -> None:
        if self._reserve >= 0:
            _close_reserve(self._reserve)
            self._reserve = -1
