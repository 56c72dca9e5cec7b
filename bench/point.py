"""One measured point: start the server, connect, warm up, measure a window, stop.

Whatever happens, the point returns a row: a failure is data with a reason, not an
exception that ends the sweep.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.child import format_cpus
from bench.columns import STATUS_FAILED, STATUS_OK
from bench.cpus import Pinning
from bench.errors import PointFailed
from bench.load_workers import LoadResult, LoadWorkers, worker_count
from bench.sampler import TreeSampler, WindowUsage
from bench.server_control import ServerUnderTest
from loadgen.histogram import encode, merge, summarize

SAMPLE_INTERVAL_S = 0.25


@dataclass(frozen=True)
class PointSpec:
    model: str
    connections: int
    payload: int
    repeat: int
    workload: str = "closed"

    @property
    def point_id(self) -> str:
        return f"{self.model}-{self.workload}-c{self.connections}-p{self.payload}-r{self.repeat}"


@dataclass(frozen=True)
class Timing:
    duration_s: float
    warmup_s: float
    ready_timeout_s: float = 15.0


def run_point(run_id: str, spec: PointSpec, timing: Timing, pinning: Pinning) -> tuple[dict, dict[str, str]]:
    workers = worker_count(spec.connections, len(pinning.client))
    row: dict[str, Any] = {
        "run_id": run_id,
        "point_id": spec.point_id,
        "model": spec.model,
        "workload": spec.workload,
        "connections": spec.connections,
        "payload": spec.payload,
        "repeat": spec.repeat,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "client_workers": workers,
        "server_cpus": format_cpus(pinning.server),
        "client_cpus": format_cpus(pinning.client),
    }
    histograms: dict[str, str] = {}
    server = ServerUnderTest(spec.model, pinning.server)
    load: LoadWorkers | None = None
    try:
        server.start(timing.ready_timeout_s)
        load = LoadWorkers(server.host, server.port, spec.connections, spec.payload, pinning.client, workers)
        load.start()
        # Generous: thousands of connects against a slow accept loop take seconds.
        connect = load.wait_connected(timeout=30 + spec.connections / 200)
        row.update(connected=connect.connected, connect_s=connect.seconds)
        row["connect_errors"] = sum(connect.errors.values())
        histograms["connect"] = connect.histogram
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        window = load.schedule(timing.warmup_s, timing.duration_s)
        usage = _watch_window(server, window)
        result = load.collect(timeout=max(window[1] - time.monotonic(), 0) + 15)
        histograms["latency"] = encode(merge(result.histograms))
        _fill_measurements(row, spec, result, usage, connect.errors)
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        if connect.connected < spec.connections:
            raise PointFailed(
                f"only {connect.connected} of {spec.connections} connections opened "
                f"({_kinds(connect.errors)}{'; ' + '; '.join(connect.notes) if connect.notes else ''})"
            )
        if result.requests == 0:
            raise PointFailed(f"no request completed in the window ({_kinds(result.errors) or 'no errors'})")
        row["status"] = STATUS_OK
        notes = [*server.warnings]
        if row["errors"]:
            notes.append(f"{row['errors']} errors: {row['error_kinds']}")
        row["reason"] = "; ".join(notes)
    except PointFailed as exc:
        row["status"] = STATUS_FAILED
        row["reason"] = "; ".join([str(exc), *server.warnings])
    finally:
        if load is not None:
            load.stop()
        server.stop()
        row["server_exit_s"] = server.exit_s
    return row, histograms


def _watch_window(server: ServerUnderTest, window: tuple[float, float]) -> WindowUsage | None:
    """Sample the server's tree from the window's start to its end; stop early if it died."""
    _sleep_until(window[0])
    sampler = TreeSampler(server.pid)
    sampler.begin()
    while time.monotonic() < window[1]:
        if server.failure() is not None:
            break
        _sleep_until(min(window[1], time.monotonic() + SAMPLE_INTERVAL_S))
        sampler.tick()
    return sampler.end()


def _sleep_until(when: float) -> None:
    # Waiting for a point on the shared clock, not for another process to be ready.
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _fill_measurements(
    row: dict, spec: PointSpec, result: LoadResult, usage: WindowUsage | None, connect_errors: Counter
) -> None:
    errors = Counter(connect_errors)
    errors.update(result.errors)
    duration = result.duration_s
    row["requests"] = result.requests
    row["errors"] = sum(errors.values())
    row["error_kinds"] = _kinds(errors)
    row["duration_s"] = duration
    row["rps"] = result.requests / duration if duration > 0 else None
    row["mbps"] = result.requests * spec.payload / duration / 1e6 if duration > 0 else None
    row.update(summarize(merge(result.histograms)))
    row["client_cpu_pct"] = 100.0 * result.cpu_s / duration if duration > 0 else None
    if usage is not None:
        row["server_cpu_user_s"] = usage.cpu_user_s
        row["server_cpu_sys_s"] = usage.cpu_sys_s
        if result.requests:
            # Server CPU is bracketed by the harness's samples, requests by the workers' clocks:
            # scale the CPU to the workers' window so the ratio compares like with like.
            scale = duration / usage.seconds if usage.seconds > 0 else 1.0
            row["cpu_us_per_req"] = (usage.cpu_user_s + usage.cpu_sys_s) * scale * 1e6 / result.requests
        row["server_rss_bytes"] = usage.peak_rss_bytes
        row["server_threads"] = usage.peak_threads
        row["server_fds"] = usage.peak_fds
        row["server_processes"] = usage.peak_processes


def _kinds(errors: Counter) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(errors.items()) if v)


def unmeasured_row(run_id: str, spec: PointSpec, status: str, reason: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "point_id": spec.point_id,
        "model": spec.model,
        "workload": spec.workload,
        "connections": spec.connections,
        "payload": spec.payload,
        "repeat": spec.repeat,
        "status": status,
        "reason": reason,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
