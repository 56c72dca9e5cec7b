"""`bench run --engine locust`: the same points and columns as the built-in engine."""

from __future__ import annotations

import json

import pytest
from bench_cli import only_run_dir, read_points, run_bench
from conftest import c_io_uring_problem


@pytest.mark.timeout(150)
def test_locust_engine_rows_match_the_builtin_schema(tmp_path):
    common = ["run", "--models", "epoll", "--connections", "40", "--duration", "1", "--warmup", "0.3"]
    locust = run_bench(*common, "--engine", "locust", "--locust-workers", "2", "--out", str(tmp_path / "l"))
    assert locust.returncode == 0, locust.stderr
    builtin = run_bench(*common, "--out", str(tmp_path / "b"))
    assert builtin.returncode == 0, builtin.stderr
    (lrow,) = read_points(only_run_dir(tmp_path / "l"))
    (brow,) = read_points(only_run_dir(tmp_path / "b"))
    assert list(lrow) == list(brow)
    assert lrow["engine"] == "locust" and brow["engine"] == "c"
    assert lrow["status"] == "ok", lrow
    assert lrow["client_workers"] == "2"
    assert int(lrow["requests"]) > 0 and int(lrow["errors"]) == 0 and float(lrow["rps"]) > 0
    # Microsecond percentiles from the workers' own HdrHistograms, not Locust's whole milliseconds.
    percentiles = [float(lrow[c]) for c in ("p50_us", "p90_us", "p99_us", "max_us")]
    assert 0 < percentiles[0] <= percentiles[2] <= percentiles[3]
    assert any(p % 1000 for p in percentiles)
    assert float(lrow["cpu_us_per_req"]) > 0 and float(lrow["client_cpu_pct"]) > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "locust", "--workload", "churn"], "--engine locust drives the closed loop only"),
        (["--locust-workers", "2"], "apply to --engine locust"),
    ],
)
def test_locust_engine_options_are_checked(tmp_path, args, message):
    proc = run_bench("run", "--out", str(tmp_path), *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(120)
def test_the_run_records_its_engine_and_c_is_the_default(tmp_path):
    argv = ["run", "--models", "epoll", "--connections", "5", "--duration", "0.3", "--out", str(tmp_path)]
    proc = run_bench(*argv, env={"IOMODEL_C_IO": "auto"})
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path)
    (row,) = read_points(run_dir)
    assert row["engine"] == "c" and row["status"] == "ok"
    assert json.loads((run_dir / "run.json").read_text())["config"]["point"]["engine"] == "c"
    html = (run_dir / "report.html").read_text()
    assert "load engine <b>c</b>" in html
    # Its request loop: io_uring wherever the worker can set it up, and the report says so.
    assert row["engine_io"] == ("epoll" if c_io_uring_problem() else "io_uring")
    assert f"Its request loop ran on {row['engine_io']} at 1 point." in html


@pytest.mark.timeout(120)
def test_the_c_engines_request_loop_can_be_chosen(tmp_path):
    common = ["run", "--models", "epoll", "--connections", "5", "--duration", "0.3"]
    proc = run_bench(*common, "--out", str(tmp_path / "runs"), env={"IOMODEL_C_IO": "epoll"})
    assert proc.returncode == 0, proc.stderr
    (row,) = read_points(only_run_dir(tmp_path / "runs"))
    assert row["engine_io"] == "epoll" and row["status"] == "ok" and "C engine on epoll" not in row["reason"]
    bad = run_bench(*common, "--out", str(tmp_path / "bad"), env={"IOMODEL_C_IO": "kqueue"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    assert "IOMODEL_C_IO is one of auto, epoll, io_uring, not 'kqueue'" in bad.stderr


@pytest.mark.timeout(120)
def test_a_broken_compiler_falls_back_to_python_with_a_warning(tmp_path):
    # A fresh cache, and a "compiler" that always fails: the C engine cannot be built.
    env = {"CC": "/bin/false", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    common = ["run", "--models", "epoll", "--connections", "5", "--duration", "0.3"]
    proc = run_bench(*common, "--out", str(tmp_path / "runs"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning: load engine: python, because the C engine cannot be built here (false failed" in proc.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    (row,) = read_points(run_dir)
    assert row["engine"] == "python" and row["status"] == "ok"
    warnings = json.loads((run_dir / "run.json").read_text())["summary"]["warnings"]
    assert any("C engine cannot be built" in w for w in warnings)
    asked = run_bench(*common, "--engine", "c", "--out", str(tmp_path / "runs"), env=env)
    assert asked.returncode == 2 and "Traceback" not in asked.stderr
    assert (
        asked.stderr.strip().splitlines() == ["bench: --engine c cannot run here: false failed: exit status 1"]
        or "--engine c cannot run here" in asked.stderr
    )
