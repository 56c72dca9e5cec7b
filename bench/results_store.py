"""A run directory: run.json, points.csv (appended point by point), histograms.jsonl.

Points are appended and flushed as they are measured, so an interrupted run keeps all it
measured; run.json is replaced atomically, never left half-written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.columns import POINT_COLUMNS

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
POINTS_FILE = "points.csv"
HISTOGRAMS_FILE = "histograms.jsonl"
REPORT_FILE = "report.html"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_meta(run_id: str) -> dict[str, Any]:
    """The fields every run.json starts with: identity, times, status, the exact command."""
    return {
        "run_id": run_id,
        "started": now_iso(),
        "finished": None,
        "status": "running",
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


@contextlib.contextmanager
def recording_status(
    run_dir: RunDirectory, meta: dict[str, Any], on_finish: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[None]:
    """Run the body, then write run.json with status `complete` or, on Ctrl-C, `interrupted`,
    and the finish time; whatever happens, run.json is written last (after `on_finish`)."""
    try:
        yield
        meta["status"] = "complete"
    except KeyboardInterrupt:
        meta["status"] = "interrupted"
        raise
    finally:
        meta["finished"] = now_iso()
        if on_finish is not None:
            on_finish(meta)
        run_dir.write_run(meta)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirectory:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, out: Path, run_id: str) -> RunDirectory:
        path = Path(out) / run_id
        path.mkdir(parents=True, exist_ok=False)
        return cls(path)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def points_file(self) -> Path:
        return self.path / POINTS_FILE

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    def write_run(self, meta: dict[str, Any]) -> None:
        write_json_atomic(self.run_file, {"schema_version": SCHEMA_VERSION, **meta})

    def read_run(self) -> dict[str, Any]:
        with open(self.run_file) as fh:
            return json.load(fh)

    def append_point(self, row: dict[str, Any], histograms: dict[str, str]) -> None:
        new = not self.points_file.exists()
        with open(self.points_file, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=POINT_COLUMNS, extrasaction="raise")
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k)) for k in POINT_COLUMNS})
            fh.flush()
            os.fsync(fh.fileno())
        if histograms:
            with open(self.path / HISTOGRAMS_FILE, "a") as fh:
                fh.write(json.dumps({"point_id": row["point_id"], **histograms}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def read_points(self) -> list[dict[str, str]]:
        if not self.points_file.exists():
            return []
        with open(self.points_file, newline="") as fh:
            return list(csv.DictReader(fh))

    def rewrite_points(self, rows: list[dict[str, Any]]) -> None:
        """Replace points.csv as a whole (atomically), e.g. to add statistics over repeats."""
        tmp = self.points_file.with_name(f".{POINTS_FILE}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=POINT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in POINT_COLUMNS})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.points_file)

    def read_histograms(self) -> dict[str, dict[str, str]]:
        path = self.path / HISTOGRAMS_FILE
        if not path.exists():
            return {}
        out = {}
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    out[rec.pop("point_id")] = rec
        return out


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else repr(value)
    return value
