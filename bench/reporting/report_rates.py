"""The report's rate-sweep plots: efficiency at equal load.

An open-loop run over several offered rates (`bench run --workload open --rate 5000,20000,...`,
or a `--find-max` search, whose probes are open-loop points too) is drawn against the offered
rate, one panel per model (small multiples on shared axes), one series per connection count:

- (a) the achieved rate (`achieved_rate`, else `rps`) beside the line achieved = offered, with
  the knee marked, and a `--find-max` answer (`max_rate`) as a vertical line;
- (b) latency: p50 and p99 from the intended send time (`p50_us`, `p99_us`: coordinated
  omission corrected, as wrk2) and the p99 of the service time from the actual send
  (`p99_uncorrected_us`) as a thin dashed line, on a log scale;
- (c) the server's CPU: its processes' (`server_cpu_pct`, psutil's CPU times of the server's
  process tree over the window, bench.measuring.sampler) and its pinned CPUs' busy time, everything that
  ran on them (the kernel's softirq included), derived from `server_cpus_us_per_req` (idle
  from /proc/timer_list or /proc/stat, bench.measuring.interference.cpu_split) × the achieved
  req/s. Both are % of the server's pinned CPUs taken together (100% = all of them busy); on
  one server CPU, % of one CPU.

The knee: walking up the offered rates, the last one the server kept up with
(bench.planning.find_max.keeps_up: achieved >= (1 - RATE_TOLERANCE) x offered, the same test
`--find-max` applies to its probes) before the first it fell behind at. When it kept up with
every rate the knee was not reached (it lies above the rates measured); when it fell behind
at the lowest, every rate was beyond it. Medians over repeats (and over a search's repeated
probes) of ok points; failed and skipped points are red crosses at the foot of their panel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axis import Axis
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import blended_transform_factory

from bench.planning.find_max import RATE_TOLERANCE, keeps_up
from bench.reporting.report_plots import (
    FLAG_LABELS,
    FLAG_STYLES,
    FOOT,
    compact,
    flagged,
    foot_band,
    model_styles,
    plt,
    to_svg,
)
from bench.storing.columns import STATUS_OK
from bench.wording import figure

OPEN, FIND_MAX = "open", "find-max"
# Panels per row: at 1366 px the report's full width holds four readable panels.
PANEL_COLUMNS = 4
# Inches at 100 dpi: the report's width, a row of panels, and the title and legend above them.
FIG_WIDTH_IN, PANEL_HEIGHT_IN, HEADER_IN = 11.8, 2.4, 0.9
# Under this many distinct offered rates each is a tick of its own, labelled; more would crowd.
MAX_RATE_TICKS = 6
# ... and no two closer than this share of the axis, or their labels run into each other.
MIN_TICK_GAP = 0.12
# Offered rates spanning this factor or more are drawn on a log scale.
LOG_SPAN = 10.0
KNEE_COLOR, FIND_MAX_COLOR = "black", "forestgreen"
# (column of the curve, label, line style, line width): plot (b)'s and (c)'s lines per series.
LATENCY_LINES = (
    ("p99_us", "p99 (from the intended send)", "-", 1.8),
    ("p50_us", "p50 (from the intended send)", ":", 1.6),
    ("p99_uncorrected_us", "p99 service time (uncorrected)", "--", 0.8),
)
CPU_LINES = (
    ("server_cpu_pct", "server processes", "-", 1.8),
    ("server_cpus_pct", "server CPUs busy (softirq included)", "--", 1.2),
)


@dataclass(frozen=True)
class Knee:
    """Where one model, at one connection count, stopped keeping up with the offered rate
    (req/s): `rate` is the knee (None: it fell behind at the lowest rate), `beyond` the first
    offered rate it fell behind at (None: it kept up with every rate, `rate` is the highest)
    and `achieved_beyond` what it achieved there."""

    model: str
    connections: int
    rate: float | None
    beyond: float | None
    achieved_beyond: float | None
    p99_us: float | None  # at the knee

    @property
    def reached(self) -> bool:
        return self.rate is not None and self.beyond is not None

    def sentence(self) -> str:
        """The knee as a finding, in words, with the rates in req/s."""
        where = f"{self.model} at {self.connections:,} connection{'s' if self.connections != 1 else ''}"
        kept = f"within {RATE_TOLERANCE:.0%}"
        if self.rate is None:
            got = "failed" if self.achieved_beyond is None else f"{figure(self.achieved_beyond)} achieved"
            return (
                f"{where} fell behind at every offered rate, from the lowest ({figure(self.beyond or 0)} req/s "
                f"offered, {got}): its knee lies below the rates measured."
            )
        tail = f" (p99 {_duration(self.p99_us)})" if self.p99_us is not None else ""
        if self.beyond is None:
            return (
                f"{where} kept up ({kept}) with every offered rate, up to {figure(self.rate)} req/s{tail}: "
                "no knee was reached, it lies above the rates measured."
            )
        if self.achieved_beyond is None:
            return (
                f"{where} kept up ({kept}) with the offered rate up to its knee at {figure(self.rate)} req/s{tail}; "
                f"offered {figure(self.beyond)} req/s, the point failed (the table says why)."
            )
        share = self.achieved_beyond / self.beyond
        return (
            f"{where} kept up ({kept}) with the offered rate up to its knee at {figure(self.rate)} req/s{tail}; "
            f"offered {figure(self.beyond)} req/s, it achieved {figure(self.achieved_beyond or 0)} ({share:.0%})."
        )


def open_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The open-loop points that have an offered rate (a rate sweep's and a search's probes)."""
    if df.empty or "workload" not in df.columns or "target_rate" not in df.columns:
        return df.iloc[0:0]
    return df[(df["workload"] == OPEN) & df["target_rate"].notna()]


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    if name in rows.columns:
        return pd.to_numeric(rows[name], errors="coerce")
    return pd.Series(np.nan, index=rows.index)


