"""`report.html`: one self-contained page per run (inline SVG plots and script, no network).

The page opens with findings stated in words from the data, then the evidence: plots with
confidence intervals, the sortable table of every point, the models, the host, and the
command that reproduces the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from bench.measuring.shed import shed_findings
from bench.measuring.tcp_counters import tcp_findings
from bench.reporting.index_page import write_index
from bench.reporting.lessons import cost_findings, lesson_findings
from bench.reporting.pages import environment
from bench.reporting.rankings import clearly_ahead, paired_lead, rankable, ranking_findings
from bench.reporting.report_plots import LOG_ZERO, panel_plot, panels_of
from bench.reporting.report_rates import rate_findings, rate_plots
from bench.reporting.report_summary import summary_table
from bench.reporting.report_timeline import (
    closed_ok,
    cost_plot,
    headline_level,
    sparkline,
    timeline_plot,
    timeline_rows,
)
from bench.storing.columns import POINT_COLUMNS, STATUS_OK
from bench.storing.results_store import STATUS_ABANDONED, RunDirectory, effective_status, write_text_atomic
from bench.storing.statistics import final_attempts, flag_hits, truthy
from bench.wording import figure

CONNECTIONS = "concurrent connections (log scale)"
# (column, title, y label, log y)
MAIN_PLOTS = [
    ("rps", "Throughput", "requests per second", False),
    ("p50_us", "Median latency (p50)", "p50 latency (µs)", True),
    ("p99_us", "Tail latency (p99)", "p99 latency (µs)", True),
    ("p999_us", "Tail latency (p99.9)", "p99.9 latency (µs)", True),
    ("cpu_us_per_req", "Server CPU per request", "server CPU µs per request", False),
    ("mem_per_conn_bytes", "Server memory per connection", "bytes per connection (USS; PSS for a process tree)", True),
    ("ctx_per_req", "Context switches per request", "context switches per request", False),
]
# Not a column of points.csv: the point's completions per 100 ms, drawn from histograms.jsonl.
TIMELINE = "timeline"
TABLE_COLUMNS = [
    "model", "workload", "connections", "idle", "payload", "target_rate", "repeat", "attempt", "status", "reason",
    "rps", TIMELINE, "stability", "rps_median", "rps_ci_low", "rps_ci_high", "rps_vs_reference", "rps_ratio",
    "p50_us", "p99_us", "p999_us", "cpu_us_per_req", "server_cpus_us_per_req", "server_cpus_softirq_share",
    "mem_per_conn_bytes", "client_mem_per_conn_bytes", "kernel_mem_per_conn_bytes", "ctx_per_req", "softirq_pct",
    "server_cpu_pct", "client_cpu_pct", "client_bound", "pair_limited", "unsteady", "host_shifted", "probe_cross_us",
    "disturbed", "errors", "shed", "backlog", "tcp_listen_overflows", "tcp_syn_retrans", "tcp_retrans_segs",
    "tcp_estab_resets",
]  # fmt: skip
TEXT_COLUMNS = {
    "model", "workload", "status", "reason", "disturbed", "client_bound", "pair_limited", "unsteady", "host_shifted",
}  # fmt: skip
SYSCALLS_FILE = "syscalls.csv"


def load_points(run_dir: RunDirectory) -> pd.DataFrame:
    if not run_dir.points_file.exists():
        return pd.DataFrame()
    df = pd.read_csv(run_dir.points_file, keep_default_na=True)
    # Runs written before a column existed still render: the column is just empty.
    return df.reindex(columns=[*POINT_COLUMNS, *[c for c in df.columns if c not in POINT_COLUMNS]])


def findings(
    df: pd.DataFrame,
    meta: dict[str, Any],
    timelines: dict[str, dict[str, Any]] | None = None,
    profile: tuple[list[dict[str, Any]], str] = ([], ""),
) -> list[str]:
    """What a reader should take away, in sentences computed from the points: rankings, the
    five I/O models' lessons (bench.reporting.lessons; `timelines` by point_id gate single-repeat req/s
    comparisons, `profile` is a syscall profile's rows and where they came from), costs, then
    failures and caveats."""
    out: list[str] = []
    if df.empty:
        return ["No point was measured."]
    # An attempt that a re-measurement replaced is stated nowhere but in the count of them.
    everything, df = df, final_attempts(df)
    ok = df[(df["status"] == STATUS_OK) & df["workload"].isin(["closed", "churn"])]
    out.extend(ranking_findings(df))
    out.extend(baseline_findings(ok[ok["workload"] == "closed"]))
    out.extend(lesson_findings(df, timelines, *profile))
    out.extend(cost_findings(df, headline_level(df)))
    # select's wall at 1024 is the first lesson's; the other failures are stated here.
    failed = df[(df["status"] == "failed") & ~(df["reason"].astype("string").fillna("").str.contains("FD_SETSIZE"))]
    for model, rows in failed.groupby("model"):
        first = rows.sort_values("connections").iloc[0]
        out.append(f"{model} failed at {int(first['connections']):,} connections: {first['reason']}.")
    out.extend(tcp_findings(df, meta))
    out.extend(shed_findings(df))
    out.extend(rate_findings(df))
    skipped = df[df["status"] == "skipped"]
    if not skipped.empty:
        out.append(f"{len(skipped)} point(s) were skipped before they started; the table says why.")
    if "client_bound" in df.columns:
        bound = df[truthy(df["client_bound"])]
        if not bound.empty:
            where = ", ".join(f"{m} at {int(c):,}" for m, c in bound[["model", "connections"]].drop_duplicates().values)
            out.append(
                f"{len(bound)} point(s) were client-bound (a load worker used a whole CPU while the server had "
                f"CPU to spare), so their req/s is a floor for the server, not its limit: {where}."
            )
    if "disturbed" in df.columns:
        disturbed = df[flag_hits(df, "disturbed")]
        if not disturbed.empty:
            out.append(
                f"{len(disturbed)} point(s) were disturbed by other load on the host "
                f"(e.g. {disturbed.iloc[0]['model']} at {int(disturbed.iloc[0]['connections']):,}: "
                f"{disturbed.iloc[0]['disturbed']})."
            )
    out.extend(caveat_findings(everything))
    out.extend(meta.get("summary", {}).get("warnings", []))
    return out


def caveat_findings(df: pd.DataFrame) -> list[str]:
    """Sentences about the points' own steadiness and the host under them: unsteady windows,
    host shifts found by the probe and the points measured again, and how far apart the models
    were when paired with the reference within each repeat."""
    out: list[str] = []
    current = final_attempts(df)
    if "unsteady" in current.columns:
        shaky = current[truthy(current["unsteady"])]
        if not shaky.empty:
            worst = shaky.sort_values("stability", ascending=False).iloc[0]
            out.append(
                f"{len(shaky)} point(s) were unsteady: their rate per 100 ms varied beyond what counting noise "
                f"explains (worst: {worst['model']} at {int(worst['connections']):,} connections, CV "
                f"{float(worst['stability']):.0%}); the table's timeline column shows each point over time."
            )
    redone = len(df) - len(current)
    if "host_shifted" in current.columns:
        # A --find-max search is probed once and carries the verdict on each of its rows.
        shifted = current[truthy(current["host_shifted"])]
        point = [c for c in ("model", "workload", "connections", "idle", "repeat") if c in shifted.columns]
        shifted = shifted.drop_duplicates(point)
        if redone or not shifted.empty:
            text = f"The probe before each point found the host shifted {len(shifted) + redone} time(s)"
            if redone:
                text += f"; {redone} attempt(s) were measured again (--remeasure), and only the last enters statistics"
            if not shifted.empty:
                text += f"; {len(shifted)} point(s) are still flagged host_shifted"
            out.append(text + ".")
    level = headline_level(current)
    if level is not None and "rps_ratio" in current.columns:
        at = closed_ok(current, level)
        ratios = at.dropna(subset=["rps_ratio"]).drop_duplicates("model")
        reference = ratios["reference"].dropna().iloc[0] if not ratios.empty else None
        others = ratios[ratios["model"] != reference]
        if reference and not others.empty:
            parts = []
            for row in others.sort_values("rps_ratio", ascending=False).itertuples():
                ci = ""
                if pd.notna(row.rps_ratio_ci_low) and pd.notna(row.rps_ratio_ci_high):
                    ci = f" ({row.rps_ratio_ci_low:.2f}-{row.rps_ratio_ci_high:.2f})"
                parts.append(f"{row.model} {row.rps_ratio:.2f}{ci}")
            out.append(
                f"Paired with {reference} in each repeat at {level:,} connections (req/s ratio, median over repeats, "
                f"with its distribution-free 95% interval from six repeats up): {', '.join(parts)}."
            )
    return out


BASELINE = "native"
# A server at or above this share of its CPUs through the window was saturated.
SATURATED_PCT = 90.0


def baseline_findings(closed: pd.DataFrame) -> list[str]:
    """Where a Python model out-ran the C baseline (native) in the closed loop, say so and why,
    with the numbers: the faster model bought its rate with CPU native left idle (busy polling);
    native's server not saturated (the load generator set its pace); both native's server and
    its load worker saturated (the pair of processes, on a small host, was the limit). Said only
    where the model is clearly ahead by the rankings' gate (bench.reporting.rankings.clearly_ahead: the
    paired ratio's 95% interval above 1, which needs six repeats or more), and never of
    pair-limited points."""
    out: list[str] = []
    closed = rankable(closed) if not closed.empty else closed
    if closed.empty or BASELINE not in set(closed["model"]):
        return out
    for level, rows in closed.groupby("connections"):
        by_model = rows.groupby("model")
        rps = by_model["rps"].median()
        if BASELINE not in rps.index:
            continue
        native = rps[BASELINE]
        # A lead is a ranking: the same gate as bench.reporting.rankings' (none from fewer than six repeats).
        leads = {model: paired_lead(rows, model, BASELINE) for model in rps[rps > native].index}
        gated = {model: est for model, est in leads.items() if clearly_ahead(est)}
        ahead = rps[list(gated)].sort_values(ascending=False)
        if ahead.empty:
            continue
        med = {c: by_model[c].median() for c in ("server_cpu_pct", "client_cpu_pct", "cpu_us_per_req", "p50_us")}
        server, client = med["server_cpu_pct"], med["client_cpu_pct"]
        top = ahead.index[0]
        names = ", ".join(
            f"{m} ({figure(v)} req/s; ratio {gated[m].median:.2f}, 95% CI {gated[m].ci_low:.2f}-{gated[m].ci_high:.2f} "
            f"over {gated[m].n} repeats)"
            for m, v in ahead.items()
        )
        noun = "connection" if level == 1 else "connections"
        text = f"At {int(level):,} {noun} {names} out-ran the C baseline native ({figure(native)} req/s)"
        why = []
        native_busy, top_busy = server.get(BASELINE), server.get(top)
        if pd.notna(native_busy) and pd.notna(top_busy) and top_busy >= SATURATED_PCT > native_busy:
            why.append(
                f"{top}'s server used {top_busy:.0f}% of its CPU where native's used {native_busy:.0f}%: it bought "
                f"its rate with CPU (p50 {figure(med['p50_us'][top])} µs against {figure(med['p50_us'][BASELINE])} µs)"
            )
        native_client = client.get(BASELINE, float("nan"))
        if pd.notna(native_busy) and native_busy < SATURATED_PCT and native_client < SATURATED_PCT:
            why.append(
                f"neither native's server ({native_busy:.0f}% CPU) nor its load workers ({native_client:.0f}%) were "
                "busy: the round trip, with a wakeup on each side, set native's rate, not CPU"
            )
        elif pd.notna(native_busy) and native_busy < SATURATED_PCT:
            why.append(
                f"native's server used {native_busy:.0f}% of its CPU while the load workers used "
                f"{native_client:.0f}% of theirs, so the load generator and the kernel's loopback work, not the "
                "server, set its pace"
            )
        elif pd.notna(native_busy) and client.get(BASELINE, 0) >= SATURATED_PCT:
            why.append(
                f"native's server ({native_busy:.0f}% CPU) and its load worker ({client[BASELINE]:.0f}%) were both "
                "saturated: the pair of processes, with the kernel's loopback work shared between them, was the "
                f"limit, not the server alone (CPU per request: native {med['cpu_us_per_req'][BASELINE]:.1f} µs, "
                f"{top} {med['cpu_us_per_req'][top]:.1f} µs)"
            )
        if not why:
            why.append(
                f"native's server was saturated ({native_busy:.0f}% CPU) and still slower: look at "
                "CPU per request and context switches per request in the table"
            )
        out.append(f"{text}: {'; '.join(why)}.")
    return out


def _plots(df: pd.DataFrame, timelines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    plots = []
    # Against connections: the run's own workload. A closed-loop run's lesson points at one
    # offered rate (bench.planning.lesson_plan) are findings and table rows, not lines.
    workloads = [w for w in ("closed", "churn", "open") if w in set(df["workload"])]
    main = df[(df["workload"] == workloads[0]) & (df.get("idle", 0).fillna(0) == 0)] if workloads else df.iloc[:0]
    if workloads and workloads[0] == "open" and main["target_rate"].nunique() > 1:
        # Several offered rates: a line against connections would blend them; the rate plots
        # (bench.reporting.report_rates) draw each against its rate instead.
        main = main.iloc[:0]
    series = "model"
    if not main.empty:
        # Small multiples, a panel per I/O model category: thirteen lines on one axis cannot be followed.
        panels = len(panels_of(main))
        for column, title, ylabel, log_y in MAIN_PLOTS:
            if column in main.columns and main[column].notna().any() or column == "rps":
                svg = panel_plot(main, "connections", column, title, ylabel, CONNECTIONS, log_y=log_y, series=series)
                plots.append(
                    {"id": f"plot-{column}", "title": f"{title} against connections", "svg": svg, "panels": panels}
                )
    idle = df[df["workload"] == "idle"]
    if not idle.empty:
        both = pd.concat([df[(df["workload"] == "closed") & df["connections"].isin(idle["connections"])], idle])
        both = both.assign(idle=both["idle"].fillna(0).clip(lower=LOG_ZERO))
        for column, title, ylabel in (
            ("rps", "Throughput with idle connections", "requests per second"),
            ("cpu_us_per_req", "Cost of idle connections", "server CPU µs per request"),
        ):
            svg = panel_plot(both, "idle", column, title, ylabel, "idle connections beside the active ones (log scale)")
            plots.append({"id": f"plot-idle-{column}", "title": title, "svg": svg, "panels": len(panels_of(both))})
    # Open loop at two or more offered rates (a --rate list, a --find-max search): bench.reporting.report_rates.
    plots.extend(rate_plots(df))
    if (level := headline_level(df)) is not None:
        if svg := timeline_plot(df, timelines, level):
            title = f"Throughput over time at {level:,} connections"
            panels = len(panels_of(timeline_rows(df, timelines, level)))
            plots.append({"id": "plot-timeline", "title": title, "svg": svg, "panels": panels})
        if svg := cost_plot(df, level):
            plots.append({"id": "plot-cost", "title": f"Server cost per request at {level:,} connections", "svg": svg})
    return plots


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return escape(str(value))


def _sibling_run(
    run_path: Path, meta: dict[str, Any], kind: str, has: Callable[[Path, dict[str, Any]], bool]
) -> Path | None:
    """The newest run of `kind` beside this one, made on the same host and kernel, for which
    has(path, its run.json) holds: a `bench profile` or `bench explain` run is separate from a
    sweep because strace slows the servers down."""
    host = meta.get("host", {})
    candidates = []
    for sibling in run_path.parent.iterdir():
        try:
            other = json.loads((sibling / "run.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(other, dict) or not isinstance(other.get("host", {}), dict):
            continue
        same_host = other.get("host", {}).get("hostname") == host.get("hostname")
        same_kernel = other.get("host", {}).get("kernel") == host.get("kernel")
        if other.get("kind") == kind and same_host and same_kernel and has(sibling, other):
            candidates.append((other.get("started", ""), sibling))
    return max(candidates)[1] if candidates else None


def _profile_source(run_path: Path, meta: dict[str, Any]) -> Path | None:
    """The run's own syscall profile, or else the newest `bench profile` run beside it made on
    the same host and kernel."""
    if (run_path / SYSCALLS_FILE).exists():
        return run_path
    return _sibling_run(run_path, meta, "profile", lambda path, _: (path / SYSCALLS_FILE).exists())


def _explained(run_path: Path, meta: dict[str, Any]) -> tuple[dict[str, str], str]:
    """model -> its request's sequence diagram (inline SVG) from the newest `bench explain` run
    of this host and kernel, and that run's directory name ({}, "" when there is none)."""
    from bench.reporting.explain_svg import sequence_diagram

    def has_ok(_: Path, other: dict[str, Any]) -> bool:
        explanations = other.get("explanations")
        return isinstance(explanations, list) and any(
            isinstance(e, dict) and e.get("status") == STATUS_OK for e in explanations
        )

    source = _sibling_run(run_path, meta, "explain", has_ok)
    if source is None:
        return {}, ""
    try:
        explanations = json.loads((source / "run.json").read_text())["explanations"]
        diagrams = {e["model"]: sequence_diagram(e) for e in explanations if e.get("status") == STATUS_OK}
    except (OSError, ValueError, KeyError, TypeError):
        return {}, ""
    return diagrams, source.name


