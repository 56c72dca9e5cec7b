"""`bench profile`: the system calls each I/O model makes per request, counted by `strace -c`.

The I/O models' textbook claims made visible: a blocking server pays recv+send per request, select adds a
select() call, a non-blocking server without a multiplexer pays many failed recv() calls,
io_uring pays io_uring_enter and no recv/send at all.

Method, per model: start the server and the closed-loop load workers as `bench run` does, open
the connections and wait until the server has accepted them all (a fork server forks on accept),
then attach `strace -c -f` to every process and thread of the server's tree while it is idle,
and only then start the load, so that no request is in flight when the trace begins. Just
before the load window ends the load workers (not the server) are frozen with SIGSTOP, the
server finishes the echoes in flight, strace is detached with SIGINT (it writes its table) and
the workers resume after their window: their teardown (closing every connection) is never
traced, and the requests that match the traced calls are those the workers counted plus the
echoes waiting unread in their receive queues. Detaching while the load still ran would be
wrong in a less obvious way: untraced, the server speeds up many times, so the last moments
of the window hold far more than their share of the requests. Start-up is never traced.

What the numbers are: counts of calls and of failed calls, not timings. ptrace stops the server
twice per system call, so it runs many times slower than untraced, and a model whose call mix
depends on timing (how many events one epoll_wait returns, how many sweeps of a busy loop find
nothing) shows the mix it has at that slower speed.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import PointFailed, UsageError
from bench.measuring.host import describe_host
from bench.running.engines import LoadEngine, choose_engine, make_engine
from bench.running.load_workers import LoadPlan, worker_count
from bench.running.pipes import deadline_in, remaining
from bench.running.server_control import ServerUnderTest, wait_until_held
from bench.storing.columns import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED
from bench.storing.results_store import RunDirectory, create_results_dir, new_run_id, new_run_meta, recording_status
from bench.tracing.strace import (
    StraceAttachment,
    TracedRunConfig,
    add_traced_run_options,
    for_model,
    quiet,
    require_strace,
    strace_version,
    trace_each_model,
    traced_run_choices,
)

SYSCALLS_FILE = "syscalls.csv"
SYSCALL_COLUMNS = ["model", "syscall", "calls", "errors", "calls_per_req", "errors_per_req", "requests"]
STRACE_DIR = "strace"
KIND = "profile"

# The load workers are frozen this long before their window ends: at the end they close every
# connection, and the server's close/EOF handling is not per-request work.
DETACH_MARGIN_S = 0.05
# After the freeze the server has finished the echoes in flight once nothing changed for this
# long (a reader thread may hold a request for a moment before its writer sends it).
DRAIN_SETTLE_S = 0.05
DRAIN_TIMEOUT_S = 2.0
TOP_SYSCALLS = 6

METHOD_NOTE = (
    "strace -c -f attached to the server's whole process tree once every connection was accepted, "
    "before the closed-loop load started; at the end the load workers were frozen (SIGSTOP), the "
    "echoes in flight drained and strace detached (SIGINT) before the workers closed anything. "
    "requests = completed and counted by the workers + echoes served but still unread by them. "
    "Counts, not timings: under ptrace the server runs many times slower than untraced."
)


@dataclass(frozen=True)
class SyscallCount:
    name: str
    calls: int
    errors: int


def parse_strace_summary(text: str) -> dict[str, SyscallCount]:
    """The per-syscall rows of a `strace -c` table (the 'total' row left out).

    Columns are cut where the dashed rule under the header puts them, because an empty cell
    (no errors) leaves nothing to split on."""
    lines = text.splitlines()
    counts: dict[str, SyscallCount] = {}
    for i, line in enumerate(lines[:-1]):
        if not line.startswith("% time"):
            continue
        columns = _columns(line, lines[i + 1])
        for row in lines[i + 2 :]:
            if row.startswith("---"):
                break
            cells = {name: row[start:end].strip() for name, start, end in columns}
            name = cells.get("syscall", "")
            if not name or name == "total":
                continue
            calls = int(cells.get("calls") or 0)
            errors = int(cells.get("errors") or 0)
            # strace prints one table per personality (64/32-bit); a name seen twice adds up.
            if (old := counts.get(name)) is not None:
                calls, errors = calls + old.calls, errors + old.errors
            counts[name] = SyscallCount(name, calls, errors)
    return counts


def _columns(header: str, rule: str) -> list[tuple[str, int, int | None]]:
    """(name, start, end) per column: numbers are right-aligned to their rule's end, so a cell
    runs from the previous rule's end to its own; the last (the name) to the end of the line."""
    ends = [m for m in range(1, len(rule) + 1) if rule[m - 1] == "-" and (m == len(rule) or rule[m] != "-")]
    columns: list[tuple[str, int, int | None]] = []
    start = 0
    for k, end in enumerate(ends):
        last = k == len(ends) - 1
        columns.append((header[start : None if last else end].strip(), start, None if last else end))
        start = end
    return columns