def rate_curve(rows: pd.DataFrame) -> pd.DataFrame:
    """Per offered rate (the index, req/s, ascending), the medians over the ok points of `rows`
    of: achieved req/s, p50/p99/uncorrected p99 latency (µs), and the server's CPU as % of its
    pinned CPUs: its processes' (`server_cpu_pct`) and the CPUs' busy time (`server_cpus_pct`,
    from server_cpus_us_per_req µs/req × achieved req/s / 1e4 / the number of server CPUs)."""
    ok = rows[rows["status"] == STATUS_OK]
    achieved = _column(ok, "achieved_rate").fillna(_column(ok, "rps"))
    # server_cpus is "0" or "0,1": the pinned CPUs the busy time was summed over.
    cpus = ok["server_cpus"].astype(str).str.count(",") + 1 if "server_cpus" in ok.columns else 1
    curve = pd.DataFrame(
        {
            "offered": _column(ok, "target_rate"),
            "achieved": achieved,
            "p50_us": _column(ok, "p50_us"),
            "p99_us": _column(ok, "p99_us"),
            "p99_uncorrected_us": _column(ok, "p99_uncorrected_us"),
            "server_cpu_pct": _column(ok, "server_cpu_pct"),
            "server_cpus_pct": _column(ok, "server_cpus_us_per_req") * achieved / 1e4 / cpus,
        }
    )
    curve = curve.dropna(subset=["offered", "achieved"]).groupby("offered").median()
    # A rate whose every point failed is a miss, not a gap: it stays in the curve, achieved NaN.
    failed = set(_column(rows, "target_rate").dropna()) - set(curve.index)
    return curve.reindex(sorted(set(curve.index) | failed))


def _number(value: object) -> float | None:
    return float(value) if pd.notna(value) else None


