"""Error kinds, counted per point instead of aborting it."""

from __future__ import annotations

import errno
from collections import Counter

CONNECT_REFUSED = "connect_refused"
CONNECT_TIMEOUT = "connect_timeout"
CONNECT_OTHER = "connect_error"
RESET = "reset"
SHORT_READ = "short_read"
MISMATCH = "mismatch"
TIMEOUT = "timeout"

KINDS = (CONNECT_REFUSED, CONNECT_TIMEOUT, CONNECT_OTHER, RESET, SHORT_READ, MISMATCH, TIMEOUT)


def connect_error_kind(code: int) -> str:
    if code == errno.ECONNREFUSED:
        return CONNECT_REFUSED
    if code == errno.ETIMEDOUT:
        return CONNECT_TIMEOUT
    return CONNECT_OTHER


def new_counter() -> Counter:
    return Counter()
