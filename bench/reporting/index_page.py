"""`index.html` in a results directory: every run with its host, kernel, date and report."""

from __future__ import annotations

import json
from pathlib import Path

from bench.reporting.pages import environment
from bench.storing.results_store import (
    EXPLAIN_FILE,
    POINTS_FILE,
    REPORT_FILE,
    RUN_FILE,
    effective_status,
    write_text_atomic,
)

INDEX_FILE = "index.html"


def _summary(run_path: Path) -> dict | None:
    try:
        meta = json.loads((run_path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    host = meta.get("host") if isinstance(meta.get("host"), dict) else {}
    points = run_path / POINTS_FILE
    try:
        count = max(sum(1 for _ in points.open()) - 1, 0) if points.exists() else 0
    except OSError:
        count = 0
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    return {
        "run_id": meta.get("run_id", run_path.name),
        "dir": run_path.name,
        "kind": meta.get("kind", "run"),
        "started": meta.get("started", ""),
        # A run killed outright still says `running`: shown `abandoned` once its writer is gone.
        "status": effective_status(meta, run_path) or "?",
        "host": host.get("hostname", ""),
        "kernel": host.get("kernel", ""),
        "cpu": host.get("cpu_model", ""),
        "models": ", ".join(config.get("models", [])),
        "points": count,
        # The run's page: a sweep's or profile's report, an explain run's figures.
        "page": next((name for name in (REPORT_FILE, EXPLAIN_FILE) if (run_path / name).exists()), None),
        "command": meta.get("command", ""),
    }


def write_index(results: Path) -> Path:
    """(Re)write results/index.html from the run directories found there, newest first."""
    runs = [s for p in sorted(Path(results).iterdir()) if p.is_dir() and (s := _summary(p))]
    runs.sort(key=lambda r: r["started"], reverse=True)
    env = environment()
    html = env.get_template("index.html.j2").render(runs=runs, results=str(results))
    path = Path(results) / INDEX_FILE
    write_text_atomic(path, html)
    return path