def find_knee(model: str, connections: int, curve: pd.DataFrame) -> Knee | None:
    """The knee of one rate curve (see the module's docstring); None for an empty curve."""
    if curve.empty:
        return None
    offered = [float(r) for r in curve.index]
    kept = [pd.notna(a) and keeps_up(float(a), o) for o, a in zip(offered, curve["achieved"], strict=True)]
    first_miss = kept.index(False) if False in kept else None
    knee_at = len(kept) - 1 if first_miss is None else first_miss - 1
    p99 = curve["p99_us"].iloc[knee_at] if knee_at >= 0 else None
    return Knee(
        model=model,
        connections=connections,
        rate=offered[knee_at] if knee_at >= 0 else None,
        beyond=offered[first_miss] if first_miss is not None else None,
        achieved_beyond=_number(curve["achieved"].iloc[first_miss]) if first_miss is not None else None,
        p99_us=float(p99) if p99 is not None and pd.notna(p99) else None,
    )


def knees(df: pd.DataFrame) -> list[Knee]:
    """The knee of every (model, connection count) with an ok open-loop point, models in the
    run's order, connection counts ascending."""
    out = []
    for (model, connections), rows in _series(open_rows(df)):
        if (knee := find_knee(model, connections, rate_curve(rows))) is not None:
            out.append(knee)
    return out


def rate_findings(df: pd.DataFrame) -> list[str]:
    """One sentence per model and connection count on where its knee is, for a run with open-loop
    points at two or more offered rates (a rate sweep, or a --find-max search)."""
    return [knee.sentence() for knee in knees(df)] if _swept(df) else []


def _swept(df: pd.DataFrame) -> bool:
    """Whether the run measured the open loop at two or more offered rates."""
    rows = open_rows(df)
    return not rows.empty and rows["target_rate"].nunique() > 1


def _series(rows: pd.DataFrame) -> list[tuple[tuple[str, int], pd.DataFrame]]:
    """(model, connections) groups of rows, models in order of appearance, connections ascending."""
    models = list(dict.fromkeys(rows["model"]))
    return sorted(
        (((str(m), int(c)), g) for (m, c), g in rows.groupby(["model", "connections"], sort=False)),
        key=lambda item: (models.index(item[0][0]), item[0][1]),
    )


def rate_plots(df: pd.DataFrame) -> list[dict[str, object]]:
    """The three rate plots as the report's plot entries (id, title, svg, panels), or none when the
    run has no open-loop point at two or more offered rates."""
    if not _swept(df):
        return []
    rows = open_rows(df)
    # The answers of --find-max searches, with the columns they are read by even in a frame without them.
    answers = df[df["workload"] == FIND_MAX].reindex(columns=["model", "connections", "status", "max_rate", "slo"])
    models = list(dict.fromkeys(rows["model"]))
    objectives = {
        str(model): slo for model, text in answers[["model", "slo"]].dropna().values if (slo := _slo_us(str(text)))
    }
    # "panels": the template gives a figure of several panels the report's whole width.
    return [
        {"id": "plot-rate-achieved", "title": "Achieved against offered rate, knee marked (open loop)",
         "svg": _achieved_plot(rows, answers, models), "panels": len(models)},
        {"id": "plot-rate-latency", "title": "Latency against offered rate (open loop)",
         "svg": _lines_plot(rows, models, LATENCY_LINES, "Latency against offered rate", "latency", log_y=True,
                            objectives=objectives),
         "panels": len(models)},
        {"id": "plot-rate-cpu", "title": "Server CPU against offered rate: efficiency at equal load (open loop)",
         "svg": _lines_plot(rows, models, CPU_LINES, "Server CPU against offered rate", "% of the server's CPUs"),
         "panels": len(models)},
    ]  # fmt: skip


