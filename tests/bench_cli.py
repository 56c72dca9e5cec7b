"""Running the real `bench` CLI in a subprocess, as a user would."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import psutil

TESTS_DIR = Path(__file__).resolve().parent


def bench_env(extra_models: str = "", **overrides: str) -> dict[str, str]:
    env = {**os.environ, **overrides}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH", "")]))
    if extra_models:
        env["BENCH_EXTRA_MODELS"] = extra_models
    return env


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


def run_bench(
    *args: str, timeout: float = 120, extra_models: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`bench ARGS` in a subprocess; `env` adds to (or overrides) this process's environment."""
    return subprocess.run(
        bench_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=bench_env(extra_models, **(env or {})),
    )


def only_run_dir(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def read_points(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "points.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def kill_leftovers(popen: subprocess.Popen, procs: Iterable[psutil.Process] = ()) -> None:
    """A test's clean-up: SIGKILL what it started and is still there, by PID (psutil.Process
    objects know their start time, so a reused PID is left alone)."""
    if popen.poll() is None:
        popen.kill()
        popen.wait()
    for proc in procs:
        if proc.is_running():
            proc.kill()


def alive(proc: psutil.Process) -> bool:
    """Still running, and not a zombie waiting for its parent."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
