"""Preflight against made-up hosts: each host limit skips a point with its own sentence.

The real `bench run` path of a skipped point (fork cap, RLIMIT_NOFILE per server process) is
tested in test_workloads.py; these tests need no server and no giant machine.
"""

from __future__ import annotations

import dataclasses

import pytest

from bench.running.point import PointSpec
from bench.running.preflight import (
    FILE_MAX_RESERVE,
    KERNEL_BYTES_PER_CONNECTION,
    MEMORY_HEADROOM_BYTES,
    HostLimits,
    descriptors_needed,
    memory_needed,
    preflight,
)

GiB = 2**30
# A host with room for everything below: only the limit a test lowers can say no.
ROOMY = HostLimits(
    nofile=20000,
    port_range=(32768, 60999),
    file_max=10_000_000,
    files_allocated=1000,
    mem_available=64 * GiB,
    tcp_mem=(287898, 383867, 575796),
    tcp_pages_in_use=100,
    page_size=4096,
)
# 250,000 connections as the scale runs make them: 14 epoll processes, 17 load workers.
BIG = PointSpec("epoll", 1000, 64, 0, idle=249000, server_workers=14, engine="python")
BIG_WORKERS = 17


def test_a_point_within_every_limit_runs():
    assert preflight(BIG, BIG_WORKERS, ROOMY) is None
    assert preflight(PointSpec("epoll", 100, 64, 0), 1, ROOMY) is None


def test_file_max_counts_both_ends_of_a_loopback_connection():
    need = descriptors_needed(BIG, BIG_WORKERS)
    assert need > 2 * 250_000
    host = dataclasses.replace(ROOMY, file_max=need + 1000 + FILE_MAX_RESERVE - 1)
    why = preflight(BIG, BIG_WORKERS, host)
    assert why is not None and why.startswith("250,000 connections need")
    assert "fs.file-max" in why and "fs.file-nr" in why and "both ends on this host" in why
    assert "raise fs.file-max" in why
    # One descriptor more and it fits.
    assert preflight(BIG, BIG_WORKERS, dataclasses.replace(host, file_max=host.file_max + 1)) is None


def test_file_max_counts_only_the_client_end_for_a_remote_server():
    remote = PointSpec("external", 20000, 64, 0, target="10.0.0.5:7", engine="c")
    host = dataclasses.replace(ROOMY, file_max=40000 + 1000 + FILE_MAX_RESERVE - 1)
    assert preflight(remote, 2, host) is None
    loopback = dataclasses.replace(remote, target="127.0.0.1:7")
    assert "fs.file-max" in preflight(loopback, 2, host)


def test_memory_counts_kernel_server_and_load_worker_bytes_per_connection():
    need, kernel, model, client = memory_needed(BIG, BIG_WORKERS)
    assert kernel == KERNEL_BYTES_PER_CONNECTION and model > 0 and client > 0
    assert need > 250_000 * (kernel + model + client)
    host = dataclasses.replace(ROOMY, mem_available=need + MEMORY_HEADROOM_BYTES - 1)
    why = preflight(BIG, BIG_WORKERS, host)
    assert why is not None and "MemAvailable" in why
    assert "10 KiB of kernel memory per connection" in why
    assert "in the epoll server" in why and "in the python load workers" in why
    assert "lower --connections/--idle" in why
    assert preflight(BIG, BIG_WORKERS, dataclasses.replace(host, mem_available=need + MEMORY_HEADROOM_BYTES)) is None


def test_memory_per_connection_depends_on_the_model_and_the_engine():
    threads = memory_needed(PointSpec("threads", 1000, 64, 0, engine="c"), 1)
    epoll = memory_needed(PointSpec("epoll", 1000, 64, 0, engine="c"), 1)
    python = memory_needed(PointSpec("epoll", 1000, 64, 0, engine="python"), 1)
    assert threads[2] > epoll[2]
    assert python[3] > epoll[3]
    # A server on another host costs this host only the client's end and no server memory.
    remote = memory_needed(PointSpec("external", 1000, 64, 0, target="10.0.0.5:7", engine="c"), 1)
    assert remote[1] < epoll[1] and remote[2] == 0


