"""Workloads, scale controls and preflight, through the real `bench run` CLI."""

from __future__ import annotations

import socket

import pytest
from bench_cli import only_run_dir, read_points, run_bench

from bench.measuring.accept_queue import accept_queue, wait_accepted
from bench.planning.sweep import auto_server_workers
from bench.running.point import PointSpec, round_time_note
from loadgen.connect import open_connections
from loadgen.source_addresses import PER_ADDRESS, addresses_needed, per_address, source_address


def _run(tmp_path, *args: str, timeout: float = 120) -> list[dict[str, str]]:
    proc = run_bench("run", "--duration", "0.6", "--warmup", "0.2", "--out", str(tmp_path), *args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return read_points(only_run_dir(tmp_path))


@pytest.mark.timeout(120)
def test_open_loop_reaches_its_rate_and_keeps_both_latencies(tmp_path, engine):
    (row,) = _run(
        tmp_path, "--engine", engine, "--models", "epoll", "--connections", "20", "--workload", "open", "--rate", "2000"
    )
    assert row["engine"] == engine
    assert row["status"] == "ok", row
    assert row["workload"] == "open"
    assert float(row["target_rate"]) == 2000
    assert float(row["achieved_rate"]) == pytest.approx(2000, rel=0.05)
    # Corrected latency counts from the intended send time, so it can only be longer.
    assert 0 < float(row["p50_uncorrected_us"]) <= float(row["p50_us"])
    assert 0 < float(row["p99_uncorrected_us"]) <= float(row["p99_us"])


@pytest.mark.timeout(120)
def test_idle_connections_are_held_beside_the_active_ones(tmp_path, engine):
    rows = _run(tmp_path, "--engine", engine, "--models", "poll", "--connections", "10", "--idle", "0,300")
    by_idle = {int(r["idle"]): r for r in rows}
    assert set(by_idle) == {0, 300}
    assert by_idle[0]["workload"] == "closed" and by_idle[300]["workload"] == "idle"
    assert int(by_idle[300]["connected"]) == 310
    assert int(by_idle[300]["server_fds"]) >= 310
    for row in rows:
        assert row["status"] == "ok", row
        assert int(row["errors"]) == 0


@pytest.mark.timeout(120)
def test_churn_reports_connections_per_second(tmp_path, engine):
    rows = _run(tmp_path, "--engine", engine, "--models", "epoll,threads", "--connections", "8", "--workload", "churn")
    for row in rows:
        assert row["status"] == "ok", row
        assert row["workload"] == "churn"
        assert float(row["rps"]) > 0 and int(row["errors"]) == 0


@pytest.mark.timeout(150)
def test_find_max_writes_probes_and_the_rate_found(tmp_path):
    rows = _run(tmp_path, "--models", "epoll", "--connections", "10", "--find-max", "--slo", "p99=50ms", timeout=140)
    workloads = [r["workload"] for r in rows]
    assert workloads[0] == "closed" and workloads[-1] == "find-max"
    # Six bisection steps; a step whose probe missed the SLO was measured a second time.
    retried = sum("measured again" in r["reason"] for r in rows)
    assert workloads.count("open") == 6 + retried
    answer = rows[-1]
    assert answer["status"] == "ok", answer
    assert answer["slo"] == "p99<=50000us"
    passing = [
        float(r["target_rate"])
        for r in rows
        if r["workload"] == "open" and r["status"] == "ok" and float(r["p99_us"]) <= 50000
        and float(r["achieved_rate"]) >= 0.98 * float(r["target_rate"])
    ]  # fmt: skip
    assert float(answer["max_rate"]) == max(passing)


@pytest.mark.timeout(120)
def test_server_workers_share_the_port(tmp_path, engine):
    rows = _run(
        tmp_path, "--engine", engine, "--models", "epoll,threads", "--connections", "100", "--server-workers", "2"
    )
    by_model = {r["model"]: r for r in rows}
    assert by_model["epoll"]["status"] == "ok", by_model["epoll"]
    assert int(by_model["epoll"]["server_processes"]) == 2
    assert by_model["epoll"]["server_workers"] == "2"
    assert by_model["threads"]["status"] == "skipped"
    assert "only event-driven models" in by_model["threads"]["reason"]


@pytest.mark.timeout(60)
def test_preflight_skips_what_cannot_run_with_an_actionable_reason(tmp_path):
    rows = _run(
        tmp_path, "--models", "fork,epoll", "--connections", "12,25000", "--fork-cap", "5", "--server-workers", "1"
    )
    by_key = {(r["model"], int(r["connections"])): r for r in rows}
    assert by_key[("fork", 12)]["status"] == "skipped"
    assert "fork cap of 5" in by_key[("fork", 12)]["reason"] and "--fork-cap" in by_key[("fork", 12)]["reason"]
    big = by_key[("epoll", 25000)]
    assert big["status"] == "skipped"
    assert "RLIMIT_NOFILE" in big["reason"] and "--server-workers 2" in big["reason"]
    assert by_key[("epoll", 12)]["status"] == "ok"


def test_source_addresses_spread_only_when_needed():
    assert addresses_needed(PER_ADDRESS) == 1 and addresses_needed(PER_ADDRESS + 1) == 2
    assert source_address(5, 1) is None
    assert {source_address(i, 3) for i in range(9)} == {"127.1.0.1", "127.1.0.2", "127.1.0.3"}


@pytest.mark.timeout(30)
def test_connections_bind_their_spread_source_addresses():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        result = open_connections("127.0.0.1", listener.getsockname()[1], 6, spread=3)
        try:
            assert len(result.sockets) == 6 and not result.errors
            sources = {s.getsockname()[0] for s in result.sockets}
            assert sources == {"127.1.0.1", "127.1.0.2", "127.1.0.3"}
        finally:
            for s in result.sockets:
                s.close()
    finally:
        listener.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workload", "open"], "--workload open needs --rate"),
        (["--rate", "100"], "--rate applies to --workload open only"),
        (["--find-max"], "--find-max needs an objective"),
        (["--find-max", "--slo", "p95=3"], "--slo takes the form p99=2ms"),
        (["--idle", "-1"], "--idle values must be integers >= 0"),
    ],
)
def test_workload_options_are_checked(tmp_path, args, message):
    proc = run_bench("run", "--out", str(tmp_path), *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(30)
def test_precise_timer_wakes_epoll_at_its_time_not_before():
    import select
    import time

    from loadgen.precise_timer import PreciseTimer

    timer = PreciseTimer()
    ep = select.epoll()
    try:
        ep.register(timer.fd, select.EPOLLIN)
        for delay in (0.0003, 0.002, 0.0):
            when = time.monotonic() + delay
            timer.arm(when)
            events = ep.poll(5.0)
            woke = time.monotonic()
            assert events == [(timer.fd, select.EPOLLIN)]
            assert woke >= when  # never early; how late is the host's business, bounded by poll's 5 s
            timer.consume()
            assert ep.poll(0) == []
    finally:
        ep.close()
        timer.close()


def test_round_time_note_explains_closed_loop_timeouts_by_littles_law():
    spec = PointSpec("epoll", 250_000, 64, 0, request_timeout_s=2.0)
    note = round_time_note(spec, requests=137_504, duration_s=2.0, timeouts=68_752)
    assert "68,752 requests timed out" in note and "at least 125,000 req/s" in note
    assert "68,752 req/s completed, a round of 3.6 s" in note
    none_completed = round_time_note(spec, requests=0, duration_s=2.0, timeouts=5)
    assert "at least 125,000 req/s" in none_completed and "completed" not in none_completed
    # Short rounds: the timeouts have another cause; no timeouts, or an open loop: nothing to explain.
    assert round_time_note(PointSpec("epoll", 100, 64, 0), 100_000, 1.0, 3) is None
    assert round_time_note(spec, 137_504, 2.0, 0) is None
    assert round_time_note(PointSpec("epoll", 250_000, 64, 0, workload="open", rate=1e5), 0, 2.0, 9) is None


@pytest.mark.timeout(120)
def test_by_default_a_point_gets_the_server_workers_its_descriptors_need(tmp_path):
    (row,) = _run(tmp_path, "--models", "epoll", "--connections", "25000")
    assert row["status"] == "ok", row
    assert row["server_workers"] == "2" and int(row["server_processes"]) == 2
    assert int(row["connected"]) == 25000 and int(row["errors"]) == 0
    # Two sockets, two files and an epoll item per loopback connection: kilobytes of slab.
    assert 1000 < float(row["kernel_mem_per_conn_bytes"]) < 100_000
    assert 0 < float(row["client_mem_per_conn_bytes"]) < float(row["client_rss_bytes"])


@pytest.mark.timeout(120)
def test_the_window_waits_until_the_server_has_accepted_every_connection(tmp_path):
    # fork accepts at the pace of fork(): without the wait, requests of connections still in
    # its accept queue would be charged to the model (and most of its children not yet exist).
    (row,) = _run(tmp_path, "--models", "fork", "--connections", "300")
    assert row["status"] == "ok", row
    assert int(row["server_processes"]) == 301
    assert float(row["accept_wait_s"]) >= 0
    # A forked tree's memory is counted with PSS: positive, a child's worth per connection.
    assert float(row["mem_per_conn_bytes"]) > 10_000


def test_server_workers_follow_the_descriptor_limit():
    assert auto_server_workers("epoll", 100, nofile=20000) == 1
    assert auto_server_workers("epoll", 17_000, nofile=20000) == 1
    assert auto_server_workers("epoll", 100_000, nofile=20000) == 6
    # Headroom for SO_REUSEPORT's uneven hash: 1M over 56 processes, not the 51 that would fill them.
    assert auto_server_workers("epoll", 1_000_000, nofile=20000) == 56
    # A model that cannot share its port stays at one process (preflight then says why).
    assert auto_server_workers("threads", 100_000, nofile=20000) == 1


@pytest.mark.timeout(120)
def test_closed_loop_timeouts_come_with_their_explanation(tmp_path, engine):
    (row,) = _run(
        tmp_path, "--engine", engine, "--models", "poll", "--connections", "1500", "--request-timeout", "0.0005"
    )
    assert "timeout=" in row["error_kinds"]
    assert "Little's law" in row["reason"] and "--request-timeout" in row["reason"]


def test_a_source_address_takes_well_under_half_the_port_range():
    # connect() searches one port parity first: past half the range every connect scans it all.
    assert per_address(28_232) == 9_881 and per_address(28_232) < 28_232 // 2
    assert per_address(200_000) == 10_000 and per_address(10) == 3 and per_address(1) == 1


def test_accept_queue_counts_connections_not_yet_accepted():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        try:
            assert accept_queue(port) == 5
            waited, queued = wait_accepted(port, 0.1, lambda: None)
            assert queued == 5 and waited >= 0.1
            accepted = [listener.accept()[0] for _ in range(5)]
            assert wait_accepted(port, 5.0, lambda: None)[1] == 0
            for sock in accepted:
                sock.close()
        finally:
            for sock in clients:
                sock.close()
