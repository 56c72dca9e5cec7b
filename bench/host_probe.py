"""Host shifts: a short fixed probe on every pinned CPU before each point, and its verdict.

The noise on these VMs comes in phases (issue 11: CV 12% in one half hour, under 1% the next,
with steal at 0 and no foreign process to see): the host's CPUs get slower and faster under
the harness, and the per-point interference flags (bench.interference) cannot see it. So
before each point the harness times the same small piece of work on each CPU the point will
use; when that time departs from the run's usual figure the host has shifted, whatever the
cause, and the point is flagged (`host_shifted`) and, with `bench run --remeasure N`,
measured again.

The probe: a single-threaded loopback TCP ping-pong inside the harness process, pinned in turn
to each CPU with sched_setaffinity(2). One connected pair of TCP sockets on 127.0.0.1 with
TCP_NODELAY; send 64 bytes on A, receive them on B, send them back, receive them on A. Why this
and not the alternatives the issue names:
- It does what the benchmark does (send/recv system calls, the TCP stack, the softirq that
  loopback pays on the sending CPU, copies), so it slows down when what the benchmark is made
  of slows down: a busy SMT sibling, a lower clock, steal, another tenant on the CPU.
- It involves no scheduler wake-up and no second CPU: loopback delivers the segment to the
  peer's receive queue inside send() (loopback_xmit -> netif_rx, processed in the softirq run
  on local_bh_enable, on the same CPU; drivers/net/loopback.c), so recv() never blocks. A
  ping-pong against a server process (e.g. the native server) would add two wake-ups and
  cross-CPU IPIs per round trip, i.e. the scheduler's and the hypervisor's noise, and would
  need a server per CPU.
- A pure CPU loop (no system call) would miss a slower kernel path (mitigations toggled,
  contended softirq) and weigh the interpreter too much.
- It is a fixed number of round trips, timed on the wall clock (time.perf_counter_ns), not
  CPU time: a foreign process sharing the CPU is a shift too, and CPU time would hide it.
Python's own overhead is part of the figure, but it is the same code on the same CPU every
time, so it moves with the CPU's speed as the kernel's part does.

The figure: µs per round trip, the median over CHUNKS timed chunks of the round trips, so that
one interrupt or one preemption inside one chunk does not move it.

Measured on this 2-core host (2026-11-30, EPYC VM, kernel 6.18): 10.5-10.6 µs per round trip,
0.15 s per probe of both CPUs. 30 probes in a row with the guest idle: CV 0.2-0.7% per CPU, at
most 4% from the median. At other times, the guest still idle, some probes read 13.3-14.0 µs
(+25-32%), in bursts: the host's own state, not the probe (a process spinning on the other
CPU did not move it: 10.59 vs 10.57 µs). Another process sharing the probed CPU doubles it,
as it should. SHIFT_THRESHOLD (10%) sits well above the probe's own noise and below the
+25% state; a departing probe is confirmed by a second one (ShiftWatch.check).
"""

from __future__ import annotations

import gc
import os
import socket
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MESSAGE_BYTES = 64
# Round trips before timing on each CPU: the caches and the socket's memory after migrating.
WARMUP_ROUND_TRIPS = 200
# Timed round trips per chunk, and chunks per CPU (the figure is the median over the chunks).
ROUND_TRIPS_PER_CHUNK = 1000
CHUNKS = 7
# A probe departing from the run's median by more than this share is a host shift: 2.5 times
# the probe's largest departure on a quiet host here (4%), below the +25% slow state seen here
# (module docstring).
SHIFT_THRESHOLD = 0.10
# Probes taken at the start of the run, before the first point, as the initial history.
BASELINE_PROBES = 3
# What run.json says the figures are.
PROBE_METHOD = (
    f"loopback TCP ping-pong in the harness, {MESSAGE_BYTES}-byte messages, TCP_NODELAY, pinned to each CPU; "
    f"median of {CHUNKS} chunks of {ROUND_TRIPS_PER_CHUNK} round trips; µs per round trip (wall clock)"
)


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    """Two blocking TCP sockets connected to each other over 127.0.0.1, with TCP_NODELAY
    (so that every 64-byte send is a segment, as in the benchmark's closed loop)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        try:
            b, _ = listener.accept()
        except BaseException:
            a.close()
            raise
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("the probe's peer closed the connection")
        got += n


def _ping_pong(a: socket.socket, b: socket.socket, round_trips: int) -> int:
    """Run `round_trips` round trips; return their wall time in ns."""
    message = b"p" * MESSAGE_BYTES
    view = memoryview(bytearray(MESSAGE_BYTES))
    started = time.perf_counter_ns()
    for _ in range(round_trips):
        a.sendall(message)
        _recv_exactly(b, view)
        b.sendall(message)
        _recv_exactly(a, view)
    return time.perf_counter_ns() - started


def _probe_one(a: socket.socket, b: socket.socket, round_trips: int, chunks: int) -> float:
    _ping_pong(a, b, WARMUP_ROUND_TRIPS)
    times = [_ping_pong(a, b, round_trips) for _ in range(chunks)]
    return statistics.median(times) / round_trips / 1000.0


def probe_cpus(cpus: Iterable[int], round_trips: int = ROUND_TRIPS_PER_CHUNK, chunks: int = CHUNKS) -> dict[int, float]:
    """Probe each CPU in `cpus` in turn: {cpu: µs per loopback TCP round trip}.

    The calling thread is pinned to each CPU with sched_setaffinity(2) and its original
    affinity restored afterwards, also on error. About 0.1 s per CPU here.
    Raises OSError when a CPU cannot be used (not allowed to this process, offline) or the
    loopback connection fails.
    """
    original = os.sched_getaffinity(0)
    gc_was_enabled = gc.isenabled()
    # A collection inside a chunk would be read as a slower host.
    gc.disable()
    try:
        a, b = _connected_pair()
        with a, b:
            out = {}
            for cpu in sorted(set(cpus)):
                os.sched_setaffinity(0, {cpu})
                out[cpu] = _probe_one(a, b, round_trips, chunks)
            return out
    finally:
        if gc_was_enabled:
            gc.enable()
        os.sched_setaffinity(0, original)


@dataclass(frozen=True)
class HostProbe:
    """One probe before a point: µs per round trip on each server CPU and each client CPU."""

    server_us: dict[int, float]
    client_us: dict[int, float]

    @property
    def per_cpu(self) -> dict[int, float]:
        return {**self.client_us, **self.server_us}

    def fields(self) -> dict[str, float]:
        """The row's columns: the median over each CPU set, µs per round trip."""
        return {
            "probe_server_us": round(statistics.median(self.server_us.values()), 3),
            "probe_client_us": round(statistics.median(self.client_us.values()), 3),
        }


