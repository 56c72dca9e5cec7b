"""How much load can each engine generate? The built-in engine against Locust, side by side.

    python benchmarks/loadgen_capacity.py [--connections 100] [--repeats 3] [--duration 4] [--json FILE]

One echo server (the C `native` model, or `epoll` where it cannot be built) is started once,
pinned to the server CPU, and driven in turn, interleaved and repeated, by
  builtin: one `python -m loadgen` worker (bench.load_workers.LoadWorkers, closed loop), and
  locust:  `locust -f loadgen/locust_user.py --headless --processes 1` (a master and one worker),
both on the client CPU, at the same number of connections (one Locust user = one connection).
Each run has a warm-up and then a measured window of fixed length; the engines report the
requests completed inside the window and the window's measured length, so req/s never uses a
planned duration. Client CPU is what each load process reports from getrusage(RUSAGE_SELF)
over its own window, cross-checked from outside with psutil samples of the load process tree.
The table prints medians over the repeats and the ratios of the medians.

The whole script is bounded: every wait has a deadline and every process it starts is stopped by
PID in a finally block.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.errors import PointFailed
from bench.host import describe_host
from bench.interference import FOREIGN_LIMIT_PCT, STEAL_LIMIT_PCT, HostSnapshot, Interference, wait_for_quiet
from bench.interference import compare as compare_host
from bench.interference import snapshot as host_snapshot
from bench.load_workers import LoadPlan, LoadWorkers
from bench.processes import terminate_tree
from bench.sampler import sample_tree
from bench.server_control import ServerUnderTest
from loadgen.histogram import merge, summarize
from servers import registry

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadgen" / "locust_user.py"
ENGINES = ("builtin", "locust")
SAMPLE_INTERVAL_S = 0.1
# A load process busy this share of its CPU through the window was the limit.
SATURATED_SHARE = 0.9
# Locust spawns -r users per second; with -r equal to -u the ramp takes about one second.
LOCUST_RAMP_S = 1.0
# Between the close of Locust's measured window and --run-time's end, so every worker's result
# reaches the master while the master still listens.
LOCUST_TAIL_S = 1.5

MEASURED_HOW = {
    "req/s": "verified echoes completed inside the measured window / the window's length as measured by "
    "the load processes' CLOCK_MONOTONIC (never the planned duration)",
    "client CPU-us/req": "user+sys CPU of the load processes over their window, from getrusage(RUSAGE_SELF) "
    "in each process (builtin: the loadgen worker; locust: the worker plus the master), / requests",
    "psutil CPU-us/req": "cross-check from outside: the load process tree's CPU (psutil, sampled every "
    f"{SAMPLE_INTERVAL_S:g} s, interpolated to the window's ends) / requests; u+s and (user) split it: "
    "user is the engine's own code, sys the kernel's work charged to it (system calls, the loopback TCP "
    "done in its context, page faults)",
    "in flight": "requests in flight on average, by Little's law: req/s x mean latency; below the "
    "connection count, the engine spends part of each cycle outside the timed request",
    "client CPU %": "client CPU (getrusage) / window length: 100% = one whole CPU",
    "server CPU %": "the server process's CPU (psutil samples, same window) / window length; near 100% "
    "means the server, not the load generator, set the req/s",
    "other%": "CPU used by processes that are not ours during the window (/proc/stat minus our process "
    "trees and this script), in % of all the host's CPUs; a run is DISTURBED above "
    f"{FOREIGN_LIMIT_PCT:g}% (or steal above {STEAL_LIMIT_PCT:g}%)",
    "p50/p99 us": "microsecond HdrHistograms kept by each engine over the window (Locust's own stats "
    "round to whole ms and are not used)",
}


@dataclass
class Run:
    engine: str
    repeat: int
    ok: bool = False
    reason: str = ""
    requests: int = 0
    duration_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    connections_live: int = 0
    client_cpu_s: float = 0.0
    psutil_cpu_s: float | None = None
    psutil_user_s: float | None = None
    mean_us: float | None = None
    server_cpu_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    wall_s: float = 0.0
    host: Interference | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float | None:
        return self.requests / self.duration_s if self.ok and self.duration_s > 0 else None

    @property
    def cpu_us_per_req(self) -> float | None:
        return self.client_cpu_s * 1e6 / self.requests if self.ok and self.requests else None

    @property
    def psutil_us_per_req(self) -> float | None:
        if not self.ok or not self.requests or self.psutil_cpu_s is None:
            return None
        return self.psutil_cpu_s * 1e6 / self.requests

    def psutil_split_us(self) -> str:
        """User+sys CPU-us per request, from psutil: where an engine's cost goes, its own code
        or the kernel (system calls, loopback TCP, page faults)."""
        if not self.ok or not self.requests or self.psutil_cpu_s is None or self.psutil_user_s is None:
            return "-"
        user = self.psutil_user_s * 1e6 / self.requests
        return f"{user:.1f}+{self.psutil_us_per_req - user:.1f}" if self.psutil_us_per_req else "-"

    @property
    def psutil_user_us_per_req(self) -> float | None:
        if not self.ok or not self.requests or self.psutil_user_s is None:
            return None
        return self.psutil_user_s * 1e6 / self.requests

    @property
    def in_flight(self) -> float | None:
        """Requests in flight on average (Little's law: throughput x mean latency); a closed
        loop keeps every connection busy only if this is close to the connection count."""
        return self.rps * self.mean_us / 1e6 if self.rps is not None and self.mean_us is not None else None

    @property
    def client_cpu_pct(self) -> float | None:
        return 100 * self.client_cpu_s / self.duration_s if self.ok and self.duration_s > 0 else None

    @property
    def server_cpu_pct(self) -> float | None:
        if not self.ok or self.server_cpu_s is None or self.duration_s <= 0:
            return None
        return 100 * self.server_cpu_s / self.duration_s

    @property
    def disturbed(self) -> str:
        return self.host.disturbed if self.host else "host CPU not measured"

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "repeat": self.repeat,
            "ok": self.ok,
            "reason": self.reason,
            "requests": self.requests,
            "duration_s": self.duration_s,
            "rps": self.rps,
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_pct": self.client_cpu_pct,
            "cpu_us_per_req": self.cpu_us_per_req,
            "psutil_cpu_s": self.psutil_cpu_s,
            "psutil_user_s": self.psutil_user_s,
            "mean_us": self.mean_us,
            "in_flight": self.in_flight,
            "psutil_us_per_req": self.psutil_us_per_req,
            "server_cpu_pct": self.server_cpu_pct,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "errors": self.errors,
            "connections_live": self.connections_live,
            "wall_s": self.wall_s,
            "other_cpu_pct": self.host.foreign_cpu_pct if self.host else None,
            "steal_pct": self.host.steal_pct if self.host else None,
            "softirq_pct": self.host.softirq_pct if self.host else None,
            "disturbed": self.disturbed,
            **self.extra,
        }


class Timeline:
    """CPU seconds of process trees and the host's /proc/stat, sampled with timestamps, so that
    the CPU of any window (known only afterwards, e.g. from Locust's result file) can be read
    off by interpolation, and what other tenants did in it by bracketing snapshots."""

    def __init__(self, roots: dict[str, Callable[[], list[int]]]) -> None:
        self.roots = roots
        # name -> [(monotonic time, CPU seconds)], all CPU and user CPU only
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
        self.user_samples: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
        self.hosts: list[HostSnapshot] = []
        # pid -> the CPUs it may run on, as first seen: shows where each process really ran.
        self.affinity: dict[str, dict[int, list[int]]] = {name: {} for name in roots}
        # Every process seen in a tree; psutil.Process checks the start time as well as the
        # PID, so killing one that has gone can never hit a stranger that reused its PID.
        self.seen: dict[str, dict[int, psutil.Process]] = {name: {} for name in roots}

    def sample(self) -> None:
        self.hosts.append(host_snapshot())
        for name, pids in self.roots.items():
            total = user = 0.0
            seen = False
            for pid in pids():
                self._note_affinity(name, pid)
                tree = sample_tree(pid)
                if tree is not None:
                    total += tree.cpu_user_s + tree.cpu_sys_s
                    user += tree.cpu_user_s
                    seen = True
            if seen:
                now = time.monotonic()
                self.samples[name].append((now, total))
                self.user_samples[name].append((now, user))

    def _note_affinity(self, name: str, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            self.seen[name].setdefault(proc.pid, proc)
            if proc.pid not in self.affinity[name]:
                try:
                    self.affinity[name][proc.pid] = proc.cpu_affinity()
                except psutil.Error:
                    continue

    def cpu_between(self, name: str, start: float, end: float, user_only: bool = False) -> float | None:
        points = (self.user_samples if user_only else self.samples)[name]
        at_start, at_end = _interpolate(points, start), _interpolate(points, end)
        return None if at_start is None or at_end is None else at_end - at_start

    def interference(self, start: float, end: float) -> Interference | None:
        """The host's CPU from the last snapshot before `start` to the first after `end`,
        with our trees' CPU over the same span taken out."""
        before = [h for h in self.hosts if h.at <= start]
        after = [h for h in self.hosts if h.at >= end]
        if not before or not after:
            return None
        first, last = before[-1], after[0]
        ours = [self.cpu_between(name, first.at, last.at) for name in self.roots]
        if any(v is None for v in ours):
            return None
        return compare_host(first, last, sum(v for v in ours if v is not None))


def _interpolate(points: list[tuple[float, float]], when: float) -> float | None:
    # Only inside the sampled span: extrapolating would invent CPU time.
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if t0 <= when <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (when - t0) / (t1 - t0)
    return None


def sample_until(timeline: Timeline, until: float, done: Callable[[], bool] = lambda: False) -> None:
    """Sample every SAMPLE_INTERVAL_S until the monotonic time `until` or `done()`."""
    while time.monotonic() < until and not done():
        timeline.sample()
        time.sleep(min(SAMPLE_INTERVAL_S, max(until - time.monotonic(), 0)))
    timeline.sample()


# ------------------------------------------------------------------------------------------
# The two engines
# ------------------------------------------------------------------------------------------


def run_builtin(args: argparse.Namespace, server: ServerUnderTest, repeat: int) -> Run:
    run = Run("builtin", repeat)
    started = time.monotonic()
    plan = LoadPlan("closed", args.connections, args.payload)
    load = LoadWorkers(HOST, server.port, plan, (args.client_cpu,), workers=1)
    timeline = Timeline({"server": lambda: [server.pid], "client": lambda: [p.pid for p in load.popens]})
    try:
        load.start()
        connect = load.wait_connected(timeout=30)
        if connect.connected < args.connections:
            raise PointFailed(f"only {connect.connected} of {args.connections} connections opened: {connect.errors}")
        window = load.schedule(args.warmup, args.duration)
        sample_until(timeline, window[1] + 2 * SAMPLE_INTERVAL_S)
        result = load.collect(timeout=15)
        hist = merge(result.histograms)
        latency = summarize(hist)
        run.requests = result.requests
        run.duration_s = result.duration_s
        run.errors = {k: v for k, v in result.errors.items() if v}
        run.connections_live = result.live_connections
        run.client_cpu_s = result.cpu_s
        run.extra["client_affinity"] = timeline.affinity["client"]
        run.psutil_cpu_s = timeline.cpu_between("client", result.window_start, result.window_end)
        run.psutil_user_s = timeline.cpu_between("client", result.window_start, result.window_end, user_only=True)
        run.mean_us = hist.get_mean_value() if hist.get_total_count() else None
        run.server_cpu_s = timeline.cpu_between("server", result.window_start, result.window_end)
        run.host = timeline.interference(result.window_start, result.window_end)
        run.p50_us, run.p99_us = latency["p50_us"], latency["p99_us"]
        run.ok = result.requests > 0
        run.reason = "" if run.ok else "no request completed in the window"
    except PointFailed as exc:
        run.reason = str(exc)
    finally:
        load.stop()
        run.wall_s = time.monotonic() - started
    return run


def run_locust(args: argparse.Namespace, server: ServerUnderTest, repeat: int, workdir: Path) -> Run:
    run = Run("locust", repeat)
    started = time.monotonic()
    result_file = workdir / f"locust-r{repeat}.json"
    stats_prefix = workdir / f"locust-stats-r{repeat}"
    log_path = workdir / f"locust-r{repeat}.log"
    warmup = LOCUST_RAMP_S + args.warmup
    # Locust takes whole seconds only.
    run_time = math.ceil(warmup + args.duration + LOCUST_TAIL_S)
    users = str(args.connections)
    master_port = str(free_port())
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", f"tcp://{HOST}:{server.port}", "-u", users, "-r", users,
        "--run-time", f"{run_time}s", "--processes", "1", "--stop-timeout", "0",
        # The master's ZeroMQ socket on loopback only, and on a free port, not the shared 5557.
        "--master-bind-host", HOST, "--master-bind-port", master_port, "--master-port", master_port,
        "--only-summary", "--loglevel", "WARNING", "--json-file", str(stats_prefix),
        "--echo-payload", str(args.payload), "--echo-warmup", f"{warmup:g}",
        "--echo-window", f"{args.duration:g}", "--echo-result-file", str(result_file),
    ]  # fmt: skip
    popen: subprocess.Popen | None = None
    timeline: Timeline | None = None
    with open(log_path, "w") as log:
        try:
            # Inherits this script's affinity (the client CPU); stdout/stderr to a file, so a
            # chatty Locust can never block on a full pipe.
            popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT, start_new_session=True
            )
            proc = popen
            timeline = Timeline({"server": lambda: [server.pid], "client": lambda: [proc.pid]})
            # Locust's own start-up (imports, fork, the worker's handshake) comes before run_time.
            deadline = time.monotonic() + run_time + 30
            sample_until(timeline, deadline, done=lambda: proc.poll() is not None)
            if popen.poll() is None:
                raise PointFailed(f"locust still running {run_time + 30:.0f} s after its start")
            run.extra["locust_exit_code"] = popen.returncode
            run.extra["client_affinity"] = timeline.affinity["client"]
            if not result_file.exists():
                raise PointFailed(f"locust wrote no result (exit {popen.returncode}): {_tail(log_path)}")
            result = json.loads(result_file.read_text())
            if not result.get("processes"):
                raise PointFailed(f"no worker reported its window (exit {popen.returncode}): {_tail(log_path)}")
            run.requests = result["requests"]
            run.duration_s = result["duration_s"]
            run.errors = result["errors"]
            run.connections_live = result["users_at_close"]
            run.client_cpu_s = result["worker_cpu_s"] + result["master_cpu_s"]
            run.psutil_cpu_s = timeline.cpu_between("client", result["window_start"], result["window_end"])
            run.psutil_user_s = timeline.cpu_between(
                "client", result["window_start"], result["window_end"], user_only=True
            )
            hist = merge([result["histogram"]])
            run.mean_us = hist.get_mean_value() if hist.get_total_count() else None
            run.server_cpu_s = timeline.cpu_between("server", result["window_start"], result["window_end"])
            run.host = timeline.interference(result["window_start"], result["window_end"])
            run.p50_us, run.p99_us = result["latency"]["p50_us"], result["latency"]["p99_us"]
            run.extra.update(
                users_at_open=result["users_at_open"],
                locust_worker_cpu_s=result["worker_cpu_s"],
                locust_master_cpu_s=result["master_cpu_s"],
                errors_whole_run=result["errors_total"],
                locust_stats=_locust_stats(stats_prefix.with_name(stats_prefix.name + ".json")),
            )
            if result["users_at_open"] < args.connections:
                raise PointFailed(f"only {result['users_at_open']} of {args.connections} users connected")
            run.ok = run.requests > 0
            run.reason = "" if run.ok else "no request completed in the window"
        except PointFailed as exc:
            run.reason = str(exc)
        finally:
            if popen is not None:
                terminate_tree(popen, grace_s=2.0)
            if timeline is not None:
                # Locust's worker, should it outlive its master (terminate_tree cannot find the
                # children of a master already reaped).
                for proc in timeline.seen["client"].values():
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
            run.wall_s = time.monotonic() - started
    return run


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (it could be taken before Locust binds it:
    then that run fails with the reason, and the others go on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _locust_stats(path: Path) -> dict[str, Any] | None:
    """Locust's own whole-run totals (ramp-up included, ms-rounded): a sanity check only."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {
        "num_requests": sum(r["num_requests"] for r in rows),
        "num_failures": sum(r["num_failures"] for r in rows),
    }


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def _median(runs: list[Run], attr: str) -> float | None:
    values = [v for r in runs if r.ok and (v := getattr(r, attr)) is not None]
    return statistics.median(values) if values else None


def summarize_runs(runs: list[Run]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for engine in ENGINES:
        mine = [r for r in runs if r.engine == engine]
        ok = [r for r in mine if r.ok]
        rps = [r.rps for r in ok if r.rps is not None]
        out[engine] = {
            "runs_ok": len(ok),
            "runs": len(mine),
            "rps": _median(mine, "rps"),
            "rps_min": min(rps) if rps else None,
            "rps_max": max(rps) if rps else None,
            "cpu_us_per_req": _median(mine, "cpu_us_per_req"),
            "psutil_us_per_req": _median(mine, "psutil_us_per_req"),
            "psutil_user_us_per_req": _median(mine, "psutil_user_us_per_req"),
            "in_flight": _median(mine, "in_flight"),
            "client_cpu_pct": _median(mine, "client_cpu_pct"),
            "server_cpu_pct": _median(mine, "server_cpu_pct"),
            "p50_us": _median(mine, "p50_us"),
            "p99_us": _median(mine, "p99_us"),
            "errors": sum(sum(r.errors.values()) for r in mine),
            "runs_disturbed": sum(1 for r in ok if r.disturbed),
        }
    return out


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    b, lo = summary["builtin"], summary["locust"]
    return {
        "rps_builtin_over_locust": _ratio(b["rps"], lo["rps"]),
        "cpu_per_req_locust_over_builtin": _ratio(lo["cpu_us_per_req"], b["cpu_us_per_req"]),
    }


def _print_medians(title: str, summary: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(
        f"  {'engine':8} {'runs':>5} {'req/s':>9} {'(min-max)':>17} {'CPU-us/req':>10} {'psutil':>7} "
        f"{'(user)':>7} {'cli CPU%':>8} {'srv CPU%':>8} {'p50 us':>7} {'p99 us':>7} {'in flight':>9} "
        f"{'errors':>6} disturbed"
    )
    for engine, s in summary.items():
        span = f"{_fmt(s['rps_min'])}-{_fmt(s['rps_max'])}"
        print(
            f"  {engine:8} {s['runs_ok']:>2}/{s['runs']:<2} {_fmt(s['rps']):>9} {span:>17} "
            f"{_fmt(s['cpu_us_per_req'], '.1f'):>10} {_fmt(s['psutil_us_per_req'], '.1f'):>7} "
            f"{_fmt(s['psutil_user_us_per_req'], '.1f'):>7} {_fmt(s['client_cpu_pct']):>8} "
            f"{_fmt(s['server_cpu_pct']):>8} {_fmt(s['p50_us']):>7} {_fmt(s['p99_us']):>7} "
            f"{_fmt(s['in_flight']):>9} {s['errors']:>6} {s['runs_disturbed']}/{s['runs_ok']}"
        )
    r = ratios(summary)
    print(f"  ratio builtin/locust, req/s:             {_fmt(r['rps_builtin_over_locust'], '.2f')}x")
    print(f"  ratio locust/builtin, client CPU-us/req: {_fmt(r['cpu_per_req_locust_over_builtin'], '.2f')}x")


def print_report(
    runs: list[Run], summary: dict[str, dict[str, Any]], quiet: dict[str, dict[str, Any]], context: dict[str, Any]
) -> None:
    print(
        f"\nserver: {context['model']} pinned to CPU {context['server_cpu']}; load: CPU {context['client_cpu']}; "
        f"{context['connections']} connections, {context['payload']} B payload, closed loop; "
        f"window {context['duration']:g} s after {context['warmup']:g} s warm-up "
        f"(Locust: + {LOCUST_RAMP_S:g} s ramp-up)"
    )
    print("\nper run (in the order run):")
    print(
        f"  {'engine':8} {'rep':>3} {'req/s':>9} {'CPU-us/req':>10} {'psutil u+s':>11} {'cli CPU%':>8} "
        f"{'srv CPU%':>8} {'p50 us':>7} {'p99 us':>7} {'in flight':>9} {'window s':>8} {'other%':>6} errors"
    )
    for r in runs:
        errs = " ".join(f"{k}={v}" for k, v in r.errors.items()) or "0"
        other = r.host.foreign_cpu_pct if r.host else None
        line = (
            f"  {r.engine:8} {r.repeat:>3} {_fmt(r.rps):>9} {_fmt(r.cpu_us_per_req, '.1f'):>10} "
            f"{r.psutil_split_us():>11} {_fmt(r.client_cpu_pct):>8} {_fmt(r.server_cpu_pct):>8} "
            f"{_fmt(r.p50_us):>7} {_fmt(r.p99_us):>7} {_fmt(r.in_flight):>9} {_fmt(r.duration_s, '.3f'):>8} "
            f"{_fmt(other, '.1f'):>6} {errs}"
        )
        if not r.ok:
            line += f"  FAILED: {r.reason}"
        elif r.disturbed:
            line += f"  DISTURBED: {r.disturbed}"
        print(line)
    _print_medians("medians over all runs:", summary)
    if any(s["runs_disturbed"] for s in summary.values()):
        _print_medians("medians over the undisturbed runs only:", quiet)
    for engine, s in summary.items():
        if s["server_cpu_pct"] is not None and s["server_cpu_pct"] >= 100 * SATURATED_SHARE:
            print(
                f"note: the server used {s['server_cpu_pct']:.0f}% of its CPU under {engine}: there the server, "
                "not the engine, set the req/s; compare CPU-us/req for the engines' own cost"
            )
        if s["client_cpu_pct"] is not None and s["client_cpu_pct"] >= 100 * SATURATED_SHARE:
            print(f"note: {engine} used {s['client_cpu_pct']:.0f}% of its one CPU: it was the bottleneck")
    print(f"\nload average (1, 5, 15 min) before: {context['loadavg_before']}, after: {context['loadavg_after']}")
    print("how each number was measured:")
    for name, how in MEASURED_HOW.items():
        print(f"  {name}: {how}")
    print("  medians are over the successful runs of each engine; (min-max) is the spread of req/s")


# ------------------------------------------------------------------------------------------


def pick_model(requested: str) -> str:
    if requested != "auto":
        info = registry.describe(requested)
        if not info.available:
            raise SystemExit(f"model {requested} is unavailable here: {info.reason}")
        return requested
    for name in ("native", "epoll"):
        if registry.describe(name).available:
            return name
    raise SystemExit("neither the native nor the epoll server can run here")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100, help="connections = Locust users (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine, interleaved (default 3, max 10)")
    parser.add_argument("--duration", type=float, default=4.0, help="measured window, seconds (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before the window, seconds (default 1)")
    parser.add_argument("--payload", type=int, default=64, help="bytes per request (default 64)")
    parser.add_argument("--model", default="auto", help="server model (default: native, else epoll)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=3.0,
        help="before each run, wait up to this many seconds for the host to be quiet (default 3)",
    )
    parser.add_argument("--json", default="", metavar="FILE", help="also write every run and the medians here")
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 10:
        parser.error("--repeats must be 1..10")
    if not 1 <= args.payload <= 1_000_000:
        parser.error("--payload must be 1..1000000 bytes")
    if not 1 <= args.connections <= 5000:
        parser.error("--connections must be 1..5000 (one Locust process holds them all)")
    if not (0 < args.duration <= 60 and 0 <= args.warmup <= 30 and 0 <= args.quiet_wait <= 30):
        parser.error("--duration must be in (0, 60], --warmup and --quiet-wait in [0, 30]")
    allowed = os.sched_getaffinity(0)
    for cpu in (args.server_cpu, args.client_cpu):
        if cpu not in allowed:
            parser.error(f"CPU {cpu} is not available to this process ({sorted(allowed)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = pick_model(args.model)
    if args.server_cpu == args.client_cpu:
        print("warning: server and load share one CPU; the engines then compete with the server", file=sys.stderr)
    # This script and everything it starts without an explicit pin (Locust) run on the client
    # CPU, off the server's; the server and the loadgen worker pin themselves.
    os.sched_setaffinity(0, {args.client_cpu})
    context: dict[str, Any] = {
        "model": model,
        "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu,
        "connections": args.connections,
        "payload": args.payload,
        "duration": args.duration,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "command": [sys.executable, *sys.argv],
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    runs: list[Run] = []
    server = ServerUnderTest(model, (args.server_cpu,))
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="loadgen-capacity-") as tmp:
            server.start(ready_timeout=30)
            print(f"{model} server pid {server.pid} on {HOST}:{server.port}, CPU {args.server_cpu}", flush=True)
            for repeat in range(args.repeats):
                # Alternate which engine goes first, so drift over the run favours neither.
                order = ENGINES if repeat % 2 == 0 else ENGINES[::-1]
                for engine in order:
                    if (reason := server.failure()) is not None:
                        raise PointFailed(f"server failed: {reason}")
                    # Other tenants share this host: let a burst of theirs pass, but never wait long.
                    waited, busy = wait_for_quiet(args.quiet_wait)
                    if engine == "builtin":
                        run = run_builtin(args, server, repeat)
                    else:
                        run = run_locust(args, server, repeat, Path(tmp))
                    run.extra.update(quiet_wait_s=round(waited, 2), host_busy_pct_before=round(busy, 1))
                    runs.append(run)
                    status = f"{_fmt(run.rps)} req/s" if run.ok else f"FAILED: {run.reason}"
                    print(f"  {engine:8} r{repeat}: {status} ({run.wall_s:.1f} s)", flush=True)
    except PointFailed as exc:
        print(f"aborted: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: reporting the runs made so far", file=sys.stderr)
    finally:
        server.stop()
    context["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    context["elapsed_s"] = round(time.monotonic() - started, 1)
    summary = summarize_runs(runs)
    quiet = summarize_runs([r for r in runs if not r.disturbed])
    print_report(runs, summary, quiet, context)
    if args.json:
        doc = {
            "context": context,
            "host": describe_host({"server_cpus": [args.server_cpu], "client_cpus": [args.client_cpu]}),
            "measured_how": MEASURED_HOW,
            "runs": [r.as_dict() for r in runs],
            "medians": summary,
            "ratios": ratios(summary),
            "medians_undisturbed": quiet,
            "ratios_undisturbed": ratios(quiet),
        }
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(summary[e]["runs_ok"] for e in ENGINES) else 1


if __name__ == "__main__":
    sys.exit(main())
