"""The report's plots: inline SVG from matplotlib, problems marked in place.

Against connections (and idle connections) each metric is one figure of small multiples: one
panel per I/O model category present in the run (Stevens' five, the C baseline, and one panel
for models the registry does not place), every panel on the same x and y axes. A panel draws its
own models in colour and every other model as a thin grey line behind them, so that each line
can be followed and still be set against the rest. A model keeps its colour and marker in every
figure of every report.

Lines are medians over repeats of ok points; where the run has confidence intervals (repeats)
they are drawn as error bars. Failed and skipped points are red crosses at the foot of the
plot where they happened; client-bound points are hollow squares and disturbed points orange
rings (also when the probe found the host shifted) and unsteady points purple diamonds around
the line's marker, so nobody reads a number without its caveat.
"""

from __future__ import annotations

import io
import re
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from bench.storing.columns import STATUS_OK  # noqa: E402
from bench.storing.statistics import flag_hits  # noqa: E402
from servers import registry  # noqa: E402

plt.rcParams.update(
    {"svg.fonttype": "none", "font.size": 10, "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9}
)
# The foot of each plot, in axes coordinates, is a band kept for failed and skipped points, so
# their crosses never sit where a value would be read.
FOOT = 0.09
# Intervals exist only for these metrics (bench.storing.statistics computes them over repeats).
CI_COLUMNS = {"rps": ("rps_ci_low", "rps_ci_high"), "p99_us": ("p99_ci_low", "p99_ci_high")}


# Caveats drawn around a point's marker: (marker, colour; None for the line's own), and the legend's words.
FLAG_STYLES = {
    "client_bound": ("s", None), "pair_limited": ("P", "black"), "disturbed": ("o", "darkorange"),
    "unsteady": ("D", "purple"),
}  # fmt: skip
FLAG_LABELS = {
    "client_bound": "client-bound", "pair_limited": "pair-limited", "disturbed": "disturbed / host shifted",
    "unsteady": "unsteady",
}  # fmt: skip

# A colour and marker per model, the same in every figure. The seven I/O multiplexing models
# share a panel, so they take the seven most distinct hues; no line is crimson (failures),
# light grey (other panels' models) or near-black but the baseline's.
MODEL_STYLES = {
    "threads": ("#283593", "o"), "fork": ("#e6ab02", "s"), "nonblocking": ("#00897b", "h"),
    "select": ("#1f77b4", "o"), "poll": ("#2ca02c", "s"), "epoll": ("#8c564b", "D"), "epoll-et": ("#e377c2", "^"),
    "selectors": ("#17becf", "v"), "asyncio": ("#bcbd22", "<"), "uvloop": ("#9467bd", ">"),
    "sigio": ("#c51b7d", "p"), "io_uring": ("#ff7f0e", "H"), "native": ("#222222", "*"),
}  # fmt: skip
# For names the table above does not know (own models, `external`, series such as "epoll c=100").
FALLBACK_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
FALLBACK_MARKERS = "osD^v<>ph*"
# Several series of one model in a figure (a run of two workloads) differ by dash.
LINESTYLES = ("-", "--", ":", "-.")
CONTEXT_GREY = "#cfcfcf"

# Panels in Stevens' order (UNIX Network Programming, 6.2), the C baseline, then the rest; a
# model's panel is the first whose prefix starts its registry category.
OTHER = "other"
PANEL_PREFIXES = (
    ("non-blocking", "non-blocking"), ("blocking", "blocking"), ("i/o multiplexing", "I/O multiplexing"),
    ("signal-driven", "signal-driven"), ("asynchronous", "asynchronous"), ("baseline", "baseline"),
)  # fmt: skip
PANEL_ORDER = ("blocking", "non-blocking", "I/O multiplexing", "signal-driven", "asynchronous", "baseline", OTHER)
# Figure sizes in inches at 100 dpi: a single panel fills half the report's width, small
# multiples all of it (the template's .plot.wide), three panels to a row.
SINGLE_SIZE = (7.4, 3.9)
WIDE_WIDTH = 12.0
PANEL_HEIGHT = 2.9
# Where a log x axis draws zero (no idle connections beside the active ones), labelled "0".
LOG_ZERO = 0.5
# Above small multiples: the figure's title and the legend of marks, inches.
TITLE_STRIP = 0.4


def flagged(df: pd.DataFrame, flag: str) -> pd.Series:
    """Rows carrying a caveat: a true flag column; for 'disturbed', a reason in that column or
    a probe that found the host shifted before the point."""
    if flag == "disturbed":
        return flag_hits(df, "disturbed") | flag_hits(df, "host_shifted")
    return flag_hits(df, flag)


def to_svg(fig: plt.Figure) -> str:
    """The figure as an inline <svg> element (no XML prolog, no date), the figure closed."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    # A panel's group (gid "panel-<name>") becomes class "panel" with data-panel: figures repeat
    # their panels' names, and an id may appear once in a page.
    svg = re.sub(r'<g id="panel-([^"]*)">', r'<g class="panel" data-panel="\1">', svg)
    return svg[svg.index("<svg") :]


def model_styles(names: list[str]) -> dict[str, tuple[str, str]]:
    """A (colour, marker) per series name: a known model's own (MODEL_STYLES), other names the
    fallback colours in order, skipping those the known models of `names` already show."""
    taken = {MODEL_STYLES[n][0] for n in names if n in MODEL_STYLES}
    spare = [c for c in FALLBACK_COLOURS if c not in taken] or list(FALLBACK_COLOURS)
    styles, unknown = {}, 0
    for n in names:
        if n in MODEL_STYLES:
            styles[n] = MODEL_STYLES[n]
        else:
            styles[n] = (spare[unknown % len(spare)], FALLBACK_MARKERS[unknown % len(FALLBACK_MARKERS)])
            unknown += 1
    return styles


def panel_of(model: str) -> str:
    """The panel a model is drawn in: its registry category mapped onto PANEL_ORDER ('other'
    for a model the registry does not know, such as `external` for --target runs)."""
    category = (registry.category(model) or "").lower()
    return next((panel for prefix, panel in PANEL_PREFIXES if category.startswith(prefix)), OTHER)


def panels_of(df: pd.DataFrame) -> list[str]:
    """The panels the models of `df` fill, in PANEL_ORDER."""
    present = {panel_of(str(m)) for m in df["model"].dropna().unique()}
    return [p for p in PANEL_ORDER if p in present]


def _series_styles(df: pd.DataFrame, series: str) -> dict[str, tuple[str, str, str]]:
    """(colour, marker, dash) per series: the model's colour and marker, and a dash per series
    when one model has several (a series per model and workload)."""
    first = df.drop_duplicates(series)
    models = pd.Series(first["model"].astype(str).to_numpy(), index=first[series])
    colours = model_styles(list(dict.fromkeys(models)))
    seen: dict[str, int] = {}
    out = {}
    for name, model in models.items():
        colour, marker = colours[model]
        out[name] = (colour, marker, LINESTYLES[seen.get(model, 0) % len(LINESTYLES)])
        seen[model] = seen.get(model, 0) + 1
    return out


def _draw_series(ax: plt.Axes, group: pd.DataFrame, x: str, y: str, label: str, style: tuple[str, str, str]) -> bool:
    """One series' medians per x with its CI as error bars and its flags ringed; False when it
    has no value to draw."""
    stats = group.groupby(x)[y].median().dropna()
    if stats.empty:
        return False
    colour, marker, dash = style
    ci = CI_COLUMNS.get(y)
    if ci and ci[0] in group.columns and group[ci[0]].notna().any():
        lows = group.groupby(x)[ci[0]].first().reindex(stats.index)
        highs = group.groupby(x)[ci[1]].first().reindex(stats.index)
        yerr = np.vstack([(stats - lows).clip(lower=0).fillna(0), (highs - stats).clip(lower=0).fillna(0)])
        ax.errorbar(stats.index, stats.values, yerr=yerr, marker=marker, color=colour, linestyle=dash, capsize=3,
                    label=label, zorder=3)  # fmt: skip
    else:
        ax.plot(stats.index, stats.values, marker=marker, color=colour, linestyle=dash, label=label, zorder=3)
    for flag, (ring, ring_colour) in FLAG_STYLES.items():
        xs = sorted(set(group.loc[flagged(group, flag), x]) & set(stats.index))
        if xs:
            ax.plot(xs, stats.loc[xs].values, linestyle="none", markersize=13, markerfacecolor="none",
                    markeredgecolor=ring_colour or colour, markeredgewidth=1.5, marker=ring, zorder=4)  # fmt: skip
    return True


def _scale(ax: plt.Axes, ok: pd.DataFrame, y: str, log_x: bool, log_y: bool, drawn: bool) -> None:
    """Log x; log y when asked and every value is positive, else linear y from zero, so that
    small differences are not magnified."""
    if log_x:
        ax.set_xscale("log")
    if log_y and drawn and (ok[y].dropna() > 0).all():
        ax.set_yscale("log")
    elif drawn and (ok[y].dropna() >= 0).all():
        ax.set_ylim(bottom=0)


def panel_plot(
    df: pd.DataFrame,
    x: str,
    y: str,
    title: str,
    ylabel: str,
    xlabel: str,
    log_x: bool = True,
    log_y: bool = False,
    series: str = "model",
) -> str:
    """Small multiples of `y` against `x`: a panel per category of panels_of(df), sharing both
    axes, each with its own series in colour (medians of ok rows, CI error bars, flag rings,
    failures at the foot) over every other series in light grey; inline SVG. The panels' groups
    carry class "panel" and data-panel (the category) in the SVG."""
    names = panels_of(df)
    fig, axes = small_multiples(len(names))
    ok = df[df["status"] == STATUS_OK]
    styles = _series_styles(df, series)
    panel = df["model"].astype(str).map(panel_of)
    marks = _flag_legend(df)
    drawn = False
    for ax, name in zip(axes, names, strict=False):
        drawn |= _draw_panel(ax, df, panel == name, x, y, series, styles)
        # A single panel's header lists the marks too: beside it they would take a third of its width.
        panel_header(ax, name, marks if len(names) == 1 else ([], []))
    _scale(axes[0], ok, y, log_x, log_y, drawn)
    _label_ticks(axes[0], df[x], log_x)
    if (df["status"] != STATUS_OK).any():
        foot_band(axes[0], axes[: len(names)])
    return finish_panels(fig, axes, len(names), title, xlabel, ylabel, marks if len(names) > 1 else ([], []))


def small_multiples(count: int) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of `count` panels sharing x and y, three to a row (two by two for four), in
    reading order; one panel fills half the report's width, more fill all of it."""
    count = max(count, 1)
    ncols = count if count <= 3 else (2 if count == 4 else 3)
    nrows = -(-count // ncols)
    size = SINGLE_SIZE if count == 1 else (WIDE_WIDTH, TITLE_STRIP + 0.6 + PANEL_HEIGHT * nrows)
    fig, grid = plt.subplots(nrows, ncols, figsize=size, dpi=100, sharex=True, sharey=True, squeeze=False,
                             layout="constrained")  # fmt: skip
    return fig, list(grid.flat)


def panel_header(ax: plt.Axes, name: str, extra: tuple[list[Any], list[str]] = ([], [])) -> None:
    """The panel's category and its own series (then `extra` entries) above the axes, where
    they cover no line; the panel's group is tagged for to_svg."""
    handles, labels = ax.get_legend_handles_labels()
    handles, labels = handles + extra[0], labels + extra[1]
    ax.legend(handles, labels, title=name, loc="lower left", bbox_to_anchor=(0, 1.0), borderaxespad=0.2,
              ncol=min(4, max(len(handles), 1)), frameon=False, alignment="left", handlelength=1.6,
              columnspacing=1.0, title_fontproperties={"weight": "bold"})  # fmt: skip
    ax.set_gid(f"panel-{name}")


def finish_panels(
    fig: plt.Figure,
    axes: list[plt.Axes],
    used: int,
    title: str,
    xlabel: str,
    ylabel: str,
    marks: tuple[list[Any], list[str]] = ([], []),
) -> str:
    """Hide the slots past the `used` panels, label the shared axes once, put the title and the
    legend of `marks` in a strip above the panels (the marks in an empty slot when there is
    one); the figure as inline SVG."""
    ncols = axes[0].get_gridspec().ncols
    spare = axes[used:]
    for index, ax in enumerate(spare, start=used):
        ax.set_visible(False)
        # The panel above an empty slot is the lowest of its column: it shows the x ticks.
        if index >= ncols:
            axes[index - ncols].xaxis.set_tick_params(labelbottom=True)
    fig.supxlabel(xlabel, fontsize=10)
    # Wrapped to the panels' height (about 12 characters an inch), or a long unit runs into the title.
    fig.supylabel(textwrap.fill(ylabel, int((fig.get_figheight() - 1.0) * 12)), fontsize=10)
    # The title on the left of a strip above the panels: a figure legend that constrained layout
    # places itself lands on a suptitle.
    height = fig.get_figheight()
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - TITLE_STRIP / height))
    fig.text(0.005, 1 - 0.08 / height, title, ha="left", va="top", fontsize=12)
    if marks[0] and spare:
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(*marks, loc="center left", frameon=False, title="marks")
    elif marks[0]:
        fig.legend(*marks, loc="upper right", bbox_to_anchor=(1, 1), ncol=len(marks[0]), frameon=False)
    return to_svg(fig)


