"""`bench profile`: each model's system calls per request, counted by strace on real servers.

The subcommand is not wired into bench.cli yet, so these tests build its parser with
add_profile_parser and call cmd_profile the way bench.cli.main would.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from bench_cli import TESTS_DIR, alive, only_run_dir
from faulty_models import EXTRA_MODELS

from bench.errors import UsageError
from bench.tracing.syscall_profile import (
    SYSCALL_COLUMNS,
    SYSCALLS_FILE,
    add_profile_parser,
    parse_strace_summary,
    read_syscalls,
    top_syscalls,
)
from servers import registry

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")

ROOT = Path(__file__).resolve().parent.parent
# The models whose syscall patterns the textbook describes; any that cannot run here is left out.
CLAIMED = [m for m in ("epoll", "select", "threads", "nonblocking", "io_uring") if registry.describe(m).available]


def profile_main(argv: list[str]) -> int:
    """What bench.cli.main will do for `bench profile ...`."""
    parser = argparse.ArgumentParser(prog="bench")
    add_profile_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


def per_request(run_dir: Path) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for row in read_syscalls(run_dir):
        out.setdefault(row["model"], {})[row["syscall"]] = row
    return out


def calls(rows: dict[str, dict], *names: str) -> float:
    return sum(rows[n]["calls_per_req"] for n in names if n in rows)


def our_descendants() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


SAMPLE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 34.28    0.044086           3     13367       120 recvfrom
 48.90    0.062887           4     13357           sendto
  0.48    0.000619          14        42           io_uring_enter
------ ----------- ----------- --------- --------- ----------------
100.00    0.128610           4     26766       120 total
"""


def test_parse_strace_summary_reads_calls_and_empty_error_cells():
    counts = parse_strace_summary(SAMPLE)
    assert set(counts) == {"recvfrom", "sendto", "io_uring_enter"}
    assert (counts["recvfrom"].calls, counts["recvfrom"].errors) == (13367, 120)
    assert (counts["sendto"].calls, counts["sendto"].errors) == (13357, 0)
    assert counts["io_uring_enter"].calls == 42
    assert parse_strace_summary("") == {}


