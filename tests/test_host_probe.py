"""Host shifts (issue 11, item 4): the probe before every point, `host_shifted`, `--remeasure N`.

The shift is made for real: CPU hogs, processes spinning pinned to the server's CPU, run
during exactly one point's probe (started when the probe begins, stopped by PID when it
returns, its confirmation probe included); the probe itself is the real one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bench_cli import run_bench

from bench.measuring.host_probe import CrossPeer, HostProbe, ShiftWatch, probe_cpus, shift_reason
from bench.planning import sweep
from bench.running.cpus import Pinning
from bench.running.engines import choose_engine
from bench.running.point import PointSpec
from bench.storing.results_store import RunDirectory

CPUS = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs: one for the server, one for the client")

# Spins on one CPU; says so on stdout once it is pinned, so that the caller needs no sleep.
HOG = (
    "import os, sys\n"
    "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
    "sys.stdout.write('r')\n"
    "sys.stdout.flush()\n"
    "while True:\n"
    "    pass\n"
)
# Hogs sharing the server's CPU: the probe gets 1/(HOGS+1) of it, so its wall time grows about
# HOGS+1 times (x5). The test's threshold (+150%) is far wider than the default (10%) so that
# another tenant of this shared 2-core machine, one more process on a CPU (measured here:
# x2, +100%), does not flag a probe the hogs did not touch; the hogs stay far above it, even on
# top of such a tenant (x6 against a baseline taken at x2).
HOGS = 4
TEST_THRESHOLD = 1.5
# The point whose probe the hogs disturb: the second one (repeat 1).
HOGGED_CHECK = 2
HOGGED_POINT = "epoll-closed-c10-p64-r1"


@contextlib.contextmanager
def hogs(cpu: int, count: int = HOGS) -> Iterator[list[int]]:
    """`count` processes spinning on `cpu`, all running when the body starts; killed by PID after it."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", HOG, str(cpu)], stdout=subprocess.PIPE))
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.read(1) == b"r", "a hog did not start"
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()


@dataclass
class HoggedWatch(ShiftWatch):
    """The real watch and probe; its HOGGED_CHECK-th point probe runs beside the hogs."""

    checks: int = 0
    hog_pids: list[int] = field(default_factory=list)

    def check(self) -> tuple[HostProbe, str]:
        self.checks += 1
        if self.checks != HOGGED_CHECK:
            return super().check()
        with hogs(self.server_cpus[0]) as pids:
            self.hog_pids = pids
            return super().check()


@pytest.fixture
def keep_affinity() -> Iterator[None]:
    """run_sweep pins the calling process to the client CPUs: give this test process its CPUs back."""
    original = os.sched_getaffinity(0)
    try:
        yield
    finally:
        os.sched_setaffinity(0, original)


def _sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remeasure: int) -> tuple[RunDirectory, list[HoggedWatch]]:
    """Three closed-loop points of epoll at 10 connections (repeats 0, 1, 2); the hogs run on
    the server's CPU during the probe before repeat 1."""
    server_cpu, client_cpu = CPUS[0], CPUS[1]
    watches: list[HoggedWatch] = []

    def make_watch(*args: object, **kwargs: object) -> HoggedWatch:
        watches.append(HoggedWatch(*args, **{**kwargs, "threshold": TEST_THRESHOLD}))
        return watches[-1]

    monkeypatch.setattr(sweep, "ShiftWatch", make_watch)
    engine, warnings = choose_engine(None)
    config = sweep.RunConfig(
        models=["epoll"],
        connections=[10],
        point=PointSpec("", 0, 64, 0, engine=engine),
        # Under 5 whole 100 ms bins: no stability verdict, so --remeasure answers the host probe
        # alone (an unsteady point would be measured again too, and take the hogged check).
        duration_s=0.4,
        warmup_s=0.2,
        repeats=3,
        out=tmp_path,
        pinning=Pinning((server_cpu,), (client_cpu,)),
        engine_warnings=warnings,
        remeasure=remeasure,
    )
    return sweep.run_sweep(config), watches