def take_probe(server_cpus: Sequence[int], client_cpus: Sequence[int]) -> HostProbe:
    """Probe the server's and the client's CPUs (a CPU in both sets is probed once).
    Raises OSError as probe_cpus does."""
    per_cpu = probe_cpus([*server_cpus, *client_cpus])
    return HostProbe({c: per_cpu[c] for c in server_cpus}, {c: per_cpu[c] for c in client_cpus})


def shift_reason(
    per_cpu: Mapping[int, float], history: Mapping[int, Sequence[float]], threshold: float = SHIFT_THRESHOLD
) -> str:
    """Why this probe is a host shift, or "" when it is not.

    `per_cpu`: {cpu: µs per round trip} of this probe; `history`: {cpu: earlier figures of the
    run}. A CPU whose figure departs from the median of its history by more than `threshold`
    (a share, 0.10 = 10%), slower or faster, makes the probe a shift; the reason names the CPU
    that departed most. A CPU without history is not judged.
    """
    departures = []
    for cpu, value in per_cpu.items():
        past = history.get(cpu)
        if not past:
            continue
        usual = statistics.median(past)
        if usual > 0 and abs(value / usual - 1) > threshold:
            departures.append((abs(value / usual - 1), cpu, value, usual))
    if not departures:
        return ""
    _, cpu, value, usual = max(departures)
    change = value / usual - 1
    how = f"{change:.0%} longer" if change > 0 else f"{-change:.0%} less time"
    others = f"; {len(departures) - 1} other CPU(s) departed too" if len(departures) > 1 else ""
    return (
        f"host shifted: the probe took {how} than the run's median "
        f"({value:.1f} vs {usual:.1f} µs per round trip on CPU {cpu}){others}"
    )


@dataclass
class ShiftWatch:
    """The run's probe history and the verdict on each new probe.

    History policy: one vote per point (the probe before its final attempt, shifted or not)
    plus the BASELINE_PROBES taken at the start, and the verdict compares with their median.
    The median already ignores a minority of shifted probes; keeping the shifted ones lets a
    run whose host changed for good (more than half of the points so far) take the new speed
    as its reference instead of flagging, and re-measuring, every point left. Attempts that
    were measured again do not vote, so that re-measuring one point cannot move the median.
    """

    server_cpus: tuple[int, ...]
    client_cpus: tuple[int, ...]
    threshold: float = SHIFT_THRESHOLD
    history: dict[int, list[float]] = field(default_factory=dict)

    def probe(self) -> HostProbe:
        """A probe now (OSError as probe_cpus)."""
        return take_probe(self.server_cpus, self.client_cpus)

    def start(self, probes: int = BASELINE_PROBES) -> None:
        """The initial history: `probes` probes before the first point (OSError as probe_cpus)."""
        for _ in range(probes):
            self.record(self.probe())

    def verdict(self, probe: HostProbe) -> str:
        """The shift reason for `probe` against the history so far ("" when it is not one)."""
        return shift_reason(probe.per_cpu, self.history, self.threshold)

    def check(self) -> tuple[HostProbe, str]:
        """The probe before a point and its verdict. A probe that departs is taken again at
        once and the second one decides (and is the one kept): here a quiet host gives about
        one probe in 30 per CPU 20-30% slow, a blip shorter than a probe, while the shifts
        that move a point's figure last seconds to minutes. OSError as probe_cpus."""
        probe = self.probe()
        if not self.verdict(probe):
            return probe, ""
        probe = self.probe()
        return probe, self.verdict(probe)

    def record(self, probe: HostProbe) -> None:
        """Add `probe` to the history (one vote per point: call it for the final attempt)."""
        for cpu, value in probe.per_cpu.items():
            self.history.setdefault(cpu, []).append(value)
