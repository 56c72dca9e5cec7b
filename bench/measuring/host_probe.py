"""Host shifts: a short fixed probe on every pinned CPU before each point, and its verdict.

The noise on these VMs comes in phases (issue 11: CV 12% in one half hour, under 1% the next,
with steal at 0 and no foreign process to see): the host's CPUs get slower and faster under
the harness, and the per-point interference flags (bench.measuring.interference) cannot see it. So
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
- On one CPU it involves no scheduler wake-up: loopback delivers the segment to the peer's
  receive queue inside send() (loopback_xmit -> netif_rx, processed in the softirq run on
  local_bh_enable, on the same CPU; drivers/net/loopback.c), so recv() never blocks, and the
  figure is the CPU's own speed. The wake-ups across CPUs, which turned out to be what this
  host's phases slow, are timed separately (below).
- A pure CPU loop (no system call) would miss a slower kernel path (mitigations toggled,
  contended softirq) and weigh the interpreter too much.
- It is a fixed number of round trips, timed on the wall clock (time.perf_counter_ns), not
  CPU time: a foreign process sharing the CPU is a shift too, and CPU time would hide it.
Python's own overhead is part of the figure, but it is the same code on the same CPU every
time, so it moves with the CPU's speed as the kernel's part does.

The figure: µs per round trip, the median over CHUNKS timed chunks of the round trips, so that
one interrupt or one preemption inside one chunk does not move it.

Measured on this 2-core host (2026-11-30, EPYC VM, kernel 6.18): 10.5-10.9 µs per round trip on
one CPU; 30 probes in a row with the guest idle: CV 0.2-0.7% per CPU, at most 4% from the
median; at times a burst of 13.3-14.0 µs. Another process sharing the probed CPU doubles it.

But the phases that move this host's benchmarks do not show on one CPU: alternating the probe
with 1 s of benchmarks/plain_client.c against the native server (100 connections), the
single-CPU figure stayed at 10.8 µs while the client went from 195k to 143k req/s and back,
for seconds to minutes at a time. What moved with it was a ping-pong *across* CPUs: 53-55 µs
per round trip in the fast phase, 64-71 µs in the slow one. The benchmark's every request is a
wake-up on the other CPU (in a VM, an IPI and a vCPU leaving halt), and that is what the host
slows. So the probe also times a ping-pong from the first client CPU to an echo process pinned
to the first server CPU (CrossPeer): over 15 points of `bench run --models epoll,native,poll
--connections 100 --repeats 5 --duration 2`, twice, that figure correlated with each point's
req/s relative to its model's median at r = -0.66 and -0.70; the single-CPU figures at 0.42
and 0.06. It is noisier (one chunk in ten is 10-20% off), hence the median of chunks and the
confirmation. SHIFT_THRESHOLD (10%) sits above both probes' noise and below the phases (+25%).
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

MESSAGE_BYTES = 64
# Round trips before timing on each CPU: the caches and the socket's memory after migrating.
WARMUP_ROUND_TRIPS = 200
# Timed round trips per chunk, and chunks per CPU (the figure is the median over the chunks).
ROUND_TRIPS_PER_CHUNK = 600
CHUNKS = 5
# The same for the ping-pong across CPUs, whose round trip is five times longer.
CROSS_ROUND_TRIPS_PER_CHUNK = 300
CROSS_WARMUP_ROUND_TRIPS = 50
# The history's key for the cross-CPU figure (the others are CPU numbers).
CROSS = "cross"
# Seconds the echo peer may take to start and connect.
PEER_START_S = 10.0
# A probe departing from the run's median by more than this share is a host shift: 2.5 times
# the probe's largest departure on a quiet host here (4%), below the +25% slow state seen here
# (module docstring).
SHIFT_THRESHOLD = 0.10
# Probes taken at the start of the run, before the first point, as the initial history.
BASELINE_PROBES = 3
# Before measuring a shifted point again, wait at most this long (s) for the probe to return
# to the run's median, probing every SHIFT_POLL_S: this host's phases last seconds to minutes.
SHIFT_WAIT_S = 15.0
SHIFT_POLL_S = 0.5
# What run.json says the figures are.
PROBE_METHOD = (
    f"loopback TCP ping-pong in the harness, {MESSAGE_BYTES}-byte messages, TCP_NODELAY, pinned to each CPU; "
    f"median of {CHUNKS} chunks of {ROUND_TRIPS_PER_CHUNK} round trips; µs per round trip (wall clock); "
    f"and across CPUs, the harness on the first client CPU and an echo process on the first server CPU, "
    f"median of {CHUNKS} chunks of {CROSS_ROUND_TRIPS_PER_CHUNK} round trips"
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


def _ping_pong(a: socket.socket, b: socket.socket | None, round_trips: int) -> int:
    """Run `round_trips` round trips, A to B and back (with `b` None, A to the echo peer and
    back); return their wall time in ns."""
    message = b"p" * MESSAGE_BYTES
    view = memoryview(bytearray(MESSAGE_BYTES))
    started = time.perf_counter_ns()
    if b is None:
        for _ in range(round_trips):
            a.sendall(message)
            _recv_exactly(a, view)
    else:
        for _ in range(round_trips):
            a.sendall(message)
            _recv_exactly(b, view)
            b.sendall(message)
            _recv_exactly(a, view)
    return time.perf_counter_ns() - started


def _median_us(a: socket.socket, b: socket.socket | None, warmup: int, round_trips: int, chunks: int) -> float:
    """µs per round trip (_ping_pong): the median over `chunks` timed chunks, after `warmup`."""
    _ping_pong(a, b, warmup)
    times = [_ping_pong(a, b, round_trips) for _ in range(chunks)]
    return statistics.median(times) / round_trips / 1000.0


@contextmanager
def _probing() -> Iterator[None]:
    """Keep the collector off (a collection inside a chunk would read as a slower host) and
    give the calling thread its CPU affinity back afterwards, also on error."""
    original = os.sched_getaffinity(0)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was_enabled:
            gc.enable()
        os.sched_setaffinity(0, original)


def probe_cpus(cpus: Iterable[int], round_trips: int = ROUND_TRIPS_PER_CHUNK, chunks: int = CHUNKS) -> dict[int, float]:
    """Probe each CPU in `cpus` in turn: {cpu: µs per loopback TCP round trip}.

    The calling thread is pinned to each CPU with sched_setaffinity(2) and its original
    affinity restored afterwards, also on error. About 35 ms per CPU here.
    Raises OSError when a CPU cannot be used (not allowed to this process, offline) or the
    loopback connection fails.
    """
    with _probing():
        a, b = _connected_pair()
        with a, b:
            out = {}
            for cpu in sorted(set(cpus)):
                os.sched_setaffinity(0, {cpu})
                out[cpu] = _median_us(a, b, WARMUP_ROUND_TRIPS, round_trips, chunks)
            return out


class CrossPeer:
    """The far end of the ping-pong across CPUs: an echo process pinned to `cpu`, connected
    to the harness over loopback TCP, dying with it (PR_SET_PDEATHSIG) or at EOF."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    def start(self) -> None:
        """Start the peer and accept its connection. Raises OSError when it cannot."""
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(PEER_START_S)
            port = listener.getsockname()[1]
            argv = [sys.executable, "-m", "bench.measuring.host_probe", "--peer", str(port), str(self.cpu)]
            # Its own session, so that a Ctrl-C at the terminal reaches the harness alone,
            # which then closes the connection; the peer exits at EOF.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                self.sock, _ = listener.accept()
            except OSError as exc:
                self.close()
                raise OSError(f"the probe's echo process on CPU {self.cpu} did not connect: {exc}") from None
        self.sock.settimeout(PEER_START_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def round_trip_us(self, cpu: int, round_trips: int = CROSS_ROUND_TRIPS_PER_CHUNK, chunks: int = CHUNKS) -> float:
        """µs per round trip from `cpu` (the calling thread is pinned there for the probe and
        restored after) to the peer and back: median over `chunks` chunks. OSError on failure."""
        if self.sock is None:
            raise OSError("the probe's echo process is not running")
        with _probing():
            os.sched_setaffinity(0, {cpu})
            return _median_us(self.sock, None, CROSS_WARMUP_ROUND_TRIPS, round_trips, chunks)

    def close(self) -> None:
        """Close the connection (the peer exits at EOF); a peer that does not is killed by PID."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def _peer(port: int, cpu: int) -> int:
    """The echo process of CrossPeer: pinned to `cpu`, echo every byte until EOF."""
    from childproc import die_with_parent

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.sched_setaffinity(0, {cpu})
    with socket.create_connection(("127.0.0.1", port), timeout=PEER_START_S) as sock:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(65536)
        while n := sock.recv_into(buf):
            sock.sendall(memoryview(buf)[:n])
    return 0


@dataclass(frozen=True)
class HostProbe:
    """One probe before a point: µs per round trip on each server CPU and each client CPU, and
    across CPUs (client CPU to server CPU and back; None without a peer)."""

    server_us: dict[int, float]
    client_us: dict[int, float]
    cross_us: float | None = None

    @property
    def per_cpu(self) -> dict[int | str, float]:
        """Every figure by its key in the history: CPU numbers, and CROSS."""
        figures: dict[int | str, float] = {**self.client_us, **self.server_us}
        if self.cross_us is not None:
            figures[CROSS] = self.cross_us
        return figures

    def fields(self) -> dict[str, float | None]:
        """The row's columns: the median over each CPU set, and the cross-CPU figure, µs per
        round trip."""
        return {
            "probe_server_us": round(statistics.median(self.server_us.values()), 3),
            "probe_client_us": round(statistics.median(self.client_us.values()), 3),
            "probe_cross_us": round(self.cross_us, 3) if self.cross_us is not None else None,
        }


def take_probe(server_cpus: Sequence[int], client_cpus: Sequence[int], peer: CrossPeer | None = None) -> HostProbe:
    """Probe the server's and the client's CPUs (a CPU in both sets is probed once), and with
    a `peer` on a server CPU the round trip across from the first client CPU. Raises OSError
    as probe_cpus does."""
    per_cpu = probe_cpus([*server_cpus, *client_cpus])
    cross = peer.round_trip_us(client_cpus[0]) if peer is not None and client_cpus else None
    return HostProbe({c: per_cpu[c] for c in server_cpus}, {c: per_cpu[c] for c in client_cpus}, cross)


def shift_reason(
    per_cpu: Mapping[int | str, float],
    history: Mapping[int | str, Sequence[float]],
    threshold: float = SHIFT_THRESHOLD,
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
            departures.append((abs(value / usual - 1), str(cpu), cpu, value, usual))
    if not departures:
        return ""
    _, _, cpu, value, usual = max(departures)
    change = value / usual - 1
    how = f"{change:.0%} longer" if change > 0 else f"{-change:.0%} less time"
    others = f"; {len(departures) - 1} other CPU(s) departed too" if len(departures) > 1 else ""
    where = "across CPUs (a wake-up on the other CPU)" if cpu == CROSS else f"on CPU {cpu}"
    return (
        f"host shifted: the probe took {how} than the run's median "
        f"({value:.1f} vs {usual:.1f} µs per round trip {where}){others}"
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
    history: dict[int | str, list[float]] = field(default_factory=dict)
    peer: CrossPeer | None = None

    def probe(self) -> HostProbe:
        """A probe now (OSError as probe_cpus)."""
        return take_probe(self.server_cpus, self.client_cpus, self.peer)

    def start(self, probes: int = BASELINE_PROBES) -> None:
        """Start the cross-CPU peer (when the server and client CPUs differ) and take the
        initial history: `probes` probes before the first point. OSError as probe_cpus, or
        when the peer cannot start; then nothing is left running."""
        if self.server_cpus and self.client_cpus and self.server_cpus[0] != self.client_cpus[0]:
            self.peer = CrossPeer(self.server_cpus[0])
            self.peer.start()
        try:
            for _ in range(probes):
                self.record(self.probe())
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        """Stop the cross-CPU peer."""
        if self.peer is not None:
            self.peer.close()
            self.peer = None

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

    def wait_until_usual(self, max_s: float) -> tuple[float, bool]:
        """Probe every SHIFT_POLL_S until a probe agrees with the run's median, for at most
        `max_s` seconds; return (seconds waited, whether it came back). Waiting out the host's
        phase, not synchronising with our own processes (none runs now). OSError as probe_cpus."""
        started = time.monotonic()
        while True:
            back = not self.verdict(self.probe())
            waited = time.monotonic() - started
            if back or waited >= max_s:
                return waited, back
            time.sleep(min(SHIFT_POLL_S, max(max_s - waited, 0.0)))

    def record(self, probe: HostProbe) -> None:
        """Add `probe` to the history (one vote per point: call it for the final attempt)."""
        for cpu, value in probe.per_cpu.items():
            self.history.setdefault(cpu, []).append(value)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--peer":
    sys.exit(_peer(int(sys.argv[2]), int(sys.argv[3])))
