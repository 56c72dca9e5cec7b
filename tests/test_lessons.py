"""The five I/O models' lessons as findings (bench.reporting.lessons), and the gate every comparison passes."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from bench_cli import run_bench

from bench.planning.lesson_plan import BUSY_RATE, LESSON_ACTIVE, LESSON_IDLE, lesson_points
from bench.reporting.lessons import bins_ratio, contrast, cost_findings, lesson_findings


def _row(model: str, connections: int, rps: float, repeat: int = 0, **extra) -> dict:
    row = {
        "model": model, "workload": "closed", "connections": connections, "idle": 0, "status": "ok", "reason": "",
        "repeat": repeat, "rps": rps, "target_rate": None,
    }  # fmt: skip
    row.update(extra)
    row.setdefault("point_id", f"{model}-{row['workload']}-c{connections}-i{row['idle']}-r{repeat}")
    return row


def _steady(rps: float, wobble: float = 0.01) -> dict:
    return {
        "start": 0.0, "step_s": 0.1, "window": [0.0, 1.0],
        "completed": [round(rps * 0.1 * (1 + wobble * (-1) ** i)) for i in range(10)],
    }  # fmt: skip


def test_bins_ratio_is_a_ratio_of_means_with_an_interval_around_it():
    ratio, low, high = bins_ratio(pd.Series([100.0] * 10).to_numpy(), pd.Series([50.0, 52.0] * 5).to_numpy())
    assert ratio == pytest.approx(100 / 51)
    assert low <= ratio <= high and high - low < 0.1
    assert bins_ratio(pd.Series([1.0] * 4).to_numpy(), pd.Series([1.0] * 10).to_numpy()) is None
    # Seeded: the same bins give the same interval; constant bins give a point, not NaN.
    assert bins_ratio(pd.Series([100.0] * 10).to_numpy(), pd.Series([50.0, 52.0] * 5).to_numpy()) == (ratio, low, high)
    assert bins_ratio(pd.Series([100.0] * 10).to_numpy(), pd.Series([50.0] * 10).to_numpy()) == (2.0, 2.0, 2.0)
    # Nine empty bins of ten: a third of b's resamples hold no completion, the ratio has no upper bound.
    assert bins_ratio(pd.Series([100.0] * 10).to_numpy(), pd.Series([0.0] * 9 + [10.0]).to_numpy()) is None


def test_contrast_uses_repeats_then_bins_then_a_factor():
    a = pd.DataFrame([_row("a", 10, 110 + r, repeat=r) for r in range(6)])
    b = pd.DataFrame([_row("b", 10, 100 + r, repeat=r) for r in range(6)])
    found = contrast(a, b, "rps")
    assert found.clear and found.basis == "over 6 repeats" and found.low > 1
    # Five repeats give no 95% interval of a median: a 10% lead is then no claim.
    found = contrast(a.head(5), b.head(5), "rps")
    assert not found.clear and found.low is None and "5 repeats, too few for an interval" in found.basis
    # A repeat measured twice is one repeat, not two.
    assert contrast(pd.concat([a.head(1)] * 2), b.head(1), "rps").repeats == 1
    # One repeat each: the bins decide for req/s, beyond 1.35x (the host's drift between points) ...
    one_a, one_b = a.head(1).assign(rps=150), b.head(1)
    timelines = {one_a["point_id"].iloc[0]: _steady(150), one_b["point_id"].iloc[0]: _steady(100)}
    assert contrast(one_a, one_b, "rps", timelines).clear
    assert not contrast(
        one_a.assign(rps=110), one_b, "rps", {**timelines, one_a["point_id"].iloc[0]: _steady(110)}
    ).clear
    noisy = {one_a["point_id"].iloc[0]: _steady(150, 0.9), one_b["point_id"].iloc[0]: _steady(100, 0.9)}
    assert not contrast(one_a, one_b, "rps", noisy).clear
    # ... but not when a point is flagged, nor for a cost: then only a factor of two is stated.
    shifted = one_a.assign(host_shifted=True)
    found = contrast(shifted, one_b, "rps", timelines)
    assert not found.clear and not found.compared and "host shifted: stated only beyond a factor of 10" in found.basis
    # A host that shifted moved a point by up to 2.7x here: a single repeat claims only ten times that.
    assert not contrast(shifted.assign(rps=300), one_b, "rps").clear
    assert contrast(shifted.assign(rps=1200), one_b, "rps").clear
    # An unsteady point's bins do not speak for it, but a factor of two still does.
    assert not contrast(one_a.assign(unsteady=True), one_b, "rps", timelines).clear  # 1.5x, not 2x
    assert contrast(one_a.assign(unsteady=True, rps=300), one_b, "rps", timelines).clear
    assert not contrast(one_a, one_b, "rps").clear
    assert contrast(one_a.assign(rps=300), one_b, "rps").clear


def _lesson_run() -> tuple[pd.DataFrame, dict]:
    rows = []
    for model, rps in (("select", 138_000), ("poll", 141_000), ("epoll", 144_000), ("io_uring", 98_000)):
        rows.append(_row(model, 10, rps, cpu_us_per_req=7.0))
    for model, rps, cpu in (("select", 28_000, 35.0), ("poll", 47_000, 21.0), ("epoll", 145_000, 6.9)):
        rows.append(_row(model, 10, rps, workload="idle", idle=1000, cpu_us_per_req=cpu))
    rows.append(
        _row("io_uring", 10, 0, workload="idle", idle=1000, status="failed", reason="server died: out of memory")
    )
    rows.append(_row("select", 1000, 121_000))
    rows.append(_row("poll", 2000, 113_000))
    rows.append(
        _row("select", 2000, None, status="failed", reason="select() cannot watch descriptor 1027: FD_SETSIZE is 1024")
    )
    for model, mem, ctx in (("threads", 52_000, 1.76), ("fork", 241_000, 0.77), ("epoll", 336, 0.0003)):
        rows.append(_row(model, 1000, 50_000, mem_per_conn_bytes=mem, ctx_per_req=ctx))
    for model, cpu, per_req in (("nonblocking", 98.0, 979.0), ("epoll", 3.2, 32.0)):
        rows.append(
            _row(model, 10, 1000, workload="open", target_rate=1000.0, server_cpu_pct=cpu, cpu_us_per_req=per_req)
        )
    df = pd.DataFrame(rows)
    timelines = {r["point_id"]: _steady(r["rps"]) for r in rows if r["rps"]}
    return df, timelines


def test_each_lesson_is_a_sentence_with_its_numbers():
    df, timelines = _lesson_run()
    profile = [
        {"model": "sigio", "syscall": "rt_sigtimedwait", "calls_per_req": 1.0, "errors": 0, "errors_per_req": 0},
        {"model": "sigio", "syscall": "recvfrom", "calls_per_req": 2.0, "errors": 1, "errors_per_req": 1.0},
        {"model": "epoll", "syscall": "epoll_wait", "calls_per_req": 0.5, "errors": 0, "errors_per_req": 0},
    ]
    wall, idle, blocking, busy, syscalls = lesson_findings(
        pd.concat([df, pd.DataFrame([_row("sigio", 100, 90_000)])]), timelines, profile, "profile run p1"
    )
    assert wall.startswith("select cannot watch a descriptor numbered 1024 or more (FD_SETSIZE, select(2))")
    assert "failed holding 2,000 connections (select() cannot watch descriptor 1027)" in wall
    assert wall.endswith("where it had served 1,000 at 121,000 req/s; poll, with no such limit, served as many.")
    assert "with 1,000 idle connections beside 10 active ones" in idle
    assert "select kept 20% of its req/s (28,000 against 138,000; 95% CI" in idle
    assert "poll kept 33%" in idle and "epoll was not clearly slowed, at 101% (145,000 against 144,000;" in idle
    assert "io_uring failed (server died)" in idle
    assert (
        "threads 52 KB (155× epoll's; one repeat: stated only beyond a factor of 2) and fork 241 KB (717× epoll's; "
        "one repeat: stated only beyond a factor of 2), against 336 B for epoll"
    ) in blocking
    assert "threads 1.76" in blocking and "fork 0.77" in blocking
    assert "at 1,000 req/s offered over 10 connections (open loop), nonblocking's server used 98% of a CPU" in busy
    assert "where epoll used 3.2% (one repeat: stated only beyond a factor of 2): without" in busy
    assert syscalls.startswith("System calls per request (strace -c, profile run p1): sigio 3.00 in all")
    assert "epoll 0.50 in all" in syscalls


def test_a_lesson_without_its_points_says_how_to_measure_it():
    df, timelines = _lesson_run()
    closed = df[df["workload"] == "closed"]
    texts = lesson_findings(pd.concat([closed, pd.DataFrame([_row("sigio", 100, 90_000)])]), timelines)
    assert any("--idle 0,1000" in t for t in texts)
    assert any("bench profile --models sigio,io_uring,epoll" in t for t in texts)
    # Without select (the wall) or without a blocking server, those lessons are not stated at all.
    texts = lesson_findings(closed[~closed["model"].isin(["select", "threads", "fork"])], timelines)
    assert not any(t.startswith(("select", "A thread or a process")) for t in texts), texts


def test_costs_are_stated_only_when_apart():
    rows = [_row("native", 100, 180_000, cpu_us_per_req=5.3), _row("asyncio", 100, 39_000, cpu_us_per_req=25.5)]
    (text,) = cost_findings(pd.DataFrame(rows), 100)
    assert text.startswith("At 100 connections native had the least server CPU per request, 5.3 µs, and asyncio")
    rows = [_row("epoll", 100, 145_000, cpu_us_per_req=6.7), _row("poll", 100, 147_000, cpu_us_per_req=6.8)]
    (text,) = cost_findings(pd.DataFrame(rows), 100)
    assert "no model is clearly cheaper" in text


def test_the_plan_adds_the_points_the_lessons_need():
    models = ["threads", "nonblocking", "select", "poll", "epoll", "io_uring", "native"]
    points = lesson_points(models, [10, 100, 1000, 2000])
    idle = [(p.model, p.connections, p.idle) for p in points if p.workload == "idle"]
    assert idle == [(m, LESSON_ACTIVE, LESSON_IDLE) for m in ("select", "poll", "epoll", "io_uring")]
    assert [(p.model, p.rate) for p in points if p.workload == "open"] == [
        ("nonblocking", BUSY_RATE),
        ("epoll", BUSY_RATE),
    ]
    assert not [p for p in points if p.workload == "closed"]
    # The idle connections go beside the sweep's fewest; its idle-free points are the sweep's own,
    # unless --idle left 0 out.
    assert {p.connections for p in lesson_points(models, [100, 1000]) if p.workload == "idle"} == {100}
    baseline = [p for p in lesson_points(models, [100], idle=[1000]) if p.workload == "closed"]
    assert [(p.model, p.connections, p.idle) for p in baseline] == [
        (m, 100, 0) for m in ("select", "poll", "epoll", "io_uring")
    ]
    assert lesson_points(["threads", "fork"], [100]) == []


def test_a_point_the_sweep_and_the_lessons_share_is_measured_once(tmp_path):
    from bench.planning.sweep import RunConfig, plan
    from bench.running.cpus import Pinning
    from bench.running.point import PointSpec

    config = RunConfig(
        models=["select", "poll", "epoll"], connections=[10], duration_s=1.0, warmup_s=0.5, repeats=2,
        out=tmp_path, pinning=Pinning((0,), (1,)), point=PointSpec("", 0, 64, 0), idle=[0, 1000], lessons=True,
    )  # fmt: skip
    ids = [spec.point_id for spec in plan(config)]
    assert len(ids) == len(set(ids)) == 2 * 3 * 2, ids


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lessons_run"
RUN_ID, PROFILE_ID = "20261130-140244-e093", "20261130-140518-1f04"


@pytest.mark.timeout(60)
def test_the_default_sweep_teaches_each_lesson(tmp_path):
    # A real default `bench run` (58 points, one repeat, 1 min 59 s here) and a `bench profile
    # --models sigio,io_uring,epoll` beside it, kept as a fixture; the report is rendered anew.
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)
    proc = run_bench("report", str(results / RUN_ID))
    assert proc.returncode == 0, proc.stderr
    page = (results / RUN_ID / "report.html").read_text()
    findings = [html.unescape(re.sub(r"<[^>]+>", "", li)) for li in re.findall(r"<li>(.*?)</li>", page, re.S)]
    lessons = {
        "select's wall": "select cannot watch a descriptor numbered 1024 or more (FD_SETSIZE, select(2)): it failed "
        "holding 2,000 connections (select() cannot watch descriptor 1027), where it had served 1,000 at 133,665 req/s",
        "idle connections": "with 1,000 idle connections beside 10 active ones, select kept 22% of its req/s "
        "(32,231 against 143,884; 95% CI 0.22-0.23 from 100 ms bins, stated only beyond 1.35x, CPU per request 6.9 → "
        "30.7 µs); poll kept 39%",
        "a thread or process per connection": "A thread or a process per connection costs the blocking servers: "
        "memory per connection at 1,000 connections: threads 60 KB (180× epoll's; one repeat, host shifted: stated "
        "only beyond a factor of 10) and fork 1.1 MB",
        "busy polling": "Busy polling burns a CPU: at 1,000 req/s offered over 10 connections (open loop), "
        "nonblocking's server used 98% of a CPU (979 µs per request), where epoll used 3.8%",
        "syscalls per request": f"System calls per request (strace -c, profile run {PROFILE_ID}): sigio 3.86 in all "
        "(recvfrom 1.93 (0.93 failed), sendto 1.00, rt_sigtimedwait 0.93); io_uring 0.03 in all",
    }
    for lesson, text in lessons.items():
        assert any(text in f for f in findings), (lesson, findings)
    assert any("context switches per request at 1,000 connections: threads 3.99" in f for f in findings)
    assert any(f.startswith("At 100 connections native had the least server CPU per request, 5.2 µs") for f in findings)
    # The costs across every model: memory per connection where all thirteen have it, context switches per request.
    assert any(
        f.startswith("At 1,000 connections native had the least server memory per connection, 57 B, and fork the most")
        for f in findings
    ), findings
    assert any(
        f.startswith("At 100 connections io_uring had the least context switches per request, 0.0001, and threads")
        for f in findings
    ), findings
    # One repeat: no ranking by throughput, with the reason and what to do.
    assert any("no ranking by throughput" in f and "run --repeats 6" in f for f in findings)
    assert not any(" leads with " in f for f in findings)
