"""`bench profile`: the system calls each I/O model makes per request, counted by `strace -c`.

The seed's claims made visible: a blocking server pays recv+send per request, select adds a
select() call, a non-blocking server without a multiplexer pays many failed recv() calls,
io_uring pays io_uring_enter and no recv/send at all.

Method, per model: start the server and the closed-loop load workers as `bench run` does, open
the connections, then attach `strace -c -f` to every process of the server's tree while it is
idle, and only then start the load (no warm-up: an echo server has nothing to warm). strace is
sent SIGINT a little before the load window ends, because the load workers close their
connections at the window's end and the server's teardown calls are not per-request costs; the
request count is scaled to the part of the window that was traced. Start-up and connection
set-up are never traced.

What the numbers are: counts of calls and of failed calls, not timings. ptrace stops the server
twice per system call, so it runs many times slower than untraced, and a model whose call mix
depends on timing (how many events one epoll_wait returns, how many sweeps of a busy loop find
nothing) shows the mix it has at that slower speed.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cpus import Pinning, default_pinning, parse_pinning
from bench.errors import PointFailed, UsageError
from bench.host import describe_host
from bench.load_workers import LoadPlan, LoadWorkers, worker_count
from bench.pipes import deadline_in, remaining
from bench.processes import process_tree
from bench.results_store import RunDirectory, new_run_id
from bench.server_control import ServerUnderTest

SYSCALLS_FILE = "syscalls.csv"
SYSCALL_COLUMNS = ["model", "syscall", "calls", "errors", "calls_per_req", "errors_per_req", "requests"]
STRACE_DIR = "strace"
KIND = "profile"
STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"

# strace is stopped this long before the window's end: the workers close every connection
# at the end, and the server's close/EOF handling must not be counted as per-request work.
DETACH_MARGIN_S = 0.05
ATTACH_TIMEOUT_S = 15.0
DETACH_TIMEOUT_S = 15.0
TOP_SYSCALLS = 6

METHOD_NOTE = (
    "strace -c -f attached to the server's whole process tree after its connections were open, "
    "detached just before the load window ended; requests scaled to the traced part of the window. "
    "Counts, not timings: under ptrace the server runs many times slower than untraced."
)


@dataclass(frozen=True)
class SyscallCount:
    name: str
    calls: int
    errors: int


def parse_strace_summary(text: str) -> dict[str, SyscallCount]:
    """The per-syscall rows of a `strace -c` table (the 'total' row left out).

    Columns are found from the dashed rule under the header, because empty cells (no errors)
    leave nothing to split on."""
    lines = text.splitlines()
    counts: dict[str, SyscallCount] = {}
    for i, line in enumerate(lines):
        if not line.startswith("% time") or i + 1 >= len(lines):
            continue
        spans = _column_spans(lines[i + 1])
        names = [line[a:b].strip() if b is not None else line[a:].strip() for a, b in _widen(spans)]
        for row in lines[i + 2 :]:
            if row.startswith("---"):
                break
            cells = {n: (row[a:b] if b is not None else row[a:]).strip() for n, (a, b) in zip(names, _widen(spans))}
            name = cells.get("syscall", "")
            if not name or name == "total":
                continue
            calls = int(cells.get("calls") or 0)
            errors = int(cells.get("errors") or 0)
            # With several personalities strace prints one table each; a name adds up.
            old = counts.get(name)
            if old is not None:
                calls, errors = calls + old.calls, errors + old.errors
            counts[name] = SyscallCount(name, calls, errors)
    return counts


def _column_spans(rule: str) -> list[tuple[int, int]]:
    spans, start = [], None
    for pos, ch in enumerate(rule + " "):
        if ch == "-" and start is None:
            start = pos
        elif ch != "-" and start is not None:
            spans.append((start, pos))
            start = None
    return spans


def _widen(spans: list[tuple[int, int]]) -> list[tuple[int, int | None]]:
    # Each column runs from just after the previous rule to the end of its own; the last one
    # (the syscall name) to the end of the line, since names can be longer than the rule.
    out: list[tuple[int, int | None]] = []
    prev = 0
    for k, (_, end) in enumerate(spans):
        out.append((prev, None if k == len(spans) - 1 else end))
        prev = end
    return out


@dataclass
class ModelProfile:
    """One model's result: counts over the traced part of the window, or why there are none."""

    model: str
    status: str = STATUS_FAILED
    reason: str = ""
    requests: int = 0
    traced_fraction: float = 0.0
    window_requests: int = 0
    window_s: float = 0.0
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