def _profile_rows(run_path: Path, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The syscall profile's rows (bench.tracing.syscall_profile.read_syscalls) and where they came from."""
    from bench.tracing.syscall_profile import read_syscalls

    source = _profile_source(run_path, meta)
    if source is None:
        return [], ""
    try:
        rows = read_syscalls(source)
    except (OSError, ValueError, KeyError):
        return [], ""
    return rows, "this run" if source == run_path else f"profile run {source.name}"


def _syscall_profile(rows: list[dict[str, Any]]) -> dict[str, str]:
    """model -> 'recvfrom 1.00, sendto 1.00, ...'."""
    from bench.tracing.syscall_profile import format_top_syscalls

    return {m: format_top_syscalls(rows, m) for m in dict.fromkeys(r["model"] for r in rows)}


def _engine_io(df: pd.DataFrame) -> list[tuple[str, int]]:
    """[(request loop, points)] of the C engine's points: io_uring or epoll; empty for other engines
    and for runs recorded before the column existed."""
    if df.empty or "engine_io" not in df.columns:
        return []
    loops = df["engine_io"].dropna().astype(str)
    return sorted(loops[loops != ""].value_counts().items())


def render_report(run_path: Path) -> Path:
    run_dir = RunDirectory(run_path)
    meta = run_dir.read_run()
    df = load_points(run_dir)
    timelines = {
        pid: h["timeline"] for pid, h in run_dir.read_histograms().items() if isinstance(h.get("timeline"), dict)
    }
    # Every attempt is a row of the table; only final attempts are plotted and stated.
    current = final_attempts(df)
    replaced = set(df.index) - set(current.index)
    rows = []
    columns = [c for c in TABLE_COLUMNS if c in df.columns or c == TIMELINE]
    for index, row in df.iterrows():
        cells = []
        for c in columns:
            if c == TIMELINE:
                timeline = timelines.get(row["point_id"]) if index not in replaced else None
                unsteady = bool(truthy(pd.Series([row.get("unsteady")])).iloc[0])
                cells.append((sparkline(timeline, unsteady) if timeline else "", "spark"))
            else:
                cells.append((_fmt(row[c]), "text" + (" wide" if c == "reason" else "") if c in TEXT_COLUMNS else ""))
        rows.append({"status": row.get("status", ""), "cells": cells})
    from bench.measuring.host import flatten_host, show_value
    from bench.running.engines import describe as describe_engine

    env = environment()
    env.filters["figure"] = figure
    profile_rows, profile_origin = _profile_rows(run_dir.path, meta)
    profile = _syscall_profile(profile_rows)
    diagrams, explain_run = _explained(run_dir.path, meta)
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    point = config.get("point") if isinstance(config.get("point"), dict) else config
    html = env.get_template("report.html.j2").render(
        meta=meta,
        # A run killed outright still says `running` in run.json: `abandoned` once its writer is gone.
        run_status=effective_status(meta, run_dir.path) or "?",
        abandoned=STATUS_ABANDONED,
        summary=summary_table(df) if not df.empty else None,
        findings=findings(df, meta, timelines, (profile_rows, profile_origin)),
        plots=_plots(current, timelines) if not df.empty else [],
        columns=columns,
        rows=rows,
        counts=current["status"].value_counts().to_dict() if not df.empty else {},
        host=[(key, show_value(value)) for key, value in flatten_host(meta.get("host", {}))],
        profile=profile,
        profile_origin=profile_origin,
        diagrams=diagrams,
        explain_run=explain_run,
        # A sweep's point template; a profile run keeps these at the top of its config.
        point=point,
        engine=describe_engine(point.get("engine", "builtin")),
        engine_io=_engine_io(current),
    )
    write_text_atomic(run_dir.report_file, html)
    write_index(run_dir.path.parent)
    return run_dir.report_file
