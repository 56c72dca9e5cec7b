"""Statistics over repeats: median, bootstrap 95% confidence interval, coefficient of variation.

A run with --repeats N measures every point N times, with the model order rotated between
repeats; these numbers say how much one would believe a difference between two models.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.storing.columns import STATUS_OK
from bench.storing.results_store import RunDirectory

# The parameters that make two rows repeats of the same point.
POINT_KEY = ["model", "workload", "connections", "payload", "idle", "target_rate", "server_workers"]
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# Above this coefficient of variation a point is called noisy in the run summary.
NOISY_CV = 0.10
# The fewest paired ratios with a distribution-free 95% interval of their median (median_interval).
MIN_FOR_INTERVAL = 6


@dataclass(frozen=True)
class Estimate:
    median: float
    ci_low: float | None
    ci_high: float | None
    cv: float | None
    n: int


def bootstrap_interval(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of statistic(*samples), in the statistic's unit:
    scipy.stats.bootstrap with method="percentile", each sample resampled on its own
    (paired=False), `resamples` resamples from numpy's default_rng(seed), so the same values
    always give the same interval. The percentile interval is the one of Efron & Tibshirani, An
    Introduction to the Bootstrap (1993), ch. 13: the (1 - confidence)/2 and (1 + confidence)/2
    quantiles of the statistic over the resamples. `statistic` takes the samples and an `axis`
    keyword (vectorized). None when the interval is not finite: some resamples have no value of
    the statistic (a ratio over a resample whose denominator is 0).

    Not scipy's default, BCa: over the 2-5 repeats of a run, a median's bootstrap distribution
    takes a handful of values, on which BCa's bias correction and jackknife acceleration
    degenerate (NaN with a DegenerateDataWarning for constant data), where the percentile
    interval of constant data is [v, v]. Each sample needs at least two values (scipy's rule).
    The seed goes to scipy's `rng` keyword (scipy >= 1.15; `random_state` is its legacy name)."""
    from scipy.stats import DegenerateDataWarning, bootstrap

    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # A NaN bound (a 0/0 ratio among the resamples) is answered below with None.
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(
            samples,
            statistic,
            n_resamples=resamples,
            vectorized=True,
            paired=False,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def estimate(values: list[float] | np.ndarray, seed: int = 0) -> Estimate:
    """Median of `values` (in their unit) with a percentile-bootstrap 95% CI of the median
    (bootstrap_interval: scipy.stats.bootstrap, BOOTSTRAP_RESAMPLES resamples, seeded) and the
    coefficient of variation (sample standard deviation over mean); no CI or CV from a single
    value. Identical values give the CI [v, v]."""
    data = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if data.size == 0:
        return Estimate(float("nan"), None, None, None, 0)
    median = float(np.median(data))
    if data.size < 2:
        return Estimate(median, None, None, None, 1)
    interval = bootstrap_interval((data,), np.median, seed)
    low, high = interval if interval else (None, None)
    mean = float(np.mean(data))
    cv = float(np.std(data, ddof=1) / mean) if mean else None
    return Estimate(median, low, high, cv, int(data.size))


def per_repeat(rows: pd.DataFrame, metric: str) -> pd.Series:
    """`metric` of `rows` (one point, or one model at one level) as numbers, one per repeat:
    the median where a repeat has several rows, so that duplicates never count as repeats."""
    values = pd.to_numeric(rows[metric], errors="coerce")
    return values.groupby(rows["repeat"].astype(str)).median().dropna()


def flag_hits(df: pd.DataFrame, flag: str) -> pd.Series:
    """Rows carrying a flag column: a true boolean, or for `disturbed` (a reason in words) any
    text; all False where the column is missing (a run written before it existed)."""
    if flag not in df.columns:
        return pd.Series(False, index=df.index)
    if flag == "disturbed":
        return df[flag].astype("string").fillna("").str.strip() != ""
    return truthy(df[flag])


def median_interval(values: list[float] | np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """A distribution-free interval for the median, in the values' unit: the order statistics
    [x(k), x(n+1-k)] with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is at
    least `confidence` (Conover, Practical Nonparametric Statistics, 3rd ed., section 3.2), as
    scipy.stats.quantile_test(...).confidence_interval computes it for p = 0.5. None when even
    [min, max] covers less (scipy's bound is then infinite): with k = 1 the coverage is
    1 - 2^(1-n), 93.75% for five values and 96.9% for six, so a 95% interval needs six
    (MIN_FOR_INTERVAL). A percentile bootstrap of the median gives about [min, max] below that
    and calls equal models apart far too often (half the time with two repeats, a quarter with
    three)."""
    from scipy.stats import quantile_test

    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if data.size == 0:
        return None
    ci = quantile_test(data, q=float(np.median(data)), p=0.5).confidence_interval(confidence)
    low, high = float(ci.low), float(ci.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def ratio_estimate(ratios: list[float] | np.ndarray) -> Estimate:
    """The median of paired ratios (one per repeat) with median_interval's 95% interval: the
    gate every ranking and comparison in words passes (a difference is claimed only when the
    interval excludes 1); no interval from fewer than MIN_FOR_INTERVAL ratios."""
    data = np.asarray([v for v in ratios if v is not None and np.isfinite(v)], dtype=float)
    if data.size == 0:
        return Estimate(float("nan"), None, None, None, 0)
    interval = median_interval(data)
    mean = float(np.mean(data))
    cv = float(np.std(data, ddof=1) / mean) if data.size > 1 and mean else None
    low, high = interval if interval else (None, None)
    return Estimate(float(np.median(data)), low, high, cv, int(data.size))


def _key_frame(df: pd.DataFrame, columns: list[str] = POINT_KEY) -> pd.DataFrame:
    keys = df.reindex(columns=columns).copy()
    return keys.fillna("").astype(str)


def truthy(series: pd.Series) -> pd.Series:
    """A boolean column as points.csv holds it (True/true/1 as text, or bools), as bools."""
    return series.astype("string").fillna("").str.lower().isin({"true", "1", "1.0"})


def replaced(df: pd.DataFrame) -> pd.Series:
    """Rows that a later attempt of the same point replaced (--remeasure): marked superseded,
    with a later row of the same point_id present. A superseded row whose re-measurement never
    landed (the run was interrupted) is still the point's last word, and is kept."""
    if "superseded" not in df.columns or "point_id" not in df.columns:
        return pd.Series(False, index=df.index)
    later = pd.Series(range(len(df)), index=df.index).groupby(df["point_id"].astype(str)).transform("max")
    return truthy(df["superseded"]) & (pd.Series(range(len(df)), index=df.index) < later)


def counted(df: pd.DataFrame) -> pd.Series:
    """The rows that enter statistics: ok, and not an attempt that a re-measurement replaced."""
    return (df["status"] == STATUS_OK) & ~replaced(df)


def final_attempts(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that a re-measurement (--remeasure) did not replace."""
    return df[~replaced(df)]


def default_reference(models: list[str]) -> str:
    """The model the paired ratios divide by: native (the C baseline) when it ran, else the first."""
    return "native" if "native" in models else (models[0] if models else "")


def add_repeat_statistics(df: pd.DataFrame, reference: str = "") -> pd.DataFrame:
    """Fill rps_* and p99_* statistics into every row from the counted rows of its point, and
    the paired ratios to `reference` (a model of the run; '' for none)."""
    out = df.copy()
    if out.empty:
        return out
    # Recomputed from scratch, as numbers, whatever the frame held before.
    for prefix in ("rps", "p99"):
        for suffix in ("median", "ci_low", "ci_high", "cv"):
            out[f"{prefix}_{suffix}"] = np.nan
    out["repeats_ok"] = np.nan
    keys = _key_frame(out)
    groups = keys.apply(tuple, axis=1)
    ok = counted(out)
    for group in groups.unique():
        members = groups == group
        good = members & ok
        for metric, prefix in (("rps", "rps"), ("p99_us", "p99")):
            est = estimate(pd.to_numeric(out.loc[good, metric], errors="coerce").to_numpy())
            if est.n == 0:
                continue
            out.loc[members, f"{prefix}_median"] = est.median
            out.loc[members, f"{prefix}_ci_low"] = est.ci_low
            out.loc[members, f"{prefix}_ci_high"] = est.ci_high
            out.loc[members, f"{prefix}_cv"] = est.cv
        out.loc[members, "repeats_ok"] = float(good.sum())
    return add_paired_ratios(out, reference, groups, ok)


def add_paired_ratios(df: pd.DataFrame, reference: str, groups: pd.Series, ok: pd.Series) -> pd.DataFrame:
    """`rps_vs_reference`: each counted row's req/s over the reference model's in the same
    repeat at the same point (same workload, connections, idle, ...); `rps_ratio` with
    `rps_ratio_ci_low`/`_high`: the median of those per-repeat ratios and its distribution-free
    95% interval (median_interval; none from fewer than six repeats).

    The models of one repeat are measured back to back, so a phase of the host that slows the
    whole repeat divides out of the ratio; the ratio's spread is therefore the honest measure
    of how far apart two models are, where overlapping CIs of their req/s would call them equal."""
    for column in ("rps_vs_reference", "rps_ratio", "rps_ratio_ci_low", "rps_ratio_ci_high"):
        df[column] = np.nan
    df["reference"] = reference or np.nan
    if not reference:
        return df
    context = _key_frame(df, [c for c in POINT_KEY if c != "model"] + ["repeat"]).apply(tuple, axis=1)
    rps = pd.to_numeric(df["rps"], errors="coerce")
    ref_rows = ok & (df["model"] == reference) & (rps > 0)
    ref_rps = dict(zip(context[ref_rows], rps[ref_rows], strict=True))
    paired = ok & context.map(lambda c: c in ref_rps)
    df.loc[paired, "rps_vs_reference"] = rps[paired] / context[paired].map(ref_rps)
    for group in groups[paired].unique():
        members = groups == group
        est = ratio_estimate(df.loc[members & paired, "rps_vs_reference"].to_numpy())
        df.loc[members, "rps_ratio"] = est.median
        df.loc[members, "rps_ratio_ci_low"] = est.ci_low
        df.loc[members, "rps_ratio_ci_high"] = est.ci_high
    return df


def ranking_warnings(df: pd.DataFrame) -> list[str]:
    """The points whose repeats are noisy (CV above NOISY_CV). Whether two models can be ranked
    is bench.reporting.rankings' to say, from their req/s paired within each repeat: the overlap of two
    unpaired intervals would call models equal that a phase of the host moved together."""
    warnings: list[str] = []
    if df.empty or "rps_median" not in df.columns:
        return warnings
    ok = df[counted(df) & df["rps_ci_low"].notna()]
    if ok.empty:
        return warnings
    points = ok.drop_duplicates(subset=[c for c in POINT_KEY if c in ok.columns])
    for cv_row in points[points["rps_cv"] > NOISY_CV].itertuples():
        warnings.append(
            f"{cv_row.model} at {cv_row.connections} connections ({cv_row.workload}) is noisy: "
            f"req/s varied by {cv_row.rps_cv:.0%} (coefficient of variation) over {int(cv_row.repeats_ok)} repeats"
        )
    return warnings


def finalize_run_statistics(run_dir: RunDirectory, reference: str = "") -> list[str]:
    """Fill the statistics columns of points.csv from its rows, with paired ratios to the
    `reference` model; return the ranking warnings."""
    rows = run_dir.read_points()
    if not rows:
        return []
    df = add_repeat_statistics(pd.DataFrame(rows, dtype=str), reference)
    for column in ("rps_median", "rps_ci_low", "rps_ci_high", "rps_cv", "p99_median", "p99_ci_low", "p99_ci_high"):
        if column in df.columns:
            df[column] = pd.to_numeric(df[column], errors="coerce")
    run_dir.rewrite_points([{k: _plain(v) for k, v in rec.items()} for rec in df.to_dict("records")])
    numeric = df.copy()
    for column in ("rps_median", "rps_ci_low", "rps_ci_high", "rps_cv", "repeats_ok"):
        numeric[column] = pd.to_numeric(numeric.get(column), errors="coerce")
    numeric["connections"] = pd.to_numeric(numeric["connections"], errors="coerce").astype("Int64")
    return ranking_warnings(numeric)


def _plain(value: object) -> object:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e12:
        return int(value)
    return value
