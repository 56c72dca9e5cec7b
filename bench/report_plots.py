"""The report's plots: inline SVG from matplotlib, one line per model, problems marked in place.

Lines are medians over repeats of ok points; where the run has confidence intervals (repeats)
they are drawn as error bars. Failed and skipped points are red crosses at the foot of the
plot where they happened; client-bound points are hollow squares and disturbed points orange
rings (also when the probe found the host shifted) and unsteady points purple diamonds around
the line's marker, so nobody reads a number without its caveat.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from bench.columns import STATUS_OK  # noqa: E402
from bench.statistics import truthy  # noqa: E402

plt.rcParams.update(
    {"svg.fonttype": "none", "font.size": 10, "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9}
)
# The foot of each plot, in axes coordinates, is a band kept for failed and skipped points, so
# their crosses never sit where a value would be read.
FOOT = 0.09
# Intervals exist only for these metrics (bench.statistics computes them over repeats).
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


def flagged(df: pd.DataFrame, flag: str) -> pd.Series:
    """Rows carrying a caveat: a true flag column; for 'disturbed', a reason in that column or
    a probe that found the host shifted before the point."""
    hit = pd.Series(False, index=df.index)
    if flag == "disturbed":
        if "disturbed" in df.columns:
            hit |= df["disturbed"].fillna("").astype(str) != ""
        flag = "host_shifted"
    if flag in df.columns:
        hit |= truthy(df[flag])
    return hit


def to_svg(fig: plt.Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def model_styles(names: list[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """A (colour, marker) per series name, in order: thirteen models outnumber the default ten
    colours, so colours are paired with marker shapes."""
    palette = plt.get_cmap("tab20").colors
    return {
        n: (palette[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], "osD^v<>ph*"[i % 10]) for i, n in enumerate(names)
    }


def line_plot(
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
    fig, ax = plt.subplots(figsize=(7.4, 3.9), dpi=100)
    ok = df[df["status"] == STATUS_OK]
    styles = model_styles(list(dict.fromkeys(ok[series])))
    ci = CI_COLUMNS.get(y)
    drawn = False
    for name, group in ok.groupby(series, sort=False):
        stats = group.groupby(x)[y].median().dropna()
        if stats.empty:
            continue
        drawn = True
        if ci and group[ci[0]].notna().any():
            lows = group.groupby(x)[ci[0]].first().reindex(stats.index)
            highs = group.groupby(x)[ci[1]].first().reindex(stats.index)
            yerr = np.vstack([(stats - lows).clip(lower=0).fillna(0), (highs - stats).clip(lower=0).fillna(0)])
            (line, *_rest) = ax.errorbar(
                stats.index, stats.values, yerr=yerr, marker=styles[name][1], color=styles[name][0], capsize=3,
                label=name,
            )  # fmt: skip
        else:
            (line,) = ax.plot(stats.index, stats.values, marker=styles[name][1], color=styles[name][0], label=name)
        for flag, (marker, color) in FLAG_STYLES.items():
            xs = sorted(set(group.loc[flagged(group, flag), x]) & set(stats.index))
            if xs:
                ax.plot(xs, stats.loc[xs].values, linestyle="none", markersize=13, markerfacecolor="none",
                        markeredgecolor=color or line.get_color(), markeredgewidth=1.5, marker=marker)  # fmt: skip
    _mark_failures(ax, df, x, series)
    if log_x:
        ax.set_xscale("log")
    if log_y and drawn and (ok[y].dropna() > 0).all():
        ax.set_yscale("log")
    elif drawn and (ok[y].dropna() >= 0).all():
        # Linear axes start at zero so small differences are not magnified.
        ax.set_ylim(bottom=0)
    ax.margins(y=0.12)
    if (df["status"] != STATUS_OK).any():
        _make_foot(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, df)
    fig.tight_layout()
    return to_svg(fig)


def _mark_failures(ax: plt.Axes, df: pd.DataFrame, x: str, series: str) -> None:
    foot = blended_transform_factory(ax.transData, ax.transAxes)
    bad = df[df["status"] != STATUS_OK].drop_duplicates(subset=[series, x])
    for _, row in bad.iterrows():
        ax.plot(row[x], FOOT / 2, marker="x", color="crimson", markersize=8, mew=2, transform=foot, clip_on=False)
    # One label per x position, naming every model that failed there.
    for x_value, names in bad.groupby(x)[series]:
        ax.annotate(", ".join(map(str, names)), (x_value, FOOT / 2), xycoords=foot, xytext=(6, -3),
                    textcoords="offset points", fontsize=8, color="crimson")  # fmt: skip


def _make_foot(ax: plt.Axes) -> None:
    """Lift the data above a shaded band at the foot where failed points are drawn."""
    from matplotlib.patches import Rectangle

    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        span = np.log10(hi) - np.log10(lo)
        ax.set_ylim(10 ** (np.log10(lo) - span * FOOT / (1 - FOOT)), hi)
    else:
        ax.set_ylim(lo - (hi - lo) * FOOT / (1 - FOOT), hi)
    ax.add_patch(Rectangle((0, 0), 1, FOOT, transform=ax.transAxes, color="crimson", alpha=0.07, lw=0))


def _legend(ax: plt.Axes, df: pd.DataFrame) -> None:
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.lines import Line2D

    if (df["status"] != STATUS_OK).any():
        handles.append(Line2D([], [], marker="x", color="crimson", linestyle="none", mew=2))
        labels.append("failed / skipped")
    for flag, (marker, color) in FLAG_STYLES.items():
        if flagged(df, flag).any():
            handle = Line2D([], [], marker=marker, markerfacecolor="none", color=color or "grey", linestyle="none")
            handles.append(handle)
            labels.append(FLAG_LABELS[flag])
    if handles:
        # Outside the axes: with a dozen models a legend inside would cover the data.
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
