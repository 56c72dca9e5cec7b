"""The report's views of time and cost inside a point: a sparkline of each point's completions
per 100 ms, the headline point's throughput over time for every model (small multiples by I/O
model category, as bench.reporting.report_plots draws them), and where a request's server cost went
(user, sys, softirq on the server's CPUs).

A timeline is what the load workers counted per bin (loadgen.timeline), stored with the point
in histograms.jsonl: {"start": s, "step_s": 0.1, "completed": [...], "errors": [...],
"window": [from_s, to_s]}, the window given in seconds from `start`.
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from bench.reporting.report_plots import (
    CONTEXT_GREY,
    compact,
    finish_panels,
    model_styles,
    panel_header,
    panel_of,
    panels_of,
    plt,
    small_multiples,
    to_svg,
)
from bench.storing.columns import STATUS_OK
from loadgen.timeline import window_bins

SPARK_W, SPARK_H = 120, 22
WINDOW_GREY = "#888888"
# The level a run's headline plots show, when the run measured it; else the middle level.
HEADLINE_CONNECTIONS = 100


def rates(timeline: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Bin start times (s from the first send) and completion rates (req/s), as two arrays of
    the timeline's length. The last bin ends at the window's end, so it may be shorter than a
    step: its rate is over its own length, not read as a drop."""
    step = float(timeline.get("step_s") or 0.1)
    completed = np.asarray(timeline.get("completed") or [], dtype=float)
    starts = np.arange(completed.size) * step
    lengths = np.full(completed.size, step)
    if (window := window_of(timeline)) is not None and completed.size:
        lengths[-1] = min(step, max(window[1] - starts[-1], step / 100))
    return starts, completed / lengths


def window_of(timeline: dict[str, Any]) -> tuple[float, float] | None:
    window = timeline.get("window")
    return (float(window[0]), float(window[1])) if window and len(window) == 2 else None


def sparkline(timeline: dict[str, Any], unsteady: bool = False) -> str:
    """An inline SVG of completions per 100 ms across warm-up and window (the window on a grey
    band), from zero to the point's highest bin, with the range in its tooltip; '' when empty."""
    t, r = rates(timeline)
    if t.size < 2 or r.max() <= 0:
        return ""
    step = float(timeline.get("step_s") or 0.1)
    span = t[-1] + step
    xs = (t + step / 2) / span * SPARK_W
    ys = SPARK_H - 1 - r / r.max() * (SPARK_H - 2)
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    band = ""
    if (window := window_of(timeline)) is not None:
        x0, x1 = (max(w, 0.0) / span * SPARK_W for w in window)
        band = f'<rect x="{x0:.1f}" y="0" width="{max(x1 - x0, 0):.1f}" height="{SPARK_H}" fill="#e8e8e8"/>'
    inside = r[list(window_bins(timeline))] if window else r
    low, high = (inside.min(), inside.max()) if inside.size else (r.min(), r.max())
    title = f"req/s per {step * 1e3:.0f} ms: {low:,.0f} to {high:,.0f} in the window (grey); warm-up before it"
    color = "#b03a2e" if unsteady else "#1f5fa8"
    return (
        f'<svg class="spark" width="{SPARK_W}" height="{SPARK_H}" viewBox="0 0 {SPARK_W} {SPARK_H}" role="img">'
        f"<title>{escape(title)}</title>{band}"
        f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.2"/></svg>'
    )


def closed_ok(df: pd.DataFrame, level: int | None = None) -> pd.DataFrame:
    """The ok closed-loop rows, at `level` connections when given."""
    rows = df[(df["workload"] == "closed") & (df["status"] == STATUS_OK)]
    return rows if level is None else rows[rows["connections"] == level]


