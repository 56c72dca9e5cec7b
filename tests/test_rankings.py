"""Rankings gated by statistics: a leader is named only when the paired ratio's 95% CI excludes 1."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from bench.reporting.rankings import leader_sentence, paired_ratios, ranking_findings
from bench.reporting.report import render_report
from bench.storing.results_store import RunDirectory, new_run_meta
from bench.storing.statistics import finalize_run_statistics


def _rows(model: str, rps: list[float], level: int = 100, **extra) -> list[dict]:
    return [
        {"model": model, "workload": "closed", "connections": level, "status": "ok", "repeat": i, "rps": r,
         "point_id": f"{model}-closed-c{level}-r{i}", **extra}
        for i, r in enumerate(rps)
    ]  # fmt: skip


def test_two_models_within_the_noise_are_called_indistinguishable():
    # The host's phases move both models together; within each repeat they are within 2%.
    df = pd.DataFrame(
        _rows("poll", [114_389, 150_000, 128_000, 160_000, 131_000, 140_000])
        + _rows("nonblocking", [113_353, 151_500, 126_500, 158_000, 132_000, 139_000])
    )
    text = leader_sentence(df, 100, "closed")
    assert text.startswith("At 100 connections (closed), nonblocking and poll are indistinguishable on this host")
    assert "95% CI" in text and "over 6 repeats" in text and "leads" not in text


def test_models_clearly_apart_name_the_leader_with_its_interval():
    df = pd.DataFrame(
        _rows("native", [190_000, 140_000, 185_000, 150_000, 188_000, 186_000])
        + _rows("epoll", [148_000, 112_000, 144_000, 118_000, 146_000, 145_000])
    )
    ratios = paired_ratios(df, "native", "epoll")
    assert len(ratios) == 6 and min(ratios) > 1.2
    text = leader_sentence(df, 100, "closed")
    assert text.startswith("At 100 connections (closed), native leads with 185,500 req/s, 28% ahead of epoll (144,500;")
    low, high = (float(x) for x in text.split("95% CI ")[1].split(" over")[0].split("-"))
    assert 1 < low <= high


def test_a_single_repeat_states_no_ranking_and_asks_for_repeats():
    df = pd.DataFrame(_rows("poll", [114_389]) + _rows("nonblocking", [113_353]))
    text = leader_sentence(df, 2000, "closed")
    assert text.startswith("At 2,000 connections (closed): no ranking by throughput")
    assert "measured once" in text and "--repeats 6" in text and "leads" not in text


def test_pair_limited_points_are_left_out_and_explained():
    df = pd.DataFrame(
        _rows("native", [190_000, 185_000, 188_000, 187_000, 189_000, 186_000], pair_limited="True")
        + _rows("epoll", [148_000, 144_000, 146_000, 145_000, 147_000, 143_000], pair_limited="False")
        + _rows("poll", [120_000, 118_000, 119_000, 121_000, 117_000, 122_000], pair_limited="False")
    )
    findings = ranking_findings(df)
    assert findings[0].startswith("At 100 connections (closed), epoll leads with 145,500 req/s")
    assert "(native left out: pair-limited)" in findings[0] and "native leads" not in findings[0]
    assert findings[-1].startswith("6 point(s) were pair-limited") and "in no ranking" in findings[-1]


def _run_directory(out, run_id: str, rows: list[dict]):
    """A run directory as `bench run` leaves it: run.json, points.csv (statistics filled in),
    histograms.jsonl with each point's timeline."""
    run = RunDirectory.create(out, run_id)
    config = {
        "repeats": 5, "reference": "epoll", "workload": "closed", "payload": 64, "warmup_s": 0.5, "duration_s": 1.0,
        "pinning": {"server_cpus": [0], "client_cpus": [1]},
    }  # fmt: skip
    run.write_run({**new_run_meta(run_id), "status": "complete", "host": {}, "config": config})
    for row in rows:
        timeline = {"start": 0.0, "step_s": 0.1, "window": [0.0, 1.0],
                    "completed": [round(row["rps"] / 10)] * 10, "errors": [0] * 10}  # fmt: skip
        run.append_point({"payload": 64, "idle": 0, "duration_s": 1.0, **row}, {"timeline": timeline})
    finalize_run_statistics(run, "epoll")
    return run


def _findings_of(report: Path) -> list[str]:
    page = report.read_text()
    return [html.unescape(re.sub(r"<[^>]+>", "", li)).strip() for li in re.findall(r"<li>(.*?)</li>", page, re.S)]


def test_a_run_directory_ranks_what_its_repeats_support_and_nothing_more(tmp_path):
    close = _run_directory(
        tmp_path, "close",
        _rows("poll", [114_389, 150_000, 128_000, 160_000, 131_000, 140_000])
        + _rows("epoll", [113_353, 151_500, 126_500, 158_000, 132_000, 139_000]),
    )  # fmt: skip
    apart = _run_directory(
        tmp_path, "apart",
        _rows("native", [190_000, 140_000, 185_000, 150_000, 188_000, 186_000])
        + _rows("epoll", [148_000, 112_000, 144_000, 118_000, 146_000, 145_000]),
    )  # fmt: skip
    once = _run_directory(tmp_path, "once", _rows("native", [190_000]) + _rows("epoll", [148_000]))
    texts = {run.path.name: _findings_of(render_report(run.path)) for run in (close, apart, once)}
    assert any("epoll and poll are indistinguishable on this host" in t for t in texts["close"]), texts["close"]
    assert not any(" leads " in t for t in texts["close"])
    leader = next(t for t in texts["apart"] if " leads " in t)
    assert leader.startswith("At 100 connections (closed), native leads with 185,500 req/s, 28% ahead of epoll")
    assert "95% CI 1.2" in leader and "over 6 repeats" in leader
    assert any("no ranking by throughput" in t and "--repeats 6" in t for t in texts["once"]), texts["once"]
    assert not any(" leads " in t or "out-ran" in t for t in texts["once"])
