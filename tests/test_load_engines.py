"""The built-in load engines (c and python) through their manager, against real servers on
loopback: every test runs on both engines, which must agree on what they count."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from bench_cli import TESTS_DIR
from conftest import EVERY_LOOP, builtin_engine, c_io_uring_problem
from faulty_models import EXTRA_MODELS
from hdrh.histogram import HdrHistogram

from bench.running.engines import engine_class, make_engine
from bench.running.load_workers import C_IO_ENV, ConnectPhase, LoadPlan, LoadResult
from loadgen.histogram import encode_counts, merge, new_histogram, summarize

HOST = "127.0.0.1"


@pytest.fixture(params=EVERY_LOOP)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Here the C engine runs with its request loop on io_uring (where the kernel has it) and on
    epoll: the two must count alike."""
    return builtin_engine(request.param, monkeypatch)


def drive(
    engine: str, port: int, plan: LoadPlan, workers: int = 1, warmup: float = 0.2, duration: float = 0.6
) -> tuple[ConnectPhase, LoadResult]:
    load = make_engine(engine, HOST, port, plan, (), workers)
    try:
        load.start()
        connect = load.wait_connected(timeout=30)
        # Each test on "c/io_uring" or "c/epoll" ran the loop it names (churn is on epoll always).
        loop = os.environ.get(C_IO_ENV, "auto") if engine == "c" and plan.workload != "churn" else "auto"
        assert loop == "auto" or connect.io == loop, connect
        load.schedule(warmup, duration)
        return connect, load.collect(timeout=warmup + duration + 15)
    finally:
        load.stop()


