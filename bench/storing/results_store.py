"""A run directory: run.json, points.csv (appended point by point), histograms.jsonl.

Points are appended and flushed as they are measured, so an interrupted run keeps all it
measured; run.json is replaced atomically, never left half-written. A run killed outright
(SIGKILL) cannot write its end: its run.json says `running` for ever, so it records who writes
it, and `effective_status` calls such a run `abandoned` once that process is gone.
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

from bench.storing.columns import POINT_COLUMNS

# 2: a sweep's config holds the point template under `point` (payload, workload, engine, ...);
# 1 had those fields at the top of config. upgrade_run_meta reads 1 as 2.
SCHEMA_VERSION = 2
# The fields schema 1 kept at the top of a sweep's config, which schema 2 keeps under `point`.
POINT_TEMPLATE_FIELDS = (
    "payload",
    "workload",
    "server_workers",
    "fork_cap",
    "request_timeout_s",
    "target",
    "engine",
    "locust_workers",
    "locust_ui",
    "locust_remote_workers",
    "backlog",
)
RUN_FILE = "run.json"
POINTS_FILE = "points.csv"
HISTOGRAMS_FILE = "histograms.jsonl"
REPORT_FILE = "report.html"
EXPLAIN_FILE = "explain.html"

STATUS_RUNNING = "running"
STATUS_ABANDONED = "abandoned"
# psutil's create_time is the boot time (whole seconds, from /proc/stat, which moves by one when
# the clock is stepped) plus the process's start in clock ticks: the same process may read up
# to a second apart on two calls, while a PID reused by another process started later still.
START_TIME_TOLERANCE_S = 1.0
# A run whose writer cannot be checked from here (run.json from before the writer was recorded,
# or written on another host) is abandoned once none of its files changed for this long: a live
# run appends a row per point, and no point takes a day.
UNCHECKED_STALE_S = 24 * 3600.0


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def create_results_dir(out: Path) -> None:
    """Create the results directory (--out) and its parents; raises UsageError naming it when
    that is not possible."""
    from bench.errors import UsageError

    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out {out}: {exc.strerror}") from None


def upgrade_run_meta(meta: Any) -> Any:
    """run.json as the current schema (SCHEMA_VERSION) lays it out, from any earlier one: schema
    1's point fields move from `config` to `config.point`. Anything not a run.json object is
    returned as it is, for the caller's own check to reject; a schema_version that is not an
    integer from 1 to SCHEMA_VERSION raises ValueError."""
    if not isinstance(meta, dict):
        return meta
    version = meta.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise ValueError(f"run.json schema_version {version!r} is not one this bench reads (1..{SCHEMA_VERSION})")
    config = meta.get("config")
    if version < 2 and meta.get("kind", "run") == "run" and isinstance(config, dict) and "point" not in config:
        point = {k: v for k, v in config.items() if k in POINT_TEMPLATE_FIELDS}
        rest = {k: v for k, v in config.items() if k not in POINT_TEMPLATE_FIELDS}
        meta = {**meta, "config": {**rest, "point": point}}
    return {**meta, "schema_version": SCHEMA_VERSION}


def new_run_meta(run_id: str) -> dict[str, Any]:
    """The fields every run.json starts with: identity, times, status, the exact command, and
    the process that writes it (`writer`, for effective_status)."""
    return {
        "run_id": run_id,
        "started": now_iso(),
        "finished": None,
        "status": STATUS_RUNNING,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "writer": writer_fields(),
    }


def writer_fields() -> dict[str, Any]:
    """This process as the writer of a run.json: its PID, its start time (psutil's
    create_time, seconds since the epoch: a PID reused later by another process has a later
    one) and the host it runs on (a PID means nothing on another host)."""
    import psutil

    return {"pid": os.getpid(), "started": psutil.Process().create_time(), "hostname": os.uname().nodename}


def writer_alive(writer: Any) -> bool | None:
    """Whether the process recorded as a run.json's `writer` still runs: False when no live
    process has that PID and start time (a zombie is not live), None when it cannot be told
    from here (another host, or a record of the wrong shape)."""
    import psutil

    if not isinstance(writer, dict) or writer.get("hostname") != os.uname().nodename:
        return None
    pid, started = writer.get("pid"), writer.get("started")
    if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(started, int | float) or pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) <= START_TIME_TOLERANCE_S and (
            process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return None


def effective_status(meta: dict[str, Any], run_path: Path | None = None) -> str | None:
    """The status to show for a run: run.json's (None when it records none), except that a run
    saying `running` is `abandoned` when its writer is gone (killed by SIGKILL, or the host
    rebooted), and, when the writer cannot be checked here (a run.json from before it was
    recorded, or one written on another host), once no file of `run_path` but its report has
    changed for UNCHECKED_STALE_S. Every row it measured stays in points.csv."""
    status = meta.get("status")
    if status != STATUS_RUNNING:
        return None if status is None else str(status)
    alive = writer_alive(meta.get("writer"))
    if alive is None and run_path is not None:
        alive = time.time() - _last_written(Path(run_path)) < UNCHECKED_STALE_S
    return STATUS_RUNNING if alive is not False else STATUS_ABANDONED


def _last_written(run_path: Path) -> float:
    """When the run last wrote one of its files (its report is rewritten by `bench report`)."""
    try:
        entries = list(run_path.iterdir())
    except OSError:
        # Unreadable: no evidence that it stopped.
        return time.time()
    times = []
    for path in entries:
        try:
            if path.name != REPORT_FILE and path.is_file():
                times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)


@contextlib.contextmanager
def recording_status(
    run_dir: RunDirectory, meta: dict[str, Any], on_finish: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[None]:
    """Run the body, then write run.json with status `complete`, on Ctrl-C `interrupted`, or
    `failed` when the harness itself raised, and the finish time; whatever happens, run.json is
    written last (after `on_finish`). Only a run killed outright keeps `running`."""
    try:
        yield
        meta["status"] = "complete"
    except KeyboardInterrupt:
        meta["status"] = "interrupted"
        raise
    except BaseException:
        meta["status"] = "failed"
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
        write_json_atomic(self.run_file, {**meta, "schema_version": SCHEMA_VERSION})

    def read_run(self) -> dict[str, Any]:
        """run.json, in the current schema whatever schema wrote it (upgrade_run_meta)."""
        with open(self.run_file) as fh:
            return upgrade_run_meta(json.load(fh))

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
