"""`bench serve` in the foreground, `bench run --target` against it, and the loopback guard."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import psutil
import pytest
from bench_cli import bench_command, bench_env, only_run_dir, read_points, run_bench


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
        proc = run_bench(
            "run", "--target", f"127.0.0.1:{ready['port']}", "--connections", "4", "--duration", "0.5",
            "--warmup", "0.1", "--out", str(tmp_path),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (row,) = read_points(only_run_dir(tmp_path))
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
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for p in children:
            if p.is_running():
                p.kill()


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
