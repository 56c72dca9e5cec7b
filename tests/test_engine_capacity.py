"""benchmarks/engine_capacity.py, the yardstick, run as a user runs it: a script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import c_io_uring_problem

import cbuild

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "engine_capacity.py"


def run_script(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.timeout(120)
def test_the_c_engines_runs_record_their_request_loop(tmp_path):
    from bench.running.engines import unavailable_reason

    if (reason := unavailable_reason("c")) is not None:
        pytest.skip(reason)
    raw = tmp_path / "runs.json"
    tiny = ["--engines", "c", "--connections", "2", "--repeats", "1", "--duration", "0.3", "--warmup", "0.1"]
    proc = run_script(*tiny, "--quiet-wait", "0", "--json", str(raw), timeout=100, env={"IOMODEL_C_IO": "auto"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = json.loads(raw.read_text())["runs"]
    loop = "epoll" if c_io_uring_problem() else "io_uring"
    assert run["ok"] and run["engine_io"] == loop and f"[{loop}]" in proc.stdout
    bad = run_script(*tiny, timeout=50, env={"IOMODEL_C_IO": "kqueue"})
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr
    assert bad.stderr == "engine_capacity: error: IOMODEL_C_IO is one of auto, epoll, io_uring, not 'kqueue'\n"


@pytest.mark.timeout(120)
def test_tiny_run_prints_the_table_with_ratios_to_the_plain_client(tmp_path):
    raw = tmp_path / "runs.json"
    tiny = ["--connections", "1,10", "--repeats", "1", "--duration", "0.5", "--warmup", "0.2"]
    proc = run_script(*tiny, "--engines", "python,plain", "--quiet-wait", "0", "--json", str(raw), timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["conns", "engine", "runs"])
    assert "req/s x plain" in lines[header] and "CPU x plain" in lines[header]
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("1", "python", "1/1"),
        ("1", "plain", "1/1"),
        ("10", "python", "1/1"),
        ("10", "plain", "1/1"),
    ]
    doc = json.loads(raw.read_text())
    runs = doc["runs"]
    assert len(runs) == 4 and all(r["ok"] and r["requests"] > 0 and 0 < r["duration_s"] < 2 for r in runs)
    plain = [r for r in runs if r["engine"] == "plain"]
    # The plain client measured its own CPU over its window, and psutil saw it from outside.
    assert all(r["client_cpu_s"] > 0 and r["psutil_cpu_s"] is not None and r["p50_us"] > 0 for r in plain)
    assert doc["medians"]["10"]["plain"]["rps_x_plain"] == 1.0
    assert doc["medians"]["10"]["python"]["rps_x_plain"] > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--connections", "0"], "--connections"),
        (["--connections", "1,x"], "--connections"),
        (["--engines", "python,wrk"], "unknown engine wrk"),
        (["--repeats", "0"], "--repeats"),
        (["--duration", "nan"], "--duration"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = run_script(*args, timeout=50)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_plain_client_builds_without_a_warning(tmp_path):
    if cbuild.find_compiler() is None:
        pytest.skip("no C compiler")
    binary = cbuild.build(
        "plain-client", BENCHMARKS / "plain_client.c", cache=tmp_path, flags=(*cbuild.CFLAGS, "-Werror")
    )
    usage = subprocess.run([str(binary)], capture_output=True, text=True, timeout=10, check=False)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: plain_client")