class _Panels:
    """One panel per model on shared axes, the series (connection counts) styled alike in all."""

    def __init__(self, rows: pd.DataFrame, models: list[str], title: str) -> None:
        self.rows = rows
        count = len(models)
        columns = min(count, PANEL_COLUMNS)
        lines = math.ceil(count / columns)
        # Several panels: the report's whole width, the legend across the top (constrained layout
        # makes room for it); one panel: half the width, the legend at its right, as other plots.
        self.single = count == 1
        size = (7.4, 3.9) if self.single else (FIG_WIDTH_IN, HEADER_IN + PANEL_HEIGHT_IN * lines)
        self.fig, grid = plt.subplots(
            lines, columns, figsize=size, dpi=100, sharex=True, sharey=True, squeeze=False,
            layout=None if self.single else "constrained",
        )  # fmt: skip
        flat = list(grid.flat)
        for spare in flat[count:]:
            spare.set_visible(False)
        self.axes = dict(zip(models, flat, strict=False))
        self.title = title
        self.connections = sorted(int(c) for c in rows["connections"].unique())
        # One connection count: each model in its own colour, as in every other figure; several:
        # a colour per connection count, the same in every panel.
        self.by_connections = model_styles([_series_name(c) for c in self.connections])
        offered = rows["target_rate"].astype(float)
        self.log_x = offered.max() / max(offered.min(), 1e-9) >= LOG_SPAN
        self.rates = sorted(offered.unique())
        for model, ax in self.axes.items():
            ax.set_title(model, fontsize=10, fontweight="bold")
            # An id per panel in the SVG, for whoever reads it (tests count panels by it).
            ax.set_gid(f"panel-{model}")
            ax.grid(True, which="major", alpha=0.3)

    def series(self, model: str) -> list[tuple[int, pd.DataFrame, pd.DataFrame, tuple[str, str]]]:
        """(connections, rows, rate curve, (colour, marker)) of each series in one model's panel."""
        mine = self.rows[self.rows["model"] == model]
        return [(int(c), g, rate_curve(g), self.style(model, int(c))) for c, g in mine.groupby("connections")]

    def style(self, model: str | None, connections: int) -> tuple[str, str]:
        """A series' (colour, marker); for the legend (model None) of a run at one connection
        count, a neutral grey that stands for every model's colour."""
        if len(self.connections) > 1:
            return self.by_connections[_series_name(connections)]
        return model_styles([model])[model] if model is not None else ("dimgrey", "o")

    def label(self, connections: int, text: str) -> str:
        return f"{text}, {_series_name(connections)}" if len(self.connections) > 1 else text

    def finish(
        self, ylabel: str, handles: list[Line2D], log_y: bool = False, y_format: Callable[[Axis], None] | None = None
    ) -> str:
        """Scales, ticks, the foot band, axis labels and the legend (`handles`, then the marks
        present); the figure as inline SVG. `y_format` sets the y ticks (after the scale, which
        would reset them)."""
        first = next(iter(self.axes.values()))
        if self.log_x:
            first.set_xscale("log")
        if log_y:
            first.set_yscale("log")
        _rate_ticks(first.xaxis, self.rates, self.log_x)
        for ax in self.axes.values():
            # Each shared axis autoscales with its own margins: the same for all, or the last one drawn wins.
            ax.margins(x=0.08, y=0.15)
        if not log_y:
            # Linear axes start at zero, so that small differences are not magnified.
            first.set_ylim(bottom=0)
        if y_format is not None:
            y_format(first.yaxis)
        if (self.rows["status"] != STATUS_OK).any():
            foot_band(first, list(self.axes.values()))
            handles.append(_handle("failed / skipped", marker="x", color="crimson", linestyle="none", mew=2))
        for flag, (marker, color) in FLAG_STYLES.items():
            if flagged(self.rows, flag).any():
                handles.append(
                    _handle(FLAG_LABELS[flag], marker=marker, markerfacecolor="none", color=color or "grey",
                            linestyle="none")
                )  # fmt: skip
        for ax in self.axes.values():
            if ax.get_subplotspec().is_last_row() or not _has_panel_below(ax, self.axes):
                ax.set_xlabel("offered rate (req/s)")
                ax.xaxis.set_tick_params(labelbottom=True)
            if ax.get_subplotspec().is_first_col():
                ax.set_ylabel(ylabel)
        title = f"{self.title} (open loop)"
        if self.single:
            self.fig.suptitle(title, x=0.01, ha="left", fontsize=11)
            first.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0, frameon=False)
            self.fig.tight_layout()
        else:
            # The title heads the legend: constrained layout does not stack a suptitle above an
            # outside legend, and the two overlapped.
            self.fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4), frameon=False,
                            title=title, title_fontsize=11)  # fmt: skip
        return to_svg(self.fig)

    def flags(self, ax: plt.Axes, rows: pd.DataFrame, curve: pd.DataFrame, column: str, color: object) -> None:
        """Rings (and the other caveat markers) around the points of `column` that carry a caveat."""
        for flag, (marker, flag_color) in FLAG_STYLES.items():
            rates = sorted(set(rows.loc[flagged(rows, flag), "target_rate"].astype(float)) & set(curve.index))
            values = curve.loc[rates, column].dropna() if rates else pd.Series(dtype=float)
            if not values.empty:
                ax.plot(values.index, values.values, linestyle="none", markersize=12, markerfacecolor="none",
                        markeredgecolor=flag_color or color, markeredgewidth=1.4, marker=marker)  # fmt: skip

    def failures(self, ax: plt.Axes, rows: pd.DataFrame) -> None:
        """Red crosses in the foot band at the offered rates where points of `rows` (one series)
        failed or were skipped; the series named at the first of them when the panel has several."""
        rates = sorted(rows.loc[rows["status"] != STATUS_OK, "target_rate"].astype(float).unique())
        if not rates:
            return
        foot = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(rates, [FOOT / 2] * len(rates), marker="x", color="crimson", markersize=8, mew=2, linestyle="none",
                transform=foot, clip_on=False)  # fmt: skip
        if len(self.connections) > 1:
            ax.annotate(_series_name(int(rows["connections"].iloc[0])), (rates[0], FOOT / 2), xycoords=foot,
                        xytext=(6, -3), textcoords="offset points", fontsize=8, color="crimson")  # fmt: skip


