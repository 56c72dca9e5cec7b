"""`bench serve` in the foreground, `bench run --target` against it, and the loopback guard."""

from __future__ import annotations

import json
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from bench_cli import bench_command, bench_env, kill_leftovers, only_run_dir, read_points, run_bench
from faulty_models import EXTRA_MODELS


def _target_row(out: Path, port: int, *args: str) -> dict[str, str]:
    """The one row of `bench run --target 127.0.0.1:PORT ARGS --out OUT`, which must succeed."""
    proc = run_bench("run", "--target", f"127.0.0.1:{port}", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (row,) = read_points(only_run_dir(out))
    return row


@pytest.mark.timeout(90)
def test_serve_then_run_against_its_port(tmp_path):
    serve = subprocess.Popen(
        bench_command("serve", "epoll", "--duration", "60"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env(),
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        ready = json.loads(serve.stdout.readline())
        assert ready["event"] == "ready" and ready["model"] == "epoll"
        children = psutil.Process(serve.pid).children(recursive=True)
        assert [p.pid for p in children] == [ready["pid"]]
        row = _target_row(tmp_path, ready["port"], "--connections", "4", "--duration", "0.5", "--warmup", "0.1")
        assert row["status"] == "ok", row
        assert row["model"] == "external" and float(row["rps"]) > 0 and float(row["p99_us"]) > 0
        assert float(row["client_cpu_pct"]) > 0
        # Server metrics are not ours to read: empty, and the reason says so.
        assert row["server_cpu_user_s"] == "" and row["cpu_us_per_req"] == "" and row["server_rss_bytes"] == ""
        assert "server metrics unavailable" in row["reason"]
        assert psutil.pid_exists(ready["pid"]), "the target server must outlive the run"
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=10) == 0
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive
    finally:
        kill_leftovers(serve, children)


def _serve(*args: str, extra_models: str = "", preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        bench_command("serve", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=bench_env(extra_models), preexec_fn=preexec_fn,
    )  # fmt: skip


def _stop_serve(serve: subprocess.Popen) -> tuple[list[dict], str]:
    """SIGINT `bench serve`, then the JSON lines it printed after its ready line, and its stderr."""
    serve.send_signal(signal.SIGINT)
    out, err = serve.communicate(timeout=20)
    assert serve.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def _closed_before_echo(row: dict[str, str]) -> int:
    """The count a --target row's reason gives of connections closed before their first echo."""
    found = re.search(r"the server closed or reset ([\d,]+) connections? before their first echo", row["reason"])
    assert found, row["reason"]
    return int(found.group(1).replace(",", ""))


@pytest.mark.timeout(90)
def test_serve_relays_what_its_server_shed_and_the_target_row_says_what_the_workers_saw(tmp_path):
    # A server that sheds beyond three open connections (tests/faulty_models.py), as the
    # reference servers shed at their descriptor limit.
    serve = _serve("shed", "--duration", "60", extra_models=EXTRA_MODELS)
    try:
        ready = json.loads(serve.stdout.readline())
        row = _target_row(tmp_path, ready["port"], "--connections", "8", "--duration", "0.3", "--warmup", "0.1")
        assert row["status"] == "ok" and int(row["requests"]) > 0, row
        # The server's own count is not readable from here: the column stays empty.
        assert row["shed"] == ""
        closed = _closed_before_echo(row)
        assert closed >= 5
        lines, err = _stop_serve(serve)
    finally:
        kill_leftovers(serve)
    # bench serve printed the server's lines as they came: the episodes, then the exit's stats.
    assert lines[-1] == {"event": "stats", "shed": closed, "episodes": len(lines) - 1}
    assert all(line["event"] == "shed" and line["errno"] == "EMFILE" for line in lines[:-1])
    assert sum(line["count"] for line in lines[:-1]) == closed
    assert f"bench serve: the server shed {closed} connections at its descriptor limit (EMFILE)" in err


# Descriptors for the server under test: a few dozen connections beside its own.
LOW_NOFILE = 64


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_NOFILE, LOW_NOFILE))


@pytest.mark.timeout(120)
def test_a_server_at_its_descriptor_limit_survives_a_target_run_that_exceeds_it(tmp_path):
    """Issue 13's done-when: `bench serve` with a low nofile survives a `bench run --target` that
    exceeds it, keeps accepting, and the row says how many connections were shed."""
    serve = _serve("epoll", "--duration", "100", preexec_fn=_low_nofile)
    try:
        ready = json.loads(serve.stdout.readline())
        assert psutil.Process(ready["pid"]).rlimit(psutil.RLIMIT_NOFILE) == (LOW_NOFILE, LOW_NOFILE)
        connections = str(3 * LOW_NOFILE)
        row = _target_row(tmp_path, ready["port"], "--connections", connections, "--duration", "0.5", "--warmup", "0.2")
        # It served the connections it could hold, and shed the rest.
        assert row["status"] == "ok" and int(row["requests"]) > 0, row
        shed = _closed_before_echo(row)
        assert 3 * LOW_NOFILE - LOW_NOFILE <= shed < 3 * LOW_NOFILE
        server = psutil.Process(ready["pid"])
        assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE, "the server died"
        # Accept resumes once the run's connections are gone.
        with socket.create_connection(("127.0.0.1", ready["port"]), timeout=5) as sock:
            sock.settimeout(5)
            sock.sendall(b"still here")
            assert sock.recv(64) == b"still here"
        lines, err = _stop_serve(serve)
    finally:
        kill_leftovers(serve)
    # The server's own count, relayed by bench serve, is the one the row gives.
    assert lines[-1]["event"] == "stats" and lines[-1]["shed"] == shed, lines
    assert f"bench serve: the server shed {shed} connections" in err


@pytest.mark.timeout(60)
def test_serve_stops_by_itself_after_its_duration():
    started = time.monotonic()
    proc = subprocess.run(
        bench_command("serve", "poll", "--duration", "1"), capture_output=True, text=True, timeout=30, env=bench_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert 1 <= time.monotonic() - started < 20
    ready = json.loads(proc.stdout.splitlines()[0])
    assert ready["model"] == "poll"
    assert not psutil.pid_exists(ready["pid"]) or psutil.Process(ready["pid"]).status() == psutil.STATUS_ZOMBIE


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "nosuch"], "unknown model"),
        (["serve", "epoll", "--duration", "0"], "--duration must be > 0"),
        (["serve", "epoll", "--duration", "nan"], "--duration must be > 0"),
        (["run", "--target", "127.0.0.1"], "--target takes HOST:PORT"),
        (["run", "--target", "127.0.0.1:99999"], "--target takes HOST:PORT"),
        (["run", "--target", "127.0.0.1:80", "--models", "epoll"], "--models does not apply"),
        (["run", "--allow-remote"], "--allow-remote applies to --target only"),
    ],
)
def test_serve_and_target_options_are_checked(tmp_path, args, message):
    proc = run_bench(*args, *(["--out", str(tmp_path)] if args[0] == "run" else []))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def _in_empty_netns(*args: str) -> subprocess.CompletedProcess:
    """Run bench in a fresh network namespace: no route anywhere, so even a broken guard
    could not send a packet off this host."""
    return subprocess.run(
        ["unshare", "-n", *bench_command(*args)], capture_output=True, text=True, timeout=60, env=bench_env()
    )


def _netns_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0


needs_netns = pytest.mark.skipif(not _netns_available(), reason="unshare -n is not permitted here")


@needs_netns
@pytest.mark.timeout(90)
def test_non_loopback_target_is_refused_without_allow_remote(tmp_path):
    proc = _in_empty_netns("run", "--target", "10.255.0.1:7", "--connections", "1", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "refusing to send load to 10.255.0.1" in proc.stderr and "--allow-remote" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


@needs_netns
@pytest.mark.timeout(90)
def test_allow_remote_lets_the_target_through_and_records_the_failure(tmp_path):
    proc = _in_empty_netns(
        "run", "--target", "10.255.0.1:7", "--allow-remote", "--connections", "1", "--duration", "0.2",
        "--warmup", "0", "--ready-timeout", "2", "--out", str(tmp_path),
    )  # fmt: skip
    # The point is written as failed data; with no point measured the run exits 1.
    assert proc.returncode == 1, proc.stderr
    (row,) = read_points(only_run_dir(tmp_path))
    assert row["status"] == "failed"
    assert "cannot connect to the target 10.255.0.1:7" in row["reason"]
