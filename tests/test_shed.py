"""Issue 13: the connections a server sheds at its descriptor limit, as the harness reads them
from the server's stdout (bench.measuring.shed, bench.running.server_control) and as the load workers see them
(connections closed before their first echo)."""

from __future__ import annotations

import re
import socket
import time

import pandas as pd
import psutil
import pytest
from bench_cli import only_run_dir, read_points, run_bench
from faulty_models import EXTRA_MODELS
from test_load_engines import drive, faulty_env  # noqa: F401 - faulty_env is a fixture used by name

from bench.measuring.shed import ShedTally, fill_row, shed_findings
from bench.running.load_workers import LoadPlan
from bench.running.processes import READ_TO_END_S
from bench.running.server_control import ServerUnderTest


def _tally(*messages: dict, processes: int = 1) -> ShedTally:
    tally = ShedTally(processes=processes)
    for message in messages:
        assert tally.take(message), message
    return tally


def _shed(count: int, seconds: float = 0.0, errno: str = "EMFILE") -> dict:
    return {"event": "shed", "count": count, "errno": errno, "seconds": seconds}


def _stats(shed: int, episodes: int) -> dict:
    return {"event": "stats", "shed": shed, "episodes": episodes}


def test_shed_and_stats_lines_add_up_to_the_row_s_words():
    tally = _tally(_shed(30, 0.5), _shed(7, 0.25))
    assert not tally.take({"event": "ready", "port": 1}) and not tally.take({"event": "fatal", "reason": "x"})
    # Before the stats line of its exit, what the episodes said is a floor.
    assert tally.total() == 37 and not tally.complete
    assert tally.take(_stats(37, 2)) and tally.complete
    assert tally.sentence() == (
        "the server shed 37 connections at its descriptor limit (EMFILE) in 2 episodes (750 ms in all): "
        "raise RLIMIT_NOFILE (ulimit -n) or use --server-workers"
    )


def test_an_episode_under_way_at_exit_counts_in_the_stats_line_only():
    tally = _tally(_shed(3, 1.5), _stats(10, 2))
    assert tally.total() == 10 and tally.episodes() == 2
    # Only one of the two episodes has a length: none is stated.
    assert tally.sentence() == (
        "the server shed 10 connections at its descriptor limit (EMFILE) in 2 episodes: "
        "raise RLIMIT_NOFILE (ulimit -n) or use --server-workers"
    )


def test_one_process_s_stats_lines_are_cumulative():
    # Totals asked for mid-run (SIGUSR1), then those of its exit: the last one holds them all.
    tally = _tally(_shed(2, 0.001), _stats(2, 1), _shed(0, 0.001), _shed(3, 0.001), _stats(5, 3))
    assert tally.total() == 5 and tally.episodes() == 3 and tally.complete
    assert tally.sentence().startswith("the server shed 5 connections at its descriptor limit (EMFILE) in 3 episodes")


def test_missing_stats_lines_make_the_total_a_floor():
    # Three SO_REUSEPORT processes: one shed 4 and exited cleanly, one shed 5 and was killed
    # (its episode's line came, its stats line did not), one shed none.
    tally = _tally(_shed(4, 0.002), _stats(4, 1), _shed(5, 0.003), _stats(0, 0), processes=3)
    assert tally.total() == 9 and not tally.complete
    assert tally.sentence() == (
        "the server shed at least 9 connections at its descriptor limit (EMFILE) in 2 episodes (5 ms in all) "
        "(1 process printed no exit statistics): raise RLIMIT_NOFILE (ulimit -n) or use --server-workers"
    )


@pytest.mark.parametrize(
    ("errno", "words"),
    [
        (
            "ENFILE",
            "1 connection at the host's descriptor limit (ENFILE) in 1 episode (2.0 s in all): raise fs.file-max",
        ),
        (
            "ENOBUFS",
            "1 connection out of socket buffer memory at accept (ENOBUFS) in 1 episode (2.0 s in all): raise "
            "net.ipv4.tcp_mem",
        ),
        (
            "fork-cap",
            "1 connection past its cap of live children (--fork-cap) in 1 episode (2.0 s in all): raise --fork-cap",
        ),
        ("EPERM", "1 connection when accept() failed with EPERM in 1 episode (2.0 s in all): see accept(2)"),
    ],
)
def test_other_errnos_name_their_own_limit(errno, words):
    assert _tally(_shed(1, 2.0, errno), _stats(1, 1)).sentence() == f"the server shed {words}"


