"""Repeats and their statistics, interference flags, cost accounting."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from bench_cli import only_run_dir, read_points, run_bench

from bench.statistics import estimate, ranking_warnings


def test_estimate_median_ci_and_cv():
    est = estimate([10.0, 12.0, 11.0, 13.0, 9.0])
    assert est.median == 11.0 and est.n == 5
    assert 9.0 <= est.ci_low <= est.median <= est.ci_high <= 13.0
    assert est.cv == pytest.approx(pd.Series([10.0, 12, 11, 13, 9]).std() / 11.0)
    single = estimate([5.0])
    assert single.median == 5.0 and single.ci_low is None and single.cv is None


def test_ranking_warns_only_where_intervals_overlap():
    def row(model, lo, med, hi):
        return {"model": model, "workload": "closed", "connections": 100, "payload": 64, "idle": 0,
                "target_rate": "", "server_workers": 1, "status": "ok", "rps_median": med, "rps_ci_low": lo,
                "rps_ci_high": hi, "rps_cv": 0.01, "repeats_ok": 5}  # fmt: skip

    apart = pd.DataFrame([row("epoll", 90, 100, 110), row("poll", 50, 60, 70)])
    assert ranking_warnings(apart) == []
    overlapping = pd.DataFrame([row("epoll", 90, 100, 110), row("poll", 80, 95, 105)])
    (warning,) = ranking_warnings(overlapping)
    assert "cannot rank epoll above poll at 100 connections" in warning


@pytest.mark.timeout(150)
def test_repeats_rotate_models_and_give_confidence_intervals(tmp_path, engine):
    proc = run_bench(
        "run", "--engine", engine, "--models", "epoll,poll", "--connections", "10", "--repeats", "3",
        "--duration", "0.4", "--warmup", "0.1", "--out", str(tmp_path), timeout=140,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = read_points(only_run_dir(tmp_path))
    assert [(r["repeat"], r["model"]) for r in rows] == [
        ("0", "epoll"), ("0", "poll"), ("1", "poll"), ("1", "epoll"), ("2", "epoll"), ("2", "poll"),
    ]  # fmt: skip
    for r in rows:
        assert r["status"] == "ok", r
        assert r["repeats_ok"] == "3"
        assert float(r["rps_ci_low"]) <= float(r["rps_median"]) <= float(r["rps_ci_high"])
        assert float(r["rps_cv"]) >= 0 and float(r["p99_ci_low"]) <= float(r["p99_ci_high"])
        same = sorted(float(x["rps"]) for x in rows if x["model"] == r["model"])
        assert float(r["rps_median"]) == pytest.approx(same[1], rel=1e-4)
        # Cost accounting is there for every measured point.
        assert float(r["server_cpu_user_us_per_req"]) + float(r["server_cpu_sys_us_per_req"]) > 0
        assert float(r["ctx_per_req"]) >= 0 and int(r["server_uss_bytes"]) > 0
        assert 0 <= float(r["softirq_pct"]) <= 100 and 0 <= float(r["steal_pct"]) <= 100


@pytest.mark.timeout(120)
def test_cpu_hog_during_a_point_is_flagged(tmp_path, engine):
    # Two spinning processes that are not the harness's: one per CPU of this 2-core host.
    hogs = [
        subprocess.Popen([sys.executable, "-c", "import time\nt=time.monotonic()+60\nwhile time.monotonic()<t: pass"])
        for _ in range(2)
    ]
    try:
        proc = run_bench(
            "run", "--engine", engine, "--models", "epoll", "--connections", "10", "--duration", "1",
            "--warmup", "0.2", "--out", str(tmp_path), timeout=100,
        )  # fmt: skip
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert proc.returncode == 0, proc.stderr
    (row,) = read_points(only_run_dir(tmp_path))
    assert row["status"] == "ok", row
    assert float(row["foreign_cpu_pct"]) > 20
    assert "other processes used" in row["disturbed"]
    assert "disturbed" in row["reason"]