@dataclass
class ModelProfile:
    """One model's result: counts over the traced part of the window, or why there are none."""

    model: str
    status: str = STATUS_FAILED
    reason: str = ""
    requests: int = 0
    window_requests: int = 0
    served_uncounted: int = 0
    traced_s: float = 0.0
    rps_under_strace: float = 0.0
    load_errors: dict[str, int] = field(default_factory=dict)
    traced_processes: int = 0
    traced_threads: int = 0
    detach_s: float = 0.0
    counts: dict[str, SyscallCount] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """syscalls.csv rows, most frequent first."""
        if self.status != STATUS_OK or self.requests <= 0:
            return []
        ordered = sorted(self.counts.values(), key=lambda c: (-c.calls, c.name))
        return [
            {
                "model": self.model,
                "syscall": c.name,
                "calls": c.calls,
                "errors": c.errors,
                "calls_per_req": round(c.calls / self.requests, 4),
                "errors_per_req": round(c.errors / self.requests, 4),
                "requests": self.requests,
            }
            for c in ordered
        ]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("counts")
        d["total_calls"] = sum(c.calls for c in self.counts.values())
        d["calls_per_req"] = round(d["total_calls"] / self.requests, 4) if self.requests else None
        return d


@dataclass(frozen=True, kw_only=True)
class ProfileConfig(TracedRunConfig):
    connections: int
    payload: int
    duration_s: float
    # c or python: the workers are frozen with SIGSTOP at the trace's end, which Locust's are not.
    engine: str = "c"