@pytest.mark.parametrize(
    "bad",
    [
        {"event": "shed"},
        {"event": "shed", "count": -1},
        {"event": "shed", "count": "3"},
        {"event": "shed", "count": True},
        {"event": "shed", "count": 2.5},
        {"event": "stats"},
        {"event": "stats", "shed": 1.5, "episodes": 1},
    ],
)
def test_malformed_lines_are_taken_and_counted_nowhere(bad):
    tally = _tally(bad)
    assert tally.total() is None and tally.sentence() is None


def test_a_bad_duration_costs_an_episode_its_length_only():
    tally = _tally({"event": "shed", "count": 2, "errno": "EMFILE", "seconds": "soon"}, _stats(2, 1))
    assert tally.total() == 2 and "in 1 episode:" in tally.sentence()


def test_a_server_that_says_nothing_leaves_the_column_empty_and_one_that_shed_none_zero():
    silent = {"status": "ok", "reason": "1 errors: reset=1"}
    fill_row(silent, ShedTally())
    assert silent == {"status": "ok", "reason": "1 errors: reset=1", "shed": None}
    calm = {"status": "ok", "reason": ""}
    fill_row(calm, _tally(_stats(0, 0)))
    assert calm == {"status": "ok", "reason": "", "shed": 0}


def test_a_failed_row_keeps_the_count_and_its_words():
    row = {"status": "failed", "reason": "no request completed in the window (short_read=8)"}
    fill_row(row, _tally(_shed(8, 0.01), _stats(8, 1)))
    assert row["shed"] == 8
    assert row["reason"] == (
        "no request completed in the window (short_read=8); the server shed 8 connections at its descriptor limit "
        "(EMFILE) in 1 episode (10 ms in all): raise RLIMIT_NOFILE (ulimit -n) or use --server-workers"
    )


def test_a_target_row_says_what_the_load_workers_saw():
    row = {"status": "ok", "reason": "server metrics unavailable: external server at 127.0.0.1:9"}
    fill_row(row, None, 12)
    assert "shed" not in row
    assert row["reason"].endswith(
        "; the server closed or reset 12 connections before their first echo, as a server shedding connections at "
        "its descriptor limit does (bench serve prints the count it shed): raise the server's RLIMIT_NOFILE or its "
        "--server-workers"
    )
    quiet = {"status": "ok", "reason": "x"}
    fill_row(quiet, None, 0)
    fill_row(quiet, None, None)
    assert quiet == {"status": "ok", "reason": "x"}


def test_findings_state_it_once_per_run():
    df = pd.DataFrame(
        [
            {"model": "epoll", "connections": 100, "shed": 0},
            {"model": "epoll", "connections": 2000, "shed": 150},
            {"model": "poll", "connections": 2000, "shed": 20},
            {"model": "select", "connections": 2000, "shed": None},
        ]
    )
    assert shed_findings(df) == [
        "Servers shed connections they could not hold (a descriptor limit, fork's cap, memory) at 2 points, 170 "
        "connections in all (most: epoll at "
        "2,000 connections, 150 shed): those points measured the connections the server kept, and their reasons "
        "say what to raise."
    ]
    assert shed_findings(df.assign(shed=0)) == []
    assert shed_findings(df.drop(columns="shed")) == []


