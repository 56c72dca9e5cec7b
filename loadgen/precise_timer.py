"""A timerfd on CLOCK_MONOTONIC, to wake an epoll loop at a send time to the microsecond.

epoll_wait's timeout counts whole milliseconds, so an open-loop client that sleeps in it
starts its sends up to a millisecond late, and coordinated-omission correction then charges
that lateness to the server. A timerfd in the same epoll set fires when it should; spinning
instead would make the client's CPU use meaningless.
"""

from __future__ import annotations

import ctypes
import os

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]


class PreciseTimer:
    """One-shot timer: `arm(t)` with t on time.monotonic()'s clock; readable in epoll at t."""

    def __init__(self) -> None:
        fd = _libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self.armed_at: float | None = None
        self._spec = _Itimerspec()

    def arm(self, when: float) -> None:
        if self.armed_at == when:
            return
        # Zero would disarm the timer: a time already past becomes the smallest one that fires.
        seconds = max(when, 1e-9)
        self._spec.it_value.tv_sec = int(seconds)
        self._spec.it_value.tv_nsec = max(int((seconds - int(seconds)) * 1e9), 1 if seconds < 1 else 0)
        if _libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.armed_at = when

    def consume(self) -> None:
        """Acknowledge an expiry (the fd stays readable until read)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.armed_at = None

    def close(self) -> None:
        os.close(self.fd)