def profile_model(
    model: str, config: ProfileConfig, strace: str, out_dir: Path, on_phase: Callable[[str], None] = quiet
) -> ModelProfile:
    """Trace one model for one window; a failure becomes the profile's status and reason.
    on_phase(text) is told each step as it starts (for the live display)."""
    from bench.running.point import PointSpec
    from bench.running.preflight import preflight

    profile = ModelProfile(model)
    plan = LoadPlan("closed", config.connections, config.payload)
    workers = worker_count(plan, len(config.pinning.client))
    blocker = preflight(PointSpec(model, config.connections, config.payload, 0), workers)
    if blocker:
        profile.status, profile.reason = STATUS_SKIPPED, blocker
        return profile
    server = ServerUnderTest(model, config.pinning.server)
    tracer = StraceAttachment(strace, out_dir / f"{model}.txt", config.pinning.server, ["-c", "-S", "calls"])
    load: LoadEngine | None = None
    paused: list[int] = []
    try:
        on_phase("starting")
        server.start(config.ready_timeout_s)
        load = make_engine(config.engine, server.host, server.port, plan, config.pinning.client, workers)
        load.start()
        on_phase(f"connecting {config.connections:,}")
        connect = load.wait_connected(timeout=30 + config.connections / 200)
        if connect.connected < config.connections:
            raise PointFailed(f"only {connect.connected} of {config.connections} connections opened")
        # A client's connect() returns once the kernel queued it; a model that accepts lazily
        # (fork: one fork per accept) must have made its processes before strace attaches, or
        # set-up would be counted as per-request work and the new children's calls missed.
        wait_until_held(server, config.connections, config.ready_timeout_s)
        on_phase("attaching strace")
        tracer.attach(server.pid)
        profile.traced_processes, profile.traced_threads = tracer.processes, tracer.threads
        attached_at = time.monotonic()
        # No warm-up: the load starts with strace already attached, so nothing is in flight
        # at the trace's start, and every request counted has all its server calls traced.
        window = load.schedule(0.0, config.duration_s)
        on_phase("window (traced)")
        _sleep_until(window[1] - DETACH_MARGIN_S, server)
        # The trace's end: freeze the load workers (not the server) before their window ends,
        # let the server finish the echoes in flight, then
        # detach. Requests the server served but the frozen workers have not counted yet are
        # the echoes waiting in the clients' receive queues: added to the count below.
        paused_at = time.monotonic()
        paused = _signal_all(load.pids(), signal.SIGSTOP)
        on_phase("draining, detaching strace")
        served_uncounted, settled = _drain(server.port, DRAIN_TIMEOUT_S)
        detach_from = time.monotonic()
        summary = tracer.detach()
        profile.detach_s = time.monotonic() - detach_from
        profile.traced_s = time.monotonic() - attached_at
        # Resumed after the window's end, the workers count nothing more: what they counted
        # is exactly what completed before they were frozen.
        _sleep_until(window[1] + 0.01)
        _signal_all(paused, signal.SIGCONT)
        paused = []
        result = load.collect(timeout=15)
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        profile.counts = parse_strace_summary(summary)
        profile.window_requests = result.requests
        profile.served_uncounted = served_uncounted
        profile.load_errors = {k: v for k, v in result.errors.items() if v}
        loaded_s = paused_at - result.window_start
        if result.requests == 0 or loaded_s <= 0:
            raise PointFailed(f"no request completed in the window ({_kinds(profile.load_errors) or 'no errors'})")
        if not profile.counts:
            raise PointFailed("strace counted no system calls")
        profile.requests = result.requests + served_uncounted
        profile.rps_under_strace = result.requests / loaded_s
        profile.status = STATUS_OK
        notes = [*server.warnings]
        if not settled:
            notes.append(
                f"server still busy {DRAIN_TIMEOUT_S:g} s after the load paused: counts may include extra work"
            )
        if profile.load_errors:
            notes.append(f"load errors: {_kinds(profile.load_errors)}")
        profile.reason = "; ".join(notes)
    except PointFailed as exc:
        profile.status = STATUS_FAILED
        profile.reason = "; ".join([str(exc), *server.warnings])
    finally:
        on_phase("stopping")
        # Frozen workers would ignore SIGTERM; strace before the server, so that the server's
        # shutdown is not traced and no tracer is left holding a process.
        _signal_all(paused, signal.SIGCONT)
        tracer.stop()
        if load is not None:
            load.stop()
        server.stop()
    return profile


def _sleep_until(when: float, server: ServerUnderTest | None = None) -> None:
    # Waiting for a point on the shared clock; a server that died ends the wait early.
    while (delay := when - time.monotonic()) > 0:
        if server is not None and server.failure() is not None:
            return
        time.sleep(min(delay, 0.05))


def _signal_all(pids: list[int], signum: int) -> list[int]:
    """Signal our own children by PID; returns those that got it."""
    done = []
    for pid in pids:
        try:
            os.kill(pid, signum)
            done.append(pid)
        except ProcessLookupError:
            continue
    return done


def _tcp_receive_queues(port: int) -> tuple[list[int], list[int]]:
    """Bytes waiting in the receive queues of the server's sockets on `port` and of the clients'
    sockets connected to it (established loopback IPv4 connections only)."""
    server_rx: list[int] = []
    client_rx: list[int] = []
    with open("/proc/net/tcp") as fh:
        next(fh, None)
        for line in fh:
            f = line.split()
            if len(f) < 5 or f[3] != "01":  # 01: ESTABLISHED
                continue
            rx = int(f[4].split(":")[1], 16)
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                server_rx.append(rx)
            elif int(f[2].rsplit(":", 1)[1], 16) == port:
                client_rx.append(rx)
    return server_rx, client_rx


