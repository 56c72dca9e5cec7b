"""Was a point's throughput steady through its window? From its timeline (loadgen.timeline).

The figure is the coefficient of variation (sample standard deviation over mean, a fraction)
of the completion rates of the 100 ms bins lying wholly inside the measured window. A point
is `unsteady` when that CV exceeds both UNSTEADY_CV and COUNTING_NOISE_K / sqrt(m), where m is
the mean count per bin: a steady process whose completions were a Poisson stream would
still show a CV of 1/sqrt(m) from counting alone, which at a few hundred req/s is tens of
percent, and that must not read as instability.

Used by bench.running.point (the `stability` and `unsteady` columns, the note in `reason`) and by
whatever plots timelines.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from loadgen.timeline import window_bins

# Above this CV of 100 ms rates a point is unsteady (when counting noise does not explain it).
# Measured on this 2-core KVM host (2026-11-30; `bench run --models epoll,native,poll,select
# --connections 10,100,1000 --duration 2 --quiet-wait 5`, C engine twice, Python once, plus
# churn at 10 and 100): 36 of 40 points gave CV 0.016-0.081 (median 0.04; a single 100 ms bin
# 25% low adds about 0.05); the other 4 gave 0.107-0.113, each with a visible shift: a 20% drop
# for the last second, a 22% drop for 0.5 s, a 35% dip for 0.2 s. A level shift of 20% over
# half the window is a CV of about 0.11. Without the quiet wait, beside other benchmarks on the
# same CPUs, 26 points gave 0.031-0.362, and 18 were above 0.10, with throughput doubling or
# halving mid-window. A server stalled 0.4 s of every second gives about 0.7.
UNSTEADY_CV = 0.10
# Counting noise: with n bins of Poisson counts of mean m, (n-1) s^2 m is about chi-square with
# n-1 degrees of freedom, so the sample CV exceeds sqrt(chi2_0.999(n-1) / (n-1)) / sqrt(m) one
# time in a thousand: 2.15 / sqrt(m) at the least 5 bins, less with more bins. 3 leaves margin
# for counts less regular than Poisson at small m.
COUNTING_NOISE_K = 3.0
# Fewer whole bins than this in the window (a window under 0.5 s): no figure, no verdict.
MIN_BINS = 5


@dataclass(frozen=True)
class Stability:
    """The verdict on one point's timeline; rates in req/s, times in seconds from the window's start."""

    cv: float
    threshold: float
    unsteady: bool
    bins: int
    mean_rps: float
    lowest_rps: float
    lowest_at_s: float
    step_s: float

    def note(self) -> str:
        """The sentence for the point's `reason` when it is unsteady."""
        at = self.lowest_at_s
        return (
            f"unsteady: req/s per {self.step_s * 1e3:.0f} ms varied by {self.cv:.0%} (CV) in the window "
            f"(threshold {self.threshold:.0%}); lowest {self.lowest_rps:,.0f} req/s at "
            f"{at:.1f}-{at + self.step_s:.1f} s into it, mean {self.mean_rps:,.0f}"
        )


def threshold(mean_count: float) -> float:
    """The CV above which a window whose bins hold `mean_count` completions on average is unsteady."""
    if mean_count <= 0:
        return math.inf
    return max(UNSTEADY_CV, COUNTING_NOISE_K / math.sqrt(mean_count))


def assess(timeline: dict[str, Any] | None) -> Stability | None:
    """The stability of a merged timeline (loadgen.timeline.merge's, with its "window"); None
    when there is no timeline, fewer than MIN_BINS whole bins in the window, or no completion
    in them."""
    if not timeline:
        return None
    bins = window_bins(timeline)
    counts = [timeline["completed"][i] for i in bins]
    if len(counts) < MIN_BINS:
        return None
    mean = statistics.fmean(counts)
    if mean <= 0:
        return None
    cv = statistics.stdev(counts) / mean
    limit = threshold(mean)
    step = timeline["step_s"]
    low = min(range(len(counts)), key=counts.__getitem__)
    # Whole bins start on or after the window's start: the first may be up to a bin into it.
    into = max(0.0, bins.start * step - timeline["window"][0])
    return Stability(
        cv=cv,
        threshold=limit,
        unsteady=cv > limit,
        bins=len(counts),
        mean_rps=mean / step,
        lowest_rps=counts[low] / step,
        lowest_at_s=into + low * step,
        step_s=step,
    )


def fill_row(row: dict[str, Any], timeline: dict[str, Any] | None) -> str | None:
    """Set the row's `stability` (CV, a fraction) and `unsteady` (bool; both empty without a
    verdict); return the note for `reason` when the point is unsteady, else None."""
    verdict = assess(timeline)
    row["stability"] = verdict.cv if verdict else None
    row["unsteady"] = verdict.unsteady if verdict else None
    return verdict.note() if verdict and verdict.unsteady else None