def test_ports_of_one_source_address_limit_a_remote_target():
    remote = PointSpec("external", 30000, 64, 0, target="10.0.0.5:7", engine="c")
    why = preflight(remote, 2, ROOMY)
    assert why is not None and "ip_local_port_range 32768-60999 holds 28,232" in why
    assert "30,000 local ports" in why and "one source address" in why
    assert preflight(dataclasses.replace(remote, connections=28232), 2, ROOMY) is None


def test_loopback_spreads_source_addresses_so_only_a_narrow_range_stops_it():
    # 250,000 connections over 127.1.x.y fit the default range...
    assert preflight(BIG, BIG_WORKERS, ROOMY) is None
    # ...but not a range narrower than what each source address takes.
    why = preflight(BIG, BIG_WORKERS, dataclasses.replace(ROOMY, port_range=(40000, 44999)))
    assert why is not None and "ip_local_port_range 40000-44999 holds 5,000 ports" in why
    assert "widen net.ipv4.ip_local_port_range" in why


def test_tcp_mem_max_stops_active_connections_with_big_payloads():
    bulk = PointSpec("epoll", 1000, 4 * 2**20, 0, engine="c")
    why = preflight(bulk, 2, ROOMY)
    assert why is not None and "net.ipv4.tcp_mem" in why
    assert "1,024,000 pages" in why and "575,796 pages" in why and "lower --payload" in why
    # Idle connections hold no buffers: a million of them leave tcp_mem alone.
    idle = PointSpec("epoll", 10, 64, 0, idle=1_000_000, server_workers=51, engine="c")
    assert preflight(idle, 67, ROOMY) is None


def test_tcp_mem_counts_what_tcp_holds_already():
    spec = PointSpec("epoll", 1000, 64, 0, engine="c")
    assert preflight(spec, 2, ROOMY) is None
    busy = dataclasses.replace(ROOMY, tcp_pages_in_use=575796 - 999)
    why = preflight(spec, 2, busy)
    assert why is not None and "beside the 574,797 TCP holds now" in why


def test_descriptor_limits_per_process_come_first_with_their_hint():
    one_process = dataclasses.replace(BIG, server_workers=1)
    why = preflight(one_process, BIG_WORKERS, ROOMY)
    assert "RLIMIT_NOFILE is 20000" in why and "--server-workers 13" in why
    assert "per load worker exceed RLIMIT_NOFILE" in preflight(BIG, 2, ROOMY)
    fork = PointSpec("fork", 2000, 64, 0, fork_cap=1000)
    assert "fork cap of 1000" in preflight(fork, 2, ROOMY)


def test_a_limit_the_host_does_not_report_is_not_checked():
    unknown = HostLimits(nofile=20000, port_range=(32768, 60999))
    huge = PointSpec("epoll", 10, 64 * 2**20, 0, idle=10_000_000, server_workers=600, engine="c")
    assert preflight(huge, 700, unknown) is None


def test_this_hosts_limits_are_read_from_proc():
    host = HostLimits.read()
    assert host.nofile > 0 and host.port_range[0] < host.port_range[1]
    assert host.file_max is not None and host.files_allocated is not None
    assert 0 < host.files_allocated < host.file_max
    assert host.mem_available is not None and host.mem_available > 0
    assert host.tcp_mem is not None and host.tcp_mem[0] <= host.tcp_mem[1] <= host.tcp_mem[2]
    assert host.page_size >= 4096


@pytest.mark.parametrize("connections", [1, 100, 2000])
def test_the_default_sweep_passes_here(connections):
    assert preflight(PointSpec("epoll", connections, 64, 0), 1) is None