def _drain(port: int, timeout: float) -> tuple[int, bool]:
    """Wait until the server has read every request sent to it and its echoes stopped arriving.

    Returns the number of client connections holding an echo they have not read (requests
    served but not counted) and whether the server settled in time."""
    deadline = deadline_in(timeout)
    last: int | None = None
    stable_since = time.monotonic()
    waiting = 0
    while remaining(deadline) > 0:
        server_rx, client_rx = _tcp_receive_queues(port)
        waiting = sum(1 for rx in client_rx if rx > 0)
        now = time.monotonic()
        if any(server_rx) or waiting != last:
            last, stable_since = waiting, now
        elif now - stable_since >= DRAIN_SETTLE_S:
            return waiting, True
        time.sleep(0.005)
    return waiting, False


def _kinds(errors: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(errors.items()) if v)


def run_profile(
    config: ProfileConfig,
    strace: str,
    on_model: Callable[[ModelProfile], None] | None = None,
    run_dir: RunDirectory | None = None,
    on_phase: Callable[[str, str], None] | None = None,
) -> tuple[RunDirectory, list[ModelProfile]]:
    """Profile every model in turn into `run_dir` (default: a new one under config.out);
    syscalls.csv grows model by model so an interrupted run keeps what it measured."""
    from servers import registry

    if run_dir is None:
        run_dir = RunDirectory.create(config.out, new_run_id())
    run_id = run_dir.path.name
    traces = run_dir.path / STRACE_DIR
    traces.mkdir()
    _write_header(run_dir.path / SYSCALLS_FILE)
    profiles: list[ModelProfile] = []
    meta: dict[str, Any] = {
        "kind": KIND,
        **new_run_meta(run_id),
        "config": config.as_dict(),
        "method": METHOD_NOTE,
        "strace": {"path": strace, "version": strace_version(strace)},
        "models": [registry.describe(m).as_dict() for m in config.models],
        "host": describe_host(),
        "profiles": [],
    }
    run_dir.write_run(meta)
    with recording_status(run_dir, meta):
        for model in config.models:
            if model in config.unavailable:
                profile = ModelProfile(model, STATUS_SKIPPED, f"unavailable here: {config.unavailable[model]}")
            else:
                profile = profile_model(model, config, strace, traces, for_model(on_phase, model))
            profiles.append(profile)
            _append_rows(run_dir.path / SYSCALLS_FILE, profile.rows())
            meta["profiles"].append(profile.as_dict())
            run_dir.write_run(meta)
            if on_model is not None:
                on_model(profile)
    return run_dir, profiles


def _write_header(path: Path) -> None:
    with open(path, "w", newline="") as fh:
        csv.DictWriter(fh, fieldnames=SYSCALL_COLUMNS).writeheader()


def _append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SYSCALL_COLUMNS, extrasaction="raise")
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def read_syscalls(run_path: Path) -> list[dict[str, Any]]:
    """syscalls.csv of a profile run, typed; [] when the run has none (e.g. a `bench run` directory)."""
    path = Path(run_path) / SYSCALLS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [
            {
                "model": r["model"],
                "syscall": r["syscall"],
                "calls": int(r["calls"]),
                "errors": int(r["errors"]),
                "calls_per_req": float(r["calls_per_req"]),
                "errors_per_req": float(r["errors_per_req"]),
                "requests": int(r["requests"]),
            }
            for r in csv.DictReader(fh)
        ]


def top_syscalls(rows: list[dict[str, Any]], model: str, n: int = TOP_SYSCALLS) -> list[dict[str, Any]]:
    """A model's n most frequent system calls per request (rows as read_syscalls returns them)."""
    mine = [r for r in rows if r["model"] == model]
    return sorted(mine, key=lambda r: (-r["calls_per_req"], r["syscall"]))[:n]


