"""Rankings by throughput that claim nothing the noise does not support.

Two models are ranked only on the ratio of their req/s paired within each repeat (the models of
one repeat run back to back, so a phase of the host that slows the whole repeat divides out),
and only when the distribution-free 95% interval of that ratio's median excludes 1
(bench.storing.statistics.ratio_estimate; fewer than six repeats give none). Otherwise they are called
indistinguishable on this host, with the interval, or not ranked for want of repeats.
Pair-limited points (the server and its load worker both saturated: the pair of processes, not
the server, set the rate) are left out of rankings altogether.
"""

from __future__ import annotations

import pandas as pd

from bench.storing.columns import STATUS_OK
from bench.storing.statistics import MIN_FOR_INTERVAL, Estimate, counted, per_repeat, ratio_estimate, truthy
from bench.wording import figure

# Repeats to ask for when a run has too few: the fewest with a 95% interval of the paired
# ratios' median (bench.storing.statistics.median_interval).
REPEATS_NEEDED = MIN_FOR_INTERVAL


def rankable(df: pd.DataFrame) -> pd.DataFrame:
    """The rows a ranking may use: counted (ok, final attempt) and not pair-limited."""
    keep = counted(df)
    if "pair_limited" in df.columns:
        keep &= ~truthy(df["pair_limited"])
    return df[keep]


def paired_ratios(rows: pd.DataFrame, a: str, b: str) -> list[float]:
    """req/s of model `a` over model `b`, one ratio per repeat in which both were measured
    (rows: one level of one workload)."""
    va = per_repeat(rows[rows["model"] == a], "rps")
    vb = per_repeat(rows[rows["model"] == b], "rps")
    vb = vb[vb > 0]
    common = va.index.intersection(vb.index)
    return (va[common] / vb[common]).tolist()


def paired_lead(rows: pd.DataFrame, a: str, b: str) -> Estimate:
    """Model `a`'s req/s over model `b`'s, paired within each repeat: the median of the ratios
    with its 95% interval (bench.storing.statistics.ratio_estimate; none from fewer than six repeats)."""
    return ratio_estimate(paired_ratios(rows, a, b))


def clearly_ahead(est: Estimate) -> bool:
    """The one gate of every ranking: the paired ratio's 95% interval lies above 1."""
    return est.ci_low is not None and est.ci_low > 1


def leader_sentence(rows: pd.DataFrame, level: int, workload: str) -> str | None:
    """One sentence on who leads at this level (rows: every row of the level), gated by the
    paired ratio's 95% CI; None when fewer than two models can be ranked."""
    unit = "connections/s" if workload == "churn" else "req/s"
    noun = "connection" if level == 1 else "connections"
    where = f"At {level:,} {noun} ({workload})"
    usable = rankable(rows)
    left_out = rows[counted(rows)].drop(usable.index, errors="ignore")["model"].unique().tolist()
    note = f" ({', '.join(left_out)} left out: pair-limited)" if left_out else ""
    medians = usable.groupby("model")["rps"].median().sort_values(ascending=False)
    if len(medians) < 2:
        return None
    top, second = medians.index[0], medians.index[1]
    repeats = int(usable.groupby("model")["repeat"].nunique().max())
    lead = f"{top} {figure(medians.iloc[0])} {unit}, {second} {figure(medians.iloc[1])}"
    if repeats < 2:
        return (
            f"{where}: no ranking by throughput{note}: each model was measured once ({lead}), and one repeat "
            f"cannot tell a difference from this host's noise; run --repeats {REPEATS_NEEDED} or more."
        )
    est = paired_lead(usable, top, second)
    if est.ci_low is None or est.ci_high is None:
        return (
            f"{where}: no ranking by throughput{note}: {top} and {second} share {est.n} repeats ({lead}), too few "
            f"for a 95% interval of their paired ratio; run --repeats {REPEATS_NEEDED} or more."
        )
    interval = f"paired ratio {est.median:.3f}, 95% CI {est.ci_low:.3f}-{est.ci_high:.3f} over {est.n} repeats"
    if clearly_ahead(est):
        return (
            f"{where}, {top} leads with {figure(medians.iloc[0])} {unit}, {est.median - 1:.0%} ahead of {second} "
            f"({figure(medians.iloc[1])}; {interval}){note}."
        )
    return f"{where}, {top} and {second} are indistinguishable on this host ({lead}; {interval}){note}."


def ranking_findings(df: pd.DataFrame) -> list[str]:
    """The leader sentences at the smallest and the largest level of each closed-loop or churn
    workload, and one sentence on what pair-limited means when a point was."""
    out: list[str] = []
    ok = df[(df["status"] == STATUS_OK) & df["workload"].isin(["closed", "churn"])]
    for workload, rows in ok.groupby("workload"):
        levels = sorted(rows["connections"].unique())
        for level in dict.fromkeys([levels[0], levels[-1]]):
            if text := leader_sentence(rows[rows["connections"] == level], int(level), str(workload)):
                out.append(text)
    if "pair_limited" in df.columns and truthy(df["pair_limited"]).any():
        n = int(truthy(df["pair_limited"]).sum())
        out.append(
            f"{n} point(s) were pair-limited: the server and its load worker both used a whole CPU, so the pair of "
            "processes sharing this host's CPUs set the rate, not the server; they are in the table and the plots "
            "(black plus signs) but in no ranking."
        )
    return out
