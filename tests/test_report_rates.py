"""Rate sweeps: `--rate` as a list, one point per rate, the knee and its finding, the three rate
plots (bench/reporting/report_rates.py), and run directories written before --rate took a list. Bad --rate input
is among the one-line errors of tests/test_bench_run.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from bench_cli import only_run_dir, read_points, run_bench

from bench.cli import _rate_list
from bench.errors import UsageError
from bench.planning.find_max import RATE_TOLERANCE, keeps_up
from bench.planning.sweep import RunConfig, plan
from bench.reporting import compare
from bench.reporting.report_rates import find_knee, knees, rate_curve, rate_findings, rate_plots
from bench.running.cpus import Pinning
from bench.running.point import PointSpec

RATES = [5000.0, 20000.0, 60000.0, 120000.0]


def _open(model: str, offered: float, achieved: float, connections: int = 100, **extra: object) -> dict:
    return {
        "model": model, "workload": "open", "connections": connections, "target_rate": offered,
        "achieved_rate": achieved, "rps": achieved, "status": "ok", "p50_us": 100.0, "p99_us": offered / 100,
        "p99_uncorrected_us": offered / 200, "server_cpu_pct": offered / 2000, "server_cpus": "0",
        "server_cpus_us_per_req": 10.0, **extra,
    }  # fmt: skip


def _sweep(model: str, achieved: list[float], connections: int = 100) -> list[dict]:
    return [_open(model, o, a, connections) for o, a in zip(RATES, achieved, strict=True)]


def test_keeps_up_is_the_find_max_tolerance():
    assert keeps_up(10_000 * (1 - RATE_TOLERANCE), 10_000)
    assert not keeps_up(10_000 * (1 - RATE_TOLERANCE) - 1, 10_000)
    # Completions of requests sent before the window can put the achieved rate above the offered.
    assert keeps_up(10_100, 10_000)


def test_the_knee_is_the_last_rate_kept_up_with_before_the_first_missed():
    knee = find_knee("epoll", 100, rate_curve(pd.DataFrame(_sweep("epoll", [4_950, 20_000, 60_500, 84_000]))))
    assert (knee.rate, knee.beyond, knee.achieved_beyond) == (60_000, 120_000, 84_000)
    assert knee.reached and knee.p99_us == 600
    # A rate kept up with again above a miss (noise) does not move the knee past the miss.
    bumpy = find_knee("poll", 100, rate_curve(pd.DataFrame(_sweep("poll", [5_000, 18_000, 60_000, 119_000]))))
    assert (bumpy.rate, bumpy.beyond) == (5_000, 20_000)


def test_no_knee_either_way_is_said_in_words():
    above = pd.DataFrame(_sweep("native", [5_000, 20_000, 60_000, 121_000]))
    (text,) = rate_findings(above)
    assert text == (
        "native at 100 connections kept up (within 2%) with every offered rate, up to 120,000 req/s (p99 1.2 ms): "
        "no knee was reached, it lies above the rates measured."
    )
    below = pd.DataFrame(_sweep("threads", [3_000, 4_000, 4_100, 4_000]))
    (text,) = rate_findings(below)
    assert text == (
        "threads at 100 connections fell behind at every offered rate, from the lowest (5,000 req/s offered, "
        "3,000 achieved): its knee lies below the rates measured."
    )
    reached = pd.DataFrame(_sweep("epoll", [5_000, 20_000, 60_000, 84_000]))
    (text,) = rate_findings(reached)
    assert text == (
        "epoll at 100 connections kept up (within 2%) with the offered rate up to its knee at 60,000 req/s "
        "(p99 600 µs); offered 120,000 req/s, it achieved 84,000 (70%)."
    )


def test_knees_take_medians_over_repeats_and_ignore_failed_points_and_closed_loops():
    rows = [
        *_sweep("epoll", [5_000, 20_000, 50_000, 80_000]),
        *_sweep("epoll", [5_000, 20_000, 60_000, 80_000]),
        *_sweep("epoll", [5_000, 20_000, 60_000, 80_000]),
        {**_open("epoll", 240_000, 0), "status": "failed", "achieved_rate": None, "rps": None},
        {"model": "epoll", "workload": "closed", "connections": 100, "status": "ok", "rps": 150_000},
    ]
    (knee,) = knees(pd.DataFrame(rows))
    assert (knee.rate, knee.beyond, knee.achieved_beyond) == (60_000, 120_000, 80_000)


def test_one_knee_per_model_and_connection_count_in_run_order():
    df = pd.DataFrame(
        _sweep("poll", [5_000, 20_000, 50_000, 60_000], 10)
        + _sweep("poll", [5_000, 20_000, 60_000, 90_000], 1000)
        + _sweep("epoll", [5_000, 20_000, 60_000, 120_000], 10)
    )
    assert [(k.model, k.connections, k.rate) for k in knees(df)] == [
        ("poll", 10, 20_000), ("poll", 1000, 60_000), ("epoll", 10, 120_000)
    ]  # fmt: skip


def test_a_single_rate_makes_no_rate_plot_and_no_knee_sentence():
    df = pd.DataFrame([_open("epoll", 20_000, 20_000), _open("poll", 20_000, 20_000)])
    assert rate_plots(df) == [] and rate_findings(df) == []
    assert rate_plots(pd.DataFrame()) == [] and rate_findings(pd.DataFrame()) == []


def test_server_cpus_busy_is_the_per_request_figure_times_the_rate_per_cpu():
    curve = rate_curve(pd.DataFrame([_open("epoll", 20_000, 20_000, server_cpus="0,1")]))
    # 10 µs per request at 20,000 req/s: 0.2 s of CPU per second, over two CPUs: 10% of them.
    assert curve.loc[20_000, "server_cpus_pct"] == pytest.approx(10.0)


def test_the_three_plots_have_a_panel_per_model_the_knee_failures_and_the_find_max_answer():
    rows = (
        _sweep("epoll", [5_000, 20_000, 60_000, 84_000])
        + _sweep("epoll", [5_000, 20_000, 60_000, 84_000], 1000)
        + _sweep("native", [5_000, 20_000, 60_000, 120_000])
        + [{**_open("select", rate, 0, 1000), "status": "failed", "achieved_rate": None} for rate in RATES]
        + [{**_open("epoll", 61_000, 61_000, 10), "client_bound": True},
           {**_open("epoll", 70_000, 61_000, 10), "disturbed": "other processes used 9% of the CPUs"},
           {"model": "epoll", "workload": "find-max", "connections": 10, "status": "ok", "max_rate": 61_000,
            "target_rate": 61_000, "slo": "p99<=5000us"}]
    )  # fmt: skip
    plots = rate_plots(pd.DataFrame(rows))
    assert [p["id"] for p in plots] == ["plot-rate-achieved", "plot-rate-latency", "plot-rate-cpu"]
    for plot in plots:
        assert plot["panels"] == 3
        # A group per panel (report_plots.to_svg may turn the id into a class and data-panel).
        panels = re.findall(r'<g (?:id="panel-|class="panel" data-panel=")([^"]+)"', plot["svg"])
        assert panels == ["epoll", "native", "select"], panels
    achieved = plots[0]["svg"]
    assert 'id="knee-epoll-100"' in achieved and 'id="knee-native-100"' in achieved
    assert "knee 60k" in achieved and "no knee (100 conn.): kept up to 120k" in achieved
    assert 'id="find-max-epoll-10"' in achieved
    # The label, on two lines: "find-max (10 conn.): 61,000 req/s", "at p99 ≤ 5 ms".
    assert "find-max (10 conn.): 61,000 req/s<" in achieved and ">at p99 ≤ 5 ms<" in achieved
    for words in ("failed / skipped", "client-bound", "disturbed / host shifted", "1,000 conn."):
        assert words in achieved, words
    assert "find-max objective" in plots[1]["svg"] and "p99 service time (uncorrected)" in plots[1]["svg"]
    assert "server CPUs busy (softirq included)" in plots[2]["svg"]


def test_rate_list_parsing():
    assert _rate_list("10000,20000, 40000,80000") == [10_000, 20_000, 40_000, 80_000]
    assert _rate_list("2500.5") == [2500.5]
    for bad in ("", "abc", "1000,x", "0", "-5", "inf", "nan", "1e400"):
        with pytest.raises(UsageError, match="--rate must be a finite number > 0"):
            _rate_list(bad)
    with pytest.raises(UsageError, match="--rate lists 20000 more than once"):
        _rate_list("20000,5000,20000.0")


def test_plan_makes_a_point_per_rate_connections_then_rate_then_model():
    config = RunConfig(
        models=["epoll", "poll"], connections=[10, 100], duration_s=1, warmup_s=0, repeats=1,
        out=Path("unused"), pinning=Pinning((0,), (1,)), point=PointSpec("", 0, 64, 0, "open"),
        rates=[5000.0, 20000.0],
    )  # fmt: skip
    assert [(s.connections, s.rate, s.model) for s in plan(config)] == [
        (10, 5000.0, "epoll"), (10, 5000.0, "poll"), (10, 20000.0, "epoll"), (10, 20000.0, "poll"),
        (100, 5000.0, "epoll"), (100, 5000.0, "poll"), (100, 20000.0, "epoll"), (100, 20000.0, "poll"),
    ]  # fmt: skip
    assert len({s.point_id for s in plan(config)}) == 8
    closed = RunConfig(**{**config.__dict__, "point": PointSpec("", 0, 64, 0, "closed"), "rates": []})
    assert {s.rate for s in plan(closed)} == {0.0}


@pytest.mark.timeout(90)
def test_a_rate_list_runs_a_point_per_rate_and_old_single_rate_runs_still_render(tmp_path):
    proc = run_bench(
        "run", "--models", "epoll", "--connections", "10", "--workload", "open", "--rate", "2000,4000",
        "--duration", "0.3", "--warmup", "0.1", "--out", str(tmp_path / "new"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = only_run_dir(tmp_path / "new")
    rows = read_points(run)
    assert [(r["status"], float(r["target_rate"])) for r in rows] == [("ok", 2000), ("ok", 4000)], rows
    assert json.loads((run / "run.json").read_text())["config"]["rates"] == [2000, 4000]
    html = (run / "report.html").read_text()
    assert 'id="plot-rate-achieved"' in html and "epoll at 10 connections kept up" in html

    # A run from before --rate took a list: a single `rate` in run.json's config.
    old = tmp_path / "old" / run.name
    old.parent.mkdir()
    old.mkdir()
    for name in ("points.csv", "histograms.jsonl"):
        (old / name).write_bytes((run / name).read_bytes())
    meta = json.loads((run / "run.json").read_text())
    config = meta["config"]
    config["rate"] = config.pop("rates")[0]
    # And in schema 1's layout, the point template's fields at the top of config.
    meta["schema_version"] = 1
    config.update(config.pop("point"))
    (old / "run.json").write_text(json.dumps(meta))
    report = run_bench("report", str(old))
    assert report.returncode == 0, report.stderr
    compared = run_bench("compare", str(old), str(run), "--out", str(tmp_path / "compare.html"))
    assert compared.returncode == 0, compared.stderr
    # The offered rate is a point parameter (target_rate), not a setting that differs between the runs.
    settings = [name for name, _values in compare.build_comparison([str(old), str(run)]).settings]
    assert not [name for name in settings if name.startswith("rate")], settings


def test_a_rate_whose_points_failed_is_a_miss_not_a_gap():
    rows = [*_sweep("epoll", [5_000, 20_000, 60_000, 0])[:3], {**_open("epoll", 120_000, 0), "status": "failed"}]
    (knee,) = knees(pd.DataFrame(rows))
    assert (knee.rate, knee.beyond, knee.achieved_beyond) == (60_000, 120_000, None)
    assert knee.sentence().endswith("offered 120,000 req/s, the point failed (the table says why).")
