"""Findings in words about the C baseline: when a Python model out-runs native, the report says why."""

from __future__ import annotations

import pandas as pd

from bench.reporting.report import baseline_findings, caveat_findings
from bench.reporting.report_timeline import sparkline


def _rows(model: str, rps: list[float], server_pct: float, client_pct: float, level: int = 100) -> list[dict]:
    return [
        {
            "model": model, "connections": level, "rps": r, "server_cpu_pct": server_pct, "status": "ok",
            "client_cpu_pct": client_pct, "cpu_us_per_req": 1e6 * server_pct / 100 / r, "p50_us": 1e6 * level / r,
            "repeat": repeat, "point_id": f"{model}-c{level}-r{repeat}",
        }
        for repeat, r in enumerate(rps)
    ]  # fmt: skip


def test_nothing_to_say_when_native_leads():
    df = pd.DataFrame(_rows("native", [200e3, 210e3], 99, 99) + _rows("poll", [150e3, 160e3], 99, 80))
    assert baseline_findings(df) == []


def test_a_faster_median_inside_the_noise_is_not_claimed():
    # Paired within each repeat, poll over native is 1.11, 0.99 and 1.05: the CI holds 1.
    df = pd.DataFrame(
        _rows("native", [147_760, 150_000, 152_000], 71, 99) + _rows("poll", [164_551, 149_000, 160_000], 99, 98)
    )
    assert baseline_findings(df) == []


def test_a_model_clearly_ahead_is_explained_by_the_load_generator():
    df = pd.DataFrame(
        _rows("native", [147_760, 150_000, 152_000, 149_000, 151_000, 150_500], 71, 99)
        + _rows("poll", [164_551, 166_000, 168_000, 165_000, 167_000, 166_500], 99, 98)
    )
    (text,) = baseline_findings(df)
    assert text.startswith("At 100 connections poll (166,250 req/s; ratio 1.11, 95% CI")
    assert "over 6 repeats) out-ran the C baseline native (150,250 req/s)" in text
    assert "native's server used 71% of its CPU while the load workers used 99%" in text


def test_fewer_than_six_repeats_claim_no_lead():
    # A lead is a ranking: the rankings' gate, which no single repeat or 100 ms bins can pass.
    single = pd.DataFrame(_rows("native", [100e3], 95, 60) + _rows("epoll", [150e3], 95, 60))
    assert baseline_findings(single) == []
    five = pd.DataFrame(_rows("native", [100e3] * 5, 95, 60) + _rows("epoll", [150e3] * 5, 95, 60))
    assert baseline_findings(five) == []
    apart = pd.DataFrame(_rows("native", [100e3, 101e3] * 3, 99, 60) + _rows("epoll", [120e3, 121e3] * 3, 99, 60))
    (text,) = baseline_findings(apart)
    assert "saturated (99% CPU) and still slower" in text


def test_busy_polling_and_a_saturated_pair_are_named_with_their_numbers():
    spin = pd.DataFrame(
        _rows("native", [17_452] * 6, 38, 41, level=1) + _rows("nonblocking", [33_477] * 6, 96, 36, level=1)
    )
    (text,) = baseline_findings(spin)
    assert text.startswith("At 1 connection nonblocking (33,477 req/s; ratio 1.92")
    assert "nonblocking's server used 96% of its CPU where native's used 38%: it bought its rate with CPU" in text
    assert "neither native's server (38% CPU) nor its load workers (41%) were busy: the round trip" in text
    pair = pd.DataFrame(_rows("native", [136_214] * 6, 96, 99) + _rows("uvloop", [153_468] * 6, 99, 92))
    (text,) = baseline_findings(pair)
    assert "native's server (96% CPU) and its load worker (99%) were both saturated" in text
    assert "CPU per request: native 7.0 µs, uvloop 6.5 µs" in text
    # Marked pair-limited, the same points enter no comparison.
    assert baseline_findings(pair.assign(pair_limited=True)) == []


def _point(model: str, repeat: int, **extra) -> dict:
    return {"model": model, "workload": "closed", "connections": 100, "status": "ok", "repeat": repeat,
            "point_id": f"{model}-closed-c100-r{repeat}", **extra}  # fmt: skip


def test_caveats_name_unsteady_points_redone_attempts_and_paired_ratios():
    ratio = {"reference": "native", "rps_ratio": 0.8, "rps_ratio_ci_low": 0.75, "rps_ratio_ci_high": 0.85}
    df = pd.DataFrame(
        [
            _point("native", 0, rps_ratio=1.0, rps_ratio_ci_low=1.0, rps_ratio_ci_high=1.0, reference="native"),
            _point("epoll", 0, unsteady="True", stability=0.31, superseded="True", host_shifted="True", **ratio),
            _point("epoll", 0, unsteady="False", stability=0.02, attempt=2, **ratio),
            _point("poll", 0, unsteady="True", stability=0.18, host_shifted="True", **ratio),
        ]
    )
    text = " ".join(caveat_findings(df))
    # The replaced attempt is counted as redone, and its unsteadiness is not reported.
    assert "1 point(s) were unsteady" in text and "poll at 100 connections, CV 18%" in text
    assert "shifted 2 time(s); 1 attempt(s) were measured again" in text and "1 point(s) are still flagged" in text
    assert "Paired with native in each repeat at 100 connections" in text and "epoll 0.80 (0.75-0.85)" in text


def test_no_caveat_on_steady_points_without_a_reference():
    df = pd.DataFrame([_point("epoll", 0, unsteady="False", stability=0.02, host_shifted="False")])
    assert caveat_findings(df) == []


def test_sparkline_draws_the_timeline_and_shades_the_window():
    timeline = {"start": 0.0, "step_s": 0.1, "completed": [0, 500, 1000, 1000, 0, 1000], "window": [0.2, 0.6]}
    svg = sparkline(timeline, unsteady=True)
    assert svg.startswith("<svg") and "<rect" in svg
    # One vertex per bin, the full bins at the top (y=1), the empty ones at the foot (y=21).
    assert 'points="10.0,21.0 30.0,11.0 50.0,1.0 70.0,1.0 90.0,21.0 110.0,1.0"' in svg
    # The tooltip gives the range inside the window: 0 to 10,000 req/s per 100 ms bin.
    assert "0 to 10,000 in the window" in svg and "#b03a2e" in svg
    assert sparkline({"step_s": 0.1, "completed": [0, 0, 0]}) == ""
