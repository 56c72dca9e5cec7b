"""`bench compare RUN_A RUN_B [RUN_C ...]`: what changed between runs, point by point.

Every later run is compared with the first (the baseline, "A"). Points are aligned on the
parameters that make a point (model, connections, ...); a parameter that is fixed within each run
but differs between runs (payload 64 in A, 4096 in B) cannot align anything, so it is left out of
the alignment and stated on the page instead. For each aligned point and metric: the ratio of the
medians over the ok repeats (B / A), a bootstrap confidence interval of that ratio, a two-sided
Mann-Whitney U test over the repeats and a verdict in words. Written as a self-contained HTML page
and printed as terminal tables.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from statistics import median  # the standard library's: bench.storing.statistics is about repeats of one run
from typing import TYPE_CHECKING, Any

from bench.errors import UsageError
from bench.measuring.host import flatten_host, show_value
from bench.reporting.pages import environment
from bench.storing.columns import STATUS_OK
from bench.storing.results_store import POINTS_FILE, RUN_FILE, STATUS_ABANDONED, effective_status, upgrade_run_meta
from bench.wording import and_list

# numpy, pandas, scipy (and bench.storing.statistics, which needs pandas) are imported inside the functions
# that use them: `bench` builds every subcommand's parser on each start, and they would add ~0.6 s
# (scipy.stats another ~0.6 s) to `bench models` and `bench --help`.
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

ALPHA = 0.05
COMPARE_FILE = "compare.html"
TERMINAL_HOST_FIELDS = 12
NOT_RECORDED = "(not recorded)"
# The current frequency is sampled at the moment of the fingerprint and differs on every run.
VOLATILE_HOST_FIELDS = re.compile(r"^cpufreq\.cpu\d+\.cur_khz$")
# Config entries that are already point parameters (shown as such) or only say where files went.
# `rate` is the single offered rate of runs before --rate took a list (`rates`).
CONFIG_SKIP = {"out", "models", "connections", "payload", "workload", "idle", "rate", "rates", "server_workers"}


@dataclass(frozen=True)
class Metric:
    column: str
    title: str
    unit: str
    higher_is_better: bool
    better: str  # the verdict words, "faster" / "slower"
    worse: str
    better_than: str  # for sentences: "B is faster than A"


METRICS: dict[str, Metric] = {
    m.column: m
    for m in (
        Metric("rps", "Throughput", "req/s", True, "faster", "slower", "is faster than"),
        Metric("p50_us", "Median latency (p50)", "µs", False, "faster", "slower", "is faster than"),
        Metric("p99_us", "p99 latency", "µs", False, "faster", "slower", "is faster than"),
        Metric("p999_us", "p99.9 latency", "µs", False, "faster", "slower", "is faster than"),
        Metric("cpu_us_per_req", "Server CPU per request", "µs", False, "less CPU", "more CPU", "uses less CPU than"),
        Metric(
            "ctx_per_req",
            "Context switches per request",
            "switches",
            False,
            "fewer switches",
            "more switches",
            "has fewer context switches than",
        ),
        Metric(
            "mem_per_conn_bytes",
            "Memory per connection",
            "bytes",
            False,
            "less memory",
            "more memory",
            "uses less memory than",
        ),
    )
}
DEFAULT_METRICS = ("rps", "p99_us", "cpu_us_per_req")

# Verdict codes; the words shown depend on the metric (faster / less CPU / ...).
BETTER, WORSE, NOT_SIGNIFICANT, TOO_FEW, MISSING = "better", "worse", "ns", "few", "missing"


# ---------------------------------------------------------------- statistics


def mann_whitney_u(a: Sequence[float], b: Sequence[float], method: str = "auto") -> tuple[float, float]:
    """Two-sided Mann-Whitney U test of a against b: scipy.stats.mannwhitneyu(b, a), whose
    documentation gives the method and its references. Returns (U of b, p): U of b counts the
    pairs where b's value is the larger (ties count half), so U > len(a)*len(b)/2 means b tends
    higher; p is the two-sided p-value.

    `method` is scipy's: "auto" takes the exact distribution of U when there are no ties and one
    sample has at most 8 values, otherwise "asymptotic", the normal approximation with tie and
    continuity corrections. Forcing "exact" on tied values is refused here (scipy would allow it):
    the exact distribution assumes distinct values and makes no correction for ties.
    """
    import numpy as np
    from scipy.stats import mannwhitneyu

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError("both samples need at least one value")
    if method not in ("auto", "exact", "asymptotic"):
        raise ValueError(f"unknown method {method!r}")
    if method == "exact" and np.unique(np.concatenate([x, y])).size < x.size + y.size:
        raise ValueError("the exact test needs distinct values")
    result = mannwhitneyu(y, x, alternative="two-sided", method=method)
    return float(result.statistic), float(result.pvalue)


@cache
def smallest_p(m: int, n: int) -> float:
    """The smallest two-sided p the exact U test can give with m and n values: the p of a
    complete separation (all of b above all of a), from scipy.stats.mannwhitneyu's exact
    distribution; 2 / C(m + n, m), at most 1."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    if m < 1 or n < 1:
        raise ValueError("both samples need at least one value")
    a, b = np.arange(m), np.arange(m, m + n)
    return float(mannwhitneyu(b, a, alternative="two-sided", method="exact").pvalue)


