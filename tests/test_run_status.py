"""Issue 13: a run killed outright (SIGKILL) is not `running` for ever: run.json records who
writes it, and the report, the index and compare call the run `abandoned` once that process is
gone, with every row it measured."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from bench_cli import bench_command, bench_env, kill_leftovers, only_run_dir, read_points, run_bench

from bench.storing.results_store import UNCHECKED_STALE_S, effective_status, new_run_meta, writer_fields

HOST = os.uname().nodename


def _run_dir(tmp_path: Path, meta: dict, age_s: float = 0.0) -> Path:
    """A run directory holding `meta` and a points file, last written `age_s` seconds ago."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    for name, text in (("run.json", json.dumps(meta)), ("points.csv", "model,status\nepoll,ok\n")):
        (run / name).write_text(text)
        then = time.time() - age_s
        os.utime(run / name, (then, then))
    return run


def test_a_run_whose_writer_lives_is_running():
    meta = new_run_meta("r")
    assert meta["writer"] == writer_fields() and meta["writer"]["pid"] == os.getpid()
    assert effective_status(meta) == "running"


def test_finished_runs_keep_their_status():
    assert effective_status({"status": "complete"}) == "complete"
    assert effective_status({"status": "interrupted", "writer": {"pid": 1}}) == "interrupted"
    assert effective_status({}) is None


@pytest.mark.timeout(30)
def test_a_run_whose_writer_is_gone_is_abandoned():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        meta = {"status": "running", "writer": {"pid": child.pid, "started": psutil.Process(child.pid).create_time()}}
        meta["writer"]["hostname"] = HOST
        assert effective_status(meta) == "running"
        child.kill()
        # Killed but not yet reaped: a zombie holds no run.
        psutil.wait_procs([psutil.Process(child.pid)], timeout=0.2)
        assert effective_status(meta) == "abandoned"
    finally:
        child.kill()
        child.wait()
    assert effective_status(meta) == "abandoned"


def test_a_reused_pid_is_not_the_writer():
    writer = {**writer_fields(), "started": psutil.Process().create_time() - 3600}
    assert effective_status({"status": "running", "writer": writer}) == "abandoned"


@pytest.mark.parametrize(
    "meta",
    [
        pytest.param({"status": "running"}, id="written before the writer was recorded"),
        pytest.param({"status": "running", "writer": {**writer_fields(), "hostname": "elsewhere"}}, id="another host"),
        pytest.param({"status": "running", "writer": "pid 12"}, id="a writer of the wrong shape"),
    ],
)
def test_a_writer_that_cannot_be_checked_is_abandoned_after_a_day_without_a_write(tmp_path, meta):
    assert effective_status(meta, _run_dir(tmp_path, meta)) == "running"
    stale = _run_dir(tmp_path, meta, age_s=UNCHECKED_STALE_S + 60)
    assert effective_status(meta, stale) == "abandoned"
    # `bench report` rewriting the report is no sign of life.
    (stale / "report.html").write_text("<html></html>")
    assert effective_status(meta, stale) == "abandoned"
    # Without the directory nothing says it stopped.
    assert effective_status(meta) == "running"


def _freeze_and_kill(pid: int) -> list[psutil.Process]:
    """SIGKILL the process and every descendant, by PID: stopped first (SIGSTOP), so that none is
    started between the listing and the kill. Returns what was killed."""
    root = psutil.Process(pid)
    root.send_signal(signal.SIGSTOP)
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return tree


@pytest.mark.timeout(240)
def test_a_run_killed_with_sigkill_is_abandoned_and_keeps_every_row(tmp_path):
    runs = tmp_path / "runs"
    bench = subprocess.Popen(
        bench_command(
            "run", "--models", "epoll", "--connections", "2,3,4,5,6,7,8,9", "--duration", "0.5", "--warmup", "0",
            "--out", str(runs),
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=bench_env(),
    )  # fmt: skip
    killed: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = list(runs.glob("*/points.csv")) if runs.exists() else []
            if found and read_points(found[0].parent):
                break
            assert bench.poll() is None, bench.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("no point was measured within 120 s")
        killed = _freeze_and_kill(bench.pid)
        bench.wait(timeout=10)
        _gone, alive = psutil.wait_procs(killed, timeout=10)
        assert not alive, f"left behind: {[p.pid for p in alive]}"
    finally:
        kill_leftovers(bench, killed)
    run_dir = only_run_dir(runs)
    rows = read_points(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    # What the killed run left: `running`, written by the process that is gone.
    assert meta["status"] == "running" and meta["writer"]["pid"] == bench.pid
    assert 1 <= len(rows) < 8

    report = run_bench("report", str(run_dir))
    assert report.returncode == 0, report.stderr
    html = (run_dir / "report.html").read_text()
    assert '<b id="status">abandoned</b>' in html
    # Every row it measured is in the table.
    assert len(re.findall(r'<tr class="(?:ok|failed|skipped)">', html)) == len(rows)
    index = (runs / "index.html").read_text()
    assert re.search(rf"{run_dir.name}.*?</td>\s*<td>[^<]*</td><td>abandoned</td>", index, re.S), index

    other = tmp_path / "other"
    tiny = run_bench(
        "run", "--models", "epoll", "--connections", "2", "--duration", "0.3", "--warmup", "0", "--out", str(other)
    )
    assert tiny.returncode == 0, tiny.stderr
    page = tmp_path / "compare.html"
    compared = run_bench("compare", str(run_dir), str(only_run_dir(other)), "--out", str(page))
    assert compared.returncode == 0, compared.stderr
    assert f"A: abandoned (killed before it finished); its {len(rows)} rows are compared." in compared.stdout
    assert '<td class="text">abandoned</td>' in page.read_text()