@dataclass(frozen=True)
class ProfileConfig:
    models: list[str]
    connections: int
    payload: int
    duration_s: float
    out: Path
    pinning: Pinning
    ready_timeout_s: float = 15.0
    unavailable: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["pinning"] = self.pinning.as_dict()
        return d


def find_strace() -> str | None:
    return shutil.which("strace")


class StraceAttachment:
    """`strace -c -f -p ...` on a process tree: attached, confirmed, detached with SIGINT so
    that it writes its summary. The tracees are never harmed: only strace is signalled."""

    def __init__(self, strace: str, output: Path, cpus: tuple[int, ...]) -> None:
        self.strace = strace
        self.output = output
        self.cpus = cpus
        self.popen: subprocess.Popen | None = None
        self.processes = 0
        self.threads = 0

    def attach(self, root_pid: int, timeout: float = ATTACH_TIMEOUT_S) -> None:
        tree = process_tree(root_pid)
        if not tree:
            raise PointFailed("server exited before strace could attach")
        pids = [str(p.pid) for p in tree]
        # -f also follows threads and children made while attached; a fork model's children
        # made before are in the tree, so each gets its own -p. -q: no attach/detach chatter.
        cmd = [self.strace, "-c", "-f", "-q", "-S", "calls", "-o", str(self.output)]
        for pid in pids:
            cmd += ["-p", pid]
        self.popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_detach_if_parent_dies,
        )
        # On the server's CPUs: a traced call is a hand-off between tracee and tracer, and a
        # cross-core hand-off costs ~100 us here; on the client's CPUs it would slow the load.
        try:
            os.sched_setaffinity(self.popen.pid, set(self.cpus))
        except OSError:
            pass
        self._wait_attached([p.pid for p in tree], timeout)

    def _wait_attached(self, pids: list[int], timeout: float) -> None:
        assert self.popen is not None
        deadline = deadline_in(timeout)
        while True:
            if self.popen.poll() is not None:
                raise PointFailed(f"strace exited with status {self.popen.returncode}: {self._stderr_tail()}")
            tasks = [t for pid in pids for t in _tasks(pid)]
            untraced = [t for t in tasks if _tracer(*t) not in (self.popen.pid, None)]
            if tasks and not untraced:
                self.processes, self.threads = len(pids), len(tasks)
                return
            if remaining(deadline) <= 0:
                raise PointFailed(
                    f"strace did not attach to {len(untraced)} of {len(tasks)} threads in {timeout:.0f} s"
                )
            time.sleep(0.01)

    def detach(self, timeout: float = DETACH_TIMEOUT_S) -> str:
        """SIGINT strace (it detaches from everything and writes its table); returns the table."""
        if self.popen is None:
            return ""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGINT)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                raise PointFailed(f"strace did not detach within {timeout:.0f} s") from None
        stderr = self._stderr_tail()
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        try:
            return self.output.read_text()
        except OSError as exc:
            raise PointFailed(f"strace wrote no summary ({exc.strerror}); stderr: {stderr}") from None

    def _stderr_tail(self) -> str:
        assert self.popen is not None
        if self.popen.poll() is None or self.popen.stderr is None or self.popen.stderr.closed:
            return "no output on stderr"
        lines = [line.strip() for line in self.popen.stderr.read().splitlines() if line.strip()]
        return lines[-1] if lines else "no output on stderr"

    def stop(self) -> None:
        """Detach if still attached, whatever state we are in; the summary is not needed."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            self.detach(timeout=5.0)
        except PointFailed:
            pass


def _tasks(pid: int) -> list[tuple[int, int]]:
    try:
        return [(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _tracer(pid: int, tid: int) -> int | None:
    """The thread's tracer PID (0: none), or None when the thread is gone and needs none."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as fh:
            for line in fh:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _detach_if_parent_dies() -> None:
    # Runs in the forked child before exec: if bench dies (even by SIGKILL), strace gets
    # SIGTERM, detaches and lets the server go on to be stopped by its own die-with-parent.
    if _prctl is not None:
        _prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def profile_model(model: str, config: ProfileConfig, strace: str, out_dir: Path) -> ModelProfile:
    """Trace one model for one window; a failure becomes the profile's status and reason."""
    from bench.point import PointSpec
    from bench.preflight import preflight

    profile = ModelProfile(model)
    plan = LoadPlan("closed", config.connections, config.payload)
    workers = worker_count(plan, len(config.pinning.client))
    blocker = preflight(PointSpec(model, config.connections, config.payload, 0), workers)
    if blocker:
        profile.status, profile.reason = STATUS_SKIPPED, blocker
        return profile
    server = ServerUnderTest(model, config.pinning.server)
    tracer = StraceAttachment(strace, out_dir / f"{model}.txt", config.pinning.server)
    load: LoadWorkers | None = None
    try:
        server.start(config.ready_timeout_s)
        load = LoadWorkers(server.host, server.port, plan, config.pinning.client, workers)
        load.start()
        connect = load.wait_connected(timeout=30 + config.connections / 200)
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        if connect.connected < config.connections:
            raise PointFailed(f"only {connect.connected} of {config.connections} connections opened")
        tracer.attach(server.pid)
        profile.traced_processes, profile.traced_threads = tracer.processes, tracer.threads
        window = load.schedule(0.0, config.duration_s)
        stop_at = max(window[0], window[1] - DETACH_MARGIN_S)
        while time.monotonic() < stop_at and server.failure() is None:
            time.sleep(min(0.05, max(0.0, stop_at - time.monotonic())))
        detached_at = time.monotonic()
        summary = tracer.detach()
        profile.detach_s = time.monotonic() - detached_at
        result = load.collect(timeout=max(window[1] - time.monotonic(), 0) + 15)
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        profile.counts = parse_strace_summary(summary)
        profile.window_requests = result.requests
        profile.window_s = result.duration_s
        profile.load_errors = {k: v for k, v in result.errors.items() if v}
        if result.requests == 0 or result.duration_s <= 0:
            raise PointFailed("no request completed in the window")
        if not profile.counts:
            raise PointFailed("strace counted no system calls")
        # Requests completed at a steady rate; only those before the detach had their calls counted.
        profile.traced_fraction = min(1.0, max(0.0, (detached_at - result.window_start) / result.duration_s))
        profile.requests = round(result.requests * profile.traced_fraction)
        profile.rps_under_strace = result.requests / result.duration_s
        if profile.requests <= 0:
            raise PointFailed("no request completed while strace was attached")
        profile.status = STATUS_OK
        notes = [*server.warnings]
        if profile.load_errors:
            notes.append("load errors: " + " ".join(f"{k}={v}" for k, v in sorted(profile.load_errors.items())))
        profile.reason = "; ".join(notes)
    except PointFailed as exc:
        profile.status = STATUS_FAILED
        profile.reason = "; ".join([str(exc), *server.warnings])
    finally:
        # strace first: a server stopped while traced would have its exit counted, and a
        # tracer left attached would hold its tracees.
        tracer.stop()
        if load is not None:
            load.stop()
        server.stop()
    return profile


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_profile(
    config: ProfileConfig, strace: str, on_model: Callable[[ModelProfile], None] | None = None
) -> tuple[RunDirectory, list[ModelProfile]]:
    """Profile every model in turn into a new run directory; syscalls.csv grows model by model
    so an interrupted run keeps what it measured."""
    from servers import registry

    run_id = new_run_id()
    run_dir = RunDirectory.create(config.out, run_id)
    traces = run_dir.path / STRACE_DIR
    traces.mkdir()
    _write_header(run_dir.path / SYSCALLS_FILE)
    profiles: list[ModelProfile] = []
    meta: dict[str, Any] = {
        "kind": KIND,
        "run_id": run_id,
        "started": _now(),
        "finished": None,
        "status": "running",
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": config.as_dict(),
        "method": METHOD_NOTE,
        "strace": {"path": strace, "version": _strace_version(strace)},
        "models": [registry.describe(m).as_dict() for m in config.models],
        "host": describe_host(),
        "profiles": [],
    }
    run_dir.write_run(meta)
    try:
        for model in config.models:
            if model in config.unavailable:
                profile = ModelProfile(model, STATUS_SKIPPED, f"unavailable here: {config.unavailable[model]}")
            else:
                profile = profile_model(model, config, strace, traces)
            profiles.append(profile)
            _append_rows(run_dir.path / SYSCALLS_FILE, profile.rows())
            meta["profiles"].append(profile.as_dict())
            run_dir.write_run(meta)
            if on_model is not None:
                on_model(profile)
        meta["status"] = "complete"
    except KeyboardInterrupt:
        meta["status"] = "interrupted"
        raise
    finally:
        meta["finished"] = _now()
        run_dir.write_run(meta)
    return run_dir, profiles