def _by_point(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        out.setdefault(row["point_id"], []).append(row)
    return out


@needs_two_cpus
@pytest.mark.timeout(90)
def test_a_shifted_point_is_measured_again(tmp_path, monkeypatch, keep_affinity):
    run_dir, watches = _sweep(tmp_path, monkeypatch, remeasure=1)
    assert len(watches) == 1 and len(watches[0].hog_pids) == HOGS
    rows = run_dir.read_points()
    points = _by_point(rows)
    assert len(points) == 3
    shifted = points[HOGGED_POINT]
    assert [r["attempt"] for r in shifted] == ["1", "2"]
    first, final = shifted
    assert first["host_shifted"] == "True"
    assert first["superseded"] == "True"
    # The hogs slow the probe on their CPU and the echo peer's wake-ups there: either may depart most.
    assert "host shifted: the probe took" in first["reason"]
    assert f"on CPU {CPUS[0]})" in first["reason"] or "across CPUs" in first["reason"]
    assert "measured again (attempt 2) once the probe was back after" in first["reason"]
    assert float(first["probe_server_us"]) > float(final["probe_server_us"])
    assert final["host_shifted"] == "False"
    assert final["superseded"] == "False"
    assert final["status"] == "ok", final["reason"]
    for row in rows:
        assert float(row["probe_server_us"]) > 0 and float(row["probe_client_us"]) > 0
        assert row["attempt"] in ("1", "2")
        # The windows are too short for a stability verdict: only the probe asked for a re-measure.
        assert row["unsteady"] == ""
    # Only the final attempt's histograms are in histograms.jsonl.
    lines = (run_dir.path / "histograms.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["point_id"] == HOGGED_POINT for line in lines) == 1
    meta = json.loads((run_dir.path / "run.json").read_text())
    redone = sum(1 for r in rows if r["attempt"] == "2")
    assert meta["summary"]["remeasured"] == redone >= 1
    assert sorted(meta["host_probe"]["baseline_us"]) == sorted([*(str(c) for c in CPUS[:2]), "cross"])
    assert all(float(row["probe_cross_us"]) > 0 for row in rows)
    # The echo peer of the cross-CPU probe is gone with the run.
    assert watches[0].peer is None


@needs_two_cpus
@pytest.mark.timeout(90)
def test_without_remeasure_a_shifted_point_is_flagged_and_kept_once(tmp_path, monkeypatch, keep_affinity):
    run_dir, _watches = _sweep(tmp_path, monkeypatch, remeasure=0)
    rows = run_dir.read_points()
    assert len(rows) == 3
    assert all(r["attempt"] == "1" and r["superseded"] == "False" for r in rows)
    row = _by_point(rows)[HOGGED_POINT][0]
    assert row["host_shifted"] == "True"
    assert "% longer than the run's median" in row["reason"]
    assert "measured again" not in row["reason"]
    meta = json.loads((run_dir.path / "run.json").read_text())
    assert meta["summary"]["remeasured"] == 0
    assert meta["summary"]["host_shifted"] >= 1


def test_shift_decision_on_hand_made_numbers():
    history = {0: [10.0, 9.8, 10.2, 30.0], 1: [20.0, 20.0, 21.0]}
    # The median (10.1 on CPU 0) ignores the one earlier outlier.
    assert shift_reason({0: 10.9, 1: 20.5}, history, 0.10) == ""
    reason = shift_reason({0: 12.4, 1: 20.5}, history, 0.10)
    assert reason == (
        "host shifted: the probe took 23% longer than the run's median (12.4 vs 10.1 µs per round trip on CPU 0)"
    )
    faster = shift_reason({0: 10.0, 1: 15.0}, history, 0.10)
    assert faster.startswith("host shifted: the probe took 25% less time") and "on CPU 1)" in faster
    both = shift_reason({0: 20.0, 1: 30.0}, history, 0.10)
    assert "on CPU 0); 1 other CPU(s) departed too" in both
    # A CPU with no history yet is not judged.
    assert shift_reason({2: 99.0}, history, 0.10) == ""


def test_the_watch_keeps_one_vote_per_recorded_probe():
    watch = ShiftWatch((0,), (1,), threshold=0.10)
    watch.history = {0: [10.0, 10.0, 10.0], 1: [20.0, 20.0, 20.0]}
    probe = HostProbe({0: 15.0}, {1: 20.0})
    assert watch.verdict(probe).startswith("host shifted: the probe took 50% longer")
    assert probe.fields() == {"probe_server_us": 15.0, "probe_client_us": 20.0, "probe_cross_us": None}
    watch.record(probe)
    assert watch.history[0] == [10.0, 10.0, 10.0, 15.0]
    # The figure across CPUs is judged and recorded under its own key, and named in the reason.
    watch.history["cross"] = [50.0, 52.0, 51.0]
    slow = HostProbe({0: 10.0}, {1: 20.0}, cross_us=70.0)
    assert slow.fields()["probe_cross_us"] == 70.0
    assert watch.verdict(slow) == (
        "host shifted: the probe took 37% longer than the run's median (70.0 vs 51.0 µs per round trip across CPUs "
        "(a wake-up on the other CPU))"
    )
    watch.record(slow)
    assert watch.history["cross"][-1] == 70.0


@dataclass
class ScriptedWatch(ShiftWatch):
    """A watch whose probes are given server-CPU figures, in order."""

    script: list[float] = field(default_factory=list)

    def probe(self) -> HostProbe:
        return HostProbe({0: self.script.pop(0)}, {1: 20.0})


def test_a_suspect_probe_is_taken_again_and_the_second_decides():
    history = {0: [10.0, 10.0, 10.0], 1: [20.0, 20.0, 20.0]}
    blip = ScriptedWatch((0,), (1,), 0.10, {k: list(v) for k, v in history.items()}, script=[13.0, 10.2])
    probe, shift = blip.check()
    assert (probe.server_us, shift) == ({0: 10.2}, "")
    lasting = ScriptedWatch((0,), (1,), 0.10, {k: list(v) for k, v in history.items()}, script=[13.0, 12.5])
    probe, shift = lasting.check()
    assert probe.server_us == {0: 12.5} and "25% longer" in shift
    calm = ScriptedWatch((0,), (1,), 0.10, {k: list(v) for k, v in history.items()}, script=[10.5, 99.0])
    assert calm.check() == (HostProbe({0: 10.5}, {1: 20.0}), "")
    assert calm.script == [99.0]  # no second probe when the first is within the threshold


@pytest.mark.timeout(30)
def test_the_probe_is_real_and_restores_the_affinity():
    original = os.sched_getaffinity(0)
    figures = probe_cpus(CPUS[:2], round_trips=200, chunks=3)
    assert sorted(figures) == CPUS[:2]
    # A loopback round trip costs microseconds, not nanoseconds or milliseconds.
    assert all(0.5 < us < 1000 for us in figures.values()), figures
    assert os.sched_getaffinity(0) == original
    with pytest.raises(OSError):
        probe_cpus([CPUS[0], 1 << 20], round_trips=10, chunks=1)
    assert os.sched_getaffinity(0) == original


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("value", "message"),
    [("-1", "--remeasure must be a finite number >= 0"), ("x", "--remeasure")],
)
def test_remeasure_bad_input_is_one_line_error(tmp_path, value, message):
    proc = run_bench("run", "--models", "epoll", "--remeasure", value, "--out", str(tmp_path))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@needs_two_cpus
@pytest.mark.timeout(30)
def test_the_cross_cpu_probe_runs_an_echo_peer_on_the_server_cpu_and_stops_it():
    peer = CrossPeer(CPUS[0])
    peer.start()
    try:
        assert peer.proc is not None and os.sched_getaffinity(peer.proc.pid) == {CPUS[0]}
        pid = peer.proc.pid
        # A wake-up on the other CPU and back: longer than the same exchange on one CPU.
        across = peer.round_trip_us(CPUS[1], round_trips=200, chunks=3)
        alone = probe_cpus([CPUS[1]], round_trips=200, chunks=3)[CPUS[1]]
        assert across > alone > 0
    finally:
        peer.close()
    assert peer.proc is None and not os.path.exists(f"/proc/{pid}")


def test_a_shifted_point_waits_for_the_probe_to_come_back_within_a_bound():
    history = {0: [10.0, 10.0, 10.0], 1: [20.0, 20.0, 20.0]}
    comes_back = ScriptedWatch((0,), (1,), 0.10, {k: list(v) for k, v in history.items()}, script=[13.0, 12.8, 10.1])
    waited, back = comes_back.wait_until_usual(30.0)
    assert back and comes_back.script == [] and waited > 0
    stays = ScriptedWatch((0,), (1,), 0.10, {k: list(v) for k, v in history.items()}, script=[13.0, 13.0, 13.0])
    waited, back = stays.wait_until_usual(0.0)
    # A bound of zero: one probe, not back, and no wait beyond it.
    assert not back and stays.script == [13.0, 13.0] and waited < 1.0