def _achieved_plot(rows: pd.DataFrame, answers: pd.DataFrame, models: list[str]) -> str:
    panels = _Panels(rows, models, "Achieved against offered rate")
    low, high = min(panels.rates), max(panels.rates)
    handles = []
    for model, ax in panels.axes.items():
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, zorder=1)
        for slot, (connections, group, curve, (color, marker)) in enumerate(panels.series(model)):
            panels.failures(ax, group)
            if curve.empty:
                continue
            ax.plot(curve.index, curve["achieved"], color=color, marker=marker, markersize=5, linewidth=1.8)
            panels.flags(ax, group, curve, "achieved", color)
            knee = find_knee(model, connections, curve)
            if knee is not None:
                named = f" ({_series_name(connections)})" if len(panels.connections) > 1 else ""
                _mark_knee(ax, knee, curve, color, slot, named)
        middle = math.sqrt(low * high) if panels.log_x else (low + high) / 2
        _mark_answers(ax, answers[answers["model"] == model], len(panels.connections) > 1, middle)
    for connections in panels.connections:
        color, marker = panels.style(None, connections)
        handles.append(_handle(panels.label(connections, "achieved"), color=color, marker=marker, linewidth=1.8))
    handles.append(_handle("achieved = offered", color="grey", linestyle="--", linewidth=1))
    handles.append(
        _handle(f"knee: highest rate kept up\nwith (within {RATE_TOLERANCE:.0%})", color=KNEE_COLOR, marker="v",
                linestyle="none", markersize=8)
    )  # fmt: skip
    if not answers.empty:
        handles.append(_handle("find-max answer", color=FIND_MAX_COLOR, linestyle="-.", linewidth=1.5))
    return panels.finish("achieved rate (req/s)", handles, log_y=panels.log_x, y_format=_rate_format)