def _draw_panel(
    ax: plt.Axes,
    df: pd.DataFrame,
    mine: pd.Series,
    x: str,
    y: str,
    series: str,
    styles: dict[str, tuple[str, str, str]],
) -> bool:
    """One panel: the other panels' series as thin grey lines, its own (`mine`) over them, and
    its own failures at the foot; False when none of its own series had a value to draw."""
    ok = df["status"] == STATUS_OK
    for _other, group in df[ok & ~mine].groupby(series, sort=False):
        # Context only: no markers, intervals or flags, drawn under the panel's own lines.
        stats = group.groupby(x)[y].median().dropna()
        ax.plot(stats.index, stats.values, color=CONTEXT_GREY, linewidth=0.9, zorder=1)
    drawn = False
    for own, group in df[ok & mine].groupby(series, sort=False):
        drawn |= _draw_series(ax, group, x, y, str(own), styles[own])
    _mark_failures(ax, df[mine], x, series, right=float(df[x].max()))
    # Major lines only: a log axis's minor grid would read as more grey lines.
    ax.grid(True, which="major", alpha=0.3)
    ax.margins(y=0.12)
    return drawn


def compact(value: float, _position: object = None) -> str:
    """A tick label: 150k for 150,000, 1.5M, 0.5 (a value of any unit, to three figures)."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _label_ticks(ax: plt.Axes, xs: pd.Series, log_x: bool) -> None:
    """Compact labels on both axes (shared by every panel); on a log x axis with few levels,
    a tick at each level measured, so that a point is read against its own count."""
    levels = sorted(set(pd.to_numeric(xs, errors="coerce").dropna()))
    if log_x and 0 < len(levels) <= 8:
        ax.set_xticks(levels, ["0" if v == LOG_ZERO else compact(v) for v in levels])
        ax.xaxis.set_minor_locator(NullLocator())
    if ax.get_yscale() == "log":
        low, high = ax.get_ylim()
        # Under two decades a tick per decade leaves one label or none: 1, 2 and 5 of each.
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if high / low < 100 else (1.0,)))
        # No minor ticks: unlabelled, they cost more drawing time than they give a reader.
        ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(compact))


def _mark_failures(ax: plt.Axes, df: pd.DataFrame, x: str, series: str, right: float | None = None) -> None:
    """Red crosses in the foot band where points failed or were skipped, with the series named;
    at `right` (the figure's largest x) the names go to the cross's left, inside the panel."""
    foot = blended_transform_factory(ax.transData, ax.transAxes)
    bad = df[df["status"] != STATUS_OK].drop_duplicates(subset=[series, x])
    for _, row in bad.iterrows():
        ax.plot(row[x], FOOT / 2, marker="x", color="crimson", markersize=8, mew=2, transform=foot, clip_on=False)
    # One label per x position, naming every model that failed there.
    for x_value, names in bad.groupby(x)[series]:
        left = right is not None and x_value >= right
        ax.annotate(
            ", ".join(map(str, names)), (x_value, FOOT / 2), xycoords=foot, textcoords="offset points",
            xytext=(-8 if left else 6, -3), fontsize=8, color="crimson", ha="right" if left else "left",
        )  # fmt: skip


def foot_band(first: plt.Axes, axes: list[plt.Axes]) -> None:
    """Lift the data above a shaded band at the foot of every panel in `axes`, where failed
    points are drawn: the panels share y, so lowering the first panel's limit lowers them all."""
    from matplotlib.patches import Rectangle

    lo, hi = first.get_ylim()
    if first.get_yscale() == "log":
        span = np.log10(hi) - np.log10(lo)
        first.set_ylim(10 ** (np.log10(lo) - span * FOOT / (1 - FOOT)), hi)
    else:
        first.set_ylim(lo - (hi - lo) * FOOT / (1 - FOOT), hi)
    for ax in axes:
        ax.add_patch(Rectangle((0, 0), 1, FOOT, transform=ax.transAxes, color="crimson", alpha=0.07, lw=0))


def _flag_legend(df: pd.DataFrame) -> tuple[list[Line2D], list[str]]:
    """Legend entries for the marks present in `df`: failures, then each caveat's ring."""
    handles: list[Line2D] = []
    labels: list[str] = []
    if (df["status"] != STATUS_OK).any():
        handles.append(Line2D([], [], marker="x", color="crimson", linestyle="none", mew=2))
        labels.append("failed / skipped")
    for flag, (marker, color) in FLAG_STYLES.items():
        if flagged(df, flag).any():
            handles.append(Line2D([], [], marker=marker, markerfacecolor="none", color=color or "grey", ls="none"))
            labels.append(FLAG_LABELS[flag])
    return handles, labels
