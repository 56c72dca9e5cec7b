"""The table that opens the report: one row per model at the headline level (closed loop, 100
connections when measured), sorted by median req/s, with ties shown as ties.

A model shares the rank of the model above it ("=2") unless the ratio of their req/s paired
within each repeat has a 95% interval (bench.storing.statistics.ratio_estimate) above 1: the gate
bench.reporting.rankings uses for its sentences (bench.reporting.rankings.paired_ratios). A new rank is a claim
that every model above it is ahead of every model from it down, so it starts only where each of
those pairs passes the gate: the pairs need not agree (native clearly ahead of poll, poll tied
with epoll, native and epoll not told apart), and a step between neighbours alone would then
claim native ahead of epoll. One repeat gives no interval, so every model is tied.
Pair-limited models (the server and its load worker both saturated) are ranked with no one, and
sit below the ranked ones with failed and skipped models and their reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from bench.reporting.rankings import REPEATS_NEEDED, clearly_ahead, paired_lead, rankable
from bench.reporting.report_timeline import headline_level
from bench.storing.columns import STATUS_OK
from bench.storing.statistics import counted, estimate, final_attempts, flag_hits

# Caveats a row names, as the table words them: (column, words).
FLAG_WORDS = (
    ("client_bound", "client-bound"), ("pair_limited", "pair-limited"), ("unsteady", "unsteady"),
    ("host_shifted", "host shifted"), ("disturbed", "disturbed"),
)  # fmt: skip
RANKED, PAIR_LIMITED = "ranked", "pair-limited"
PAIR_LIMITED_REASON = "in no ranking"


@dataclass(frozen=True)
class SummaryRow:
    """One model at the headline level. Figures are medians over the rows used (the rankable
    ones for a ranked model, else every ok one); None where there is none."""

    model: str
    status: str  # "ranked", "pair-limited", "failed" or "skipped"
    rank: str = ""  # "1", "=2"; "" when not ranked
    rps: float | None = None  # req/s
    rps_ci: tuple[float, float] | None = None  # bootstrap 95% CI of the median, req/s; None with one repeat
    ratio: float | None = None  # req/s over the reference model's, paired within each repeat (median)
    ratio_ci: tuple[float, float] | None = None
    p99_us: float | None = None  # µs
    cpu_us_per_req: float | None = None  # server CPU µs per request
    repeats: int = 0  # rows of the model at this level (final attempts)
    flags: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass(frozen=True)
class Summary:
    level: int  # connections
    reference: str  # the model the paired ratios divide by; "" for none
    rows: list[SummaryRow]
    note: str = ""  # set when one repeat ranks nothing


def summary_table(df: pd.DataFrame) -> Summary | None:
    """The summary at the headline level of the points `df` (every attempt, as points.csv holds
    them); None without an ok closed-loop point."""
    current = final_attempts(df)
    level = headline_level(current)
    if level is None:
        return None
    connections = pd.to_numeric(current["connections"], errors="coerce")
    rows = current[(current["workload"] == "closed") & (connections == level)]
    if "idle" in rows.columns:
        rows = rows[pd.to_numeric(rows["idle"], errors="coerce").fillna(0) == 0]
    usable = rankable(rows)
    table = [_row(str(model), group, usable[usable["model"] == model]) for model, group in rows.groupby("model")]
    ranked = _rank(sorted((r for r in table if r.status == RANKED), key=lambda r: -(r.rps or 0.0)), usable)
    pair_limited = sorted((r for r in table if r.status == PAIR_LIMITED), key=lambda r: -(r.rps or 0.0))
    others = [r for r in table if r.status not in (RANKED, PAIR_LIMITED)]
    reference = rows["reference"].dropna().astype(str) if "reference" in rows.columns else pd.Series(dtype=str)
    note = ""
    if len(ranked) > 1 and max(r.repeats for r in ranked) < 2:
        note = (
            f"Each model was measured once, and one repeat ranks nothing: every model is shown tied "
            f"(run --repeats {REPEATS_NEEDED} or more)."
        )
    return Summary(level, reference.iloc[0] if not reference.empty else "", ranked + pair_limited + others, note)


def _row(model: str, rows: pd.DataFrame, usable: pd.DataFrame) -> SummaryRow:
    """A model's row from its rows at the level and the rankable ones among them."""
    ok = rows[counted(rows)]
    used = usable if not usable.empty else ok
    flags = _flags(rows, ok)
    if used.empty:
        bad = rows[rows["status"] != STATUS_OK]
        first = bad.iloc[0] if not bad.empty else rows.iloc[0]
        reason = "" if pd.isna(first.get("reason")) else str(first.get("reason"))
        return SummaryRow(model, str(first["status"]), repeats=len(rows), flags=flags, reason=reason)
    rps = estimate(pd.to_numeric(used["rps"], errors="coerce").to_numpy())
    return SummaryRow(
        model,
        RANKED if not usable.empty else PAIR_LIMITED,
        rps=rps.median,
        rps_ci=(rps.ci_low, rps.ci_high) if rps.ci_low is not None and rps.ci_high is not None else None,
        ratio=_first(ok, "rps_ratio"),
        ratio_ci=_pair(_first(ok, "rps_ratio_ci_low"), _first(ok, "rps_ratio_ci_high")),
        p99_us=_median(used, "p99_us"),
        cpu_us_per_req=_median(used, "cpu_us_per_req"),
        repeats=len(rows),
        flags=flags,
        reason="" if not usable.empty else PAIR_LIMITED_REASON,
    )


