"""Checks made before a point starts: can this host give the point what it needs?

A point that cannot run is recorded as skipped with a reason a user can act on, instead of
failing half-way with a confusing error. Each check is a small function of the point and of
the host's limits (HostLimits, read once from /proc), so that a test can hand it any host.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.running.load_workers import WORKER_FD_MARGIN, is_loopback, max_connections_per_worker
from loadgen.source_addresses import PER_ADDRESS, addresses_needed
from servers import registry

if TYPE_CHECKING:
    from bench.running.point import PointSpec

MiB = 2**20
# Descriptors a server needs besides its connections: listener, epoll/ring fds, stdio.
SERVER_FD_MARGIN = 64
# Descriptors left to the rest of the host: once fs.file-max is reached, every process on it
# (shells, the harness, other users) gets ENFILE from open(), socket() and pipe().
FILE_MAX_RESERVE = 8192
# Memory left to the rest of the host: MemAvailable is an estimate, and a point that drives
# the host into the OOM killer takes other processes down with it.
MEMORY_HEADROOM_BYTES = 1024 * MiB

# Kernel memory of one idle loopback connection, both ends (two tcp_sock of 2,368 B, two socket
# inodes, files, dentries, the server's epoll item). Measured 2026-11-30 on kernel 6.18: Slab in
# /proc/meminfo grew by 9.8-10.3 KB per connection (SUnreclaim 6.0-6.4 KB) at 100k, 250k, 500k
# and 1M connections (`bench run --models epoll --connections 1000 --idle 99000` up to
# `--idle 999000`, /proc/meminfo and /proc/slabinfo sampled before connecting and once all were
# up). About 1.4 KB of it are proc inodes made by listing /proc/PID/fd (psutil's num_fds, which
# the harness's sampler calls), so it is what a bench run costs, not the bare sockets.
KERNEL_BYTES_PER_CONNECTION = 10 * 1024
# A server on another host: only the client's end is here.
KERNEL_BYTES_PER_CLIENT_END = 5 * 1024
# The server's user-space memory per connection: USS growth per connection (points.csv
# mem_per_conn_bytes) at 10,100 connections, `bench run --engine c --models ... --connections 100
# --idle 10000`, 2026-11-30, rounded up: epoll 298-410 B (the latter at 1M), poll 370,
# selectors 425, io_uring 609, uvloop 1,383, asyncio 2,301, native 88. threads: 12.3 KB of USS
# plus two kernel stacks (16 KiB each) and task_structs per connection. fork: a process per
# connection (page tables, kernel stack, copied-on-write pages): 1.1 MB PSS per connection at
# 1,000 connections (default sweep, 2026-11-30; 244 KB before the load workers held their
# connections until the end-of-window reading, when the children had already begun to exit).
MODEL_BYTES_PER_CONNECTION = {
    "nonblocking": 512,
    "select": 512,
    "poll": 512,
    "epoll": 512,
    "epoll-et": 512,
    "selectors": 512,
    "sigio": 512,
    "io_uring": 1024,
    "uvloop": 2048,
    "asyncio": 3072,
    "native": 128,
    "threads": 64 * 1024,
    "fork": 1024 * 1024,
}
# A model this table does not know, or a server on loopback started by somebody else.
DEFAULT_MODEL_BYTES = 2048
# The load workers' memory per connection, USS of all workers / connections: c 77-81 B at
# 250k and 1M, python 780-840 B at 100k-1M, locust ~50 KB per user at 2,000 users (2026-11-30).
CLIENT_BYTES_PER_CONNECTION = {"c": 128, "python": 1024, "locust": 64 * 1024}
# Each server or load worker process on its own: a Python interpreter's pages (0.7 MiB USS per
# forked server worker, 3-4 MiB per Python load worker at start, measured), rounded up.
PROCESS_BYTES = 8 * MiB


@dataclass(frozen=True)
class HostLimits:
    """The host's limits that decide whether a point fits, read once (HostLimits.read()).

    None means the host did not say (a file missing or unreadable): the check that needs the
    value is skipped, not failed.
    """

    nofile: int  # RLIMIT_NOFILE soft limit, descriptors per process (getrlimit(2))
    port_range: tuple[int, int]  # net.ipv4.ip_local_port_range, inclusive
    file_max: int | None = None  # fs.file-max, descriptors on the whole host
    files_allocated: int | None = None  # fs.file-nr's first field: descriptors allocated now
    mem_available: int | None = None  # /proc/meminfo MemAvailable, bytes
    tcp_mem: tuple[int, int, int] | None = None  # net.ipv4.tcp_mem min, pressure, max, pages
    tcp_pages_in_use: int = 0  # /proc/net/sockstat "TCP: mem", pages TCP holds now
    page_size: int = 4096  # bytes; the unit of tcp_mem and of sockstat's mem

    @classmethod
    def read(cls) -> HostLimits:
        """This host's limits, from getrlimit(2) and /proc (man 5 proc;
        Documentation/admin-guide/sysctl/fs.rst for file-max and file-nr;
        Documentation/networking/ip-sysctl.rst for ip_local_port_range and tcp_mem)."""
        file_nr = _read_ints("/proc/sys/fs/file-nr")
        tcp_mem = _read_ints("/proc/sys/net/ipv4/tcp_mem")
        file_max = _read_ints("/proc/sys/fs/file-max")
        return cls(
            nofile=nofile_limit(),
            port_range=port_range(),
            file_max=file_max[0] if file_max else None,
            files_allocated=file_nr[0] if file_nr else None,
            mem_available=_meminfo_bytes("MemAvailable"),
            tcp_mem=(tcp_mem[0], tcp_mem[1], tcp_mem[2]) if tcp_mem and len(tcp_mem) == 3 else None,
            tcp_pages_in_use=_sockstat_tcp_pages(),
            page_size=os.sysconf("SC_PAGE_SIZE"),
        )


def nofile_limit() -> int:
    """RLIMIT_NOFILE's soft limit: descriptors one process (and each child it starts) may hold."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_range() -> tuple[int, int]:
    """net.ipv4.ip_local_port_range: the ephemeral ports connect() picks from, inclusive."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        lo, hi = fh.read().split()
    return int(lo), int(hi)


def _read_ints(path: str) -> list[int] | None:
    try:
        with open(path) as fh:
            return [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return None


def _meminfo_bytes(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name == field:
                    return int(rest.split()[0]) * 1024  # meminfo counts kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sockstat_tcp_pages() -> int:
    try:
        with open("/proc/net/sockstat") as fh:
            for line in fh:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return int(parts[parts.index("mem") + 1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def preflight(spec: PointSpec, client_workers: int, host: HostLimits | None = None) -> str | None:
    """The reason the point cannot run here (one sentence, with the numbers and what to do),
    or None. `host` defaults to this host's limits, read now."""
    if spec.engine == "locust":
        from bench.running.locust_engine import locust_blocker

        if (why := locust_blocker(spec.load_plan)) is not None:
            return why
    host = host or HostLimits.read()
    for check in (
        _server_workers,
        _server_descriptors,
        _worker_descriptors,
        _fork_cap,
        _ports,
        _file_max,
        _memory,
        _tcp_mem,
    ):
        if (why := check(spec, client_workers, host)) is not None:
            return why
    return None