def format_top_syscalls(rows: list[dict[str, Any]], model: str, n: int = TOP_SYSCALLS) -> str:
    """'recvfrom 2.45 (1.45 failed), sendto 1.00, ...': the failures are the point for some
    models (non-blocking polling, edge-triggered draining), so they are shown beside the calls."""
    cells = []
    for r in top_syscalls(rows, model, n):
        failed = f" ({r['errors_per_req']:.2f} failed)" if r["errors"] else ""
        cells.append(f"{r['syscall']} {r['calls_per_req']:.2f}{failed}")
    return ", ".join(cells)


def print_summary(profiles: list[ModelProfile], run_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = read_syscalls(run_path)
    table = Table(
        "model",
        "requests",
        "req/s (traced)",
        "calls/req",
        "top calls per request (failed per request)",
        title="System calls per request (strace -c -f; counts, not timings)",
    )
    for p in profiles:
        if p.status != STATUS_OK:
            table.add_row(p.model, "", "", "", f"[red]{p.status}[/red]: {p.reason}")
            continue
        total = sum(c.calls for c in p.counts.values()) / p.requests
        table.add_row(
            p.model, f"{p.requests:,}", f"{p.rps_under_strace:,.0f}", f"{total:.2f}", format_top_syscalls(rows, p.model)
        )
    console = Console()
    console.print(table)
    console.print(
        "Under ptrace every system call stops the server twice: throughput is far below untraced, "
        "and calls that batch with load (events per epoll_wait, empty sweeps of a busy loop) show "
        "the mix at that lower speed."
    )


def add_profile_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `bench profile` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "profile",
        help="count each model's system calls per request with strace -c",
        description="Run each model briefly under `strace -c -f` and record system calls per request.",
    )
    add_traced_run_options(parser, "the load workers")
    parser.add_argument("--connections", type=int, default=50, help="closed-loop connections (default 50)")
    parser.add_argument("--payload", type=int, default=64, help="bytes per request (default 64)")
    parser.add_argument("--duration", type=float, default=2.0, help="traced window per model, seconds (default 2)")
    parser.add_argument(
        "--engine", choices=["c", "python"], default=None, help="load engine (default: c where it can be built)"
    )
    parser.set_defaults(func=cmd_profile)
    return parser


def _config(args: argparse.Namespace) -> ProfileConfig:
    common = traced_run_choices(args)
    if args.connections < 1:
        raise UsageError(f"--connections must be >= 1, got {args.connections}")
    if args.payload < 1:
        raise UsageError(f"--payload must be >= 1, got {args.payload}")
    if not math.isfinite(args.duration) or args.duration <= 2 * DETACH_MARGIN_S:
        raise UsageError(f"--duration must be > {2 * DETACH_MARGIN_S:g} s, got {args.duration}")
    engine, warnings = choose_engine(args.engine)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return ProfileConfig(
        **common, connections=args.connections, payload=args.payload, duration_s=args.duration, engine=engine
    )


def cmd_profile(args: argparse.Namespace) -> int:
    """`bench profile`: 0 when the run completed (a failed model is data, as in `bench run`),
    130 if interrupted; raises UsageError (exit 2 via bench.cli.main) on bad options or without strace."""
    config = _config(args)
    strace = require_strace("bench profile")
    create_results_dir(config.out)
    from bench.reporting.report import render_report

    def line(p: ModelProfile) -> str:
        detail = f"{p.requests:,} requests traced" if p.status == STATUS_OK else p.reason
        return f"{p.model:>12} {p.status}: {detail}"

    def run(
        on_model: Callable[[ModelProfile], None], run_dir: RunDirectory, on_phase: Callable[[str, str], None]
    ) -> list[ModelProfile]:
        return run_profile(config, strace, on_model=on_model, run_dir=run_dir, on_phase=on_phase)[1]

    done = trace_each_model(config.models, "profiling", config.pinning.client, config.out, run, line, render_report)
    if done is None:
        return 130
    run_dir, profiles = done
    print_summary(profiles, run_dir.path)
    report = render_report(run_dir.path)
    print(f"run directory: {run_dir.path}\nsyscalls: {run_dir.path / SYSCALLS_FILE}\nreport: {report}")
    return 0