@pytest.fixture
def faulty_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers started by the test can load the faulty models of tests/faulty_models.py."""
    monkeypatch.setenv("BENCH_EXTRA_MODELS", EXTRA_MODELS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))


@pytest.mark.timeout(60)
def test_closed_loop_counts_verified_echoes_in_the_window(engine, start_server):
    server = start_server("native")
    connect, result = drive(engine, server.port, LoadPlan("closed", 20, 64), workers=2)
    assert connect.connected == 20 and not +connect.errors
    assert merge([connect.histogram]).get_total_count() == 20
    assert not +result.errors, result.errors
    assert result.live_connections == 20
    assert result.requests > 1000
    # The window's length is what the workers' clocks measured (about the planned 0.6 s).
    assert result.duration_s == pytest.approx(0.6, abs=0.05)
    assert merge(result.histograms).get_total_count() == result.requests
    # Requests sent in the window and completed in it differ by those in flight at its edges.
    assert abs(result.sent_in_window - result.requests) <= 20
    assert result.cpu_s > 0 and len(result.worker_cpu_s) == 2
    assert not result.uncorrected


@pytest.mark.timeout(60)
def test_open_loop_keeps_its_rate_and_both_latencies(engine, start_server):
    server = start_server("epoll")
    _, result = drive(engine, server.port, LoadPlan("open", 10, 64, rate=4000.0), duration=1.0)
    assert not +result.errors, result.errors
    assert result.requests / result.duration_s == pytest.approx(4000, rel=0.05)
    corrected, uncorrected = summarize(merge(result.histograms)), summarize(merge(result.uncorrected))
    # Latency from the intended send time can only be longer than from the actual send.
    for key in ("p50_us", "p99_us"):
        assert 0 < uncorrected[key] <= corrected[key]


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
def test_a_corrupted_echo_is_a_mismatch_and_drops_its_connection(engine, start_server):
    server = start_server("corrupt")
    _, result = drive(engine, server.port, LoadPlan("closed", 6, 64))
    # Every connection meets a corrupted echo at its third request.
    assert result.errors == {"mismatch": 6}
    assert result.live_connections == 0


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
def test_an_echo_in_many_segments_is_put_together_and_verified(engine, start_server):
    server = start_server("dribble")
    # 64 bytes in 5-byte pieces 1 ms apart: each echo takes 13 reads, each woken by its segment.
    _, result = drive(engine, server.port, LoadPlan("closed", 4, 64), duration=1.0)
    assert not +result.errors, result.errors
    assert result.live_connections == 4
    # At least 12 ms per echo: no echo was counted before its last piece came.
    assert result.requests > 0
    assert summarize(merge(result.histograms))["p50_us"] >= 12_000


@pytest.mark.timeout(60)
def test_echoes_larger_than_one_read_are_read_whole(engine, start_server):
    server = start_server("native")
    # 300 KiB: several times the C worker's 64 KiB read, so one wake-up finds more queued than
    # one read takes; an edge-triggered reader that stopped there would wait for ever, which
    # the 0.3 s request timeout turns into errors inside the window.
    plan = LoadPlan("closed", 3, 300 * 1024, request_timeout_s=0.3)
    _, result = drive(engine, server.port, plan, duration=1.0)
    assert not +result.errors, result.errors
    assert result.live_connections == 3 and result.requests > 10
    assert merge(result.histograms).get_total_count() == result.requests


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
def test_a_byte_beyond_the_echo_is_a_mismatch(engine, start_server):
    server = start_server("overlong")
    _, result = drive(engine, server.port, LoadPlan("closed", 3, 64))
    # Every connection fails on the extra byte. The C worker checks only what the echo owes
    # against it (as the plain client in benchmarks/ does) and the rest against the next echo, so
    # its first echo verifies and the byte fails the second; the Python worker checks what it
    # read, 65 bytes, and fails the first.
    assert result.errors == {"mismatch": 3}, result.errors
    assert sum(result.timeline["completed"]) == (3 if engine == "c" else 0)
    assert result.live_connections == 0


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
@pytest.mark.parametrize(("model", "answered"), [("half-echo-fin", 0), ("echo-fin", 3)])
def test_a_close_that_comes_with_data_is_seen_at_once(engine, start_server, model, answered):
    server = start_server(model)
    # Data and FIN in one segment make one wake-up; the close must be counted from it, in the
    # warm-up, not found by the 2 s request timeout after a window with nothing to show.
    _, result = drive(engine, server.port, LoadPlan("closed", 3, 64), warmup=0.3, duration=0.3)
    assert result.errors == {"short_read": 3}, result.errors
    assert result.closed_before_echo == 3 - answered
    assert sum(result.timeline["completed"]) == answered
    assert result.live_connections == 0


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
def test_idle_connections_closed_by_the_server_are_counted(engine, start_server):
    server = start_server("idle-timeout")
    connect, result = drive(engine, server.port, LoadPlan("idle", 3, 64, idle=5), duration=1.0)
    assert connect.connected == 8
    # The active connections never fall silent; each idle one is closed by the server once.
    assert sum(result.errors.values()) == 5, result.errors
    assert set(+result.errors) <= {"short_read", "reset"}
    assert result.live_connections == 3 and result.requests > 0


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
def test_a_connection_closed_between_open_loop_sends_is_a_short_read(engine, start_server):
    server = start_server("idle-timeout")
    # One send a second per connection: the server closes each after 0.3 s of silence.
    _, result = drive(engine, server.port, LoadPlan("open", 2, 64, rate=2.0), warmup=0.1, duration=1.0)
    assert sum(result.errors.values()) == 2 and set(+result.errors) <= {"short_read", "reset"}, result.errors
    assert result.live_connections == 0


@pytest.mark.timeout(60)
def test_refused_connects_are_counted_by_kind(engine):
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    # Nothing listens there now: every connect is refused.
    connect, result = drive(engine, port, LoadPlan("closed", 5, 64), duration=0.2)
    assert connect.connected == 0
    assert connect.errors == {"connect_refused": 5}
    # Counted once: the result holds what happened after the connect phase.
    assert not +result.errors
    assert result.requests == 0 and result.live_connections == 0


@pytest.mark.timeout(60)
def test_churn_counts_cycles_and_their_connect_times(engine, start_server):
    server = start_server("epoll")
    _, result = drive(engine, server.port, LoadPlan("churn", 4, 64))
    assert not +result.errors, result.errors
    assert result.requests > 50
    assert merge(result.connect_histograms).get_total_count() == result.requests
    cycle, connect = summarize(merge(result.histograms)), summarize(merge(result.connect_histograms))
    # A cycle contains its connect, and the connect's clock starts before connect(), inside which
    # loopback does most of the handshake (tens of µs, not the few µs after it returns).
    assert 8 <= connect["p50_us"] <= cycle["p50_us"]


def _start_worker(engine: str, port: int, *options: str) -> subprocess.Popen:
    load = engine_class(engine)(HOST, port, LoadPlan("closed", 1, 64), (), 1)
    argv = load.argv(["--host", HOST, "--port", str(port), *options])
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=TESTS_DIR.parent)


def _run_worker(
    proc: subprocess.Popen, warmup: float = 0.1, duration: float = 0.3, release: bool = True
) -> tuple[dict, dict]:
    connected = json.loads(proc.stdout.readline())
    start = time.monotonic() + 0.05
    schedule = {
        "event": "schedule",
        "start_at": start,
        "window_start": start + warmup,
        "window_end": start + warmup + duration,
    }
    proc.stdin.write(json.dumps(schedule) + "\n")
    proc.stdin.flush()
    result = json.loads(proc.stdout.readline())
    if not release:
        return connected, result
    # The worker holds its connections until the manager closes its stdin.
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    return connected, result


@pytest.mark.timeout(60)
def test_connections_take_their_spread_source_addresses(engine, start_server):
    server = start_server("epoll")
    proc = _start_worker(engine, server.port, "--connections", "6", "--spread", "3", "--first-index", "0")
    try:
        connected = json.loads(proc.stdout.readline())
        assert connected["connected"] == 6
        peers = [c.raddr.ip for c in psutil.Process(server.pid).net_connections("tcp") if c.raddr]
        assert sorted(peers) == sorted(["127.1.0.1", "127.1.0.2", "127.1.0.3"] * 2)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(60)
def test_a_worker_without_its_schedule_closes_everything_and_exits(engine, start_server):
    server = start_server("epoll")
    proc = _start_worker(engine, server.port, "--connections", "4")
    assert json.loads(proc.stdout.readline())["connected"] == 4
    proc.stdin.close()
    assert proc.wait(timeout=10) == 1
    deadline = time.monotonic() + 5
    while psutil.Process(server.pid).net_connections("tcp") and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the closes on its own schedule
    assert [c for c in psutil.Process(server.pid).net_connections("tcp") if c.raddr] == []


@pytest.mark.timeout(60)
def test_a_worker_dies_with_its_parent(engine, start_server):
    server = start_server("epoll")
    load = engine_class(engine)(HOST, server.port, LoadPlan("closed", 1, 64), (), 1)
    argv = load.argv(["--host", HOST, "--port", str(server.port), "--connections", "2", "--die-with-parent"])
    # A parent that starts the worker, reports its PID, then waits to be killed.
    parent_code = (
        "import subprocess, sys, time\n"
        f"w = subprocess.Popen({argv!r}, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    try:
        worker = psutil.Process(int(parent.stdout.readline()))
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        worker.wait(timeout=5)  # raises TimeoutExpired if the worker outlived its parent
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker.is_running():
            worker.kill()


@pytest.mark.timeout(60)
def test_c_worker_latencies_are_hdrhistogram_buckets(start_server):
    """The compiled worker's counts sit at HdrHistogram bucket floors (1 us..60 s, 3 digits),
    so folding them into the manager's histograms moves nothing between buckets."""
    from loadgen.c_worker import worker_binary

    if worker_binary()[0] is None:
        pytest.skip(f"C engine unavailable: {worker_binary()[1]}")
    server = start_server("epoll")
    proc = _start_worker("c", server.port, "--connections", "8", "--workload", "open", "--rate", "2000")
    _, result = _run_worker(proc)
    counts = result["histogram_counts"]
    assert sum(c for _, c in counts) == result["requests"] > 0
    reference: HdrHistogram = new_histogram()
    for value, _ in counts:
        assert reference.get_lowest_equivalent_value(value) == value
    assert [v for v, _ in counts] == sorted({v for v, _ in counts})
    # Beyond 2048 us a bucket holds 2^k values: one from each of several buckets stays apart.
    folded = merge([encode_counts([[3000, 1], [3001, 2], [70_000, 4], [59_000_000, 1]])])
    assert folded.get_total_count() == 8
    assert folded.get_count_at_value(3000) == 3 and folded.get_count_at_value(70_000) == 4


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--connections", "0"], "--connections takes an integer >= 1"),
        (["--connections", "2", "--workload", "open"], "--workload open needs --rate > 0"),
        (["--connections", "2", "--cpus", "x"], "--cpus takes a list"),
    ],
)
def test_c_worker_rejects_bad_options_in_one_line(options, message):
    from loadgen.c_worker import worker_binary

    binary, reason = worker_binary()
    if binary is None:
        pytest.skip(f"C engine unavailable: {reason}")
    proc = subprocess.run([str(binary), "--port", "9", *options], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


@pytest.mark.timeout(60)
def test_connect_progress_grows_worker_by_worker_to_the_total(engine, start_server):
    # The live display's "connecting (n of N)": n after each worker has opened all of its share.
    server = start_server("native")
    load = make_engine(engine, HOST, server.port, LoadPlan("closed", 30, 64), (), 3)
    seen: list[int] = []
    try:
        load.start()
        connect = load.wait_connected(timeout=30, progress=seen.append)
    finally:
        load.stop()
    assert len(seen) == 3 and seen == sorted(seen) and seen[0] > 0
    assert seen[-1] == connect.connected == 30


def _tcp_peers(pid: int) -> list:
    return [c for c in psutil.Process(pid).net_connections("tcp") if c.raddr]


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
def test_a_dropped_connection_is_closed_while_the_worker_runs_on(engine, start_server):
    # On io_uring a recv armed on a socket holds its file: close() alone would leave the
    # connection open until the worker exits. The worker holds its other connections open
    # until released, so the server must see every corrupted one gone before that.
    server = start_server("corrupt")
    proc = _start_worker(engine, server.port, "--connections", "3")
    try:
        connected, result = _run_worker(proc, release=False)
        assert connected["connected"] == 3 and result["errors"] == {"mismatch": 3}, result
        deadline = time.monotonic() + 5
        while _tcp_peers(server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices the closes on its own schedule
        assert _tcp_peers(server.pid) == []
        assert proc.poll() is None  # still holding, not exited
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
def test_connections_dropped_at_the_window_end_are_closed_too(engine, start_server):
    # Every request times out at the window's end: the worker's last act before holding its
    # connections is to drop them all. On io_uring their sockets close only when the kernel has
    # ended their cancelled recvs, which the worker must see through before it holds.
    server = start_server("silent")
    proc = _start_worker(engine, server.port, "--connections", "3", "--request-timeout", "0.45")
    try:
        connected, result = _run_worker(proc, warmup=0.0, duration=0.5, release=False)
        assert connected["connected"] == 3 and result["errors"] == {"timeout": 3}, result
        deadline = time.monotonic() + 5
        while _tcp_peers(server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices the closes on its own schedule
        assert _tcp_peers(server.pid) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(60)
def test_the_c_worker_reports_its_request_loop(start_server, monkeypatch):
    from bench.running.engines import unavailable_reason
    from bench.running.load_workers import C_IO_ENV

    if (reason := unavailable_reason("c")) is not None:
        pytest.skip(reason)
    server = start_server("native")
    for io in ("epoll", "auto") if c_io_uring_problem() else ("epoll", "io_uring", "auto"):
        monkeypatch.setenv(C_IO_ENV, io)
        proc = _start_worker("c", server.port, "--connections", "2")
        try:
            connected, result = _run_worker(proc)
        finally:
            proc.kill()
            proc.wait()
        assert result["requests"] > 0 and not result["errors"], result
        if io == "epoll":
            assert connected["io"] == "epoll" and "io_why" not in connected
        elif io == "io_uring":  # set up, or the worker fails: never a quiet fall-back
            assert connected["io"] == "io_uring"
        else:  # auto: io_uring wherever the worker can set it up, else epoll saying why
            assert connected["io"] == ("epoll" if c_io_uring_problem() else "io_uring")
            assert (connected["io"] == "epoll") == ("io_why" in connected)


@pytest.mark.timeout(60)
def test_a_bad_request_loop_choice_is_one_line(monkeypatch):
    from bench.errors import UsageError
    from bench.running.engines import choose_engine, unavailable_reason
    from bench.running.load_workers import C_IO_ENV

    if (reason := unavailable_reason("c")) is not None:
        pytest.skip(reason)
    monkeypatch.setenv(C_IO_ENV, "kqueue")
    with pytest.raises(UsageError, match="IOMODEL_C_IO is one of auto, epoll, io_uring"):
        choose_engine("c")
    load = engine_class("c")(HOST, 1, LoadPlan("closed", 1, 64), (), 1)
    monkeypatch.delenv(C_IO_ENV)
    argv = load.argv(["--host", HOST, "--port", "1", "--connections", "1"])
    argv[argv.index("--io") + 1] = "kqueue"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and proc.stderr == "loadgen-worker: --io is auto, epoll or io_uring\n"
