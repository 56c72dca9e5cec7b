"""The timeline of a point (completions and errors per 100 ms, both built-in engines) and the
`stability` / `unsteady` verdict drawn from it."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
from bench_cli import TESTS_DIR, only_run_dir, read_points, run_bench
from faulty_models import EXTRA_MODELS

from bench.measuring.stability import COUNTING_NOISE_K, MIN_BINS, UNSTEADY_CV, assess, fill_row, threshold
from bench.running.engines import make_engine
from bench.running.load_workers import LoadPlan
from loadgen.timeline import MAX_BINS, STEP_S, Recorder, bin_count, merge, window_bins

START = 1000.0


def timeline(completed: list[int], window: tuple[float, float], errors: list[int] | None = None) -> dict:
    """A merged timeline starting at START with the window at these offsets (s)."""
    return {
        "start": START,
        "step_s": STEP_S,
        "window": list(window),
        "completed": completed,
        "errors": errors if errors is not None else [0] * len(completed),
    }


# ---- the worker's recorder -------------------------------------------------------------------


def test_recorder_bins_from_the_start_and_snaps_edges_onto_the_window():
    # A start_at far from zero, as CLOCK_MONOTONIC is: start + 0.3 is not 0.3 s after it in floats.
    start = 123456.789
    window_start, window_end = start + 0.3, start + 0.3 + 0.5
    rec = Recorder(start, window_start, window_end)
    assert rec.n == 8 == bin_count(start, window_end)
    # The window's edges are bin edges exactly, so a completion at window_start is in bin 3.
    assert rec.edges[3] == window_start and rec.edges[8] == window_end and rec.edges[9] == math.inf
    assert rec.seek(start) == 0 and rec.seek(window_start) == 3
    assert rec.seek(math.nextafter(window_start, 0)) == 2
    assert rec.seek(start + 0.05) == 0 and rec.seek(start + 0.15) == 1
    # After the end: the unreported bin n.
    assert rec.seek(window_end) == 8 and rec.seek(window_end + 5) == 8
    rec.completed[rec.seek(start + 0.15)] += 1
    rec.completed[rec.seek(window_end)] += 1
    rec.error(start + 0.72)
    msg = rec.message()
    assert msg == {
        "start": start,
        "step_s": STEP_S,
        "completed": [0, 1, 0, 0, 0, 0, 0, 0],
        "errors": [0, 0, 0, 0, 0, 0, 0, 1],
    }


def test_a_window_off_the_grid_ends_in_a_short_bin_and_a_long_span_is_capped():
    start = 50.0
    rec = Recorder(start, start + 0.25, start + 0.75)
    # Bins [0, .1) ... [.6, .7), then [.7, .75): the last one is short.
    assert rec.n == 8 and rec.edges[8] == start + 0.75
    assert rec.edges[2] == start + 0.2 and rec.edges[3] == start + 0.3  # 0.25 is no edge
    assert bin_count(0.0, 7200.0) == MAX_BINS


# ---- merging the workers' timelines ----------------------------------------------------------


def test_merge_sums_bin_by_bin_and_pads_a_shorter_worker():
    a = {"start": START, "step_s": STEP_S, "completed": [1, 2, 3], "errors": [0, 1, 0]}
    b = {"start": START + 1e-9, "step_s": STEP_S, "completed": [10, 20], "errors": [1, 0]}
    merged = merge([a, b], START, START + 0.1, START + 0.3)
    assert merged == {
        "start": START,
        "step_s": STEP_S,
        "window": [pytest.approx(0.1), pytest.approx(0.3)],
        "completed": [11, 22, 3],
        "errors": [1, 1, 0],
    }


def test_merge_refuses_timelines_that_do_not_line_up_and_a_missing_one():
    a = {"start": START, "step_s": STEP_S, "completed": [1], "errors": [0]}
    late = {**a, "start": START + 0.05}
    with pytest.raises(ValueError, match="do not line up"):
        merge([a, late], START, START, START + 0.1)
    # A worker without a timeline: a partial sum would read as a drop in throughput.
    assert merge([a, None], START, START, START + 0.1) is None
    assert merge([], START, START, START + 0.1) is None


# ---- stability ---------------------------------------------------------------------------------


def test_only_bins_wholly_inside_the_window_count():
    # Window 0.25-0.95 s: bins 3..8 are whole; 2 ([0.2, 0.3)) and 9 ([0.9, 1.0)) straddle its edges.
    counts = [0, 0, 9999, 1000, 1010, 990, 1000, 1005, 995, 0, 0]
    tl = timeline(counts, (0.25, 0.95))
    assert list(window_bins(tl)) == [3, 4, 5, 6, 7, 8]
    verdict = assess(tl)
    inside = counts[3:9]
    mean = sum(inside) / 6
    std = math.sqrt(sum((c - mean) ** 2 for c in inside) / 5)
    assert verdict.cv == pytest.approx(std / mean)
    assert not verdict.unsteady and verdict.bins == 6
    assert verdict.mean_rps == pytest.approx(mean / STEP_S)


def test_zero_bins_in_the_window_are_flagged_with_where():
    counts = [500] * 5 + [1000] * 12 + [0, 0, 0] + [1000] * 5
    tl = timeline(counts, (0.5, 2.5))
    verdict = assess(tl)
    assert verdict.unsteady and verdict.cv > 0.4
    assert verdict.lowest_rps == 0 and verdict.lowest_at_s == pytest.approx(1.2)
    row: dict = {}
    note = fill_row(row, tl)
    assert row == {"stability": verdict.cv, "unsteady": True}
    assert note.startswith(f"unsteady: req/s per 100 ms varied by {verdict.cv:.0%} (CV) in the window")
    assert "lowest 0 req/s at 1.2-1.3 s into it" in note


def test_small_counts_are_counting_noise_not_instability():
    # 2-6 completions per 100 ms (40 req/s): a CV of 0.3 is what counting alone gives.
    small = [3, 5, 2, 6, 4, 4, 5, 3, 4, 4]
    tl = timeline(small, (0.0, 1.0))
    verdict = assess(tl)
    assert verdict.cv == pytest.approx(0.3, abs=0.05)
    assert verdict.threshold == pytest.approx(COUNTING_NOISE_K / math.sqrt(4.0))
    assert not verdict.unsteady
    # The same shape at 1,000 times the rate is no noise.
    assert assess(timeline([c * 1000 for c in small], (0.0, 1.0))).unsteady
    assert threshold(1e6) == UNSTEADY_CV


def test_too_few_bins_or_no_completion_gives_no_verdict():
    row: dict = {"stability": "x"}
    assert fill_row(row, timeline([100] * (MIN_BINS - 1), (0.0, (MIN_BINS - 1) * STEP_S))) is None
    assert row == {"stability": None, "unsteady": None}
    assert assess(timeline([0] * 10, (0.0, 1.0))) is None
    assert assess(None) is None


# ---- end to end: both engines, real servers ---------------------------------------------------


@pytest.mark.timeout(60)
def test_every_workers_completions_and_errors_land_in_the_merged_timeline(engine, start_server, monkeypatch):
    monkeypatch.setenv("BENCH_EXTRA_MODELS", EXTRA_MODELS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))
    # Every connection's third echo comes back corrupted: two verified echoes, then a mismatch
    # that closes it, all within the warm-up.
    server = start_server("corrupt")
    load = make_engine(engine, "127.0.0.1", server.port, LoadPlan("closed", 6, 64), (), 2)
    try:
        load.start()
        load.wait_connected(timeout=30)
        load.schedule(0.3, 0.5)
        result = load.collect(timeout=15)
    finally:
        load.stop()
    tl = result.timeline
    assert load.workers == 2 and result.errors == {"mismatch": 6}
    assert tl["step_s"] == STEP_S and len(tl["completed"]) == len(tl["errors"]) == 8
    assert tl["window"] == [pytest.approx(0.3), pytest.approx(0.8)]
    assert sum(tl["completed"]) == 12 and sum(tl["errors"]) == 6
    # None of it in the window: nothing was left to measure there.
    assert result.requests == 0 and not any(tl["completed"][i] + tl["errors"][i] for i in window_bins(tl))


def run_point(tmp_path, engine: str, model: str, *load: str) -> tuple[dict, dict]:
    """One point of `model` at 10 connections: 0.5 s warm-up, 1.5 s window (whole 100 ms
    bins); its row and its timeline from histograms.jsonl."""
    proc = run_bench(
        "run", "--engine", engine, "--models", model, "--connections", "10", "--warmup", "0.5",
        "--duration", "1.5", *load, "--out", str(tmp_path), timeout=100, extra_models=EXTRA_MODELS,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path)
    (row,) = read_points(run_dir)
    assert row["status"] == "ok", row
    (line,) = (run_dir / "histograms.jsonl").read_text().splitlines()
    tl = json.loads(line)["timeline"]
    bins = window_bins(tl)
    # The window is 15 whole bins after 5 of warm-up, and its bins hold exactly the requests
    # the workers counted in it: the same completions, by the same times.
    assert (bins.start, bins.stop) == (5, 20) and len(tl["completed"]) == 20
    assert sum(tl["completed"][i] for i in bins) == int(row["requests"])
    assert sum(tl["completed"][:5]) > 0, "the warm-up is in the timeline"
    return row, tl


@pytest.mark.timeout(110)
def test_a_steady_point_is_not_flagged_and_its_timeline_holds_its_requests(tmp_path, engine):
    # Steady by construction: an open loop at 2,000 req/s, far below epoll's capacity, so the
    # client's schedule sets the rate. (A closed loop's own rate is not steady on this host: it
    # jumps between modes mid-window, which is what the flag is for.)
    row, tl = run_point(tmp_path, engine, "epoll", "--workload", "open", "--rate", "2000")
    assert float(row["rps"]) == pytest.approx(2000, rel=0.05)
    inside = [tl["completed"][i] for i in window_bins(tl)]
    assert float(row["stability"]) == pytest.approx(assess(tl).cv, rel=1e-4)
    assert float(row["stability"]) < threshold(sum(inside) / len(inside)), inside
    assert row["unsteady"] == "False"
    assert "unsteady" not in row["reason"]


@pytest.mark.timeout(110)
def test_a_stalling_server_is_flagged_unsteady_with_its_figure(tmp_path, engine):
    # No echo leaves the server during 0.6-1.0 s of every second: 1.5 s of window hold at least
    # one whole stall.
    row, tl = run_point(tmp_path, engine, "stall")
    inside = [tl["completed"][i] for i in window_bins(tl)]
    assert inside.count(0) >= 3, inside
    assert row["unsteady"] == "True"
    cv = float(row["stability"])
    assert cv > 0.3
    note = re.search(r"unsteady: req/s per 100 ms varied by (\d+)% \(CV\) in the window", row["reason"])
    assert note and int(note[1]) == pytest.approx(cv * 100, abs=1), row["reason"]
    assert "lowest 0 req/s at" in row["reason"]


@pytest.mark.timeout(150)
def test_remeasure_measures_an_unsteady_point_again_and_keeps_both_attempts(tmp_path):
    proc = run_bench(
        "run", "--models", "stall", "--connections", "10", "--warmup", "0.5", "--duration", "1.5",
        "--remeasure", "1", "--out", str(tmp_path), timeout=140, extra_models=EXTRA_MODELS,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, final = read_points(only_run_dir(tmp_path))
    assert (first["attempt"], first["superseded"]) == ("1", "True") and first["unsteady"] == "True"
    assert "measured again (attempt 2)" in first["reason"]
    # The stall is the server's own: the last attempt is unsteady too, and stays, flagged.
    assert (final["attempt"], final["superseded"], final["unsteady"]) == ("2", "False", "True")
