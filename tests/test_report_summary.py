"""The summary table that opens the report: sorted by median req/s, and a model shares the rank of the one above
it unless their paired ratio's 95% CI over repeats excludes 1."""

from __future__ import annotations

import pandas as pd

from bench.reporting.report_summary import summary_table


def _rows(model: str, rps: list[float], level: int = 100, **extra) -> list[dict]:
    return [
        {"model": model, "workload": "closed", "connections": level, "status": "ok", "repeat": i, "rps": r,
         "p99_us": 1e6 * level / r, "cpu_us_per_req": 7.0, "point_id": f"{model}-closed-c{level}-r{i}", **extra}
        for i, r in enumerate(rps)
    ]  # fmt: skip


def _ranks(df: pd.DataFrame) -> dict[str, str]:
    summary = summary_table(df)
    assert summary is not None
    return {row.model: row.rank for row in summary.rows}


def test_two_models_within_the_noise_share_a_rank_and_one_clearly_behind_does_not():
    # The host's phases move every model together; within each repeat poll and nonblocking are within 2%,
    # epoll 20% behind both.
    df = pd.DataFrame(
        _rows("poll", [114_389, 150_000, 128_000, 160_000, 131_000, 140_000])
        + _rows("nonblocking", [113_353, 151_500, 126_500, 158_000, 132_000, 139_000])
        + _rows("epoll", [92_000, 121_000, 103_000, 127_000, 105_000, 112_000])
    )
    summary = summary_table(df)
    assert summary is not None and summary.level == 100 and summary.note == ""
    assert [(r.model, r.rank) for r in summary.rows] == [("nonblocking", "=1"), ("poll", "=1"), ("epoll", "3")]
    first = summary.rows[0]
    assert first.rps == 135_500 and first.rps_ci is not None and first.rps_ci[0] <= 135_500 <= first.rps_ci[1]
    assert first.repeats == 6 and first.flags == []


def test_models_clearly_apart_over_six_repeats_get_their_own_ranks():
    df = pd.DataFrame(
        _rows("epoll", [148_000, 112_000, 144_000, 118_000, 146_000, 145_000])
        + _rows("native", [190_000, 140_000, 185_000, 150_000, 188_000, 186_000])
    )
    assert _ranks(df) == {"native": "1", "epoll": "2"}


def test_a_rank_claims_nothing_a_pair_across_it_does_not_support():
    # native is clearly ahead of poll in every repeat, poll and epoll are tied, and native and epoll are not told
    # apart (epoll won two repeats): a step between native and poll would claim native ahead of epoll too.
    df = pd.DataFrame(
        _rows("native", [200_000] * 6)
        + _rows("poll", [150_000] * 6)
        + _rows("epoll", [100_000, 140_000, 149_000, 300_000, 250_000, 145_000])
    )
    assert _ranks(df) == {"native": "=1", "poll": "=1", "epoll": "=1"}
    # Without epoll the same native and poll are two ranks.
    assert _ranks(df[df["model"] != "epoll"]) == {"native": "1", "poll": "2"}


def test_one_repeat_ranks_nothing_and_says_so():
    df = pd.DataFrame(_rows("native", [190_000]) + _rows("epoll", [148_000]) + _rows("threads", [58_000]))
    summary = summary_table(df)
    assert summary is not None
    assert [(r.model, r.rank) for r in summary.rows] == [("native", "=1"), ("epoll", "=1"), ("threads", "=1")]
    assert all(r.rps_ci is None for r in summary.rows)
    assert "one repeat ranks nothing" in summary.note


def test_the_headline_level_with_pair_limited_failed_and_flagged_models_below_the_ranked():
    df = pd.DataFrame(
        _rows("epoll", [148_000, 112_000, 144_000, 146_000, 143_000, 147_000], unsteady="False")
        + _rows("poll", [120_000, 90_000, 117_000, 119_000, 116_000, 118_000])
        + _rows("native", [190_000, 140_000, 185_000, 186_000, 184_000, 187_000], pair_limited="True")
        + [{"model": "select", "workload": "closed", "connections": 100, "status": "failed", "repeat": i,
            "reason": "select() cannot watch descriptor 1035"} for i in range(6)]
        + _rows("epoll", [100_000, 80_000, 98_000], level=2000)
    )  # fmt: skip
    df.loc[df["model"] == "poll", "unsteady"] = ["True"] + ["False"] * 5
    summary = summary_table(df)
    assert summary is not None and summary.level == 100
    rows = {r.model: r for r in summary.rows}
    assert [r.model for r in summary.rows] == ["epoll", "poll", "native", "select"]
    assert (rows["epoll"].rank, rows["poll"].rank) == ("1", "2")
    assert rows["poll"].flags == ["unsteady 1 of 6"]
    assert rows["native"].rank == "" and rows["native"].status == "pair-limited" and rows["native"].rps == 185_500
    assert rows["native"].reason == "in no ranking" and rows["native"].flags == ["pair-limited 6 of 6"]
    assert rows["select"].status == "failed" and rows["select"].rps is None
    assert rows["select"].reason.startswith("select() cannot watch")


def test_no_closed_loop_point_no_summary():
    df = pd.DataFrame(_rows("epoll", [20_000, 21_000]))
    df["workload"] = "churn"
    assert summary_table(df) is None