@pytest.mark.timeout(120)
def test_profile_shows_each_models_claimed_syscalls(tmp_path, capsys):
    before = our_descendants()
    status = profile_main(["profile", "--models", ",".join(CLAIMED), "--duration", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    run_dir = only_run_dir(tmp_path)

    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["kind"] == "profile" and meta["status"] == "complete" and meta["run_id"] == run_dir.name
    assert meta["config"]["connections"] == 50 and meta["config"]["models"] == CLAIMED
    assert meta["host"]["kernel"] and meta["strace"]["version"]
    profiles = {p["model"]: p for p in meta["profiles"]}
    for model in CLAIMED:
        p = profiles[model]
        assert p["status"] == "ok", p
        assert p["requests"] >= 200 and p["requests"] >= p["window_requests"]
        assert (run_dir / "strace" / f"{model}.txt").is_file()
    with open(run_dir / SYSCALLS_FILE, newline="") as fh:
        assert next(csv.reader(fh)) == SYSCALL_COLUMNS

    rows = per_request(run_dir)
    for model in CLAIMED:
        for r in rows[model].values():
            assert r["requests"] == profiles[model]["requests"]
            assert r["calls_per_req"] == pytest.approx(r["calls"] / r["requests"], abs=1e-3)
    # The count is exact: one recv and one send per 64-byte echo wherever the model calls
    # recv/send itself, which says that no request's calls were missed or counted twice.
    for model in ("epoll", "select", "threads", "nonblocking"):
        if model in rows:
            assert calls(rows[model], "sendto") == pytest.approx(1.0, abs=0.02), model

    epoll = rows["epoll"]
    top = [r["syscall"] for r in top_syscalls(read_syscalls(run_dir), "epoll", 4)]
    assert {"recvfrom", "sendto"} <= set(top[:2]) and ({"epoll_wait", "epoll_pwait"} & set(top)), top
    assert calls(epoll, "recvfrom") == pytest.approx(1.0, abs=0.02)
    assert epoll["recvfrom"]["errors_per_req"] < 0.05

    select = rows["select"]
    assert calls(select, "select", "pselect6") > 0
    assert calls(select, "recvfrom") == pytest.approx(1.0, abs=0.02)
    assert calls(select, "epoll_wait", "epoll_pwait", "poll", "ppoll") == 0

    threads = rows["threads"]
    assert calls(threads, "recvfrom") == pytest.approx(1.0, abs=0.02)
    assert calls(threads, "epoll_wait", "epoll_pwait", "epoll_ctl", "select", "pselect6", "poll") < 0.01

    if "nonblocking" in rows:
        nonblocking = rows["nonblocking"]
        # Every sweep asks every socket: recvs fail with EAGAIN (epoll's never do), the accept
        # tried once a sweep fails every time, and no multiplexer is used. How many recvs fail
        # depends on speed: under ptrace the server is the bottleneck, so most sockets already
        # hold their next request when the sweep reaches them (0.4-1.5 per request measured).
        assert nonblocking["recvfrom"]["errors_per_req"] >= 0.2
        assert nonblocking["recvfrom"]["errors"] >= 0.15 * nonblocking["recvfrom"]["calls"]
        assert nonblocking["accept4"]["errors"] == nonblocking["accept4"]["calls"] > 0
        assert calls(nonblocking, "epoll_wait", "epoll_pwait", "select", "pselect6", "poll", "ppoll") == 0

    if "io_uring" in rows:
        uring = rows["io_uring"]
        assert top_syscalls(read_syscalls(run_dir), "io_uring", 1)[0]["syscall"] == "io_uring_enter"
        # Completion-based: the kernel does the receiving and sending, no recv/send calls.
        assert calls(uring, "recvfrom", "sendto", "read", "write", "recvmsg", "sendmsg") < 0.01

    assert "System calls per request" in out
    report = (run_dir / "report.html").read_text()
    assert "io_uring_enter" in report or "io_uring" not in CLAIMED
    assert "pselect6" in report or "select " in report
    assert not our_descendants() - before, "a server, load worker or strace was left behind"


@pytest.mark.timeout(60)
def test_a_failing_model_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_EXTRA_MODELS", EXTRA_MODELS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))
    status = profile_main(["profile", "--models", "crash,epoll", "--duration", "0.5", "--out", str(tmp_path)])
    assert status == 0
    run_dir = only_run_dir(tmp_path)
    profiles = {p["model"]: p for p in json.loads((run_dir / "run.json").read_text())["profiles"]}
    assert profiles["crash"]["status"] == "failed" and profiles["crash"]["reason"]
    assert profiles["epoll"]["status"] == "ok"
    assert {r["model"] for r in read_syscalls(run_dir)} == {"epoll"}


def test_without_strace_one_line_error_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    assert profile_main(["profile", "--models", "epoll", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "strace" in err and err.startswith("bench: error:")
    assert not out.exists()


def test_unknown_model_is_a_usage_error(tmp_path, capsys):
    assert profile_main(["profile", "--models", "epoll,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_syscall_profile import profile_main
sys.exit(profile_main(sys.argv[1:]))
"""


def tracing(children: list[psutil.Process]) -> bool:
    """Is an `strace -p` writing a model's table (not the `strace -V` asked for its version, nor
    the ptrace check) among these processes?"""
    for child in children:
        try:
            # A model's trace, not the ptrace check made before the first (its output is /dev/null).
            cmdline = child.cmdline()
            if child.name() == "strace" and "-p" in cmdline and any(a.endswith(".txt") for a in cmdline):
                return True
        except psutil.Error:
            continue
    return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_while_tracing_stops_strace_and_every_child(tmp_path, signum):
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(tests=str(TESTS_DIR)), "profile", "--models", "threads,epoll"]
        + ["--duration", "30", "--out", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait for the trace itself: strace attached to a server that is under load.
        deadline = time.monotonic() + 30
        children: list[psutil.Process] = []
        while time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children(recursive=True)
            if tracing(children):
                break
            time.sleep(0.05)
        else:
            pytest.fail("strace never started")
        time.sleep(0.3)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    left = [c for c in children if alive(c)]
    assert not left, left
    meta = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    assert meta["status"] == "interrupted"
