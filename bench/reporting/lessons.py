"""The five I/O models' lessons, stated from a run's points when the run measured them.

What Stevens teaches (UNP vol. 1, section 6.2, the five I/O models) and the man pages of
select(2), poll(2), epoll(7) and io_uring(7) say, checked against this host:

1. select() cannot watch a descriptor numbered FD_SETSIZE (1024) or more;
2. select and poll copy and scan every watched descriptor on each call, epoll and io_uring
   hand back only the ready ones, so idle connections cost the first two on every request;
3. a blocking server pays a thread or a process per connection: memory per connection, and a
   context switch to wake the one blocked in recv() for each request;
4. a non-blocking server without a multiplexer polls in a loop and burns a CPU even when
   nothing arrives;
5. signal-driven and asynchronous servers change who waits, which shows in the system calls
   one request takes (from a `bench profile` of this host, as strace -c counts them).

Every comparison goes through `contrast`, which states a difference only when the noise
cannot explain it: with MIN_FOR_INTERVAL (six) repeats or more, when the distribution-free 95%
interval of the per-repeat paired ratio's median excludes 1 (bench.storing.statistics.median_interval);
with fewer, for req/s of single points, when a bootstrap CI over the two points' 100 ms bins
excludes 1 (it sees the noise inside each window, not the host's drift between points) and the
ratio is beyond RATE_FACTOR, and otherwise beyond SINGLE_REPEAT_FACTOR, far outside the 10-12%
by which repeats of one point vary on these hosts. A point measured in a shifted phase (the
probe's `host_shifted`, or `disturbed`) enters such a comparison only beyond HOST_FACTOR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.storing.columns import POINT_COLUMNS
from bench.storing.statistics import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    MIN_FOR_INTERVAL,
    counted,
    flag_hits,
    per_repeat,
    ratio_estimate,
)
from bench.wording import and_list, figure
from loadgen.timeline import window_bins

# With one repeat and no sub-window samples, a cost is called different only by this factor:
# repeats of one point varied by CV 10.5-12.0% over five repeats on these 2-core hosts in a
# noisy phase (issue 11), so a factor of two is beyond anything the host's phases produce.
SINGLE_REPEAT_FACTOR = 2.0
# Flags saying that the host, not the server, may have moved a point's figure: a single
# repeat's comparison that rests on such a point is stated only beyond HOST_FACTOR. The widest
# swing the host alone made here: epoll at 10 connections gave 53,486 req/s beside a browser
# test suite on the same CPUs and 143,522 two minutes later on a quiet host (2.7x, default
# sweep, 2026-11-30); ten is well beyond it. Memory per connection and context switches per
# request of a blocking server differ from epoll's by 100-10,000x, and still pass.
HOST_DOUBTS = ("host_shifted", "disturbed")
HOST_FACTOR = 10.0
# Flags under which a point's own 100 ms bins do not speak for its figure.
POINT_DOUBTS = ("unsteady", "client_bound", "pair_limited")
# With one repeat, req/s of two points are called apart only beyond this ratio even when their
# 100 ms bins say so: repeats of one point varied by CV 10-12% in a noisy phase here (issue
# 11), and three of those is about 1.35.
RATE_FACTOR = 1.35
# The readiness models that scan (select, poll) and those that do not (epoll, io_uring).
SCANNING = ("select", "poll")
READY_ONLY = ("epoll", "epoll-et", "io_uring", "uvloop", "asyncio", "selectors", "native")
BLOCKING = ("threads", "fork")
# The event-driven model blocking servers are compared with, the first one the run has.
EVENT_DRIVEN = ("epoll", "native", "poll", "uvloop", "select")
ASYNC_MODELS = ("sigio", "io_uring")
PROFILE_HINT = "bench profile --models sigio,io_uring,epoll"


@dataclass(frozen=True)
class Contrast:
    """Model or point A's figure over B's: `ratio` (median over repeats, or of the single
    pair), its 95% interval when one exists, whether the difference is clear of the noise, and
    `basis`, the rule that decided it in words ("over 6 repeats", "one repeat: stated only
    beyond a factor of 2", ...)."""

    ratio: float
    low: float | None
    high: float | None
    basis: str
    clear: bool
    # False when a point flagged host_shifted or disturbed kept the two from being compared
    # (then not clear either): the figures are printed, no difference is claimed.
    compared: bool = True
    # Repeats behind the ratio (the most either side had).
    repeats: int = 1

    def interval(self) -> str:
        """'95% CI 0.19-0.21 from 100 ms bins', or the single-repeat rule that was applied."""
        if self.low is None or self.high is None:
            return self.basis
        return f"95% CI {self.low:.2f}-{self.high:.2f} {self.basis}"


def _doubts(rows: pd.DataFrame, flags: Sequence[str]) -> list[str]:
    """The `flags` that the rows carry, in words."""
    return [flag.replace("_", " ") for flag in flags if flag_hits(rows, flag).any()]


def bin_counts(timeline: dict[str, Any] | None) -> np.ndarray:
    """Completions in each whole 100 ms bin inside a timeline's window (loadgen.timeline)."""
    if not timeline or "window" not in timeline:
        return np.array([])
    return np.asarray([timeline["completed"][i] for i in window_bins(timeline)], dtype=float)


def bins_ratio(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float] | None:
    """Mean of `a` over mean of `b` (completions per bin of equal length, so a ratio of req/s)
    with a percentile-bootstrap 95% CI: scipy.stats.bootstrap through
    bench.storing.statistics.bootstrap_interval, each point's bins resampled on their own (paired=False),
    BOOTSTRAP_RESAMPLES resamples seeded with `seed`. None with fewer than five bins a side
    (bench.measuring.stability.MIN_BINS) or an empty `b`, and when resamples of `b` with no completions at
    all leave the interval unbounded. Consecutive bins are correlated, so the interval is
    narrower than independent samples would give: it speaks for the noise inside the two windows
    only."""
    from bench.measuring.stability import MIN_BINS
    from bench.storing.statistics import bootstrap_interval

    if a.size < MIN_BINS or b.size < MIN_BINS or b.mean() <= 0:
        return None

    def mean_ratio(xs: np.ndarray, ys: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(xs, axis=axis) / np.mean(ys, axis=axis)

    interval = bootstrap_interval((a, b), mean_ratio, seed, resamples=BOOTSTRAP_RESAMPLES, confidence=CONFIDENCE)
    if interval is None:
        return None
    return float(a.mean() / b.mean()), *interval


def contrast(
    a: pd.DataFrame, b: pd.DataFrame, metric: str, timelines: dict[str, dict[str, Any]] | None = None
) -> Contrast | None:
    """A's `metric` over B's (a, b: the counted rows of one point each, a row per repeat),
    gated as the module says; None when either has no positive value (a ratio of a count of
    zero, or of a negative memory growth, says nothing)."""
    va, vb = per_repeat(a, metric), per_repeat(b, metric)
    if va.empty or vb.empty or (va <= 0).any() or (vb <= 0).any():
        return None
    common = va.index.intersection(vb.index)
    if len(common) >= MIN_FOR_INTERVAL:
        est = ratio_estimate((va[common] / vb[common]).to_numpy())
        clear = est.ci_low is not None and (est.ci_low > 1 or est.ci_high < 1)
        return Contrast(est.median, est.ci_low, est.ci_high, f"over {est.n} repeats", bool(clear), repeats=est.n)
    ratio = float(va.median() / vb.median())
    factor = max(ratio, 1 / ratio)
    n = max(va.size, vb.size)
    repeats = "one repeat" if n == 1 else f"{n} repeats, too few for an interval"
    if host := sorted(set(_doubts(a, HOST_DOUBTS) + _doubts(b, HOST_DOUBTS))):
        apart = factor >= HOST_FACTOR
        basis = f"{repeats}, {and_list(host)}: stated only beyond a factor of {HOST_FACTOR:g}"
        return Contrast(ratio, None, None, basis, apart, apart, n)
    doubts = sorted(set(_doubts(a, POINT_DOUBTS) + _doubts(b, POINT_DOUBTS)))
    if metric == "rps" and timelines is not None and n == 1 and not doubts:
        counts = [bin_counts(timelines.get(str(rows["point_id"].iloc[0]))) for rows in (a, b)]
        if (found := bins_ratio(*counts)) is not None:
            ratio, low, high = found
            # The bins see the noise inside each window; the host's drift between the two
            # points, which they cannot see, is what RATE_FACTOR is for.
            apart = (low > 1 or high < 1) and max(ratio, 1 / ratio) >= RATE_FACTOR
            return Contrast(ratio, low, high, f"from 100 ms bins, stated only beyond {RATE_FACTOR:g}x", apart, True, 1)
    # An unsteady, client-bound or pair-limited point's bins do not speak for it: the factor
    # rule, which a phase of the host cannot meet, applies instead.
    flagged = f", {and_list(doubts)}" if doubts else ""
    basis = f"{repeats}{flagged}: stated only beyond a factor of {SINGLE_REPEAT_FACTOR:g}"
    return Contrast(ratio, None, None, basis, factor >= SINGLE_REPEAT_FACTOR, True, n)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[counted(df)] if not df.empty else df


def _point(df: pd.DataFrame, model: str, **where: Any) -> pd.DataFrame:
    rows = df[df["model"] == model]
    for column, value in where.items():
        rows = rows[pd.to_numeric(rows[column], errors="coerce").fillna(0) == value]
    return rows


def _present(df: pd.DataFrame, models: Sequence[str]) -> list[str]:
    have = set(df["model"])
    return [m for m in models if m in have]


def _bytes(value: float) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:,.1f} {unit}" if abs(value) < 10 * size else f"{value / size:,.0f} {unit}"
    return f"{value:,.0f} B"


def _short(reason: object) -> str:
    """A failure's reason up to its first colon or semicolon: what failed, not the detail."""
    return str(reason).split(";")[0].split(":")[0]


def select_wall(df: pd.DataFrame) -> list[str]:
    """Lesson 1: where select failed at descriptor 1024, with the largest count it served."""
    rows = df[df["model"] == "select"]
    if rows.empty:
        return []
    failed = rows[
        (rows["status"] == "failed") & rows["reason"].astype("string").fillna("").str.contains("1024|FD_SETSIZE")
    ]
    served = _ok(rows)
    if failed.empty:
        if served.empty:
            return []
        top = int((served["connections"] + served["idle"]).max())
        return [
            f"select never reached its wall in this run (at most {top:,} descriptors watched); with "
            "--connections 2000 it fails at descriptor 1024 (FD_SETSIZE, select(2))."
        ]
    first = failed.assign(held=failed["connections"] + failed["idle"]).sort_values("held").iloc[0]
    text = (
        f"select cannot watch a descriptor numbered 1024 or more (FD_SETSIZE, select(2)): it failed holding "
        f"{int(first['held']):,} connections ({_short(first['reason'])})"
    )
    below = served[(served["workload"] == "closed") & (served["connections"] < first["held"])]
    if not below.empty:
        best = below.sort_values("connections").iloc[-1]
        text += f", where it had served {int(best['connections']):,} at {figure(best['rps'])} req/s"
    others = _ok(df[(df["model"].isin(["poll", "epoll", "io_uring"]))])
    beyond = others[others["connections"] + others["idle"] >= first["held"]]
    if not beyond.empty:
        text += f"; {and_list(sorted(set(beyond['model'])))}, with no such limit, served as many"
    return [text + "."]


def idle_cost(df: pd.DataFrame, timelines: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Lesson 2: each model's req/s and CPU per request with idle connections beside the
    active ones, against the same active count with none."""
    idle = df[(df["workload"] == "idle") & (pd.to_numeric(df["idle"], errors="coerce").fillna(0) > 0)]
    ready = _present(df, [*SCANNING, *READY_ONLY])
    if idle.empty:
        closed = df[df["workload"] == "closed"]
        if not _present(closed, SCANNING) or not _present(closed, ("epoll", "io_uring")):
            return []
        return [
            "The cost of idle connections (select and poll scan every watched descriptor on each call, epoll and "
            "io_uring report only the ready ones) was not measured in this run: run `bench run --models "
            "select,poll,epoll,io_uring --connections 10 --idle 0,1000`."
        ]
    sentences: list[str] = []
    scanners_slowed: list[bool] = []
    for (active, n_idle), level in idle.groupby(["connections", "idle"]):
        parts = []
        for model in ready:
            point = level[level["model"] == model]
            if point.empty:
                continue
            with_idle = _ok(point)
            if with_idle.empty:
                parts.append(f"{model} failed ({_short(point['reason'].iloc[0])})")
                continue
            base = _ok(_point(df[df["workload"] == "closed"], model, connections=active, idle=0))
            found = contrast(with_idle, base, "rps", timelines) if not base.empty else None
            if found is None:
                continue
            cpu = ""
            before, after = base["cpu_us_per_req"].median(), with_idle["cpu_us_per_req"].median()
            if pd.notna(before) and pd.notna(after):
                cpu = f", CPU per request {figure(before)} → {figure(after)} µs"
            slowed = found.clear and found.ratio < 1
            if model in SCANNING:
                scanners_slowed.append(slowed)
            if slowed:
                verdict = f"kept {found.ratio:.0%} of its req/s"
            elif found.compared and not found.clear:
                verdict = f"was not clearly slowed, at {found.ratio:.0%}"
            else:
                verdict = f"measured {found.ratio:.0%} of its req/s"
            parts.append(
                f"{model} {verdict} ({figure(with_idle['rps'].median())} against {figure(base['rps'].median())}; "
                f"{found.interval()}{cpu})"
            )
        if parts:
            sentences.append(
                f"with {int(n_idle):,} idle connections beside {int(active):,} active ones, " + "; ".join(parts)
            )
    if not sentences:
        return []
    # The lesson is stated as such only when every scanning model measured was clearly slowed.
    lead = "Idle connections cost the models that scan: " if scanners_slowed and all(scanners_slowed) else ""
    return [
        (lead or "Idle connections beside active ones: ")
        + ". And ".join(sentences)
        + ". select and poll copy and scan every watched descriptor on each call (select(2), poll(2)); epoll and "
        "io_uring hand back only the ready ones (epoll(7), io_uring(7))."
    ]


def _largest_level(df: pd.DataFrame, models: Sequence[str], column: str) -> int | None:
    ok = _ok(df[(df["workload"] == "closed") & df["model"].isin(models)])
    ok = ok[pd.to_numeric(ok[column], errors="coerce").notna()]
    levels = [level for level, rows in ok.groupby("connections") if set(models) <= set(rows["model"])]
    return int(max(levels)) if levels else None


def per_connection_cost(df: pd.DataFrame) -> list[str]:
    """Lesson 3: memory per connection and context switches per request of the blocking
    servers against an event-driven one, at the largest count where all were measured."""
    blocking = _present(df, BLOCKING)
    reference = next(iter(_present(df, EVENT_DRIVEN)), None)
    if not blocking or reference is None:
        return []
    sentences, claimed = [], False
    for column, what, show in (
        ("mem_per_conn_bytes", "memory per connection", _bytes),
        ("ctx_per_req", "context switches per request", lambda v: f"{v:.2f}" if v >= 0.01 else f"{v:.4f}"),
    ):
        have = [m for m in blocking if _largest_level(df, [m, reference], column) is not None]
        if not have:
            continue
        level = min(_largest_level(df, [m, reference], column) or 0 for m in have)
        closed = df[df["workload"] == "closed"]
        ref_rows = _ok(_point(closed, reference, connections=level, idle=0))
        parts = []
        for model in have:
            rows = _ok(_point(closed, model, connections=level, idle=0))
            found = contrast(rows, ref_rows, column)
            # Only a clear excess is the lesson; a figure the flags kept from comparison is shown.
            if found is None or not (found.clear and found.ratio > 1 or not found.compared):
                continue
            claimed |= found.clear
            value = show(rows[column].median())
            parts.append(f"{model} {value} ({found.ratio:,.0f}× {reference}'s; {found.interval()})")
        if parts:
            sentences.append(
                f"{what} at {level:,} connections: {and_list(parts)}, against {show(ref_rows[column].median())} "
                f"for {reference}"
            )
    if not sentences:
        return []
    lead = (
        "A thread or a process per connection costs the blocking servers: "
        if claimed
        else "What a thread or a process per connection costs could not be compared in this run: "
    )
    return [
        lead
        + "; ".join(sentences)
        + ". Each connection holds a stack (threads) or a whole process (fork), and each request wakes the thread "
        "or child blocked in recv(), where one epoll_wait() serves every ready connection."
    ]


def _cpus(rows: pd.DataFrame) -> float:
    """The server's CPU as % of one CPU: server_cpu_pct is a share of all its pinned CPUs."""
    pinned = rows["server_cpus"].astype("string").fillna("0").str.count(",") + 1 if "server_cpus" in rows else 1
    return float((pd.to_numeric(rows["server_cpu_pct"], errors="coerce") * pinned).median())


def busy_polling(df: pd.DataFrame) -> list[str]:
    """Lesson 4: the non-blocking server's CPU at a low offered rate (open loop), against the
    models that wait in the kernel; at the smallest closed-loop count when the run has none."""
    if "nonblocking" not in set(df["model"]):
        return []
    opened = _ok(df[(df["workload"] == "open") & pd.to_numeric(df["target_rate"], errors="coerce").notna()])
    where, rows = "", pd.DataFrame()
    if not opened.empty and "nonblocking" in set(opened["model"]):
        low = opened[opened["model"] == "nonblocking"].sort_values("target_rate").iloc[0]
        rows = opened[(opened["target_rate"] == low["target_rate"]) & (opened["connections"] == low["connections"])]
        offered, over = figure(low["target_rate"]), int(low["connections"])
        where = f"at {offered} req/s offered over {over:,} connections (open loop)"
    else:
        closed = _ok(df[df["workload"] == "closed"])
        if closed.empty or "nonblocking" not in set(closed["model"]):
            return []
        level = int(closed["connections"].min())
        rows = closed[closed["connections"] == level]
        noun = "connection" if level == 1 else "connections"
        where = f"at {level:,} {noun} (closed loop, where the server waits for the client)"
    mine = rows[rows["model"] == "nonblocking"]
    others = rows[rows["model"] != "nonblocking"]
    if mine.empty or others.empty or mine["server_cpu_pct"].isna().all():
        return []
    parts, claimed = [], False
    for model, theirs in others.groupby("model"):
        found = contrast(mine, theirs, "server_cpu_pct")
        burned = found is not None and found.clear and found.ratio > 1
        claimed |= burned
        if found is not None and (burned or not found.compared):
            parts.append(f"{model} used {_cpus(theirs):.1f}% ({found.interval()})")
    if not parts:
        return []
    cpu = _cpus(mine)
    per_req = mine["cpu_us_per_req"].median()
    text = (
        ("Busy polling burns a CPU: " if claimed else "Busy polling (not compared in this run): ")
        + f"{where}, nonblocking's server used {cpu:.0f}% of a CPU"
        + (f" ({figure(per_req)} µs per request)" if pd.notna(per_req) else "")
        + f", where {and_list(parts)}: without a multiplexer it calls recv() on every socket in a loop "
        "and gets EAGAIN, whether or not data came, instead of sleeping in the kernel until some did"
    )
    if not where.endswith("(open loop)"):
        text += (
            "; at a low offered rate the contrast is starker (`bench run --models nonblocking,epoll --workload open "
            "--rate 1000 --connections 10`)"
        )
    return [text + "."]


def syscalls_per_request(df: pd.DataFrame, profile: list[dict[str, Any]] | None, origin: str) -> list[str]:
    """Lesson 5: the system calls one request takes in the signal-driven and asynchronous
    models against epoll, from a syscall profile of this host (rows as
    bench.tracing.syscall_profile.read_syscalls returns them, `origin` naming the run); how to get one
    when there is none."""
    wanted = _present(df, ASYNC_MODELS)
    if not wanted:
        return []
    if not profile:
        return [
            f"What {and_list(wanted)} do per request (which system calls, and in which the process waits) needs a "
            f"syscall profile of this host: run `{PROFILE_HINT}` and render this report again (`bench report`)."
        ]
    from bench.tracing.syscall_profile import format_top_syscalls

    parts = []
    for model in [*wanted, "epoll"]:
        mine = [r for r in profile if r["model"] == model]
        if not mine:
            continue
        total = sum(r["calls_per_req"] for r in mine)
        parts.append(f"{model} {total:.2f} in all ({format_top_syscalls(profile, model, 3)})")
    if not parts:
        return [f"The syscall profile ({origin}) has none of {and_list(wanted)}: run `{PROFILE_HINT}`."]
    return [
        f"System calls per request (strace -c, {origin}): {'; '.join(parts)}. sigio waits for a queued real-time "
        "signal (rt_sigtimedwait) that says which descriptor is ready; io_uring submits receives and sends and "
        "reaps their completions in io_uring_enter() calls, so one call can serve many requests."
    ]


def lesson_findings(
    df: pd.DataFrame,
    timelines: dict[str, dict[str, Any]] | None = None,
    profile: list[dict[str, Any]] | None = None,
    profile_origin: str = "",
) -> list[str]:
    """The five lessons, each as a sentence with its numbers, in order; a lesson the run has no
    points for is left out, or says how to measure it (df: the run's final attempts)."""
    if df.empty or "model" not in df.columns:
        return []
    # A run written before a column existed has it empty, as bench.reporting.report.load_points does.
    df = df.reindex(columns=list(dict.fromkeys([*POINT_COLUMNS, *df.columns])))
    df = df.assign(idle=pd.to_numeric(df["idle"], errors="coerce").fillna(0).astype(int)).copy()
    return [
        *select_wall(df),
        *idle_cost(df, timelines),
        *per_connection_cost(df),
        *busy_polling(df),
        *syscalls_per_request(df, profile, profile_origin),
    ]


# The costs stated across every model: (column, what it is, how a value is written).
COSTS = (
    ("cpu_us_per_req", "server CPU per request", lambda v: f"{figure(v)} µs"),
    ("mem_per_conn_bytes", "server memory per connection", _bytes),
    ("ctx_per_req", "context switches per request", lambda v: f"{v:.2f}" if v >= 0.01 else f"{v:.4f}"),
)


def cost_findings(df: pd.DataFrame, level: int | None) -> list[str]:
    """Item 5 of the report's findings: each cost of COSTS across the models, least against
    most, stated as a difference only when `contrast` finds them apart: CPU per request and
    context switches per request at the headline `level`, memory per connection at the largest
    closed-loop count where two or more models have it (it is not measured below 100)."""
    if level is None:
        return []
    closed = _ok(df[(df["workload"] == "closed") & (pd.to_numeric(df["idle"], errors="coerce").fillna(0) == 0)])
    out = []
    for column, what, show in COSTS:
        if column not in closed.columns:
            continue
        at = level
        if column == "mem_per_conn_bytes":
            have = closed[pd.to_numeric(closed[column], errors="coerce") > 0]
            # The count where the most models have it (the largest of those): fork stops at its cap.
            levels = [(rows["model"].nunique(), c) for c, rows in have.groupby("connections")]
            if not levels or max(levels)[0] < 2:
                continue
            at = int(max(levels)[1])
        if sentence := _cost_range(closed[closed["connections"] == at], column, what, show, at):
            out.append(sentence)
    return out


def _cost_range(rows: pd.DataFrame, column: str, what: str, show: Callable[[float], str], level: int) -> str | None:
    values = pd.to_numeric(rows[column], errors="coerce")
    by_model = values[values > 0].groupby(rows["model"]).median().sort_values()
    if len(by_model) < 2:
        return None
    least, most = by_model.index[0], by_model.index[-1]
    found = contrast(rows[rows["model"] == most], rows[rows["model"] == least], column)
    if found is None:
        return None
    listing = ", ".join(f"{m} {show(v)}" for m, v in by_model.items())
    low, high = show(by_model.iloc[0]), show(by_model.iloc[-1])
    if not found.compared:
        return (
            f"At {level:,} connections the {what} ranged from {low} ({least}) to {high} ({most}); "
            f"{found.interval()}: {listing}."
        )
    if not found.clear:
        return (
            f"At {level:,} connections the {what} ranged only from {low} to {high} ({found.interval()}): no model is "
            f"clearly cheaper ({listing})."
        )
    times = f"{found.ratio:,.0f}×" if found.ratio >= 10 else f"{found.ratio:.1f}×"
    return (
        f"At {level:,} connections {least} had the least {what}, {low}, and {most} the most, {high} "
        f"({times}; {found.interval()}): {listing}."
    )
