"""Findings in words about the C baseline: when a Python model out-runs native, the report says why."""

from __future__ import annotations

import pandas as pd

from bench.report import baseline_findings


def _rows(model: str, rps: list[float], server_pct: float, client_pct: float, level: int = 100) -> list[dict]:
    return [
        {
            "model": model, "connections": level, "rps": r, "server_cpu_pct": server_pct,
            "client_cpu_pct": client_pct, "cpu_us_per_req": 1e6 * server_pct / 100 / r, "p50_us": 1e6 * level / r,
        }
        for r in rps
    ]  # fmt: skip


def test_nothing_to_say_when_native_leads():
    df = pd.DataFrame(_rows("native", [200e3, 210e3], 99, 99) + _rows("poll", [150e3, 160e3], 99, 80))
    assert baseline_findings(df) == []


def test_a_faster_python_model_is_explained_by_the_load_generator_and_the_noise():
    df = pd.DataFrame(
        _rows("native", [147_760, 150_000, 152_000], 71, 99) + _rows("poll", [164_551, 149_000, 160_000], 99, 98)
    )
    (text,) = baseline_findings(df)
    assert text.startswith("At 100 connections poll (160,000 req/s) out-ran the C baseline native (150,000 req/s)")
    assert "native's server used 71% of its CPU while the load workers used 99%" in text
    assert "the repeats overlap (poll 149,000-164,551, native 147,760-152,000 req/s)" in text


def test_one_repeat_is_called_one_repeat_and_a_saturated_native_points_to_the_costs():
    single = pd.DataFrame(_rows("native", [100e3], 95, 60) + _rows("epoll", [110e3], 95, 60))
    (text,) = baseline_findings(single)
    assert "one repeat" in text and "native's server used" not in text
    apart = pd.DataFrame(_rows("native", [100e3, 101e3], 99, 60) + _rows("epoll", [120e3, 121e3], 99, 60))
    (text,) = baseline_findings(apart)
    assert "saturated (99% CPU) and still slower" in text


def test_busy_polling_and_a_saturated_pair_are_named_with_their_numbers():
    spin = pd.DataFrame(_rows("native", [17_452], 38, 41, level=1) + _rows("nonblocking", [33_477], 96, 36, level=1))
    (text,) = baseline_findings(spin)
    assert text.startswith("At 1 connection nonblocking (33,477 req/s) out-ran")
    assert "nonblocking's server used 96% of its CPU where native's used 38%: it bought its rate with CPU" in text
    assert "neither native's server (38% CPU) nor its load workers (41%) were busy: the round trip" in text
    pair = pd.DataFrame(_rows("native", [136_214], 96, 99) + _rows("uvloop", [153_468], 99, 92))
    (text,) = baseline_findings(pair)
    assert "native's server (96% CPU) and its load worker (99%) were both saturated" in text
    assert "CPU per request: native 7.0 µs, uvloop 6.5 µs" in text
