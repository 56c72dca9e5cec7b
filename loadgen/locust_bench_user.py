"""The locustfile of `bench run --engine locust`: the raw-TCP echo user (loadgen/locust_user.py)
with the bench's window control (loadgen/locust_window.py).

The bench starts the master and its local workers itself. A worker on another host joins with

    locust -f <path>/loadgen/locust_bench_user.py --worker --master-host MASTER --master-port PORT

(MASTER: the address the bench's master binds, the server's address given to the bench; PORT:
5557 unless the bench says otherwise). That host needs this project's packages (a checkout is
enough: this file puts its root on sys.path) and Locust. Payload size, server address and the
measured window come from the master. A worker serves one point: it exits when that point's
master quits, so for a sweep run it in a loop (`while locust ...; do :; done`).

Started by the bench, a process also pins itself to the client CPUs (IOMODEL_BENCH_CPUS) and
asks to die with the bench (IOMODEL_BENCH_DIE_WITH_PARENT), before Locust starts any thread.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Locust puts only this file's directory on sys.path; the packages live one level up.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import gevent  # noqa: E402

from childproc import die_with_parent, parse_cpus, pin_to_cpus  # noqa: E402
from loadgen import locust_window  # noqa: E402, F401 - registers the bench's listeners
from loadgen.locust_user import EchoUser  # noqa: E402, F401 - the user class Locust runs

CPUS_ENV = "IOMODEL_BENCH_CPUS"
DIE_WITH_PARENT_ENV = "IOMODEL_BENCH_DIE_WITH_PARENT"

# gevent's default resolver runs getaddrinfo in a thread pool whose answers come back a few per
# turn of the event loop; with the connected users' echoes filling every turn, 5000 connects took
# 26 s instead of 2. The server's address is numeric (bench passes an IP), so resolving it in
# place costs nothing. Set before the first lookup, which creates the resolver.
gevent.config.resolver = "block"

if os.environ.get(DIE_WITH_PARENT_ENV):
    die_with_parent()
pin_to_cpus(parse_cpus(os.environ.get(CPUS_ENV, "")))
