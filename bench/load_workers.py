"""The manager side of the load engine: start workers, wait for their connections, give them
one shared schedule, collect and merge their results."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.child import format_cpus
from bench.errors import PointFailed
from bench.pipes import MessageReader, deadline_in, remaining
from bench.processes import spawn_python, terminate_tree
from loadgen import control
from loadgen.histogram import merge
from loadgen.source_addresses import addresses_needed

# A worker owns at most this many connections, well under RLIMIT_NOFILE (20000 here).
MAX_CONNECTIONS_PER_WORKER = 15000


@dataclass
class ConnectPhase:
    connected: int
    errors: Counter
    seconds: float
    histogram: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LoadPlan:
    """What the load generator does at one point, in total over all its workers."""

    workload: str
    connections: int
    payload: int
    idle: int = 0
    rate: float = 0.0


@dataclass
class LoadResult:
    requests: int
    sent_in_window: int
    errors: Counter
    window_start: float
    window_end: float
    cpu_s: float
    worker_cpu_s: list[float]
    live_connections: int
    histograms: list[str]
    uncorrected: list[str]
    connect_histograms: list[str]

    @property
    def duration_s(self) -> float:
        return max(0.0, self.window_end - self.window_start)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_count(plan: LoadPlan, client_cpus: int) -> int:
    by_fds = -(-(plan.connections + plan.idle) // MAX_CONNECTIONS_PER_WORKER)
    # One worker per client CPU once there is enough work to share; never idle workers.
    by_cpus = min(client_cpus, plan.connections)
    return max(1, by_fds, by_cpus if plan.connections >= 100 else 1)


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class LoadWorkers:
    def __init__(self, host: str, port: int, plan: LoadPlan, cpus: tuple[int, ...], workers: int):
        self.host, self.port, self.plan, self.cpus = host, port, plan, cpus
        workers = max(1, min(workers, plan.connections))
        self.active = split(plan.connections, workers)
        self.idle = split(plan.idle, workers)
        self.popens: list[subprocess.Popen] = []
        self.readers: list[MessageReader] = []
        self.errlogs: list[MessageReader] = []

    def start(self) -> None:
        plan = self.plan
        # Source addresses in 127.0.0.0/8 reach only a server on this host.
        spread = addresses_needed(plan.connections + plan.idle) if is_loopback(self.host) else 1
        first = 0
        for wid, (active, idle) in enumerate(zip(self.active, self.idle, strict=True)):
            args = ["--host", self.host, "--port", str(self.port), "--workload", plan.workload]
            args += ["--connections", str(active), "--idle", str(idle), "--payload", str(plan.payload)]
            args += ["--worker-id", str(wid), "--first-index", str(first), "--spread", str(spread)]
            args += ["--cpus", format_cpus(self.cpus)]
            if plan.rate:
                args += ["--rate", repr(plan.rate * active / plan.connections)]
            first += active + idle
            popen = spawn_python("loadgen", args)
            self.popens.append(popen)
            self.readers.append(MessageReader(popen.stdout, f"loadgen-{wid}"))
            self.errlogs.append(MessageReader(popen.stderr, f"loadgen-{wid}-err"))

    def _await(self, event: str, timeout: float) -> list[dict[str, Any]]:
        deadline = deadline_in(timeout)
        got: list[dict[str, Any]] = []
        for wid, reader in enumerate(self.readers):
            while True:
                message = reader.next(min(remaining(deadline), 0.25))
                if message is not None and message["event"] == event:
                    got.append(message)
                    break
                if message is None and self.popens[wid].poll() is not None and reader.closed.is_set():
                    tail = [line for line in self.errlogs[wid].tail if line.strip()]
                    raise PointFailed(
                        f"load worker {wid} exited with status {self.popens[wid].returncode}"
                        + (f": {tail[-1].strip()}" if tail else "")
                    )
                if remaining(deadline) <= 0:
                    raise PointFailed(f"load worker {wid} sent no '{event}' within {timeout:.0f} s")
        return got

    def wait_connected(self, timeout: float) -> ConnectPhase:
        messages = self._await("connected", timeout)
        errors: Counter = Counter()
        notes: list[str] = []
        for m in messages:
            errors.update(m["errors"])
            notes += m.get("notes", [])
        return ConnectPhase(
            connected=sum(m["connected"] for m in messages),
            errors=errors,
            seconds=max(m["seconds"] for m in messages),
            histogram=merge([m["histogram"] for m in messages]).encode().decode("ascii"),
            notes=notes,
        )

    def schedule(self, warmup_s: float, duration_s: float) -> tuple[float, float]:
        """Every worker gets the same absolute window on the shared monotonic clock."""
        start_at = time.monotonic() + 0.05
        window = (start_at + warmup_s, start_at + warmup_s + duration_s)
        message = {
            "event": "schedule",
            "start_at": start_at,
            "window_start": window[0],
            "window_end": window[1],
        }
        for wid, popen in enumerate(self.popens):
            try:
                control.send(message, popen.stdin)
            except (BrokenPipeError, ValueError) as exc:
                raise PointFailed(f"load worker {wid} is gone before its schedule ({exc})") from exc
        return window

    def collect(self, timeout: float) -> LoadResult:
        messages = self._await("result", timeout)
        errors: Counter = Counter()
        for m in messages:
            errors.update(m["errors"])
        worker_cpu = [m["cpu_user_s"] + m["cpu_sys_s"] for m in messages]
        return LoadResult(
            requests=sum(m["requests"] for m in messages),
            sent_in_window=sum(m["sent_in_window"] for m in messages),
            errors=errors,
            window_start=min(m["window_start"] for m in messages),
            window_end=max(m["window_end"] for m in messages),
            cpu_s=sum(worker_cpu),
            worker_cpu_s=worker_cpu,
            live_connections=sum(m["live_connections"] for m in messages),
            histograms=[m["histogram"] for m in messages],
            uncorrected=[m["uncorrected"] for m in messages if m["uncorrected"]],
            connect_histograms=[m["connect_histogram"] for m in messages],
        )

    def stop(self) -> None:
        for popen in self.popens:
            terminate_tree(popen, grace_s=1.0)

    def __enter__(self) -> LoadWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
