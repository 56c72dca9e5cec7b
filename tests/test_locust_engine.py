"""The Locust engine (bench/running/locust_engine.py) against a real epoll server: a master and two local
workers, the measured window on the shared monotonic clock, microsecond histograms merged, and
every process it started gone, by PID, after stop().

Locust is never imported here (it monkey-patches the standard library): LocustWorkers runs it
in its own processes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
import urllib.request

import psutil
import pytest
from server_process import HOST, ServerProcess, StartServer

from bench.errors import PointFailed
from bench.running.load_workers import LoadPlan
from bench.running.locust_engine import LocustWorkers
from loadgen.histogram import merge

CONNECTIONS = 100
WARMUP_S = 0.5
WINDOW_S = 2.0

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed"),
]


def client_cpus() -> tuple[int, ...]:
    # One CPU of ours (the last), so that the pinning is visible in each process's affinity.
    return (max(os.sched_getaffinity(0)),)


def session_members(sids: list[int]) -> list[psutil.Process]:
    """Processes in the sessions our Locust processes lead (each is started as a session leader),
    the leaders excluded: whatever they may have started."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if proc.pid not in sids and os.getsid(proc.pid) in sids:
                found.append(proc)
    return found


def assert_all_gone(procs: list[psutil.Process], sids: list[int]) -> None:
    # psutil.Process remembers each process's start time: a PID reused since is not "running".
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"still running after stop(): {alive}"
    assert not session_members(sids), "a process of a Locust session outlived stop()"


def test_two_locust_workers_measure_the_planned_window_in_microseconds(start_server: StartServer) -> None:
    server: ServerProcess = start_server("epoll")
    plan = LoadPlan("closed", CONNECTIONS, 64)
    procs: list[psutil.Process] = []
    load = LocustWorkers(HOST, server.port, plan, client_cpus(), workers=2)
    try:
        load.start()
        procs = [psutil.Process(pid) for pid in load.pids()]
        assert len(procs) == 3  # the master and two workers
        connect = load.wait_connected(timeout=60)
        assert connect.connected == CONNECTIONS, connect
        assert sum(connect.errors.values()) == 0, connect.errors
        assert connect.seconds > 0
        # Each process pins itself when it loads the locustfile, which its users prove done.
        assert all(p.cpu_affinity() == list(client_cpus()) for p in procs)
        planned = load.schedule(WARMUP_S, WINDOW_S)
        result = load.collect(timeout=planned[1] - time.monotonic() + 30)
    finally:
        load.stop()
    assert_all_gone(procs, [p.pid for p in procs])
    server.assert_alive()

    assert result.requests > 0
    assert sum(result.errors.values()) == 0, result.errors
    # The window the workers measured, on the clock the harness planned it on.
    assert result.duration_s == pytest.approx(WINDOW_S, rel=0.1)
    assert result.window_start == pytest.approx(planned[0], abs=0.1 * WINDOW_S)
    assert result.window_end == pytest.approx(planned[1], abs=0.1 * WINDOW_S)
    assert result.live_connections == CONNECTIONS
    assert len(result.histograms) == 2
    hist = merge(result.histograms)
    assert hist.get_total_count() == result.requests
    # Microseconds, not Locust's whole milliseconds.
    values = [hist.get_value_at_percentile(p) for p in (10, 25, 50, 75, 90, 99)]
    assert any(v % 1000 for v in values), values
    assert 0 < values[2] < 60_000_000
    assert len(result.worker_cpu_s) == 2
    assert all(cpu > 0 for cpu in result.worker_cpu_s), result.worker_cpu_s
    # The master's CPU is counted as well: the client's CPU is at least the workers'.
    assert result.cpu_s >= sum(result.worker_cpu_s)


def test_web_ui_listens_on_loopback_only(start_server: StartServer) -> None:
    server = start_server("epoll")
    procs: list[psutil.Process] = []
    with LocustWorkers(HOST, server.port, LoadPlan("closed", 10, 64), client_cpus(), workers=1, ui=True) as load:
        load.start()
        procs = [psutil.Process(pid) for pid in load.pids()]
        (url,) = [note.split(": ", 1)[1] for note in load.notes if note.startswith("Locust web UI")]
        assert url.startswith(f"http://{HOST}:")
        assert load.wait_connected(timeout=60).connected == 10
        with urllib.request.urlopen(f"{url}/stats/requests", timeout=10) as response:
            assert json.load(response)["state"] in ("spawning", "running")
        listening = [c for p in procs for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert listening and {c.laddr.ip for c in listening} == {HOST}, listening
        planned = load.schedule(0.2, 0.5)
        assert load.collect(timeout=planned[1] - time.monotonic() + 30).requests > 0
    assert_all_gone(procs, [p.pid for p in procs])


@pytest.mark.parametrize(
    "plan",
    [
        LoadPlan("open", 10, 64, rate=100.0),
        LoadPlan("churn", 10, 64),
        LoadPlan("idle", 10, 64, idle=10),
        LoadPlan("closed", 10, 64, idle=5),
    ],
    ids=["open", "churn", "idle", "closed-with-idle"],
)
def test_only_the_closed_loop_runs_and_nothing_starts_otherwise(plan: LoadPlan) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(PointFailed, match="Locust engine"):
        LocustWorkers(HOST, 1, plan, client_cpus(), workers=2)
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before