def ratio_ci(a: Sequence[float], b: Sequence[float], seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval (95%, 2000 resamples: bench.storing.statistics.CONFIDENCE and
    BOOTSTRAP_RESAMPLES) of median(b) / median(a), a ratio without unit: scipy.stats.bootstrap
    with the ratio as a two-sample statistic, each run's repeats resampled on their own
    (paired=False), seeded with `seed` (bench.storing.statistics.bootstrap_interval, which says why the
    percentile interval and not BCa). None when either side has fewer than two values (one value
    has no spread to resample), or when some resamples have no ratio (a median of a of 0) so
    that the interval is not finite."""
    import numpy as np

    from bench.storing.statistics import bootstrap_interval

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return None, None

    def median_ratio(xs: np.ndarray, ys: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(ys, axis=axis) / np.median(xs, axis=axis)

    interval = bootstrap_interval((x, y), median_ratio, seed)
    return interval if interval else (None, None)


@dataclass(frozen=True)
class Difference:
    """One metric at one point, a run against the baseline."""

    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p: float | None
    verdict: str
    # MISSING only: what happened, briefly ("failed in A and B"), and the reasons the runs recorded, each
    # once: (the runs that gave it, or "" when every run named in the note did, the reason).
    note: str = ""
    reasons: tuple[tuple[str, str], ...] = ()


def compare_samples(a: Sequence[float], b: Sequence[float], higher_is_better: bool, seed: int = 0) -> Difference:
    """Medians, ratio b/a with its CI, the U test and the verdict for one metric at one point."""
    x = [float(v) for v in a if v is not None and not math.isnan(v)]
    y = [float(v) for v in b if v is not None and not math.isnan(v)]
    med_a = median(x) if x else None
    med_b = median(y) if y else None
    if not x or not y:
        return Difference(len(x), len(y), med_a, med_b, None, None, None, None, MISSING)
    ratio = med_b / med_a if med_a else None
    low, high = ratio_ci(x, y, seed) if med_a else (None, None)
    u_b, p = mann_whitney_u(x, y)
    # Fewer than 3 repeats, or so few that even a complete separation cannot reach p < ALPHA
    # (3 against 3: p >= 0.1): the test cannot tell, and the page says so instead of "same".
    if min(len(x), len(y)) < 3 or smallest_p(len(x), len(y)) >= ALPHA:
        verdict = TOO_FEW
    elif p >= ALPHA:
        verdict = NOT_SIGNIFICANT
    else:
        b_higher = u_b > len(x) * len(y) / 2
        verdict = BETTER if b_higher == higher_is_better else WORSE
    return Difference(len(x), len(y), med_a, med_b, ratio, low, high, p, verdict)


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    label: str
    path: Path
    meta: dict[str, Any]
    points: pd.DataFrame  # every row of points.csv, key columns as normalised text
    warnings: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)


def _normalise(value: str) -> str:
    """Key values as text that compares equal across runs ("100" and "100.0" are one point)."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer():
        return str(int(number))
    return repr(number)


def resolve_run_dir(text: str) -> Path:
    """A run directory, or a results directory holding exactly one run (as `bench run --out` makes)."""
    path = Path(text)
    if not path.exists():
        raise UsageError(f"{text}: no such run directory")
    if not path.is_dir():
        raise UsageError(f"{text} is not a run directory (it is a file)")
    if (path / RUN_FILE).exists():
        return path
    inner = sorted(p for p in path.iterdir() if (p / RUN_FILE).is_file())
    if len(inner) == 1:
        return inner[0]
    if inner:
        names = ", ".join(p.name for p in inner[:5]) + (", ..." if len(inner) > 5 else "")
        raise UsageError(f"{text} holds {len(inner)} runs ({names}): name one of them")
    raise UsageError(f"{text} is not a run directory (no {RUN_FILE})")


def _read_points(points_file: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """The header and rows of points.csv, checked row by row so that damage is named by line.

    A short last row is what an interrupted write leaves: it is dropped with a warning, since
    the rows before it are whole (each is flushed as its point ends). Anywhere else a row with the
    wrong number of fields means the file is damaged.
    """
    try:
        with open(points_file, newline="", encoding="utf-8") as fh:
            lines = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise UsageError(f"{points_file} is damaged: not UTF-8 text") from None
    except csv.Error as exc:
        raise UsageError(f"{points_file} is damaged: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {points_file}: {exc.strerror}") from None
    if not lines or not any(lines[0]):
        raise UsageError(f"{points_file} is damaged: it has no header line")
    header, rows, warnings = lines[0], [], []
    if len(set(header)) != len(header):
        raise UsageError(f"{points_file} is damaged: its header names a column twice")
    for number, row in enumerate(lines[1:], start=2):
        if not row:
            continue
        if len(row) < len(header) and number == len(lines):
            warnings.append(f"{points_file.name} ends in an incomplete row (line {number}; interrupted?): left out")
            continue
        if len(row) != len(header):
            raise UsageError(f"{points_file} is damaged: line {number} has {len(row)} fields, the header {len(header)}")
        rows.append(row)
    return header, rows, warnings


def load_run(text: str, label: str) -> Run:
    """Read and check one run directory; anything damaged is a UsageError naming the file."""
    import pandas as pd

    from bench.storing.statistics import POINT_KEY, final_attempts

    path = resolve_run_dir(text)
    run_file, points_file = path / RUN_FILE, path / POINTS_FILE
    try:
        meta = upgrade_run_meta(json.loads(run_file.read_text()))
    except UnicodeDecodeError:
        raise UsageError(f"{run_file} is damaged: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read {run_file}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{run_file} is damaged: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:
        raise UsageError(f"{run_file} is damaged: {exc}") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{run_file} is damaged: expected a JSON object")
    if not points_file.is_file():
        raise UsageError(f"{path} has no {POINTS_FILE}: the run measured no point")
    header, rows, warnings = _read_points(points_file)
    missing = [c for c in ("model", "status") if c not in header]
    if missing:
        raise UsageError(f"{points_file} is damaged: no column {', '.join(missing)} in its header")
    if not rows:
        raise UsageError(f"{points_file} holds no points")
    df = pd.DataFrame(rows, columns=header, dtype=str)
    # Older runs may lack a key column: one empty value then stands for "not recorded".
    for column in POINT_KEY:
        df[column] = df[column].map(_normalise) if column in df.columns else ""
    df["status"] = df["status"].str.strip()
    # An attempt that --remeasure replaced is in the table, not in any comparison.
    df = final_attempts(df).reset_index(drop=True)
    return Run(label, path, meta, df, [f"{label}: {w}" for w in warnings])


# ---------------------------------------------------------------- the comparison


@dataclass
class PairResult:
    base: Run
    other: Run
    keys: list[tuple[str, ...]]  # shared points, sorted
    diffs: dict[str, list[Difference]]  # metric -> one per key
    only_base: list[tuple[str, ...]]
    only_other: list[tuple[str, ...]]

    def counts(self, metric: str) -> dict[str, int]:
        out = {v: 0 for v in (BETTER, WORSE, NOT_SIGNIFICANT, TOO_FEW, MISSING)}
        for diff in self.diffs[metric]:
            out[diff.verdict] += 1
        return out


@dataclass
class Comparison:
    runs: list[Run]
    metrics: list[Metric]
    align_on: list[str]
    shown: list[str]  # align columns that vary between points: the columns of the tables
    common: dict[str, str]  # align columns with one value everywhere
    run_level: list[tuple[str, list[str]]]  # differ between runs, not used to align
    settings: list[tuple[str, list[str]]]
    host_diff: list[tuple[str, list[str]]]
    host_compared: int
    pairs: list[PairResult] = field(default_factory=list)


def _values(df: pd.DataFrame, column: str) -> list[str]:
    return sorted(set(df[column]), key=_sort_key)


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _show_param(value: str) -> str:
    # An empty cell is a parameter that does not apply (target_rate of a closed loop) or that an
    # older run did not record.
    return value if value != "" else "(none)"


def split_parameters(runs: Sequence[Run]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Which key columns align points, and which are fixed per run yet differ between runs."""
    from bench.storing.statistics import POINT_KEY

    align, run_level = [], []
    for column in POINT_KEY:
        per_run = [_values(r.points, column) for r in runs]
        if all(len(v) == 1 for v in per_run) and len({v[0] for v in per_run}) > 1:
            run_level.append((column, [_show_param(v[0]) for v in per_run]))
        else:
            align.append(column)
    return align, run_level


_MISSING = object()


def _canonical(value: Any) -> str:
    return "\0missing" if value is _MISSING else json.dumps(value, sort_keys=True, default=str)


def _field_differences(
    mappings: Sequence[Mapping[str, Any]], skip: Callable[[str], Any] | None = None
) -> tuple[list[tuple[str, list[str]]], int]:
    """Dotted field names whose values differ between the mappings (a field missing in some
    counts as a difference), with each value as shown; and how many fields were compared."""
    flat = [dict(flatten_host(m)) for m in mappings]
    names = [n for n in dict.fromkeys(n for f in flat for n in f) if not (skip and skip(n))]
    diffs = []
    for name in names:
        raw = [f.get(name, _MISSING) for f in flat]
        if len({_canonical(v) for v in raw}) > 1:
            diffs.append((name, [NOT_RECORDED if v is _MISSING else show_value(v) for v in raw]))
    return diffs, len(names)


def host_differences(hosts: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[str, list[str]]], int]:
    """The fingerprint fields (dotted names) whose values differ between runs, and how many were compared."""
    return _field_differences(hosts, skip=VOLATILE_HOST_FIELDS.match)


def _no_shared_points(base: Run, other: Run, align: list[str]) -> UsageError:
    reasons = []
    for column in align:
        a, b = set(base.points[column]), set(other.points[column])
        if not a & b:
            show = ", ".join(_show_param(v) for v in sorted(a, key=_sort_key))
            show_b = ", ".join(_show_param(v) for v in sorted(b, key=_sort_key))
            reasons.append(f"{column} {show} in {base.label} but {show_b} in {other.label}")
    why = "; ".join(reasons) if reasons else "no combination of parameters was measured in both"
    return UsageError(f"runs {base.label} ({base.run_id}) and {other.label} ({other.run_id}) share no points: {why}")


def _outcome(rows: pd.DataFrame, column: str) -> tuple[str, str]:
    """Why a run has no value at a point: what happened ("failed", "no rps value") and the reason it recorded."""
    if rows.empty:
        return "not measured", ""
    ok = rows[rows["status"] == STATUS_OK]
    if ok.empty:
        reasons = [r.strip() for r in rows["reason"] if r.strip()] if "reason" in rows.columns else []
        return rows["status"].iloc[0] or "no status", reasons[0] if reasons else ""
    return f"no {column} value", ""


def _missing_note(sides: Sequence[tuple[str, pd.DataFrame]], column: str) -> dict[str, Any]:
    """The note and reasons of a point with no value on some side (label, rows): each said once, so that
    two runs failing alike read "failed in A and B" and give their shared reason once, in full."""
    outcomes = [(label, *_outcome(rows, column)) for label, rows in sides]
    happened: dict[str, list[str]] = {}
    why: dict[str, list[str]] = {}
    for label, what, reason in outcomes:
        happened.setdefault(what, []).append(label)
        if reason:
            why.setdefault(reason, []).append(label)
    everyone = [label for label, _, _ in outcomes]
    reasons = tuple(("" if labels == everyone else and_list(labels), reason) for reason, labels in why.items())
    return {"note": "; ".join(f"{what} in {and_list(labels)}" for what, labels in happened.items()), "reasons": reasons}


def _groups(points: pd.DataFrame, align: list[str]) -> dict[tuple[str, ...], pd.DataFrame]:
    """The rows of each point (its repeats), by the values of the align columns."""
    if not align:
        return {(): points}
    # Older pandas gives a scalar key, not a 1-tuple, when grouping by a one-column list.
    return {key if isinstance(key, tuple) else (key,): rows for key, rows in points.groupby(align, sort=False)}


def _key_order(key: tuple[str, ...]) -> tuple[tuple[int, float, str], ...]:
    return tuple(_sort_key(v) for v in key)


def compare_pair(base: Run, other: Run, align: list[str], metrics: Sequence[Metric]) -> PairResult:
    import pandas as pd

    groups_a, groups_b = _groups(base.points, align), _groups(other.points, align)
    shared = sorted(set(groups_a) & set(groups_b), key=_key_order)
    if not shared:
        raise _no_shared_points(base, other, align)
    diffs: dict[str, list[Difference]] = {}
    for metric in metrics:
        out = []
        for key in shared:
            rows_a, rows_b = groups_a[key], groups_b[key]
            values = []
            for rows in (rows_a, rows_b):
                ok = rows[rows["status"] == STATUS_OK]
                column = ok[metric.column] if metric.column in ok.columns else pd.Series(dtype=str)
                values.append(pd.to_numeric(column, errors="coerce").dropna().tolist())
            diff = compare_samples(values[0], values[1], metric.higher_is_better)
            if diff.verdict == MISSING:
                sides = ((base.label, rows_a, values[0]), (other.label, rows_b, values[1]))
                empty = [(label, rows) for label, rows, vals in sides if not vals]
                diff = replace(diff, **_missing_note(empty, metric.column))
            out.append(diff)
        diffs[metric.column] = out
    return PairResult(
        base,
        other,
        shared,
        diffs,
        only_base=sorted(set(groups_a) - set(groups_b), key=_key_order),
        only_other=sorted(set(groups_b) - set(groups_a), key=_key_order),
    )


def _mapping(meta: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = meta.get(name)
    return value if isinstance(value, Mapping) else {}


def _config_skip(name: str) -> bool:
    # The point template's fields (config.point.*, schema 2) are skipped by their own names.
    parts = name.split(".")
    return parts[0] in CONFIG_SKIP or (parts[0] == "point" and len(parts) > 1 and parts[1] in CONFIG_SKIP)


def build_comparison(run_paths: Sequence[str], metric_names: Sequence[str] = DEFAULT_METRICS) -> Comparison:
    if len(run_paths) < 2:
        raise UsageError("compare needs at least two run directories (the first is the baseline)")
    if len(run_paths) > len(string.ascii_uppercase):
        raise UsageError(f"compare takes at most {len(string.ascii_uppercase)} runs")
    unknown = [m for m in metric_names if m not in METRICS]
    if unknown or not metric_names:
        raise UsageError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; known: {', '.join(METRICS)}")
    runs = [load_run(p, string.ascii_uppercase[i]) for i, p in enumerate(run_paths)]
    seen: dict[Path, str] = {}
    for run in runs:
        where = run.path.resolve()
        if where in seen:
            raise UsageError(f"{run.label} and {seen[where]} are the same run ({run.path}): compare different runs")
        seen[where] = run.label
    align, run_level = split_parameters(runs)
    metrics = [METRICS[m] for m in metric_names]
    pairs = [compare_pair(runs[0], other, align, metrics) for other in runs[1:]]
    # Columns for the tables: whatever tells the points apart, including those in one run only.
    keys = {k for pair in pairs for k in (*pair.keys, *pair.only_base, *pair.only_other)}
    shown = [c for i, c in enumerate(align) if len({k[i] for k in keys}) > 1]
    if not shown and "model" in align:
        shown = ["model"]
    any_key = next(iter(keys))
    common = {c: any_key[i] for i, c in enumerate(align) if c not in shown and any_key[i] != ""}
    settings, _ = _field_differences([_mapping(r.meta, "config") for r in runs], skip=_config_skip)
    host_diff, host_compared = host_differences([_mapping(r.meta, "host") for r in runs])
    return Comparison(runs, metrics, align, shown, common, run_level, settings, host_diff, host_compared, pairs)


# ---------------------------------------------------------------- words and numbers


def fmt_value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def fmt_ratio(diff: Difference) -> str:
    if diff.ratio is None:
        return "—"
    return f"{diff.ratio:.2f} ({(diff.ratio - 1) * 100:+.0f}%)"


def fmt_ci(diff: Difference) -> str:
    if diff.ci_low is None or diff.ci_high is None:
        return "—"
    return f"{diff.ci_low:.2f}–{diff.ci_high:.2f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def verdict_word(diff: Difference, metric: Metric, other: str) -> str:
    if diff.verdict == BETTER:
        return f"{other} {metric.better}"
    if diff.verdict == WORSE:
        return f"{other} {metric.worse}"
    if diff.verdict == NOT_SIGNIFICANT:
        return "not significant"
    if diff.verdict == TOO_FEW:
        return "too few repeats"
    return diff.note or "missing"


def summary_sentence(pair: PairResult, metric: Metric) -> str:
    """e.g. "Throughput (req/s): B is faster than A on 1 of 4 points, slower on 0, not significant on 1; ..."."""
    c = pair.counts(metric.column)
    total = len(pair.keys)
    b, a = pair.other.label, pair.base.label
    head = f"{metric.title} ({metric.unit}): "
    few_text = ""
    if c[TOO_FEW]:
        few = [d for d in pair.diffs[metric.column] if d.verdict == TOO_FEW]
        n_a = "/".join(map(str, sorted({d.n_a for d in few})))
        n_b = "/".join(map(str, sorted({d.n_b for d in few})))
        few_text = f"{n_a} ok repeats in {a}, {n_b} in {b}: too few for the test to reach p < {ALPHA}; use --repeats 5"
    if c[TOO_FEW] == total:
        parts = [f"no verdict: too few repeats on all {total} points ({few_text})"]
    elif c[TOO_FEW] + c[MISSING] == total:
        parts = [f"no verdict on any of the {total} points"]
        if c[TOO_FEW]:
            parts.append(f"too few repeats on {c[TOO_FEW]} ({few_text})")
    else:
        parts = [
            f"{b} {metric.better_than} {a} on {c[BETTER]} of {total} points",
            f"{metric.worse} on {c[WORSE]}",
            f"not significant on {c[NOT_SIGNIFICANT]}",
        ]
        if c[TOO_FEW]:
            parts.append(f"too few repeats to tell on {c[TOO_FEW]} ({few_text})")
    if c[MISSING]:
        parts.append(f"failed or not measured (in {a}, {b} or both) on {c[MISSING]}")
    text = head + ", ".join(parts) + "."
    ratios = [d.ratio for d in pair.diffs[metric.column] if d.ratio and d.ratio > 0]
    if len(ratios) > 1:
        typical = math.exp(sum(map(math.log, ratios)) / len(ratios))
        text += f" Typical ratio {b}/{a} (geometric mean over the points): {typical:.2f}."
    return text


def _run_facts(run: Run) -> dict[str, Any]:
    df = run.points
    counts = df["status"].value_counts().to_dict()
    disturbed = int((df["disturbed"].str.strip() != "").sum()) if "disturbed" in df.columns else 0
    return {
        "label": run.label,
        "run_id": run.run_id,
        "path": str(run.path),
        "command": run.meta.get("command", NOT_RECORDED),
        "started": run.meta.get("started", NOT_RECORDED),
        "status": effective_status(run.meta, run.path) or NOT_RECORDED,
        "rows": len(df),
        "counts": ", ".join(f"{n} {s or '(no status)'}" for s, n in counts.items()),
        "disturbed": disturbed,
    }


def _key_cells(comp: Comparison, key: tuple[str, ...]) -> list[str]:
    return [_show_param(key[comp.align_on.index(c)]) for c in comp.shown]


def _point_label(comp: Comparison, key: tuple[str, ...]) -> str:
    """A point in words, e.g. "select, connections 1100"."""
    cells = zip(comp.shown, _key_cells(comp, key), strict=True)
    return ", ".join(value if column == "model" else f"{column} {value}" for column, value in cells) or "the point"


@dataclass
class Footnote:
    """Why some points of a table have no verdict: the reasons the runs recorded, said once for all of them."""

    number: int
    points: list[str]
    note: str
    reasons: tuple[tuple[str, str], ...]


def footnotes(comp: Comparison, pair: PairResult, metric: Metric) -> tuple[list[int | None], list[Footnote]]:
    """For each point of the table its footnote number (None: no footnote), and the footnotes in order."""
    refs: list[int | None] = []
    notes: dict[tuple[str, tuple[tuple[str, str], ...]], Footnote] = {}
    for key, diff in zip(pair.keys, pair.diffs[metric.column], strict=True):
        if diff.verdict != MISSING or not diff.reasons:
            refs.append(None)
            continue
        note = notes.setdefault((diff.note, diff.reasons), Footnote(len(notes) + 1, [], diff.note, diff.reasons))
        note.points.append(_point_label(comp, key))
        refs.append(note.number)
    return refs, list(notes.values())


def _parameter_lines(comp: Comparison) -> list[str]:
    labels = [r.label for r in comp.runs]
    lines = []
    for column, values in comp.run_level:
        lines.append(f"{column}: " + ", ".join(f"{v} in {lab}" for v, lab in zip(values, labels, strict=True)))
    return lines


# ---------------------------------------------------------------- terminal


def print_terminal(comp: Comparison, console: Any = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # No markup or highlighting: paths, commands and host values are printed as they are.
    console = console or Console(highlight=False)
    say = lambda text="", style=None: console.print(Text(text, style=style or ""))  # noqa: E731
    styles = {BETTER: "bold green", WORSE: "bold red", NOT_SIGNIFICANT: "dim", TOO_FEW: "yellow", MISSING: "magenta"}
    for run in comp.runs:
        say(f"{run.label} = run {run.run_id}  ({run.path})", "bold" if run is comp.runs[0] else None)
    for facts in map(_run_facts, comp.runs):
        if facts["status"] == STATUS_ABANDONED:
            say(f"{facts['label']}: abandoned (killed before it finished); its {facts['rows']} rows are compared.")
        if facts["disturbed"]:
            say(
                f"{facts['label']}: {facts['disturbed']} of {facts['rows']} measurements were flagged as disturbed "
                "(other processes were using the CPUs): differences there may be noise."
            )
    say(f"Each later run is compared with {comp.runs[0].label}; points matched on {', '.join(comp.align_on)}.")
    for line in _parameter_lines(comp):
        say(f"Differs between runs, not used to match points: {line}", "bold")
    if comp.common:
        say("Same for every compared point: " + ", ".join(f"{k}={v}" for k, v in comp.common.items()))
    for name, values in comp.settings:
        say(f"Setting {name}: " + ", ".join(f"{v} in {r.label}" for v, r in zip(values, comp.runs, strict=True)))
    if comp.host_diff:
        say(f"Host fingerprint: {len(comp.host_diff)} of {comp.host_compared} fields differ", "bold")
        for name, values in comp.host_diff[:TERMINAL_HOST_FIELDS]:
            say(f"  {name}: " + " | ".join(f"{r.label}: {v[:60]}" for v, r in zip(values, comp.runs, strict=True)))
        if len(comp.host_diff) > TERMINAL_HOST_FIELDS:
            say(f"  ... and {len(comp.host_diff) - TERMINAL_HOST_FIELDS} more (see the HTML page)")
    else:
        say(f"Host fingerprint: identical ({comp.host_compared} fields compared)")
    for pair in comp.pairs:
        b, a = pair.other.label, pair.base.label
        say()
        for metric in comp.metrics:
            say(summary_sentence(pair, metric))
        for metric in comp.metrics:
            table = Table(
                title=f"{metric.title} ({metric.unit}), medians over ok repeats: {b} against {a}",
                title_justify="left",
                box=box.SIMPLE_HEAD,
                show_edge=False,
                pad_edge=False,
                collapse_padding=True,
            )
            for column in comp.shown:
                table.add_column(column, min_width=min(len(column), 12))
            for header in (a, b, f"{b}/{a}", "95% CI", "p", "n"):
                table.add_column(header, justify="right", no_wrap=True)
            table.add_column("verdict", min_width=9)
            for key, diff in zip(pair.keys, pair.diffs[metric.column], strict=True):
                table.add_row(
                    *_key_cells(comp, key),
                    fmt_value(diff.median_a),
                    fmt_value(diff.median_b),
                    "—" if diff.ratio is None else f"{diff.ratio:.2f}",
                    fmt_ci(diff),
                    fmt_p(diff.p),
                    f"{diff.n_a}/{diff.n_b}",
                    Text(verdict_word(diff, metric, b), style=styles[diff.verdict]),
                )
            say()
            console.print(table)
        # The reasons behind "failed in ..." verdicts, each once although every metric's table shows the verdict.
        why = dict.fromkeys(
            (f"{'; '.join(note.points)} — {note.note}", note.reasons)
            for m in comp.metrics
            for note in footnotes(comp, pair, m)[1]
        )
        for head, reasons in why:
            say()
            if len(reasons) == 1 and not reasons[0][0]:
                say(f"{head}: {reasons[0][1]}")
                continue
            say(f"{head}:")
            for who, reason in reasons:
                say(f"  {who}: {reason}")
        if pair.only_base or pair.only_other:
            say(f"Points not compared: {len(pair.only_base)} only in {a}, {len(pair.only_other)} only in {b}.")


# ---------------------------------------------------------------- HTML


def plot_ratios(comp: Comparison, pair: PairResult, metric: Metric) -> str:
    """Ratios with their CIs as a horizontal dot plot, one row per point, 1 marked: an inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"
    colours = {BETTER: "#1a7f37", WORSE: "#c62828", NOT_SIGNIFICANT: "#666666", TOO_FEW: "#b07d00"}
    rows = [(k, d) for k, d in zip(pair.keys, pair.diffs[metric.column], strict=True) if d.ratio]
    if not rows:
        return ""
    # Shown at its natural size (8.4 in = 806 CSS px) on a laptop, the 10 pt text is 13 px tall; squeezed into a
    # phone's width it stays legible.
    fig, ax = plt.subplots(figsize=(8.4, 1.1 + 0.4 * len(rows)), dpi=100)
    for y, (_, diff) in enumerate(rows):
        colour = colours.get(diff.verdict, "#666666")
        if diff.ci_low is not None and diff.ci_high is not None:
            ax.plot([diff.ci_low, diff.ci_high], [y, y], color=colour, linewidth=2)
        ax.plot([diff.ratio], [y], marker="o", color=colour)
    ax.axvline(1.0, color="#222222", linewidth=1, linestyle="--")
    # Ratios are multiplicative: when they span more than 8x (a wide CI from few repeats), a log scale keeps 1/2
    # and 2 equally far from 1 and the narrow bars from being squeezed into a dot.
    ends = [v for _, d in rows for v in (d.ratio, d.ci_low, d.ci_high) if v is not None]
    span = max(ends) / min(ends) if min(ends) > 0 else 0.0
    log_scale = span > 8
    if log_scale:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0) if span < 30 else (1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([" ".join(_key_cells(comp, k)) for k, _ in rows], fontsize=10)
    # The first point at the top, as in the table; half a row clear of the frame above and below.
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=10)
    b, a = pair.other.label, pair.base.label
    side = "right" if metric.higher_is_better else "left"
    scale = ", log scale" if log_scale else ""
    ax.set_xlabel(f"{metric.title}: ratio {b}/{a}{scale} ({side} of 1 = {b} {metric.better})", fontsize=10)
    if comp.shown:
        ax.set_ylabel(" ".join(comp.shown), fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _breakable(text: Any) -> Any:
    """Escaped text (a path, a command line) that wraps at its spaces and after its slashes only, never inside a
    name ("--out", "20261127-203959-af87"), which a browser would otherwise break at a hyphen."""
    from markupsafe import Markup

    def name(part: str) -> Markup:
        return Markup('<span class="nowrap">{}</span>').format(part) if "-" in part else Markup.escape(part)

    return Markup(" ").join(Markup("/<wbr>").join(map(name, word.split("/"))) for word in str(text).split(" "))


def render_html(comp: Comparison, out: Path, plots: bool = True) -> Path:
    from bench.storing.statistics import BOOTSTRAP_RESAMPLES, CONFIDENCE

    pairs = []
    for pair in comp.pairs:
        b = pair.other.label
        tables = []
        for metric in comp.metrics:
            refs, notes = footnotes(comp, pair, metric)
            rows = [
                {
                    "key": _key_cells(comp, key),
                    "a": fmt_value(d.median_a),
                    "b": fmt_value(d.median_b),
                    "ratio": fmt_ratio(d),
                    "ci": fmt_ci(d),
                    "p": fmt_p(d.p),
                    "n": f"{d.n_a} / {d.n_b}",
                    "verdict": d.verdict,
                    "word": verdict_word(d, metric, b),
                    "ref": ref,
                }
                for key, d, ref in zip(pair.keys, pair.diffs[metric.column], refs, strict=True)
            ]
            tables.append(
                {
                    "metric": metric,
                    "sentence": summary_sentence(pair, metric),
                    "rows": rows,
                    "footnotes": notes,
                    "svg": plot_ratios(comp, pair, metric) if plots else "",
                    "undrawn": [
                        _point_label(comp, k)
                        for k, d in zip(pair.keys, pair.diffs[metric.column], strict=True)
                        if not d.ratio
                    ],
                }
            )
        pairs.append(
            {
                "a": pair.base.label,
                "b": b,
                "tables": tables,
                "only_base": [" ".join(_key_cells(comp, k)) or "(the point)" for k in pair.only_base],
                "only_other": [" ".join(_key_cells(comp, k)) or "(the point)" for k in pair.only_other],
            }
        )
    env = environment()
    env.filters["breakable"] = _breakable
    html = env.get_template("compare.html.j2").render(
        runs=[_run_facts(r) for r in comp.runs],
        labels=[r.label for r in comp.runs],
        parameters=_parameter_lines(comp),
        common=comp.common,
        align_on=comp.align_on,
        shown=comp.shown,
        settings=comp.settings,
        host_diff=comp.host_diff,
        host_compared=comp.host_compared,
        pairs=pairs,
        warnings=[w for r in comp.runs for w in r.warnings],
        alpha=ALPHA,
        confidence=CONFIDENCE,
        resamples=BOOTSTRAP_RESAMPLES,
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


# ---------------------------------------------------------------- CLI


def cmd_compare(args: argparse.Namespace) -> int:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    comp = build_comparison(args.runs, metrics)
    out = Path(args.out) if args.out else comp.runs[0].path.parent / COMPARE_FILE
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / COMPARE_FILE}")
    for run in comp.runs:
        for warning in run.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    # The tables first: if the page cannot be written (a read-only results directory) they are
    # still shown before the error.
    print_terminal(comp)
    print(f"comparison page: {render_html(comp, out)}")
    return 0


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench compare RUN_A RUN_B [RUN_C ...]` on the bench parser's subparsers."""
    parser = subparsers.add_parser(
        "compare",
        help="compare runs point by point: ratios, confidence intervals, significance, host differences",
        description="Compare two or more run directories; every run is compared with the first (the baseline).",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or --out directories holding one run)")
    parser.add_argument("--out", default="", help=f"HTML page to write (default: {COMPARE_FILE} beside the first run)")
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated, from {', '.join(METRICS)} (default {','.join(DEFAULT_METRICS)})",
    )
    parser.set_defaults(func=cmd_compare)
    return parser