def _strace_version(strace: str) -> str:
    try:
        out = subprocess.run([strace, "-V"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0].strip() if out else ""


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


def print_summary(profiles: list[ModelProfile], run_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = read_syscalls(run_path)
    table = Table(
        "model",
        "requests",
        "req/s (traced)",
        "calls/req",
        f"top system calls per request (errors per request), first {TOP_SYSCALLS}",
        title="System calls per request (strace -c -f; counts, not timings)",
    )
    for p in profiles:
        if p.status != STATUS_OK:
            table.add_row(p.model, "", "", "", f"[red]{p.status}[/red]: {p.reason}")
            continue
        cells = []
        for r in top_syscalls(rows, p.model):
            err = f" ({r['errors_per_req']:.2f} err)" if r["errors"] else ""
            cells.append(f"{r['syscall']} {r['calls_per_req']:.2f}{err}")
        total = sum(c.calls for c in p.counts.values()) / p.requests
        table.add_row(p.model, f"{p.requests:,}", f"{p.rps_under_strace:,.0f}", f"{total:.2f}", ", ".join(cells))
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
    parser.add_argument("--models", default="all", help="comma-separated model names, or 'all' (default)")
    parser.add_argument("--connections", type=int, default=50, help="closed-loop connections (default 50)")
    parser.add_argument("--payload", type=int, default=64, help="bytes per request (default 64)")
    parser.add_argument("--duration", type=float, default=2.0, help="traced window per model, seconds (default 2)")
    parser.add_argument("--out", default=os.environ.get("BENCH_RESULTS", "results"), help="results directory")
    parser.add_argument("--ready-timeout", type=float, default=15.0, help="seconds a server may take to listen")
    parser.add_argument("--server-cpus", default="", help="CPUs for the server and strace (default: first half)")
    parser.add_argument("--client-cpus", default="", help="CPUs for the load workers (default: the rest)")
    parser.set_defaults(func=cmd_profile)
    return parser


def _select_models(text: str) -> tuple[list[str], dict[str, str]]:
    from servers import registry

    infos = {info.name: info for info in registry.describe_all()}
    if text.strip() == "all":
        return [n for n, i in infos.items() if i.available], {}
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in infos]
    if unknown or not names:
        raise UsageError(f"unknown model(s) {', '.join(unknown) or text!r}; known: {', '.join(infos)} or 'all'")
    return names, {m: infos[m].reason for m in names if not infos[m].available}


def _config(args: argparse.Namespace) -> ProfileConfig:
    models, unavailable = _select_models(args.models)
    if not models:
        raise UsageError("no model is available on this host (see `bench models`)")
    if args.connections < 1:
        raise UsageError(f"--connections must be >= 1, got {args.connections}")
    if args.payload < 1:
        raise UsageError(f"--payload must be >= 1, got {args.payload}")
    if args.duration <= 2 * DETACH_MARGIN_S:
        raise UsageError(f"--duration must be > {2 * DETACH_MARGIN_S:g} s, got {args.duration}")
    if bool(args.server_cpus) != bool(args.client_cpus):
        raise UsageError("--server-cpus and --client-cpus go together")
    try:
        pinning = parse_pinning(args.server_cpus, args.client_cpus) if args.server_cpus else default_pinning()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return ProfileConfig(
        models=models,
        connections=args.connections,
        payload=args.payload,
        duration_s=args.duration,
        out=Path(args.out),
        pinning=pinning,
        ready_timeout_s=args.ready_timeout,
        unavailable=unavailable,
    )


@contextmanager
def _harness_context(client_cpus: tuple[int, ...]) -> Iterator[None]:
    # As in `bench run`: the harness sits beside the load workers, off the server's CPUs, and
    # SIGTERM takes Ctrl-C's path so strace is detached and every child stopped. Both are put
    # back afterwards, so a caller in the same process (a test) is left as it was.
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    affinity = os.sched_getaffinity(0)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        os.sched_setaffinity(0, set(client_cpus))
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.sched_setaffinity(0, affinity)


def cmd_profile(args: argparse.Namespace) -> int:
    """`bench profile`: 0 when the run completed (a failed model is data, as in `bench run`),
    130 if interrupted; raises UsageError (exit 2 via bench.cli.main) on bad options or without strace."""
    strace = find_strace()
    if strace is None:
        raise UsageError("strace not found on PATH; `bench profile` needs it (e.g. apt-get install strace)")
    config = _config(args)
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out {args.out}: {exc.strerror}") from None

    def progress(p: ModelProfile) -> None:
        detail = f"{p.requests:,} requests traced" if p.status == STATUS_OK else p.reason
        print(f"{p.model:>12} {p.status}: {detail}", flush=True)

    with _harness_context(config.pinning.client):
        try:
            run_dir, profiles = run_profile(config, strace, on_model=progress)
        except KeyboardInterrupt:
            print("interrupted: the models profiled so far are kept", file=sys.stderr)
            return 130
    print_summary(profiles, run_dir.path)
    print(f"run directory: {run_dir.path}\nsyscalls: {run_dir.path / SYSCALLS_FILE}")
    return 0
