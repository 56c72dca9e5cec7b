"""Rankings gated by statistics: a leader is named only when the paired ratio's 95% CI excludes 1."""

from __future__ import annotations

import pandas as pd

from bench.rankings import leader_sentence, paired_ratios, ranking_findings


def _rows(model: str, rps: list[float], level: int = 100, **extra) -> list[dict]:
    return [
        {"model": model, "workload": "closed", "connections": level, "status": "ok", "repeat": i, "rps": r,
         "point_id": f"{model}-closed-c{level}-r{i}", **extra}
        for i, r in enumerate(rps)
    ]  # fmt: skip


def test_two_models_within_the_noise_are_called_indistinguishable():
    # The host's phases move both models together; within each repeat they are within 2%.
    df = pd.DataFrame(
        _rows("poll", [114_389, 150_000, 128_000, 160_000, 131_000])
        + _rows("nonblocking", [113_353, 151_500, 126_500, 158_000, 132_000])
    )
    text = leader_sentence(df, 100, "closed")
    assert text.startswith("At 100 connections (closed), nonblocking and poll are indistinguishable on this host")
    assert "95% CI" in text and "over 5 repeats" in text and "leads" not in text


def test_models_clearly_apart_name_the_leader_with_its_interval():
    df = pd.DataFrame(
        _rows("native", [190_000, 140_000, 185_000, 150_000, 188_000])
        + _rows("epoll", [148_000, 112_000, 144_000, 118_000, 146_000])
    )
    ratios = paired_ratios(df, "native", "epoll")
    assert len(ratios) == 5 and min(ratios) > 1.2
    text = leader_sentence(df, 100, "closed")
    assert text.startswith("At 100 connections (closed), native leads with 185,000 req/s, 28% ahead of epoll (144,000;")
    low, high = (float(x) for x in text.split("95% CI ")[1].split(" over")[0].split("-"))
    assert 1 < low <= high


def test_a_single_repeat_states_no_ranking_and_asks_for_repeats():
    df = pd.DataFrame(_rows("poll", [114_389]) + _rows("nonblocking", [113_353]))
    text = leader_sentence(df, 2000, "closed")
    assert text.startswith("At 2,000 connections (closed): no ranking by throughput")
    assert "measured once" in text and "--repeats 5" in text and "leads" not in text


def test_pair_limited_points_are_left_out_and_explained():
    df = pd.DataFrame(
        _rows("native", [190_000, 185_000, 188_000], pair_limited="True")
        + _rows("epoll", [148_000, 144_000, 146_000], pair_limited="False")
        + _rows("poll", [120_000, 118_000, 119_000], pair_limited="False")
    )
    findings = ranking_findings(df)
    assert findings[0].startswith("At 100 connections (closed), epoll leads with 146,000 req/s")
    assert "(native left out: pair-limited)" in findings[0] and "native leads" not in findings[0]
    assert findings[-1].startswith("3 point(s) were pair-limited") and "in no ranking" in findings[-1]
