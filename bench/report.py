"""`report.html`: one self-contained page per run (inline SVG plots, no network fetches)."""

from __future__ import annotations

import io
from html import escape
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from bench.columns import STATUS_OK  # noqa: E402
from bench.results_store import RunDirectory  # noqa: E402

plt.rcParams["svg.fonttype"] = "none"

PLOTS = [
    ("rps", "Throughput", "requests per second", False),
    ("p99_us", "p99 latency", "p99 latency (µs)", True),
]
TABLE_COLUMNS = [
    "model",
    "workload",
    "connections",
    "payload",
    "repeat",
    "status",
    "rps",
    "p50_us",
    "p99_us",
    "max_us",
    "cpu_us_per_req",
    "server_rss_bytes",
    "client_cpu_pct",
    "errors",
    "reason",
]


TEXT_COLUMNS = {"model", "workload", "status", "reason"}


def load_points(run_dir: RunDirectory) -> pd.DataFrame:
    if not run_dir.points_file.exists():
        return pd.DataFrame()
    return pd.read_csv(run_dir.points_file, keep_default_na=True)


def plot_metric(df: pd.DataFrame, column: str, title: str, ylabel: str, log_y: bool) -> str:
    """One line per model (median over repeats of ok points); failed points as red crosses at
    the foot of the plot, where they happened on the connections axis."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    ok = df[df["status"] == STATUS_OK]
    for model, group in ok.groupby("model", sort=False):
        series = group.groupby("connections")[column].median().dropna()
        if not series.empty:
            ax.plot(series.index, series.values, marker="o", label=model)
    foot = blended_transform_factory(ax.transData, ax.transAxes)
    failed = df[df["status"] != STATUS_OK]
    labelled = False
    for _, row in failed.iterrows():
        ax.plot(
            row["connections"],
            0.03,
            marker="x",
            color="crimson",
            markersize=10,
            mew=2,
            transform=foot,
            clip_on=False,
            label=None if labelled else "failed / skipped",
        )
        ax.annotate(str(row["model"]), (row["connections"], 0.06), xycoords=foot, fontsize=7, color="crimson")
        labelled = True
    ax.set_xscale("log")
    if log_y and not ok[column].dropna().empty:
        ax.set_yscale("log")
    ax.set_xlabel("concurrent connections (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return escape(str(value))


def render_report(run_path: Path) -> Path:
    run_dir = RunDirectory(run_path)
    meta = run_dir.read_run()
    df = load_points(run_dir)
    plots = []
    if not df.empty:
        for column, title, ylabel, log_y in PLOTS:
            plots.append({"id": f"plot-{column}", "title": title, "svg": plot_metric(df, column, title, ylabel, log_y)})
    rows = []
    columns = [c for c in TABLE_COLUMNS if c in df.columns]
    for _, row in df.iterrows():
        cells = [(_fmt(row[c]), c in TEXT_COLUMNS) for c in columns]
        rows.append({"status": row.get("status", ""), "cells": cells})
    env = Environment(loader=PackageLoader("bench", "templates"), autoescape=select_autoescape(["html", "j2"]))
    from bench.host import flatten_host, show_value

    html = env.get_template("report.html.j2").render(
        meta=meta,
        host=[(key, show_value(value)) for key, value in flatten_host(meta.get("host", {}))],
        plots=plots,
        columns=columns,
        rows=rows,
        counts=df["status"].value_counts().to_dict() if not df.empty else {},
    )
    tmp = run_dir.report_file.with_suffix(".html.tmp")
    tmp.write_text(html)
    tmp.replace(run_dir.report_file)
    return run_dir.report_file
