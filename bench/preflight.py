"""Checks made before a point starts: can this host give the point what it needs?

A point that cannot run is recorded as skipped with a reason a user can act on, instead of
failing half-way with a confusing error.
"""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING

import psutil

from bench.load_workers import MAX_CONNECTIONS_PER_WORKER
from loadgen.source_addresses import PER_ADDRESS
from servers import registry

if TYPE_CHECKING:
    from bench.point import PointSpec

# Descriptors a server needs besides its connections: listener, epoll/ring fds, stdio.
SERVER_FD_MARGIN = 64
# Kernel memory for one loopback connection: two sockets with their buffers, about 2 x 8 KiB
# when quiet; a floor, not an estimate of the peak.
KERNEL_BYTES_PER_CONNECTION = 16 * 1024
# What one extra connection costs in the model's own process(es), at least.
MODEL_BYTES_PER_CONNECTION = {"threads": 64 * 1024, "fork": 1024 * 1024}


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        lo, hi = fh.read().split()
    return int(lo), int(hi)


def preflight(spec: PointSpec, client_workers: int) -> str | None:
    """The reason the point cannot run here, or None."""
    if spec.engine == "locust":
        from bench.locust_engine import locust_blocker

        if (why := locust_blocker(spec.load_plan)) is not None:
            return why
    total = spec.connections + spec.idle
    limit = nofile_limit()
    try:
        server = None if spec.target else registry.load(spec.model)
    except (KeyError, ImportError, AttributeError):
        server = None
    if spec.server_workers > 1 and server is not None and not server.supports_workers:
        return f"{spec.model} cannot run as {spec.server_workers} server workers: only event-driven models can"
    per_server_process = -(-total // spec.server_workers) + SERVER_FD_MARGIN
    if not spec.target and spec.workload != "churn" and per_server_process > limit:
        need = -(-total // (limit - SERVER_FD_MARGIN))
        can_spread = server is not None and server.supports_workers
        hint = f"use --server-workers {need}" if can_spread else "lower --connections"
        return (
            f"{total} connections need {per_server_process} descriptors in one server process but "
            f"RLIMIT_NOFILE is {limit} ({hint}, or raise ulimit -n)"
        )
    per_worker = -(-total // client_workers)
    if per_worker > min(MAX_CONNECTIONS_PER_WORKER, limit - SERVER_FD_MARGIN):
        return f"{per_worker} connections per load worker exceed RLIMIT_NOFILE {limit}"
    lo, hi = port_range()
    if hi - lo + 1 < PER_ADDRESS:
        return f"ip_local_port_range {lo}-{hi} holds fewer than {PER_ADDRESS} ports per source address"
    if spec.model == "fork" and spec.workload != "churn" and total > spec.fork_cap:
        return (
            f"fork needs one process per connection: {total} connections exceed the fork cap of "
            f"{spec.fork_cap} live children (raise it with --fork-cap)"
        )
    need = total * (KERNEL_BYTES_PER_CONNECTION + MODEL_BYTES_PER_CONNECTION.get(spec.model, 0))
    available = psutil.virtual_memory().available
    if need > available:
        return f"{total} connections need at least {need / 2**20:.0f} MiB; {available / 2**20:.0f} MiB is available"
    return None
