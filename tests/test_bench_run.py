"""`bench run` end to end: real servers, real load workers, real files."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from bench_cli import bench_command, bench_env, only_run_dir, read_points, run_bench
from faulty_models import EXTRA_MODELS

from bench.storing.columns import POINT_COLUMNS
from loadgen import c_worker

# The columns issue 2 names, in its order; later columns may follow, none may be renamed.
ISSUE_COLUMNS = [
    "run_id", "model", "workload", "connections", "payload", "repeat", "status", "reason", "requests",
    "errors", "duration_s", "rps", "mbps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
    "server_cpu_user_s", "server_cpu_sys_s", "cpu_us_per_req", "server_rss_bytes", "client_cpu_pct",
]  # fmt: skip


@pytest.mark.timeout(180)
def test_tiny_sweep_writes_run_points_and_report(tmp_path):
    # select before epoll at 1100: the sweep must go on past select's failure.
    proc = run_bench(
        "run", "--models", "select,epoll", "--connections", "2,1100", "--duration", "0.5", "--warmup", "0.2",
        "--out", str(tmp_path), timeout=170,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path)

    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete"
    assert meta["run_id"] == run_dir.name
    assert "--connections 2,1100" in meta["command"]
    assert meta["config"]["connections"] == [2, 1100]
    for key in ("kernel", "cpu_count", "python"):
        assert meta["host"][key]

    with open(run_dir / "points.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[: len(ISSUE_COLUMNS)] == ISSUE_COLUMNS
    assert header == POINT_COLUMNS

    rows = {(r["model"], int(r["connections"])): r for r in read_points(run_dir)}
    assert set(rows) == {("select", 2), ("epoll", 2), ("select", 1100), ("epoll", 1100)}
    for key in [("select", 2), ("epoll", 2), ("epoll", 1100)]:
        row = rows[key]
        assert row["status"] == "ok", row
        assert int(row["requests"]) > 0 and float(row["rps"]) > 0
        assert float(row["duration_s"]) == pytest.approx(0.5, rel=0.2)
        assert float(row["rps"]) == pytest.approx(int(row["requests"]) / float(row["duration_s"]), rel=1e-3)
        assert 0 < float(row["p50_us"]) <= float(row["p99_us"]) <= float(row["max_us"])
        assert float(row["cpu_us_per_req"]) > 0 and int(row["server_rss_bytes"]) > 0
        assert int(row["errors"]) == 0
    assert int(rows[("epoll", 1100)]["connected"]) == 1100
    failed = rows[("select", 1100)]
    assert failed["status"] == "failed"
    assert "1024" in failed["reason"]

    html = (run_dir / "report.html").read_text()
    assert html.count("<svg") >= 2
    assert 'id="plot-rps"' in html and 'id="plot-p99_us"' in html
    # Self-contained: nothing for a browser to fetch.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html
    index = (tmp_path / "index.html").read_text()
    assert f'href="{run_dir.name}/report.html"' in index and meta["host"]["kernel"] in index


@pytest.mark.timeout(90)
def test_crashing_and_never_ready_servers_are_failed_rows(tmp_path):
    proc = run_bench(
        "run", "--models", "crash,never-ready,poll", "--connections", "3", "--duration", "0.3",
        "--warmup", "0", "--ready-timeout", "2", "--out", str(tmp_path), extra_models=EXTRA_MODELS, timeout=80,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in read_points(only_run_dir(tmp_path))}
    assert rows["crash"]["status"] == "failed"
    assert "status 7" in rows["crash"]["reason"]
    assert rows["never-ready"]["status"] == "failed"
    assert "not ready within 2 s" in rows["never-ready"]["reason"]
    assert rows["poll"]["status"] == "ok"


@pytest.mark.timeout(60)
def test_unavailable_model_is_skipped_with_its_reason(tmp_path):
    proc = run_bench(
        "run", "--models", "unavailable,epoll", "--connections", "2", "--duration", "0.3", "--warmup", "0",
        "--out", str(tmp_path), extra_models=EXTRA_MODELS,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in read_points(only_run_dir(tmp_path))}
    assert rows["unavailable"]["status"] == "skipped"
    assert rows["unavailable"]["reason"] == "unavailable here: needs a quantum NIC"
    assert rows["epoll"]["status"] == "ok"
    listing = run_bench("models", "--json", extra_models=EXTRA_MODELS)
    models = {m["name"]: m for m in json.loads(listing.stdout)}
    assert models["unavailable"]["available"] is False and models["epoll"]["available"] is True
    server = subprocess.run(
        [sys.executable, "-m", "servers", "unavailable"], capture_output=True, text=True, timeout=30,
        env=bench_env(EXTRA_MODELS),
    )  # fmt: skip
    assert server.returncode == 2
    assert json.loads(server.stdout) == {
        "event": "fatal", "model": "unavailable", "reason": "unavailable: needs a quantum NIC",
    }  # fmt: skip


def _our_children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _roles(procs: list[psutil.Process]) -> set[str]:
    roles = set()
    for p in procs:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        for role in ("servers", "loadgen"):
            if role in cmd:
                roles.add(role)
        # The C engine's worker is its own binary, loadgen-worker-<hash> in the build cache.
        if cmd and os.path.basename(cmd[0]).startswith(c_worker.BINARY_NAME):
            roles.add("loadgen")
    return roles


@pytest.mark.timeout(90)
def test_sigint_keeps_measured_rows_and_leaves_no_process(tmp_path):
    bench = subprocess.Popen(
        bench_command(
            "run", "--models", "epoll,poll", "--connections", "5,10,20,40", "--duration", "1",
            "--warmup", "0.2", "--out", str(tmp_path),
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env(),
    )  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 60
        # Wait for a measured row, then for a point in progress (a server and a load worker).
        while time.monotonic() < deadline:
            runs = [p for p in tmp_path.iterdir() if (p / "points.csv").exists()]
            if runs and len(read_points(runs[0])) >= 1:
                children = _our_children(bench.pid)
                if _roles(children) == {"servers", "loadgen"}:
                    seen.update({p.pid: p for p in children})
                    break
            assert bench.poll() is None, bench.communicate()
            time.sleep(0.02)
        assert seen, "never saw a point in progress"
        rows_before = len(read_points(runs[0]))
        bench.send_signal(signal.SIGINT)
        _out, err = bench.communicate(timeout=15)
        assert bench.returncode == 130, err
        assert "Traceback" not in err
        rows_after = read_points(runs[0])
        assert len(rows_after) >= rows_before >= 1
        assert all(r["status"] == "ok" for r in rows_after)
        gone, alive = psutil.wait_procs(list(seen.values()), timeout=5)
        assert not alive, f"left behind: {[p.pid for p in alive]}"
        meta = json.loads((runs[0] / "run.json").read_text())
        assert meta["status"] == "interrupted"
        assert (runs[0] / "report.html").exists()
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        for p in seen.values():
            if p.is_running():
                p.kill()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--models", "nosuch"], "unknown model"),
        (["run", "--connections", "1,abc"], "comma-separated list of integers"),
        (["run", "--connections", "0"], ">= 1"),
        (["run", "--duration", "-1"], "--duration must be a finite number > 0"),
        (["run", "--duration", "nan"], "--duration must be a finite number > 0"),
        (["run", "--workload", "open", "--rate", "inf"], "--rate must be a finite number"),
        (["run", "--workload", "open", "--rate", "5000,abc"], "--rate must be a finite number > 0"),
        (["run", "--workload", "open", "--rate", "5000,0"], "--rate must be a finite number > 0"),
        (["run", "--workload", "open", "--rate", "5000,5000"], "--rate lists 5000 more than once"),
        (["run", "--rate", "5000,20000"], "--rate applies to --workload open only"),
        (["run", "--workload", "open", "--rate", "5000,2e4", "--find-max", "--slo", "p99=2ms"], "not both"),
        (["run", "--server-cpus", "99", "--client-cpus", "0"], "--server-cpus must name CPUs"),
        (["run", "--server-workers", "0"], "--server-workers takes 'auto' or an integer >= 1"),
        (["run", "--request-timeout", "0"], "--request-timeout must be a finite number > 0"),
        (["run", "--engine", "nosuch"], "invalid choice"),
        (["report", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, args, message):
    proc = run_bench(*args, "--out", str(tmp_path)) if args[0] == "run" else run_bench(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(60)
def test_damaged_run_directories_get_one_line_errors(tmp_path):
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "run.json").write_text("{bad")
    proc = run_bench("report", str(bad_json))
    assert proc.returncode == 2 and "damaged run directory" in proc.stderr and "Traceback" not in proc.stderr
    # A stray sibling of the wrong shape must not break the reports of good runs beside it.
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "run.json").write_text("[1]")
    good = run_bench(
        "run", "--models", "epoll", "--connections", "2", "--duration", "0.3", "--warmup", "0", "--out", str(tmp_path)
    )
    assert good.returncode == 0, good.stderr
    assert "Traceback" not in good.stderr


@pytest.mark.timeout(60)
def test_a_run_where_no_point_succeeds_exits_non_zero(tmp_path):
    proc = run_bench(
        "run", "--models", "crash", "--connections", "2", "--duration", "0.3", "--warmup", "0",
        "--out", str(tmp_path), extra_models=EXTRA_MODELS,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "no point of this run was measured successfully" in proc.stderr
    (row,) = read_points(only_run_dir(tmp_path))
    assert row["status"] == "failed"


@pytest.mark.timeout(60)
def test_every_harness_thread_stays_off_the_server_cpus(tmp_path):
    # Affinity is per thread: a thread born before the harness pins itself (numpy's OpenBLAS
    # worker, once) would keep every CPU and could run beside the server.
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    server, client = allowed[0], allowed[1]
    argv = ["run", "--models", "epoll", "--connections", "10", "--duration", "2", "--warmup", "0.5", "--no-lessons"]
    argv += ["--server-cpus", str(server), "--client-cpus", str(client), "--out", str(tmp_path)]
    proc = subprocess.Popen(bench_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bench_env())
    seen: dict[int, set[int]] = {}
    try:
        harness = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        # Sampled while the point runs: once the server and a load worker are children.
        while time.monotonic() < deadline and proc.poll() is None and len(seen) < 50:
            if len(harness.children(recursive=True)) >= 2:
                for tid in os.listdir(f"/proc/{proc.pid}/task"):
                    try:
                        seen.setdefault(int(tid), set()).update(os.sched_getaffinity(int(tid)))
                    except OSError:
                        continue
            time.sleep(0.05)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert seen, "the point was never seen running"
    assert {tid: cpus for tid, cpus in seen.items() if cpus != {client}} == {}