def _rank(ranked: list[SummaryRow], usable: pd.DataFrame) -> list[SummaryRow]:
    """Ranks down the rows sorted by median: row k starts a new rank (k + 1) when every row above
    it is clearly ahead of every row from k down (paired ratio's 95% CI above 1), else it shares
    the rank above; "=" on shared ranks."""
    models = [row.model for row in ranked]
    ahead = {(a, b): clearly_ahead(paired_lead(usable, a, b)) for i, a in enumerate(models) for b in models[i + 1 :]}
    numbers: list[int] = []
    for k in range(len(models)):
        split = k > 0 and all(ahead[(a, b)] for a in models[:k] for b in models[k:])
        numbers.append(k + 1 if split or k == 0 else numbers[-1])
    return [
        replace(row, rank=("=" if numbers.count(n) > 1 else "") + str(n))
        for row, n in zip(ranked, numbers, strict=True)
    ]


def _flags(rows: pd.DataFrame, ok: pd.DataFrame) -> list[str]:
    """The caveats of a model's rows, "unsteady 2 of 5" when it has several repeats; failed or
    skipped repeats of a model that has ok ones too."""
    out = []
    several = len(rows) > 1
    for column, words in FLAG_WORDS:
        hit = flag_hits(rows, column)
        if hit.any():
            out.append(f"{words} {int(hit.sum())} of {len(rows)}" if several else words)
    if not ok.empty:
        for status in ("failed", "skipped"):
            n = int((rows["status"] == status).sum())
            if n:
                out.append(f"{status} {n} of {len(rows)}")
    return out


def _median(rows: pd.DataFrame, column: str) -> float | None:
    if column not in rows.columns:
        return None
    values = pd.to_numeric(rows[column], errors="coerce").dropna()
    return float(values.median()) if not values.empty else None


def _first(rows: pd.DataFrame, column: str) -> float | None:
    """The value a statistics column holds for the point (the same on each of its rows)."""
    if column not in rows.columns:
        return None
    values = pd.to_numeric(rows[column], errors="coerce").dropna()
    return float(values.iloc[0]) if not values.empty else None


def _pair(low: float | None, high: float | None) -> tuple[float, float] | None:
    return (low, high) if low is not None and high is not None else None