def _lines_plot(
    rows: pd.DataFrame,
    models: list[str],
    lines: tuple[tuple[str, str, str, float], ...],
    title: str,
    ylabel: str,
    log_y: bool = False,
    objectives: dict[str, float] | None = None,
) -> str:
    """Plot (b) or (c): a line per (column of `lines`, connection count) in each model's panel,
    the knee as a faint vertical band in the series' colour, and a --find-max search's
    objective (`objectives`: model -> p99 µs) as a horizontal line in its model's panel."""
    panels = _Panels(rows, models, title)
    handles = []
    objectives = objectives or {}
    for model, ax in panels.axes.items():
        if model in objectives:
            ax.axhline(objectives[model], color=FIND_MAX_COLOR, linestyle="-.", linewidth=1.2, zorder=2)
        for connections, group, curve, (color, marker) in panels.series(model):
            panels.failures(ax, group)
            for column, _label, style, width in lines:
                values = curve[column].dropna()
                if log_y:
                    values = values[values > 0]
                if not values.empty:
                    ax.plot(values.index, values.values, color=color, linestyle=style, linewidth=width,
                            marker=marker if column == lines[0][0] else None, markersize=5)  # fmt: skip
            panels.flags(ax, group, curve, lines[0][0], color)
            knee = find_knee(model, connections, curve)
            if knee is not None and knee.reached:
                _knee_line(ax, knee, color)
    for connections in panels.connections:
        color, marker = panels.style(None, connections)
        for column, label, style, width in lines:
            handles.append(
                _handle(panels.label(connections, label), color=color, linestyle=style, linewidth=width,
                        marker=marker if column == lines[0][0] else None)
            )  # fmt: skip
    handles.append(_handle("knee (see the first plot)", color="grey", linestyle="-", linewidth=4, alpha=0.3))
    if objectives:
        handles.append(_handle("find-max objective", color=FIND_MAX_COLOR, linestyle="-.", linewidth=1.2))
    return panels.finish(ylabel, handles, log_y=log_y, y_format=_duration_format if log_y else None)


def _mark_knee(ax: plt.Axes, knee: Knee, curve: pd.DataFrame, color: object, slot: int, named: str) -> None:
    """A black triangle over the knee and its rate, or, when no knee lies among the rates, the
    words saying on which side of them it is; `slot`, the series' place in its panel, stacks
    the words of several series (`named`: which one, when there are several) apart."""
    if knee.reached and knee.rate is not None:
        achieved = float(curve.loc[knee.rate, "achieved"])
        (mark,) = ax.plot([knee.rate], [achieved], marker="v", color=KNEE_COLOR, markersize=9, linestyle="none",
                          zorder=5)  # fmt: skip
        mark.set_gid(f"knee-{knee.model}-{knee.connections}")
        # Up and to the left: the curve comes from below left and leaves below right (falling
        # behind), and achieved = offered goes on above right; at the lowest rate, up and to the
        # right, or the label would leave the panel.
        first = knee.rate <= float(curve.index[0])
        ax.annotate(f"knee {compact(knee.rate)}", (knee.rate, achieved), xytext=(5 if first else -5, 5 + 11 * slot),
                    textcoords="offset points", ha="left" if first else "right", va="bottom", fontsize=8,
                    color=color, fontweight="bold")  # fmt: skip
        _knee_line(ax, knee, color)
        return
    if knee.rate is None:
        text = f"no knee{named}: behind from {compact(knee.beyond or 0)}"
    else:
        text = f"no knee{named}: kept up to {compact(knee.rate)}"
    note = ax.text(0.03, 0.95 - 0.08 * slot, text, transform=ax.transAxes, ha="left", va="top", fontsize=8,
                   color=color)  # fmt: skip
    note.set_gid(f"knee-{knee.model}-{knee.connections}")


def _knee_line(ax: plt.Axes, knee: Knee, color: object) -> None:
    # Broad and faint: it must not be read as one of the dotted or dashed lines of data.
    ax.axvline(knee.rate, color=color, linestyle="-", linewidth=4, alpha=0.18, zorder=1)