def _closed_before_echo(sock: socket.socket) -> bool:
    """Whether the server closed this connection without echoing (a shed connection), or echoed."""
    sock.settimeout(5.0)
    try:
        sock.sendall(b"x")
        return sock.recv(1) != b"x"
    except (ConnectionResetError, BrokenPipeError):
        return True


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
@pytest.mark.parametrize("workers", [1, 2])
def test_the_harness_reads_the_stats_lines_a_server_prints_after_sigterm(workers):
    server = ServerUnderTest("shed", (), extra=["--workers", str(workers)] if workers > 1 else [])
    try:
        server.start()
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(8)]
        shed = sum(_closed_before_echo(s) for s in socks)
        # At most three open per process (the fake's cap): the rest were shed (SO_REUSEPORT
        # spreads the connections by a hash, not evenly).
        assert 8 - 3 * workers <= shed < 8
    finally:
        server.stop()
    for s in socks:
        s.close()
    # Each process's stats line came after SIGTERM, and every one was read before the pipe closed.
    assert server.shed.stats_lines == workers and server.shed.complete
    assert server.shed.total() == shed
    assert server.exit_s is not None


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("faulty_env")
def test_load_workers_count_connections_closed_before_their_first_echo(engine, start_server):
    shedding = start_server("shed")
    _, closed = drive(engine, shedding.port, LoadPlan("closed", 6, 64))
    # Three served, three shed: each shed one is a reset or short read, before any echo.
    assert closed.closed_before_echo == 3 == sum(closed.errors.values()), closed.errors
    assert set(+closed.errors) <= {"reset", "short_read"} and closed.requests > 0
    shedding.stop()
    shedding = start_server("shed")
    # Idle connections are never answered: one the server closes counts too.
    _, idle = drive(engine, shedding.port, LoadPlan("idle", 1, 64, idle=5))
    assert idle.closed_before_echo == 3 == sum(idle.errors.values()), idle.errors
    _, churn = drive(engine, start_server("shed-all").port, LoadPlan("churn", 2, 64), duration=0.3)
    assert churn.requests == 0 and churn.closed_before_echo == sum(churn.errors.values()) > 0, churn.errors
    # A connection closed after its echo was not turned away: an error, not a shed one.
    _, answered = drive(engine, start_server("one-echo").port, LoadPlan("closed", 4, 64))
    assert sum(answered.errors.values()) == 4 and answered.closed_before_echo == 0, answered.errors


@pytest.mark.timeout(120)
def test_a_sweep_writes_what_the_server_shed_in_ok_and_failed_rows(tmp_path):
    proc = run_bench(
        "run", "--models", "shed,shed-all", "--connections", "8", "--duration", "0.3", "--warmup", "0.1",
        "--out", str(tmp_path), extra_models=EXTRA_MODELS, timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path)
    rows = {r["model"]: r for r in read_points(run_dir)}
    ok, failed = rows["shed"], rows["shed-all"]
    assert ok["status"] == "ok" and int(ok["requests"]) > 0
    assert ok["shed"] == "5" and int(ok["errors"]) == 5, ok
    assert re.search(r"the server shed 5 connections at its descriptor limit \(EMFILE\) in \d episodes?", ok["reason"])
    # Nothing measured is lost: the failed point keeps the count, beside why it failed.
    assert failed["status"] == "failed" and failed["shed"] == "8", failed
    assert failed["reason"].startswith("no request completed in the window")
    assert "the server shed 8 connections at its descriptor limit (EMFILE)" in failed["reason"]
    html = (run_dir / "report.html").read_text()
    assert html.count("memory) at 2 points, 13 connections in all") == 1


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("faulty_env")
def test_reading_the_server_s_last_lines_is_bounded():
    # A process outside the server's tree holds its stdout: the pipe does not end with the
    # server, and stop() must not wait for it beyond its bound.
    server = ServerUnderTest("pipe-holder", ())
    stray = None
    try:
        server.start()
        deadline = time.monotonic() + 10
        while not server.warnings and time.monotonic() < deadline:
            assert server.failure() is None
            time.sleep(0.02)
        stray = psutil.Process(int(server.warnings[0].split()[-1]))
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
        assert READ_TO_END_S <= took < READ_TO_END_S + 2, took
        # It said nothing about shedding: unknown, not 0.
        assert server.shed.total() is None
    finally:
        server.stop()
        if stray is not None and stray.is_running():
            stray.kill()
            stray.wait(5)
