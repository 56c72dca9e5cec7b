"""The Locust echo user (loadgen/locust_user.py), through the real `locust` CLI in a subprocess.

Locust is never imported here: it monkey-patches the standard library of whatever imports it.
Every Locust process is found by its session (it is started as a session leader) and ended by
PID before the test returns.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from server_process import HOST, PROJECT_ROOT, StartServer

from loadgen import errors
from loadgen.histogram import merge

LOCUSTFILE = PROJECT_ROOT / "loadgen" / "locust_user.py"
LOCUST_TIMEOUT_S = 45.0

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed"),
]


def _session(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if proc.pid != sid and os.getsid(proc.pid) == sid:
                found.append(proc)
    return found


def run_locust(tmp_path: Path, port: int, *args: str) -> tuple[int, str, Path, Path]:
    """Run `locust --headless` against 127.0.0.1:`port`; return (exit code, log, result file,
    Locust's own stats file)."""
    result = tmp_path / "echo-result.json"
    stats = tmp_path / "locust-stats"
    log_path = tmp_path / "locust.log"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", f"tcp://{HOST}:{port}", "--stop-timeout", "0", "--only-summary",
        "--json-file", str(stats), "--echo-result-file", str(result), *args,
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=PROJECT_ROOT, start_new_session=True
        )
        pidfd = os.pidfd_open(proc.pid)
        try:
            exited = bool(select.select([pidfd], [], [], LOCUST_TIMEOUT_S)[0])
        finally:
            # Before reaping: the unreaped leader keeps its PID, so its session id names only
            # Locust's own processes (the forked worker included).
            leftovers = _session(proc.pid)
            if not exited:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            for child in leftovers:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            proc.wait(timeout=10)
            os.close(pidfd)
            psutil.wait_procs(leftovers, timeout=5)
    text = log_path.read_text(errors="replace")
    assert exited, f"locust did not exit within {LOCUST_TIMEOUT_S:.0f} s; log:\n{text[-3000:]}"
    return proc.returncode, text, result, stats.with_name(stats.name + ".json")


def master_on_loopback() -> list[str]:
    """The master's ZeroMQ socket on 127.0.0.1 and a free port, not on every interface at the
    default 5557, which another Locust on this shared host may hold."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = str(sock.getsockname()[1])
    return ["--master-bind-host", HOST, "--master-bind-port", port, "--master-port", port]


def locust_totals(path: Path) -> dict[str, int]:
    rows = json.loads(path.read_text())
    return {
        "num_requests": sum(r["num_requests"] for r in rows),
        "num_failures": sum(r["num_failures"] for r in rows),
    }


def test_echo_user_verifies_every_echo_and_ships_a_microsecond_histogram(
    tmp_path: Path, start_server: StartServer
) -> None:
    server = start_server("epoll")
    code, log, result_path, stats_path = run_locust(
        tmp_path, server.port,
        "-u", "10", "-r", "10", "--run-time", "3s", "--processes", "1", *master_on_loopback(),
        "--echo-payload", "100", "--echo-warmup", "1.0", "--echo-window", "1.2",
    )  # fmt: skip
    assert code == 0, log[-3000:]
    totals = locust_totals(stats_path)
    assert totals["num_requests"] > 0
    assert totals["num_failures"] == 0, log[-3000:]

    result = json.loads(result_path.read_text())
    # One worker process reported to the master through the custom message.
    assert result["processes"] == 1, result
    (worker,) = result["workers"].values()
    assert worker["role"] == "worker"
    assert worker["pid"] != result["master"]["pid"]
    assert worker["users_at_open"] == 10
    assert worker["errors"] == {} and worker["errors_total"] == {}
    hist = merge([worker["histogram"]])
    assert worker["requests"] > 0
    assert hist.get_total_count() == worker["requests"]
    # Microseconds, not Locust's whole milliseconds: a loopback echo is far below 60 s and
    # the histogram's values are not all multiples of 1000.
    assert 0 < hist.get_value_at_percentile(50) < 60_000_000
    assert any(v % 1000 for v in (hist.get_value_at_percentile(p) for p in (10, 50, 90, 99)))
    # The window the worker measured, not the one planned, and only requests inside it.
    assert worker["window_end"] - worker["window_start"] == pytest.approx(1.2, abs=0.4)
    assert result["requests"] == worker["requests"] <= totals["num_requests"]
    assert result["rps"] == pytest.approx(result["requests"] / result["duration_s"])
    assert worker["cpu_user_s"] + worker["cpu_sys_s"] > 0


class CorruptingEchoServer:
    """Echoes every byte but flips the first byte of each chunk it sends back."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self.stopping.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    conn.sendall(bytes([data[0] ^ 0xFF]) + data[1:])
                except OSError:
                    return

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for thread in [self.accepter, *self.threads]:
            thread.join(timeout=2)


@pytest.fixture
def corrupting_server() -> Iterator[CorruptingEchoServer]:
    server = CorruptingEchoServer()
    try:
        yield server
    finally:
        server.close()


def test_corrupted_echo_is_a_failure(tmp_path: Path, corrupting_server: CorruptingEchoServer) -> None:
    code, log, result_path, stats_path = run_locust(
        tmp_path, corrupting_server.port, "-u", "2", "-r", "2", "--run-time", "2s"
    )
    # Locust's exit code and stats count the failures ...
    assert code == 1, log[-3000:]
    totals = locust_totals(stats_path)
    assert totals["num_failures"] > 0
    # ... and so does the user's own tally, by kind; no corrupted echo passed as verified.
    result = json.loads(result_path.read_text())
    assert result["errors_total"].get(errors.MISMATCH, 0) > 0, result
    assert set(result["errors_total"]) == {errors.MISMATCH}
    assert result["requests"] == 0
    assert merge([result["histogram"]]).get_total_count() == 0