def headline_level(df: pd.DataFrame) -> int | None:
    """The closed-loop connection count the headline plots show: 100 when measured, else the
    middle of the levels measured; None without an ok closed-loop point."""
    closed = closed_ok(df)
    if closed.empty:
        return None
    levels = sorted(int(c) for c in closed["connections"].unique())
    return HEADLINE_CONNECTIONS if HEADLINE_CONNECTIONS in levels else levels[len(levels) // 2]


def timeline_rows(df: pd.DataFrame, timelines: dict[str, dict[str, Any]], level: int) -> pd.DataFrame:
    """The rows timeline_plot draws: at the headline level, the first repeat of each model that
    has a timeline."""
    rows = closed_ok(df, level)
    return rows[rows["point_id"].isin(timelines)].sort_values("repeat").drop_duplicates("model")


def timeline_plot(df: pd.DataFrame, timelines: dict[str, dict[str, Any]], level: int) -> str:
    """Throughput per 100 ms against time at the headline level (timeline_rows), as small
    multiples: a panel per I/O model category, its models in colour over every other model in
    light grey, the measured window shaded; '' without data."""
    rows = timeline_rows(df, timelines, level)
    if rows.empty:
        return ""
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shaded: tuple[float, float] | None = None
    top = 0.0
    for _, row in rows.iterrows():
        timeline = timelines[row["point_id"]]
        t, r = rates(timeline)
        window = window_of(timeline)
        offset = window[0] if window else 0.0
        # steps-post draws each bin from its start: one more vertex closes the last bin.
        end = window[1] if window else (t[-1] + float(timeline.get("step_s") or 0.1) if t.size else 0.0)
        curves[str(row["model"])] = (np.append(t, end) - offset, np.append(r, r[-1] if r.size else 0.0))
        top = max(top, float(r.max()) if r.size else 0.0)
        shaded = shaded or ((0.0, window[1] - window[0]) if window else None)
    names = panels_of(rows)
    fig, axes = small_multiples(len(names))
    styles = model_styles(list(curves))
    for ax, name in zip(axes, names, strict=False):
        for model, (xs, ys) in curves.items():
            if panel_of(model) == name:
                ax.plot(xs, ys, color=styles[model][0], label=model, linewidth=1.3, drawstyle="steps-post", zorder=3)
            else:
                ax.plot(xs, ys, color=CONTEXT_GREY, linewidth=0.8, drawstyle="steps-post", zorder=1)
        if shaded:
            ax.axvspan(*shaded, color=WINDOW_GREY, alpha=0.12, lw=0)
        ax.grid(True, alpha=0.3)
        panel_header(ax, name)
    # From zero, with headroom above the highest bin so that a flat line is not drawn on the frame.
    axes[0].set_ylim(0, max(top, 1.0) * 1.12)
    axes[0].yaxis.set_major_formatter(FuncFormatter(compact))
    # A third of a page per panel: five ticks of time keep their labels apart.
    axes[0].xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    marks = ([Patch(color=WINDOW_GREY, alpha=0.12, lw=0)], ["measured window"]) if shaded else ([], [])
    return finish_panels(
        fig, axes, len(names),
        f"Throughput over time at {level:,} connections (closed loop, repeat {int(rows['repeat'].min())})",
        "seconds from the window's start (warm-up before 0)", "requests per second (per 100 ms)", marks,
    )  # fmt: skip


COST_PARTS = (
    ("server_cpus_user_us_per_req", "user", "#1f5fa8"),
    ("server_cpus_sys_us_per_req", "sys (incl. irq)", "#e08a1e"),
    ("server_cpus_softirq_us_per_req", "softirq", "#b03a2e"),
)


def cost_plot(df: pd.DataFrame, level: int) -> str:
    """Where a request's server cost went at the headline level: the server CPUs' busy time per
    request (median over repeats) split into user, sys and softirq, as stacked bars per model,
    with the server's processes' own figure (cpu_us_per_req) as a tick; '' without data."""
    rows = closed_ok(df, level)
    if rows.empty or rows["server_cpus_us_per_req"].isna().all():
        return ""
    med = rows.groupby("model", sort=False)[[c for c, _, _ in COST_PARTS] + ["cpu_us_per_req"]].median()
    med = med.dropna(subset=["server_cpus_user_us_per_req"]).sort_values("server_cpus_user_us_per_req")
    fig, ax = plt.subplots(figsize=(7.4, max(2.4, 1.2 + 0.32 * len(med))), dpi=100)
    y = np.arange(len(med))
    left = np.zeros(len(med))
    for column, label, color in COST_PARTS:
        values = med[column].fillna(0).to_numpy()
        ax.barh(y, values, left=left, color=color, label=label, height=0.6)
        left += values
    ax.plot(med["cpu_us_per_req"], y, linestyle="none", marker="|", markersize=14, mew=2, color="black",
            label="of which the server processes")  # fmt: skip
    ax.set_yticks(y, med.index)
    ax.set_xlabel("µs of the server's CPUs per request (closed loop)")
    ax.set_title(f"Server cost per request at {level:,} connections")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    fig.tight_layout()
    return to_svg(fig)
