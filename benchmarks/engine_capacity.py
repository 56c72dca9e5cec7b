"""The yardstick: how much load does each engine generate, per client CPU, against a plain C client?

    python benchmarks/engine_capacity.py [--connections 1,10,100,1000] [--repeats 3] [--duration 3]
                                         [--engines c,python,locust,plain] [--json FILE]

One echo server (the C `native` model, or `epoll` where it cannot be built) is started once,
pinned to the server CPU, and driven at each connection count by every engine in turn, on the
client CPU, closed loop (one request outstanding per connection, 64-byte payloads):
  c:      the compiled load worker (loadgen/native/worker.c), one worker process,
  python: one `python -m loadgen` worker,
  locust: a Locust master and one worker with the raw-TCP echo user (one user = one connection),
          as `bench run --engine locust --locust-workers 1` drives it,
  plain:  benchmarks/plain_client.c, a ~100-line closed-loop epoll client that shares no code
          with the engines: what anybody would write, the yardstick the others are divided by.
The first three are made by bench.running.engines.make_engine exactly as `bench run --engine` makes them,
so this measures the engines the harness uses, with their own connect phase and schedule.
Repeats are interleaved: within a connection count, every repeat runs each engine once, and the
order rotates from repeat to repeat, so drift on this shared host favours no engine.

Each run has a warm-up and then a measured window; every engine reports the requests completed
inside its window and the window's length as it measured it on CLOCK_MONOTONIC, so req/s never
uses a planned duration. Client CPU is what each load process reports from getrusage over its
own window, cross-checked from outside with psutil samples of the load process tree. The table
prints medians over the repeats and each engine's ratios to the plain client's medians.

The whole script is bounded: every wait has a deadline and every process it starts is stopped by
PID in a finally block.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import psutil

import cbuild
from bench.errors import PointFailed
from bench.errors import UsageError as BenchUsageError
from bench.measuring.host import describe_host
from bench.measuring.interference import (
    FOREIGN_LIMIT_PCT,
    STEAL_LIMIT_PCT,
    HostSnapshot,
    Interference,
    wait_for_quiet,
)
from bench.measuring.interference import compare as compare_host
from bench.measuring.interference import snapshot as host_snapshot
from bench.measuring.sampler import sample_tree
from bench.running.engines import LoadEngine, make_engine, unavailable_reason
from bench.running.load_workers import LoadPlan, c_io_choice
from bench.running.pipes import MessageReader
from bench.running.server_control import ServerUnderTest
from loadgen.histogram import merge, summarize
from servers import registry

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
PLAIN_SOURCE = ROOT / "benchmarks" / "plain_client.c"
ENGINES = ("c", "python", "locust", "plain")
YARDSTICK = "plain"
DEFAULT_CONNECTIONS = (1, 10, 100, 1000)
# One worker process per engine holds every connection: stay well under RLIMIT_NOFILE (20000 here).
MAX_CONNECTIONS = 5000
SAMPLE_INTERVAL_S = 0.1
# A process busy this share of its CPU through the window was the limit.
SATURATED_SHARE = 0.9
# Beyond warm-up + window: process start-up (Locust's imports take seconds) and the connect phase.
START_BUDGET_S = 30.0

MEASURED_HOW = {
    "req/s": "verified echoes completed inside the measured window / the window's length as measured by "
    "the load processes' CLOCK_MONOTONIC (never the planned duration)",
    "CPU-µs/req": "user+sys CPU of the load processes over their window, from getrusage(RUSAGE_SELF) in "
    "each process (c, python: the worker; locust: the worker plus the master; plain: the client), / requests",
    "psutil": "cross-check from outside: the load process tree's CPU (psutil, sampled every "
    f"{SAMPLE_INTERVAL_S:g} s, interpolated to the window's ends) / requests, split user+sys: user is the "
    "engine's own code, sys the kernel's work charged to it (system calls, loopback TCP done in its "
    "context, page faults)",
    "p50/p99 µs": "latency from send to the whole echo: HdrHistograms kept by the engines (Locust's own stats "
    "round to whole ms and are not used); the plain client counts 1 µs buckets",
    "cli CPU%": "client CPU (getrusage) / window length: 100% = one whole CPU",
    "srv CPU%": "the server process's CPU (psutil samples, same window) / window length; near 100% means "
    "the server, not the engine, set the req/s: then compare CPU-µs/req",
    "x plain": "the engine's median divided by the plain client's median at the same connection count "
    "(req/s: above 1 is faster; CPU-µs/req: below 1 is cheaper)",
    "disturbed": "runs whose window saw CPU used by processes that are not ours (/proc/stat minus our "
    f"process trees and this script) above {FOREIGN_LIMIT_PCT:g}% of the host's CPUs, or steal above "
    f"{STEAL_LIMIT_PCT:g}%",
}


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


@dataclass
class Run:
    engine: str
    connections: int
    repeat: int
    ok: bool = False
    reason: str = ""
    requests: int = 0
    duration_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    psutil_cpu_s: float | None = None
    psutil_user_s: float | None = None
    server_cpu_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    wall_s: float = 0.0
    host: Interference | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float | None:
        """Requests per second over the measured window (req/s)."""
        return self.requests / self.duration_s if self.ok and self.duration_s > 0 else None

    @property
    def cpu_us_per_req(self) -> float | None:
        """Client CPU (getrusage, user+sys) per request, µs."""
        return self.client_cpu_s * 1e6 / self.requests if self.ok and self.requests else None

    @property
    def psutil_us_per_req(self) -> float | None:
        """Client CPU per request seen from outside (psutil), µs."""
        if not self.ok or not self.requests or self.psutil_cpu_s is None:
            return None
        return self.psutil_cpu_s * 1e6 / self.requests

    @property
    def psutil_user_us_per_req(self) -> float | None:
        """The user-mode part of psutil_us_per_req, µs."""
        if not self.ok or not self.requests or self.psutil_user_s is None:
            return None
        return self.psutil_user_s * 1e6 / self.requests

    @property
    def client_cpu_pct(self) -> float | None:
        """Client CPU over the window, % of one CPU."""
        return 100 * self.client_cpu_s / self.duration_s if self.ok and self.duration_s > 0 else None

    @property
    def server_cpu_pct(self) -> float | None:
        """Server CPU over the window, % of one CPU."""
        if not self.ok or self.server_cpu_s is None or self.duration_s <= 0:
            return None
        return 100 * self.server_cpu_s / self.duration_s

    @property
    def disturbed(self) -> str:
        return self.host.disturbed if self.host else "host CPU not measured"

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "connections": self.connections,
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
            "psutil_us_per_req": self.psutil_us_per_req,
            "server_cpu_pct": self.server_cpu_pct,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "errors": self.errors,
            "wall_s": self.wall_s,
            "other_cpu_pct": self.host.foreign_cpu_pct if self.host else None,
            "steal_pct": self.host.steal_pct if self.host else None,
            "softirq_pct": self.host.softirq_pct if self.host else None,
            "disturbed": self.disturbed,
            **self.extra,
        }


class Timeline:
    """CPU seconds of process trees and the host's /proc/stat, sampled with timestamps, so that
    the CPU of any window (known only afterwards, from the engine's result) can be read off by
    interpolation, and what other tenants did in it by bracketing snapshots."""

    def __init__(self, roots: dict[str, Callable[[], list[int]]]) -> None:
        self.roots = roots
        # name -> [(monotonic time, CPU seconds)], all CPU and user CPU only
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
        self.user_samples: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
        self.hosts: list[HostSnapshot] = []
        # pid -> the CPUs it may run on, as first seen: shows where each process really ran.
        self.affinity: dict[str, dict[int, list[int]]] = {name: {} for name in roots}

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
            if proc.pid not in self.affinity[name]:
                try:
                    self.affinity[name][proc.pid] = proc.cpu_affinity()
                except psutil.Error:
                    continue

    def cpu_between(self, name: str, start: float, end: float, user_only: bool = False) -> float | None:
        """CPU seconds the tree `name` used between two monotonic times (s), or None when the
        samples do not span them."""
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

    def fill(self, run: Run, window_start: float, window_end: float) -> None:
        """Put the psutil view of the window (client, server, host) into `run`."""
        run.psutil_cpu_s = self.cpu_between("client", window_start, window_end)
        run.psutil_user_s = self.cpu_between("client", window_start, window_end, user_only=True)
        run.server_cpu_s = self.cpu_between("server", window_start, window_end)
        run.host = self.interference(window_start, window_end)
        run.extra["client_affinity"] = self.affinity["client"]


def _interpolate(points: list[tuple[float, float]], when: float) -> float | None:
    # Only inside the sampled span: extrapolating would invent CPU time.
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if t0 <= when <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (when - t0) / (t1 - t0)
    return None


def sample_until(timeline: Timeline, until: float, done: Callable[[], bool] = lambda: False) -> None:
    """Sample every SAMPLE_INTERVAL_S until the monotonic time `until` (s) or `done()`."""
    while time.monotonic() < until and not done():
        timeline.sample()
        time.sleep(min(SAMPLE_INTERVAL_S, max(until - time.monotonic(), 0)))
    timeline.sample()


# ------------------------------------------------------------------------------------------
# The engines
# ------------------------------------------------------------------------------------------


def make_load_engine(name: str, port: int, plan: LoadPlan, client_cpu: int) -> LoadEngine:
    """The one place where an engine ("c", "python" or "locust") is made, as `bench run --engine`
    makes it: one worker process on the client CPU, like the plain client (Locust adds its
    master). Not started yet."""
    return make_engine(name, HOST, port, plan, (client_cpu,), 1)


def engine_unavailable(name: str) -> str | None:
    """Why `name` cannot run on this host, or None when it can (compiles the C programs)."""
    if name == YARDSTICK:
        try:
            plain_binary()
        except cbuild.BuildError as exc:
            return f"plain client: {exc}"
        return None
    return unavailable_reason(name)


def plain_binary() -> Path:
    """The plain client, compiled on first use (cached by source, compiler and flags)."""
    return cbuild.build("plain-client", PLAIN_SOURCE)


def run_engine(name: str, args: argparse.Namespace, server: ServerUnderTest, conns: int, repeat: int) -> Run:
    run = Run(name, conns, repeat)
    started = time.monotonic()
    load: LoadEngine | None = None
    try:
        load = make_load_engine(name, server.port, LoadPlan("closed", conns, args.payload), args.client_cpu)
        timeline = Timeline({"server": lambda: [server.pid], "client": load.pids})
        load.start()
        connect = load.wait_connected(timeout=START_BUDGET_S + load.extra_connect_timeout_s)
        # Which request loop the C engine ran (io_uring or epoll), and why not io_uring when not.
        run.extra.update({"engine_io": connect.io} if connect.io else {})
        run.extra.update({"io_why": "; ".join(connect.io_why)} if connect.io_why else {})
        if connect.connected < conns:
            raise PointFailed(f"only {connect.connected} of {conns} connections opened: {dict(connect.errors)}")
        window = load.schedule(args.warmup, args.duration)
        sample_until(timeline, window[1] + 2 * SAMPLE_INTERVAL_S)
        result = load.collect(timeout=15)
        latency = summarize(merge(result.histograms))
        run.requests = result.requests
        run.duration_s = result.duration_s
        run.errors = {k: v for k, v in (connect.errors + result.errors).items() if v}
        run.client_cpu_s = result.cpu_s
        run.p50_us, run.p99_us = latency["p50_us"], latency["p99_us"]
        timeline.fill(run, result.window_start, result.window_end)
        run.ok = result.requests > 0
        run.reason = "" if run.ok else "no request completed in the window"
    except (PointFailed, OSError) as exc:
        run.reason = str(exc)
    finally:
        if load is not None:
            load.stop()
        run.wall_s = time.monotonic() - started
    return run


def run_plain(args: argparse.Namespace, server: ServerUnderTest, conns: int, repeat: int) -> Run:
    run = Run(YARDSTICK, conns, repeat)
    started = time.monotonic()
    popen: subprocess.Popen | None = None
    try:
        cmd = [str(plain_binary()), HOST, str(server.port), str(conns), str(args.payload)]
        cmd += [repr(args.warmup), repr(args.duration)]
        # This script already runs on the client CPU and the child inherits that; pinning the
        # PID as well keeps it there even if this script's own affinity changes later.
        popen = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        os.sched_setaffinity(popen.pid, {args.client_cpu})
        proc = popen
        out = MessageReader(popen.stdout, "plain-client")
        err = MessageReader(popen.stderr, "plain-client-err")
        timeline = Timeline({"server": lambda: [server.pid], "client": lambda: [proc.pid]})
        deadline = time.monotonic() + args.warmup + args.duration + START_BUDGET_S
        result = None
        while result is None and time.monotonic() < deadline:
            timeline.sample()
            result = out.next(SAMPLE_INTERVAL_S)
            if result is None and popen.poll() is not None and out.closed.is_set():
                err.wait_closed(1.0)
                tail = [line for line in err.tail if line.strip()]
                raise PointFailed(f"plain client exited with status {popen.returncode}: {' | '.join(tail[-2:])}")
        if result is None:
            raise PointFailed(f"plain client sent no result within {deadline - started:.0f} s")
        # The client waits for EOF on stdin after its result: this sample lies after its window.
        timeline.sample()
        run.requests = int(result["requests"])
        run.duration_s = float(result["duration_s"])
        run.errors = {"broken": int(result["errors"])} if result["errors"] else {}
        run.client_cpu_s = float(result["cpu_user_s"]) + float(result["cpu_sys_s"])
        run.p50_us = result["p50_us"] if result["p50_us"] >= 0 else None
        run.p99_us = result["p99_us"] if result["p99_us"] >= 0 else None
        timeline.fill(run, float(result["window_start"]), float(result["window_end"]))
        run.ok = run.requests > 0
        run.reason = "" if run.ok else "no request completed in the window"
    except (PointFailed, cbuild.BuildError, OSError, KeyError, TypeError, ValueError) as exc:
        run.reason = str(exc) or type(exc).__name__
    finally:
        if popen is not None:
            stop_plain(popen)
        run.wall_s = time.monotonic() - started
    return run


def stop_plain(popen: subprocess.Popen) -> None:
    """End the plain client: EOF on its stdin is its cue to exit; SIGKILL by PID after 2 s (it
    has no children, and a Popen not yet reaped cannot name somebody else's process)."""
    with contextlib.suppress(OSError):
        popen.stdin.close()
    try:
        popen.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=5.0)
    for stream in (popen.stdout, popen.stderr):
        with contextlib.suppress(OSError):
            stream.close()


# ------------------------------------------------------------------------------------------
# Statistics and the table
# ------------------------------------------------------------------------------------------


def _median(runs: list[Run], attr: str) -> float | None:
    values = [v for r in runs if r.ok and (v := getattr(r, attr)) is not None]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize_runs(runs: list[Run], engines: list[str], counts: list[int]) -> dict[int, dict[str, dict[str, Any]]]:
    """Per connection count and engine: medians over the successful runs (req/s, CPU-µs/req,
    p50/p99 µs, CPU %), the spread of req/s, and the ratios of the medians to the plain client's."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for conns in counts:
        out[conns] = {}
        for engine in engines:
            mine = [r for r in runs if r.engine == engine and r.connections == conns]
            ok = [r for r in mine if r.ok]
            rps = [r.rps for r in ok if r.rps is not None]
            out[conns][engine] = {
                "runs_ok": len(ok),
                "runs": len(mine),
                "rps": _median(mine, "rps"),
                "rps_min": min(rps) if rps else None,
                "rps_max": max(rps) if rps else None,
                "cpu_us_per_req": _median(mine, "cpu_us_per_req"),
                "psutil_us_per_req": _median(mine, "psutil_us_per_req"),
                "psutil_user_us_per_req": _median(mine, "psutil_user_us_per_req"),
                "client_cpu_pct": _median(mine, "client_cpu_pct"),
                "server_cpu_pct": _median(mine, "server_cpu_pct"),
                "p50_us": _median(mine, "p50_us"),
                "p99_us": _median(mine, "p99_us"),
                "errors": sum(sum(r.errors.values()) for r in mine),
                "runs_disturbed": sum(1 for r in ok if r.disturbed),
                "failures": sorted({r.reason for r in mine if not r.ok}),
            }
        plain = out[conns].get(YARDSTICK)
        for engine, s in out[conns].items():
            s["rps_x_plain"] = _ratio(s["rps"], plain["rps"]) if plain else None
            s["cpu_x_plain"] = _ratio(s["cpu_us_per_req"], plain["cpu_us_per_req"]) if plain else None
            s["paired_rps_x_plain"] = _paired(runs, engine, conns, "rps")
            s["paired_cpu_x_plain"] = _paired(runs, engine, conns, "cpu_us_per_req")
    return out


def _paired(runs: list[Run], engine: str, conns: int, attr: str) -> list[float]:
    """engine / plain of `attr` within each repeat (the two ran back to back, so a phase of the
    host's noise touches both), sorted: the side-by-side ratios whose median the verdict reads."""
    by_repeat: dict[int, dict[str, float]] = {}
    for r in runs:
        if r.connections == conns and r.ok and (v := getattr(r, attr)) is not None:
            by_repeat.setdefault(r.repeat, {})[r.engine] = v
    return sorted(m[engine] / m[YARDSTICK] for m in by_repeat.values() if engine in m and m.get(YARDSTICK))


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(summary: dict[int, dict[str, dict[str, Any]]], skipped: dict[str, str]) -> None:
    """Medians per connection count and engine, with the ratios to the plain client."""
    header = (
        f"{'conns':>5} {'engine':7} {'runs':>5} {'req/s':>9} {'(min-max)':>17} {'CPU-µs/req':>10} "
        f"{'psutil u+s':>11} {'p50 µs':>7} {'p99 µs':>7} {'cli CPU%':>8} {'srv CPU%':>8} "
        f"{'req/s x plain':>13} {'CPU x plain':>11} {'errors':>6} disturbed"
    )
    print(header)
    for conns, engines in summary.items():
        for engine, s in engines.items():
            span = f"{_fmt(s['rps_min'])}-{_fmt(s['rps_max'])}" if s["rps"] is not None else "-"
            user, total = s["psutil_user_us_per_req"], s["psutil_us_per_req"]
            split = f"{user:.1f}+{total - user:.1f}" if user is not None and total is not None else "-"
            line = (
                f"{conns:>5} {engine:7} {s['runs_ok']:>2}/{s['runs']:<2} {_fmt(s['rps']):>9} {span:>17} "
                f"{_fmt(s['cpu_us_per_req'], '.2f'):>10} {split:>11} {_fmt(s['p50_us']):>7} "
                f"{_fmt(s['p99_us']):>7} {_fmt(s['client_cpu_pct']):>8} {_fmt(s['server_cpu_pct']):>8} "
                f"{_fmt(s['rps_x_plain'], '.2f'):>13} {_fmt(s['cpu_x_plain'], '.2f'):>11} {s['errors']:>6} "
                f"{s['runs_disturbed']}/{s['runs_ok']}"
            )
            if s["failures"]:
                line += f"  FAILED: {'; '.join(s['failures'])}"
            print(line)
    for engine, reason in skipped.items():
        print(f"{'':>5} {engine:7} skipped: {reason}")


def print_verdict(summary: dict[int, dict[str, dict[str, Any]]]) -> None:
    """Each engine against the plain client at 10 connections and more: req/s at least the
    plain client's and CPU-µs per request no higher, on the medians."""
    counts = [c for c in summary if c >= 10]
    engines = [e for e in next(iter(summary.values()), {}) if e != YARDSTICK]
    if not counts or YARDSTICK not in next(iter(summary.values()), {}):
        return
    print(
        "\nagainst the plain client at 10+ connections: median of the ratios within each repeat "
        "(min-max); meets = req/s x plain >= 1 and CPU x plain <= 1:"
    )
    for engine in engines:
        cells, ok = [], True
        for conns in counts:
            s = summary[conns][engine]
            rps, cpu = s["paired_rps_x_plain"], s["paired_cpu_x_plain"]
            rx = statistics.median(rps) if rps else None
            cx = statistics.median(cpu) if cpu else None
            ok = ok and rx is not None and cx is not None and rx >= 1 and cx <= 1
            cells.append(
                f"{conns}: {_fmt(rx, '.2f')}x req/s ({_span(rps)}), {_fmt(cx, '.2f')}x CPU-µs/req ({_span(cpu)})"
            )
        print(f"  {engine:7} {'meets' if ok else 'does not meet'} it   ({'; '.join(cells)})")


def _span(values: list[float]) -> str:
    return f"{values[0]:.2f}-{values[-1]:.2f}" if values else "-"


def print_notes(summary: dict[int, dict[str, dict[str, Any]]], context: dict[str, Any]) -> None:
    for conns, engines in summary.items():
        bound = [e for e, s in engines.items() if (s["server_cpu_pct"] or 0) >= 100 * SATURATED_SHARE]
        if bound:
            print(
                f"note: at {conns} connections the server used >= {100 * SATURATED_SHARE:.0f}% of its CPU under "
                f"{', '.join(bound)}: there the server set the req/s; CPU-µs/req is the engines' own cost"
            )
    print(f"\nload average (1, 5, 15 min) before: {context['loadavg_before']}, after: {context['loadavg_after']}")
    print("how each number was measured:")
    for name, how in MEASURED_HOW.items():
        print(f"  {name}: {how}")
    print("  medians are over the successful runs; (min-max) is the spread of req/s over them")


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _connection_list(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--connections must be a comma-separated list of integers, not {text!r}") from None
    if not counts or any(not 1 <= c <= MAX_CONNECTIONS for c in counts):
        raise UsageError(f"--connections: each count must be 1..{MAX_CONNECTIONS}, not {text!r}")
    return sorted(set(counts))


def _engine_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown or not names:
        raise UsageError(
            f"--engines: unknown engine {','.join(unknown) or repr(text)} (choose from {','.join(ENGINES)})"
        )
    # The fixed order keeps the table's rows in one order whatever the user typed.
    return [e for e in ENGINES if e in names]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked; raises UsageError (one line) on bad input."""
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--connections", default=",".join(map(str, DEFAULT_CONNECTIONS)), help="counts, e.g. 1,10,100,1000 (default)"
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {','.join(ENGINES)} (default all)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine and count, interleaved (default 3)")
    parser.add_argument("--duration", type=float, default=3.0, help="measured window, s (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up before the window, s (default 1)")
    parser.add_argument("--payload", type=int, default=64, help="bytes per request (default 64)")
    parser.add_argument("--model", default="auto", help="server model (default: native, else epoll)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU for every load process (default 1)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=3.0,
        help="before each run, wait up to this many seconds for the host to be quiet (default 3)",
    )
    parser.add_argument("--json", default="", metavar="FILE", help="also write every run and the medians here")
    args = parser.parse_args(argv)
    args.connections = _connection_list(args.connections)
    args.engines = _engine_list(args.engines)
    if "c" in args.engines:
        try:
            c_io_choice()
        except BenchUsageError as exc:
            raise UsageError(str(exc)) from None
    if not 1 <= args.repeats <= 20:
        raise UsageError("--repeats must be 1..20")
    if not 1 <= args.payload <= 1_000_000:
        raise UsageError("--payload must be 1..1000000 bytes")
    finite = all(math.isfinite(v) for v in (args.duration, args.warmup, args.quiet_wait))
    if not (finite and 0 < args.duration <= 60 and 0 <= args.warmup <= 30 and 0 <= args.quiet_wait <= 30):
        raise UsageError("--duration must be in (0, 60] s, --warmup and --quiet-wait in [0, 30] s")
    allowed = os.sched_getaffinity(0)
    for cpu in (args.server_cpu, args.client_cpu):
        if cpu not in allowed:
            raise UsageError(f"CPU {cpu} is not available to this process ({sorted(allowed)})")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UsageError(f"--json: no directory {Path(args.json).resolve().parent}")
    return args


def pick_model(requested: str) -> str:
    """The server model to drive; raises UsageError when it cannot run here."""
    if requested != "auto":
        if requested not in registry.model_names():
            raise UsageError(f"unknown model {requested!r}")
        info = registry.describe(requested)
        if not info.available:
            raise UsageError(f"model {requested} is unavailable here: {info.reason}")
        return requested
    for name in ("native", "epoll"):
        if registry.describe(name).available:
            return name
    raise UsageError("neither the native nor the epoll server can run here")


def measure(args: argparse.Namespace, engines: list[str], server: ServerUnderTest, runs: list[Run]) -> None:
    """Every connection count, every repeat, every engine once, in an order rotating between
    repeats; appends to `runs` as it goes, so an interruption keeps what was measured."""
    for conns in args.connections:
        for repeat in range(args.repeats):
            shift = repeat % len(engines)
            for engine in engines[shift:] + engines[:shift]:
                if (reason := server.failure()) is not None:
                    raise PointFailed(f"server failed: {reason}")
                # Other tenants share this host: let a burst of theirs pass, but never wait long.
                waited, busy = wait_for_quiet(args.quiet_wait)
                if engine == YARDSTICK:
                    run = run_plain(args, server, conns, repeat)
                else:
                    run = run_engine(engine, args, server, conns, repeat)
                run.extra.update(quiet_wait_s=round(waited, 2), host_busy_pct_before=round(busy, 1))
                runs.append(run)
                other = run.host.foreign_cpu_pct if run.host else None
                status = (
                    f"{_fmt(run.rps):>9} req/s {_fmt(run.cpu_us_per_req, '.2f'):>6} CPU-µs/req "
                    f"p50 {_fmt(run.p50_us)} µs, other CPU {_fmt(other, '.1f')}%"
                    if run.ok
                    else f"FAILED: {run.reason}"
                )
                loop = f" [{run.extra['engine_io']}]" if "engine_io" in run.extra else ""
                why = f" (not io_uring: {run.extra['io_why']})" if "io_why" in run.extra else ""
                print(f"  {conns:>5} conns r{repeat} {engine:7} {status} ({run.wall_s:.1f} s){loop}{why}", flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        model = pick_model(args.model)
    except UsageError as exc:
        print(f"engine_capacity: error: {exc}", file=sys.stderr)
        return 2
    if args.server_cpu == args.client_cpu:
        print("warning: server and load share one CPU; the engines then compete with the server", file=sys.stderr)
    # This script and everything it starts without an explicit pin (Locust) run on the client
    # CPU, off the server's; the server and the built-in workers pin themselves.
    os.sched_setaffinity(0, {args.client_cpu})
    skipped = {e: why for e in args.engines if (why := engine_unavailable(e)) is not None}
    engines = [e for e in args.engines if e not in skipped]
    for engine, why in skipped.items():
        print(f"skipping {engine}: {why}", file=sys.stderr)
    context: dict[str, Any] = {
        "model": model,
        "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu,
        "connections": args.connections,
        "engines": engines,
        "skipped": skipped,
        "payload": args.payload,
        "duration": args.duration,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "command": [sys.executable, *sys.argv],
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    runs: list[Run] = []
    aborted = False
    server = ServerUnderTest(model, (args.server_cpu,))
    started = time.monotonic()
    try:
        server.start(ready_timeout=30)
        print(
            f"{model} server pid {server.pid} on {HOST}:{server.port}, CPU {args.server_cpu}; load on CPU "
            f"{args.client_cpu}, one process per engine (Locust: a master and one worker); {args.payload} B "
            f"closed loop; window {args.duration:g} s after {args.warmup:g} s warm-up; {args.repeats} repeats",
            flush=True,
        )
        if engines:
            measure(args, engines, server, runs)
    except PointFailed as exc:
        print(f"aborted: {exc}", file=sys.stderr)
        aborted = True
    except KeyboardInterrupt:
        print("interrupted: reporting the runs made so far", file=sys.stderr)
        aborted = True
    finally:
        server.stop()
    context["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    context["elapsed_s"] = round(time.monotonic() - started, 1)
    summary = summarize_runs(runs, engines, args.connections)
    print()
    print_table(summary, skipped)
    print_verdict(summary)
    print_notes(summary, context)
    if args.json:
        quiet = summarize_runs([r for r in runs if not r.disturbed], engines, args.connections)
        doc = {
            "context": context,
            "host": describe_host({"server_cpus": [args.server_cpu], "client_cpus": [args.client_cpu]}),
            "measured_how": MEASURED_HOW,
            "runs": [r.as_dict() for r in runs],
            "medians": {str(conns): by_engine for conns, by_engine in summary.items()},
            "medians_undisturbed": {str(conns): by_engine for conns, by_engine in quiet.items()},
        }
        try:
            Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        except OSError as exc:
            print(f"engine_capacity: error: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {args.json}")
    everything_ran = all(s["runs_ok"] for by_engine in summary.values() for s in by_engine.values())
    return 0 if engines and everything_ran and not aborted else 1


if __name__ == "__main__":
    sys.exit(main())