def held(spec: PointSpec) -> int:
    """Connections the point holds open at once (churn: its concurrency)."""
    return spec.connections + spec.idle


def server_on_this_host(spec: PointSpec) -> bool:
    """Both ends of every connection are on this host: our own server, or a --target on loopback."""
    return not spec.target or is_loopback(_target_host(spec))


def _target_host(spec: PointSpec) -> str:
    return spec.target.rpartition(":")[0]


def _server_class(spec: PointSpec) -> type | None:
    if spec.target:
        return None
    try:
        return registry.load(spec.model)
    except (KeyError, ImportError, AttributeError):
        return None


def _server_workers(spec: PointSpec, client_workers: int, host: HostLimits) -> str | None:
    server = _server_class(spec)
    if spec.server_workers > 1 and server is not None and not server.supports_workers:
        return f"{spec.model} cannot run as {spec.server_workers} server workers: only event-driven models can"
    return None


def _server_descriptors(spec: PointSpec, client_workers: int, host: HostLimits) -> str | None:
    """RLIMIT_NOFILE in each server process (the server inherits the harness's limit)."""
    total, limit = held(spec), host.nofile
    per_server_process = -(-total // max(spec.server_workers, 1)) + SERVER_FD_MARGIN
    if spec.target or spec.workload == "churn" or per_server_process <= limit:
        return None
    need = -(-total // (limit - SERVER_FD_MARGIN))
    server = _server_class(spec)
    can_spread = server is not None and server.supports_workers
    hint = f"use --server-workers {need}" if can_spread else "lower --connections"
    return (
        f"{total} connections need {per_server_process} descriptors in one server process but "
        f"RLIMIT_NOFILE is {limit} ({hint}, or raise ulimit -n)"
    )


def _worker_descriptors(spec: PointSpec, client_workers: int, host: HostLimits) -> str | None:
    """RLIMIT_NOFILE in each load worker."""
    per_worker = -(-held(spec) // max(client_workers, 1))
    if per_worker > min(max_connections_per_worker(host.nofile), host.nofile - SERVER_FD_MARGIN):
        return f"{per_worker} connections per load worker exceed RLIMIT_NOFILE {host.nofile}"
    return None


def _fork_cap(spec: PointSpec, client_workers: int, host: HostLimits) -> str | None:
    total = held(spec)
    if spec.model == "fork" and not spec.target and spec.workload != "churn" and total > spec.fork_cap:
        return (
            f"fork needs one process per connection: {total} connections exceed the fork cap of "
            f"{spec.fork_cap} live children (raise it with --fork-cap)"
        )
    return None


def _ports(spec: PointSpec, client_workers: int, host: HostLimits) -> str | None:
    """Local ports: a connection's 4-tuple must be unique, so one source address reaches one
    server address:port from at most as many connections as the ephemeral range has ports.
    Towards loopback the load workers spread their source addresses over 127.1.x.y
    (loadgen/source_addresses.py) with PER_ADDRESS connections each; elsewhere they have one."""
    lo, hi = host.port_range
    ports = hi - lo + 1
    total = held(spec)
    if server_on_this_host(spec):
        per_address = -(-total // addresses_needed(total))
        if per_address > ports:
            return (
                f"ip_local_port_range {lo}-{hi} holds {ports:,} ports, fewer than the {per_address:,} "
                f"connections each source address takes (at most {PER_ADDRESS:,}): widen "
                f"net.ipv4.ip_local_port_range"
            )
        return None
    if total > ports:
        return (
            f"{total:,} connections to {spec.target} from one source address need {total:,} local ports "
            f"but ip_local_port_range {lo}-{hi} holds {ports:,}: widen net.ipv4.ip_local_port_range, "
            f"or split the load over several client hosts"
        )
    return None


def descriptors_needed(spec: PointSpec, client_workers: int) -> int:
    """Descriptors the point opens on this host: one per connection in the load workers, one
    more in the server when it runs here, and each process's own margin."""
    total = held(spec)
    need = total + client_workers * WORKER_FD_MARGIN
    if server_on_this_host(spec):
        need += total + max(spec.server_workers, 1) * SERVER_FD_MARGIN
    return need


def _file_max(spec: PointSpec, client_workers: int, host: HostLimits) -> str | None:
    """fs.file-max caps the descriptors of the whole host (Documentation/admin-guide/sysctl/fs.rst);
    fs.file-nr's first field is how many are allocated already."""
    if host.file_max is None:
        return None
    allocated = host.files_allocated or 0
    free = host.file_max - allocated - FILE_MAX_RESERVE
    need = descriptors_needed(spec, client_workers)
    if need <= free:
        return None
    ends = "both ends on this host" if server_on_this_host(spec) else "the client end"
    return (
        f"{held(spec):,} connections need {need:,} descriptors ({ends}) but fs.file-max {host.file_max:,} "
        f"less {allocated:,} already allocated (fs.file-nr) and {FILE_MAX_RESERVE:,} kept for the rest of "
        f"the host leaves {max(free, 0):,}: lower --connections/--idle, or raise fs.file-max"
    )


def memory_needed(spec: PointSpec, client_workers: int) -> tuple[int, int, int, int]:
    """Bytes the point needs at least: (total, kernel per connection, server per connection,
    load worker per connection). See the constants above for where each figure comes from."""
    total = held(spec)
    here = server_on_this_host(spec)
    kernel = KERNEL_BYTES_PER_CONNECTION if here else KERNEL_BYTES_PER_CLIENT_END
    model = MODEL_BYTES_PER_CONNECTION.get(spec.model, DEFAULT_MODEL_BYTES) if here else 0
    client = CLIENT_BYTES_PER_CONNECTION.get(spec.engine, CLIENT_BYTES_PER_CONNECTION["python"])
    processes = client_workers + (max(spec.server_workers, 1) if here else 0)
    return total * (kernel + model + client) + processes * PROCESS_BYTES, kernel, model, client


def _memory(spec: PointSpec, client_workers: int, host: HostLimits) -> str | None:
    if host.mem_available is None:
        return None
    need, kernel, model, client = memory_needed(spec, client_workers)
    usable = host.mem_available - MEMORY_HEADROOM_BYTES
    if need <= usable:
        return None
    server = f", {model:,} B in the {spec.model} server" if model else ""
    return (
        f"{held(spec):,} connections need about {need / MiB:,.0f} MiB ({kernel / 1024:g} KiB of kernel memory "
        f"per connection{server}, {client:,} B in the {spec.engine} load workers) but MemAvailable is "
        f"{host.mem_available / MiB:,.0f} MiB, of which {MEMORY_HEADROOM_BYTES // MiB:,} MiB stays free for "
        f"the rest of the host: lower --connections/--idle, or free memory"
    )


def buffer_pages_needed(spec: PointSpec, page_size: int) -> int:
    """Pages of socket buffer the active connections hold at least: each has its payload (or
    its echo) queued in a socket buffer, and TCP charges buffers against tcp_mem in whole pages
    per socket (sk_mem_pages() in include/net/sock.h). Idle connections hold none: at 1M idle
    connections /proc/net/sockstat's TCP mem stayed under 2,000 pages."""
    return spec.connections * max(1, -(-spec.payload // page_size))


def _tcp_mem(spec: PointSpec, client_workers: int, host: HostLimits) -> str | None:
    """net.ipv4.tcp_mem (min, pressure, max; pages; Documentation/networking/ip-sysctl.rst):
    past max, TCP refuses socket buffer memory, so data is dropped and connections stall."""
    if host.tcp_mem is None:
        return None
    tcp_max = host.tcp_mem[2]
    need = buffer_pages_needed(spec, host.page_size)
    if need + host.tcp_pages_in_use <= tcp_max:
        return None
    in_use = f" beside the {host.tcp_pages_in_use:,} TCP holds now" if host.tcp_pages_in_use else ""
    return (
        f"{spec.connections:,} active connections with {spec.payload:,}-byte payloads keep at least "
        f"{need:,} pages ({need * host.page_size / MiB:,.0f} MiB) in socket buffers{in_use}, more than "
        f"net.ipv4.tcp_mem's max of {tcp_max:,} pages ({tcp_max * host.page_size / MiB:,.0f} MiB), past which "
        f"TCP drops data: lower --payload or --connections, or raise net.ipv4.tcp_mem"
    )
