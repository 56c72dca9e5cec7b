"""One measured point: preflight, start the server, connect, warm up, measure a window, stop.

Whatever happens, the point returns a row: a failure is data with a reason, not an
exception that ends the sweep.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psutil

from bench.errors import PointFailed
from bench.measuring import shed, stability, tcp_counters
from bench.measuring.accept_queue import wait_accepted
from bench.measuring.cpu_visit import arrive, leave, visit
from bench.measuring.interference import (
    CpuSplit,
    HostSnapshot,
    Interference,
    compare,
    cpu_split,
    snapshot,
    wait_for_quiet,
)
from bench.measuring.sampler import TreeSample, TreeSampler, WindowUsage, kernel_slab_bytes, sample_tree
from bench.running.cpus import Pinning
from bench.running.engines import LoadEngine, engine_class, make_engine
from bench.running.load_workers import LoadPlan, LoadResult
from bench.running.preflight import preflight
from bench.running.server_control import ExternalServer, ServerUnderTest
from bench.storing.columns import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED
from bench.storing.results_store import now_iso
from childproc import format_cpus
from loadgen.histogram import encode, merge, summarize
from servers.base import DEFAULT_BACKLOG

# The harness shares the client CPUs with the load workers: each psutil pass over the server's
# tree is a pause for them, so peaks are sampled once a second, not more.
SAMPLE_INTERVAL_S = 1.0
# A worker busy this share of a CPU or more through the window was the limit, not the server.
CLIENT_BOUND_SHARE = 0.9
MIN_CONNECTIONS_FOR_MEMORY = 50
# Slab moves by megabytes on its own (other tenants, reclaim): a per-connection figure from its
# difference needs thousands of connections to mean anything.
MIN_CONNECTIONS_FOR_KERNEL_MEMORY = 5000
# A server tree of at most this many threads has its CPU times read on its own CPU at a
# window's edges (_watch_window): about 20-30 µs each, so at most 4 ms taken from the server.
# It covers threads at 100 connections (101 threads), whose margin over its process figure is
# a few ms, within /proc/stat's 10 ms when read from outside.
ON_CPU_TASKS = 128


@dataclass(frozen=True)
class PointSpec:
    model: str
    connections: int
    payload: int
    repeat: int
    workload: str = "closed"
    idle: int = 0
    rate: float = 0.0
    server_workers: int = 1
    fork_cap: int = 1000
    # Seconds a request may wait for its echo (wrk's --timeout); then it is a timeout error.
    request_timeout_s: float = 2.0
    # "host:port" of a server started elsewhere (bench run --target); empty: start our own.
    target: str = ""
    # The load engine (bench.running.engines): c, python or locust.
    engine: str = "c"
    # Locust engine: local worker processes (0: one per client CPU), web UI, remote workers.
    locust_workers: int = 0
    locust_ui: bool = False
    locust_remote_workers: int = 0
    # listen()'s backlog for the server the harness starts (servers' --backlog).
    backlog: int = DEFAULT_BACKLOG

    @property
    def point_id(self) -> str:
        parts = [self.model, self.workload, f"c{self.connections}", f"p{self.payload}"]
        if self.idle:
            parts.append(f"i{self.idle}")
        if self.rate:
            parts.append(f"q{self.rate:.12g}")
        if self.server_workers > 1:
            parts.append(f"w{self.server_workers}")
        return "-".join([*parts, f"r{self.repeat}"])

    @property
    def load_plan(self) -> LoadPlan:
        return LoadPlan(self.workload, self.connections, self.payload, self.idle, self.rate, self.request_timeout_s)


@dataclass(frozen=True)
class Timing:
    duration_s: float
    warmup_s: float
    ready_timeout_s: float = 15.0
    quiet_wait_s: float = 0.0


def base_row(run_id: str, spec: PointSpec) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "point_id": spec.point_id,
        "model": spec.model,
        "workload": spec.workload,
        "connections": spec.connections,
        "payload": spec.payload,
        "repeat": spec.repeat,
        "idle": spec.idle,
        "target_rate": spec.rate or None,
        "server_workers": spec.server_workers,
        "engine": spec.engine,
        "started_at": now_iso(),
    }


def unmeasured_row(run_id: str, spec: PointSpec, status: str, reason: str) -> dict[str, Any]:
    return {**base_row(run_id, spec), "status": status, "reason": reason}


def run_point(
    run_id: str,
    spec: PointSpec,
    timing: Timing,
    pinning: Pinning,
    before_measure: Callable[[dict[str, Any]], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[dict, dict[str, str]]:
    """Measure one point; when the load generator was the limit and more client CPUs are
    free than it used, measure it again with more workers. `before_measure(row)` runs before
    each measurement, after the quiet wait (bench.planning.sweep's host probe); not for a skipped point.
    `on_phase(text)` is told each phase as it begins ("starting", "connecting 100", "warm-up",
    "window", ...), for a live display: it is called inside the measurement, so it must be
    cheap and must not raise."""
    engine = engine_class(spec.engine)
    workers = engine.plan_workers(spec.load_plan, len(pinning.client), spec.locust_workers)
    blocker = preflight(spec, workers)
    if blocker:
        return unmeasured_row(run_id, spec, STATUS_SKIPPED, blocker), {}
    row, hists = _measure(run_id, spec, timing, pinning, workers, before_measure, on_phase)
    more = min(len(pinning.client), spec.connections)
    if row.get("client_bound") and workers < more and engine.can_add_workers:
        row, hists = _measure(run_id, spec, timing, pinning, more, before_measure, on_phase)
    return row, hists


def _measure(
    run_id: str,
    spec: PointSpec,
    timing: Timing,
    pinning: Pinning,
    workers: int,
    before_measure: Callable[[dict[str, Any]], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> tuple[dict, dict[str, str]]:
    phase = on_phase if on_phase is not None else _no_phase
    row = base_row(run_id, spec)
    row.update(client_workers=workers, server_cpus=format_cpus(pinning.server), client_cpus=format_cpus(pinning.client))
    histograms: dict[str, str] = {}
    extra = ["--fork-cap", str(spec.fork_cap)]
    if spec.server_workers > 1:
        extra += ["--workers", str(spec.server_workers)]
    extra += ["--backlog", str(spec.backlog)]
    if not spec.target:
        row["backlog"] = spec.backlog
    if timing.quiet_wait_s > 0:
        phase("waiting for a quiet host")
        waited, _busy = wait_for_quiet(timing.quiet_wait_s)
        row["quiet_wait_s"] = waited
    phase("starting")
    if before_measure is not None:
        before_measure(row)
    server: ServerUnderTest | ExternalServer
    if spec.target:
        host, _, port = spec.target.rpartition(":")
        server = ExternalServer(host, int(port))
    else:
        server = ServerUnderTest(spec.model, pinning.server, extra=extra)
    load: LoadEngine | None = None
    tcp_before: tcp_counters.Counters | None = None
    # Why the C engine's request loop ran on epoll, not io_uring (its workers' own words).
    loop_notes: list[str] = []
    # --target: connections the load workers saw closed before their first echo (bench.measuring.shed).
    closed_before_echo: int | None = None
    try:
        server.start(timing.ready_timeout_s)
        # Memory before any connection, so that memory per connection is a difference.
        baseline = sample_tree(server.pid, with_uss=True) if server.pid else None
        load = make_engine(
            spec.engine, server.host, server.port, spec.load_plan, pinning.client, workers,
            locust_ui=spec.locust_ui, locust_remote_workers=spec.locust_remote_workers,
        )  # fmt: skip
        row["client_workers"] = load.workers
        slab_before = kernel_slab_bytes()
        tcp_before = tcp_counters.snapshot()
        load.start()
        for note in load.notes:
            print(note, flush=True)
        # Generous: thousands of connects against a slow accept loop take seconds.
        connect_timeout = 30 + (spec.connections + spec.idle) / 200 + load.extra_connect_timeout_s
        wanted = spec.connections + spec.idle
        # Each load worker reports once all of its connections are open: n grows worker by worker.
        phase("connecting" if spec.workload == "churn" else f"connecting (0 of {wanted:,})")
        connect_started = time.monotonic()

        def opened(n: int) -> None:
            if spec.workload != "churn":
                phase(f"connecting ({n:,} of {wanted:,})")

        connect = load.wait_connected(timeout=connect_timeout, progress=opened)
        row.update(connected=connect.connected, connect_s=connect.seconds, engine_io=connect.io)
        loop_notes = [f"C engine on epoll, not io_uring: {why}" for why in connect.io_why]
        queued = None
        if server.pid and spec.workload != "churn":
            phase(f"connecting ({connect.connected:,} of {spec.connections + spec.idle:,}): accepting")
            left = max(connect_timeout - (time.monotonic() - connect_started), 1.0)
            row["accept_wait_s"], queued = wait_accepted(server.port, left, server.failure)
        _fill_kernel_memory(row, connect.connected, slab_before, kernel_slab_bytes())
        # Descriptors are counted here, before the window, where listing a million of them
        # costs the load generator nothing it is measured on.
        held = sample_tree(server.pid, with_fds=True) if server.pid else None
        row["connect_errors"] = sum(connect.errors.values())
        histograms["connect"] = connect.histogram
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        if queued:
            raise PointFailed(
                f"{queued:,} connections still waited in the server's accept queue {row['accept_wait_s']:.0f} s "
                "after the clients had connected: it accepts too slowly for this point"
            )
        window = load.schedule(timing.warmup_s, timing.duration_s)
        phase("warm-up")
        usage, host = _watch_window(server, window, pinning.server, phase)
        phase("collecting")
        result = load.collect(timeout=max(window[1] - time.monotonic(), 0) + 15)
        closed_before_echo = result.closed_before_echo
        tcp_counters.fill_row(row, tcp_before)
        _fill_client_memory(row, spec, result.rss_bytes)
        histograms["latency"] = encode(merge(result.histograms))
        if result.uncorrected:
            histograms["latency_uncorrected"] = encode(merge(result.uncorrected))
        if spec.workload == "churn":
            histograms["connect"] = encode(merge(result.connect_histograms))
        if result.timeline is not None:
            histograms["timeline"] = result.timeline
        _fill_measurements(row, spec, result, usage, connect.errors, len(pinning.server))
        if held is not None and usage is not None:
            row["server_fds"] = max(usage.peak_fds, held.fds)
        server_cpu = usage.cpu_s if usage is not None else 0.0
        interference = compare(host[0], host[1], server_cpu + result.cpu_s)
        if usage is not None:
            _fill_costs(row, spec, result.requests, usage, baseline)
        # A target's server is not ours to measure: its CPU would read as "foreign", so only
        # steal can call such a window disturbed.
        _fill_host(row, interference, steal_only=bool(spec.target))
        histograms["per_cpu_pct"] = interference.per_cpu
        if not spec.target:
            split = cpu_split(host[0], host[1], pinning.server)
            span = usage.seconds if usage is not None and usage.seconds > 0 else split.seconds
            _fill_server_cpus(row, split, result.requests, result.duration_s, span)
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        expected = 0 if spec.workload == "churn" else spec.connections + spec.idle
        if connect.connected < expected:
            notes = "; ".join(connect.notes)
            raise PointFailed(
                f"only {connect.connected} of {expected} connections opened "
                f"({_kinds(connect.errors)}{'; ' + notes if notes else ''})"
            )
        rounds = round_time_note(spec, result.requests, result.duration_s, result.errors.get("timeout", 0))
        if result.requests == 0:
            why = f"no request completed in the window ({_kinds(result.errors) or 'no errors'})"
            raise PointFailed(f"{why}: {rounds}" if rounds else why)
        row["status"] = STATUS_OK
        notes = [*server.warnings]
        if spec.target:
            notes.append(f"server metrics unavailable: external server at {spec.target}")
        notes += loop_notes
        if row["errors"]:
            notes.append(f"{row['errors']} errors: {row['error_kinds']}")
        if rounds:
            notes.append(rounds)
        if row["client_bound"]:
            notes.append("client-bound: a load worker used a whole CPU while the server had CPU to spare")
        if row["pair_limited"]:
            notes.append("pair-limited: the server and a load worker each used a whole CPU")
        if row.get("disturbed"):
            notes.append(f"disturbed: {row['disturbed']}")
        if unsteady := stability.fill_row(row, result.timeline):
            notes.append(unsteady)
        notes += _tcp_notes(row, tcp_before)
        row["reason"] = "; ".join(notes)
    except PointFailed as exc:
        row["status"] = STATUS_FAILED
        row["reason"] = "; ".join([str(exc), *server.warnings, *_tcp_notes(row, tcp_before), *loop_notes])
    except Exception as exc:  # noqa: BLE001 - a harness error at one point must not end the sweep
        row["status"] = STATUS_FAILED
        row["reason"] = "; ".join([f"harness error: {type(exc).__name__}: {exc}", *_tcp_notes(row, tcp_before)])
    finally:
        try:
            phase("stopping")
            if load is not None:
                load.stop()
        finally:
            # Even when a second Ctrl-C lands while the load workers are being stopped.
            server.stop()
            row["server_exit_s"] = server.exit_s
            # After stop(): the stats line of the server's exit comes after SIGTERM.
            shed.fill_row(row, server.shed, closed_before_echo)
    return row, histograms


def _no_phase(text: str) -> None:
    pass


def _tcp_notes(row: dict, before: tcp_counters.Counters | None) -> list[str]:
    """The kernel's TCP counters since `before` (a failed point's up to its failure, so that
    nothing measured is lost) and the finding they make, if any, as a list of notes."""
    if before is None:
        return []
    if "tcp_listen_overflows" not in row:
        tcp_counters.fill_row(row, before)
    finding = tcp_counters.explain(row, tcp_counters.somaxconn())
    return [finding] if finding else []


def _watch_window(
    server: ServerUnderTest | ExternalServer,
    window: tuple[float, float],
    server_cpus: tuple[int, ...],
    phase: Callable[[str], None] | None = None,
) -> tuple[WindowUsage | None, tuple[HostSnapshot, HostSnapshot]]:
    """Sample the server's tree (when it is ours), and the host's CPUs, from the window's
    start to its end; stop early if the server died. `phase("window")` at its start.

    The host's readings bracket the server's CPU readings closely (right before the first
    pass over the server's CPU times, right after the last), so that the server's CPUs cannot
    read as less busy than the server's processes on them. They are made on the server's CPUs
    (bench.measuring.cpu_visit), where the CPU is neither idle nor running the server while it
    is read. For a tree of up to ON_CPU_TASKS threads the two passes over its CPU times are
    made there too, between the host's readings: every figure is then exact (idle from
    /proc/timer_list, run times not a tick behind). A larger tree is read from where the
    harness runs (tens of milliseconds that the server's CPU should not lose), right after a
    visit to the server's CPUs that brings its run times up to date, with /proc/stat's idle."""
    # Counted in the warm-up: listing a thousand children takes tens of milliseconds.
    on_cpu = bool(server.pid) and _tree_tasks(server.pid) <= ON_CPU_TASKS
    _sleep_until(window[0])
    if phase is not None:
        # Before both readings, which stay as close to each other as they were.
        phase("window")
    readings: list[HostSnapshot] = []
    # Where the harness runs between visits: arrive() takes it onto the server's CPUs,
    # go_home() brings it back (a no-op when it never left).
    home = os.sched_getaffinity(0)

    def go_home() -> None:
        leave(home)

    def read_host() -> None:
        # A large tree's many threads may hold as many hrtimers, which make /proc/timer_list
        # slow to read (bench.measuring.idle_clock): its idle time is /proc/stat's.
        visit(server_cpus, then=lambda: readings.append(snapshot(with_idle=on_cpu)))

    def arrive_and_read() -> None:
        arrive(server_cpus)
        readings.append(snapshot(with_idle=True))

    def read_and_go_home() -> None:
        readings.append(snapshot(with_idle=True))
        go_home()

    sampler = TreeSampler(server.pid) if server.pid else None
    if sampler is not None and on_cpu:
        # A small tree's CPU times are read on its CPU too: there the server cannot run (its
        # run time is exact, not a tick behind) nor the CPU idle, between the two readings.
        sampler.begin(first=arrive_and_read, then=go_home)
    elif sampler is not None:
        sampler.begin(first=lambda: (read_host(), visit(server_cpus)))
    go_home()
    if not readings:
        # No server of ours, or it had gone before its first reading.
        read_host()
    while time.monotonic() < window[1]:
        if server.failure() is not None:
            break
        _sleep_until(min(window[1], time.monotonic() + SAMPLE_INTERVAL_S))
        if sampler is not None:
            sampler.tick()
    usage = None
    if sampler is not None and on_cpu:
        usage = sampler.end(first=lambda: arrive(server_cpus), then=read_and_go_home)
    elif sampler is not None:
        usage = sampler.end(first=lambda: visit(server_cpus), then=read_host)
    go_home()
    if len(readings) < 2:
        read_host()
    return usage, (readings[0], readings[-1])


def _tree_tasks(pid: int) -> int:
    """Threads in the process tree of `pid` (more than ON_CPU_TASKS when it cannot be read)."""
    try:
        root = psutil.Process(pid)
        return sum(proc.num_threads() for proc in [root, *root.children(recursive=True)])
    except psutil.Error:
        return ON_CPU_TASKS + 1


def _fill_costs(row: dict, spec: PointSpec, requests: int, usage: WindowUsage, baseline: TreeSample | None) -> None:
    """What each request and each connection cost the server."""
    if requests:
        if usage.cpu_user_s is not None and usage.cpu_sys_s is not None:
            row["server_cpu_user_us_per_req"] = usage.cpu_user_s * 1e6 / requests
            row["server_cpu_sys_us_per_req"] = usage.cpu_sys_s * 1e6 / requests
        if usage.ctx_voluntary is not None and usage.ctx_involuntary is not None:
            row["ctx_vol_per_req"] = usage.ctx_voluntary / requests
            row["ctx_invol_per_req"] = usage.ctx_involuntary / requests
            row["ctx_per_req"] = (usage.ctx_voluntary + usage.ctx_involuntary) / requests
    row["server_uss_bytes"] = usage.uss_bytes
    held = spec.connections + spec.idle
    # Below this many connections the difference is lost in page-sized allocator noise (and
    # can even come out negative); no number beats a misleading one.
    enough = held >= MIN_CONNECTIONS_FOR_MEMORY
    # One process: USS, exact. A tree: PSS, because children share their parent's pages, which
    # USS counts in no process (it fell as fork's children were added); PSS counts each once,
    # but moves with other processes mapping the same libraries, so it is kept for trees.
    measure = "pss_bytes" if usage.peak_processes > 1 else "uss_bytes"
    after = getattr(usage, measure)
    before = getattr(baseline, measure) if baseline else None
    if spec.workload != "churn" and enough and after is not None and before:
        row["mem_per_conn_bytes"] = (after - before) / held


def _fill_server_cpus(row: dict, split: CpuSplit, requests: int, duration_s: float, span_s: float) -> None:
    """The server's pinned CPUs' busy time per request (µs), split into user, sys and softirq:
    beside cpu_us_per_req (the server's processes alone) it is every kind of work on those
    CPUs, the softirq served while the server slept included (bench.measuring.interference.cpu_split).

    The busy time is scaled to the workers' window (`duration_s`) by the same factor as
    cpu_us_per_req, from `span_s`, the span between the middles of the first and last passes
    over the server's CPU times. The host's readings bracket those passes, so the busy time is
    of a span longer by the time from the first reading to the first pass's middle (under a
    millisecond for one process, about half of a pass that lasts tens of milliseconds for
    thousands of threads, all of it under load: that much busy time too many) and from the last
    pass's middle to the last reading (after the load has stopped: idle). The two figures keep
    the order the CPUs impose, busy >= what the server ran; scaling each by its own span would
    not, as the longer span has more idle tail."""
    if not requests or span_s <= 0 or duration_s <= 0:
        return
    per_req = duration_s / span_s * 1e6 / requests
    row["server_cpus_us_per_req"] = split.busy_s * per_req
    row["server_cpus_user_us_per_req"] = split.user_s * per_req
    row["server_cpus_sys_us_per_req"] = split.sys_s * per_req
    row["server_cpus_softirq_us_per_req"] = split.softirq_s * per_req
    if split.busy_s > 0:
        row["server_cpus_softirq_share"] = split.softirq_s / split.busy_s


def _fill_kernel_memory(row: dict, connected: int, before: int | None, after: int | None) -> None:
    """Kernel slab memory per loopback connection (both ends' sockets, files and epoll items),
    from /proc/meminfo's Slab across the connect phase."""
    if before is not None and after is not None and connected >= MIN_CONNECTIONS_FOR_KERNEL_MEMORY:
        row["kernel_mem_per_conn_bytes"] = (after - before) / connected


def _fill_client_memory(row: dict, spec: PointSpec, rss: int | None) -> None:
    """The load processes' peak RSS, as each reported it; per connection it includes each
    worker's fixed cost (for the Python engine, an interpreter), so it is an upper bound."""
    row["client_rss_bytes"] = rss
    held = spec.connections + spec.idle
    if rss is not None and spec.workload != "churn" and held >= MIN_CONNECTIONS_FOR_MEMORY:
        row["client_mem_per_conn_bytes"] = rss / held


def _fill_host(row: dict, host: Interference, steal_only: bool = False) -> None:
    """What else the host was doing during the window."""
    row["softirq_pct"] = host.softirq_pct
    row["steal_pct"] = host.steal_pct
    row["foreign_cpu_pct"] = host.foreign_cpu_pct
    row["host_busy_pct"] = host.busy_pct
    row["disturbed"] = host.disturbed_by(steal_only)


def _sleep_until(when: float) -> None:
    # Waiting for a point on the shared clock, not for another process to be ready.
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _fill_measurements(
    row: dict,
    spec: PointSpec,
    result: LoadResult,
    usage: WindowUsage | None,
    connect_errors: Counter,
    server_cpus: int,
) -> None:
    errors = Counter(connect_errors)
    errors.update(result.errors)
    duration = result.duration_s
    row["requests"] = result.requests
    row["errors"] = sum(errors.values())
    row["error_kinds"] = _kinds(errors)
    row["duration_s"] = duration
    if duration <= 0:
        return
    row["rps"] = result.requests / duration
    row["mbps"] = result.requests * spec.payload / duration / 1e6
    row.update(summarize(merge(result.histograms)))
    if spec.rate:
        row["achieved_rate"] = row["rps"]
        row["sent_rate"] = result.sent_in_window / duration
        uncorrected = summarize(merge(result.uncorrected))
        row["p50_uncorrected_us"] = uncorrected["p50_us"]
        row["p99_uncorrected_us"] = uncorrected["p99_us"]
    row["client_cpu_pct"] = 100.0 * result.cpu_s / duration
    client_saturated = any(cpu / duration >= CLIENT_BOUND_SHARE for cpu in result.worker_cpu_s)
    if usage is not None:
        row["server_cpu_user_s"] = usage.cpu_user_s
        row["server_cpu_sys_s"] = usage.cpu_sys_s
        server_cpu = usage.cpu_s
        if usage.seconds > 0:
            row["server_cpu_pct"] = 100.0 * server_cpu / usage.seconds / max(server_cpus, 1)
        if result.requests:
            # Server CPU is bracketed by the harness's samples, requests by the workers' clocks:
            # scale the CPU to the workers' window so the ratio compares like with like.
            scale = duration / usage.seconds if usage.seconds > 0 else 1.0
            row["cpu_us_per_req"] = server_cpu * scale * 1e6 / result.requests
        row["server_rss_bytes"] = usage.peak_rss_bytes
        row["server_threads"] = usage.peak_threads
        row["server_fds"] = usage.peak_fds
        row["server_processes"] = usage.peak_processes
    # Client-bound: a load worker was saturated while the server still had CPU to spare. When
    # both are saturated the point is the limit of the pair, and the server could not have gone
    # faster either; when the server is not ours to measure, a saturated worker is enough.
    server_pct = row.get("server_cpu_pct")
    row["client_bound"] = client_saturated and (server_pct is None or server_pct < 100 * CLIENT_BOUND_SHARE)
    # Pair-limited: both saturated; the two processes sharing the host's CPUs set the rate, and
    # no ranking of servers may rest on it (bench.reporting.rankings).
    row["pair_limited"] = client_saturated and server_pct is not None and server_pct >= 100 * CLIENT_BOUND_SHARE


def round_time_note(spec: PointSpec, requests: int, duration_s: float, timeouts: int) -> str | None:
    """Why requests of a closed loop timed out when the connections are many, in words; None
    when there were no timeouts or a round was well inside the request timeout (then the
    cause is elsewhere, e.g. a stalled server).

    In a closed loop every connection keeps one request outstanding, so by Little's law
    (L = λW; Little, Operations Research 9(3), 1961) a request waits W = connections / λ,
    where λ is the completion rate in req/s."""
    if not timeouts or spec.workload not in ("closed", "idle"):
        return None
    n, limit = spec.connections, spec.request_timeout_s
    rate = requests / duration_s if duration_s > 0 else 0.0
    if rate and n / rate < limit / 2:
        return None
    text = (
        f"{timeouts:,} requests timed out: {n:,} connections in closed loop each keep one request outstanding, "
        f"so by Little's law each waits {n:,} / throughput, and an echo within the {limit:g} s request timeout "
        f"needs at least {n / limit:,.0f} req/s"
    )
    if rate:
        rtt = n / rate
        text += f"; {rate:,.0f} req/s completed, a round of " + (f"{rtt:.1f} s" if rtt >= 1 else f"{rtt * 1e3:.0f} ms")
    return text + "; measure scale with --idle beside fewer active connections, or raise --request-timeout"


def _kinds(errors: Counter) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(errors.items()) if v)


def with_rate(spec: PointSpec, rate: float) -> PointSpec:
    return replace(spec, workload="open", rate=rate)