def _mark_answers(ax: plt.Axes, answers: pd.DataFrame, name_connections: bool, middle: float) -> None:
    """A --find-max answer as a vertical line labelled with its rate and objective (the median
    over repeats per connection count), the label on the side of the line towards the
    middle of the offered rates (`middle`, req/s); a search that found no rate, as words."""
    for connections, rows in answers.groupby("connections"):
        ok = rows[(rows["status"] == STATUS_OK) & rows["max_rate"].notna()]
        slo = _slo_words(str(rows["slo"].dropna().iloc[0])) if rows["slo"].notna().any() else "the SLO"
        where = f" ({_series_name(int(connections))})" if name_connections else ""
        if ok.empty:
            ax.text(0.03, 0.80, f"find-max{where}: no rate met {slo}", transform=ax.transAxes, fontsize=8,
                    color=FIND_MAX_COLOR, va="top")  # fmt: skip
            continue
        rate = float(ok["max_rate"].astype(float).median())
        line = ax.axvline(rate, color=FIND_MAX_COLOR, linestyle="-.", linewidth=1.5, zorder=2)
        line.set_gid(f"find-max-{rows['model'].iloc[0]}-{int(connections)}")
        # From the foot up: near the answer's rate the data lie high (achieved close to offered).
        ax.annotate(f"find-max{where}: {figure(rate)} req/s\nat {slo}", (rate, FOOT + 0.02),
                    xycoords=("data", "axes fraction"), xytext=(4, 0) if rate < middle else (-4, 0),
                    textcoords="offset points", rotation=90, ha="left" if rate < middle else "right", va="bottom",
                    fontsize=8, color=FIND_MAX_COLOR)  # fmt: skip


def _has_panel_below(ax: plt.Axes, axes: dict[str, plt.Axes]) -> bool:
    """Whether a visible panel sits under `ax` (the last row may be short)."""
    spec = ax.get_subplotspec()
    below = spec.rowspan.stop
    return any(o.get_subplotspec().rowspan.start == below and o.get_subplotspec().colspan == spec.colspan
               for o in axes.values())  # fmt: skip


def _rate_ticks(axis: Axis, rates: list[float], log: bool) -> None:
    """The offered rates themselves as ticks when they are few and far enough apart for their
    labels (a sweep's 5k, 20k, 60k, 120k), else round steps (a search's rates are neither)."""
    _rate_format(axis)
    where = np.log10(rates) if log else np.asarray(rates, dtype=float)
    span = float(where.max() - where.min()) if len(rates) > 1 else 0.0
    if span > 0 and len(rates) <= MAX_RATE_TICKS and np.diff(np.sort(where)).min() >= MIN_TICK_GAP * span:
        axis.set_major_locator(FixedLocator(rates))


def _rate_format(axis: Axis) -> None:
    """Rates on an axis as 5k, 120k, and on a log axis at 1, 2 and 5 of each decade."""
    if axis.get_scale() == "log":
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(compact))
    axis.set_minor_formatter(NullFormatter())


def _duration_format(axis: Axis) -> None:
    """Latencies (µs) on an axis in the unit that reads best: 100 µs, 1 ms, 10 ms; at 1, 2 and 5
    of each decade when the axis spans two decades or less, else at each decade."""
    low, high = axis.get_view_interval()
    if axis.get_scale() == "log" and low > 0:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if high / low <= 100 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: _duration(value)))
    axis.set_minor_formatter(NullFormatter())


def _handle(label: str, **style: object) -> Line2D:
    return Line2D([], [], label=label, **style)


def _series_name(connections: int) -> str:
    return f"{connections:,} conn."


def _duration(us: float | None) -> str:
    """A latency given in µs, in the unit that reads best: 480 µs, 6.2 ms, 1.4 s."""
    if us is None or not math.isfinite(us):
        return ""
    if us >= 1e6:
        return f"{us / 1e6:g} s" if us % 1e5 == 0 else f"{us / 1e6:.1f} s"
    if us >= 1e3:
        return f"{us / 1e3:g} ms" if us % 100 == 0 else f"{us / 1e3:.1f} ms"
    return f"{us:.0f} µs"


def _slo_us(slo: str) -> float | None:
    """'p99<=5000us' (points.csv's slo, as bench.planning.find_max writes it) -> 5000.0 (µs)."""
    match = re.fullmatch(r"p99<=([0-9.e+]+)us", slo.strip())
    return float(match.group(1)) if match else None


def _slo_words(slo: str) -> str:
    """'p99<=5000us' -> 'p99 ≤ 5 ms'."""
    us = _slo_us(slo)
    return f"p99 ≤ {_duration(us)}" if us is not None else slo
