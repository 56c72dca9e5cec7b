"""A whole run: plan the points, run them one by one, append each row as it is measured."""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from bench.measuring.host import describe_host
from bench.measuring.host_probe import PROBE_METHOD, SHIFT_WAIT_S, HostProbe, ShiftWatch
from bench.planning.find_max import find_max_rate
from bench.planning.lesson_plan import lesson_points
from bench.running.cpus import Pinning
from bench.running.point import PointSpec, Timing, run_point, unmeasured_row
from bench.running.preflight import SERVER_FD_MARGIN, nofile_limit
from bench.storing.columns import STATUS_SKIPPED
from bench.storing.results_store import RunDirectory, new_run_id, new_run_meta, recording_status
from bench.storing.statistics import default_reference, final_attempts, finalize_run_statistics, truthy
from servers import registry


@dataclass(frozen=True)
class RunConfig:
    """A run: the sweep's axes (models, connections, idle counts, rates, repeats), its timing,
    where it goes, and `point`, the template every point of the sweep is made from (payload,
    workload, engine, server workers (0: auto per point), backlog, ...; its model, connections,
    repeat, idle and rate are set per point by plan())."""

    models: list[str]
    connections: list[int]
    duration_s: float
    warmup_s: float
    repeats: int
    out: Path
    pinning: Pinning
    point: PointSpec
    ready_timeout_s: float = 15.0
    unavailable: dict[str, str] = field(default_factory=dict)
    idle: list[int] = field(default_factory=lambda: [0])
    # Open loop: the offered rates, req/s over all connections, one point each (--rate). Runs
    # before rate sweeps wrote a single `rate` number in run.json's config; nothing reads it back.
    rates: list[float] = field(default_factory=list)
    slo_p99_us: float | None = None
    quiet_wait_s: float = 0.0
    # Why the run uses another engine than the one it would have by default (bench.running.engines).
    engine_warnings: list[str] = field(default_factory=list)
    # The model paired ratios divide by; '' picks default_reference(models).
    reference: str = ""
    # Measure a point flagged host_shifted again, up to this many times (bench.measuring.host_probe).
    remeasure: int = 0
    # Add the points the report's five lessons need (bench.planning.lesson_plan; --lessons).
    lessons: bool = False

    def as_dict(self) -> dict:
        """run.json's `config` (schema 2): the template under `point`, without the fields
        plan() sets per point."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["pinning"] = self.pinning.as_dict()
        d["point"] = {k: v for k, v in d["point"].items() if k not in PER_POINT}
        return d


# What run_sweep's on_phase is told once every row of a point is written (then the next begins).
PHASE_DONE = "done"


# SO_REUSEPORT spreads connections over the listeners by a hash of the 4-tuple, not evenly:
# each process is filled to this share of its descriptors on average. At 1.2M connections over
# 61 processes filled to 99%, one got past 20,000 and died with EMFILE (2026-11-30).
REUSEPORT_FILL = 0.9


def auto_server_workers(model: str, held: int, nofile: int | None = None) -> int:
    """Server processes for a point holding `held` connections: one, or, for a model that can
    share its port (SO_REUSEPORT), as many as RLIMIT_NOFILE (`nofile`, default this process's,
    which the server inherits) requires. A model that cannot is left at one: preflight then
    skips the point with the reason."""
    limit = int(((nofile if nofile is not None else nofile_limit()) - SERVER_FD_MARGIN) * REUSEPORT_FILL)
    needed = max(1, -(-held // max(limit, 1)))
    if needed == 1:
        return 1
    try:
        return needed if registry.load(model).supports_workers else 1
    except (KeyError, ImportError, AttributeError):
        return 1


# PointSpec's fields that plan() sets for each point; the rest come from RunConfig.point.
PER_POINT = ("model", "connections", "repeat", "idle", "rate")


def plan(config: RunConfig) -> list[PointSpec]:
    """Every (model, connections) point per repeat, for each idle count and, in the open loop,
    each offered rate (connections, then idle, then rate, then model), then, with `lessons`,
    the points bench.planning.lesson_plan adds; the model order rotates between repeats so that a slow
    drift of the host does not always land on the same model."""
    specs = []
    workload = config.point.workload
    rates = config.rates if workload == "open" and config.rates else [0.0]
    for repeat in range(config.repeats):
        shift = repeat % len(config.models)
        models = config.models[shift:] + config.models[:shift]
        for connections, idle, rate, model in itertools.product(config.connections, config.idle, rates, models):
            kind = "idle" if idle and workload == "closed" else workload
            specs.append(_spec(config, model, connections, repeat, kind, idle, rate))
        if config.lessons:
            available = [m for m in models if m not in config.unavailable]
            for p in lesson_points(available, config.connections, config.idle):
                specs.append(_spec(config, p.model, p.connections, repeat, p.workload, p.idle, p.rate))
    # A point the sweep and the lessons both ask for is measured once: histograms.jsonl keeps
    # one line per point_id, and statistics would count the second as a repeat.
    seen: set[str] = set()
    return [spec for spec in specs if not (spec.point_id in seen or seen.add(spec.point_id))]


def _spec(
    config: RunConfig, model: str, connections: int, repeat: int, workload: str, idle: int, rate: float
) -> PointSpec:
    held = 0 if workload == "churn" else connections + idle
    return replace(
        config.point,
        model=model,
        connections=connections,
        repeat=repeat,
        workload=workload,
        idle=idle,
        rate=rate,
        server_workers=config.point.server_workers or auto_server_workers(model, held),
    )


def _summary(run_dir: RunDirectory, config: RunConfig) -> dict:
    reference = config.reference or default_reference([m for m in config.models if m not in config.unavailable])
    return {
        "warnings": [*config.engine_warnings, *finalize_run_statistics(run_dir, reference)],
        **_shift_summary(run_dir),
    }


def _shift_summary(run_dir: RunDirectory) -> dict[str, int]:
    """`remeasured`: points measured more than once because the host had shifted (their final
    attempt is > 1); `host_shifted`: final rows still flagged (shifted on every attempt)."""
    rows = run_dir.read_points()
    if not rows:
        return {"remeasured": 0, "host_shifted": 0}
    final = final_attempts(pd.DataFrame(rows, dtype=str))
    attempts = pd.to_numeric(final.get("attempt", pd.Series(dtype=str)), errors="coerce").fillna(1)
    shifted = truthy(final["host_shifted"]) if "host_shifted" in final.columns else pd.Series(dtype=bool)
    return {"remeasured": int((attempts > 1).sum()), "host_shifted": int(shifted.sum())}


class _ProbeHook:
    """bench.running.point's before_measure hook: probe the host, put the figures in the row, and keep
    the verdict against the run's history for the sweep to act on (the last call wins: a point
    measured again with more load workers is probed again)."""

    def __init__(self, watch: ShiftWatch) -> None:
        self.watch = watch
        self.probe: HostProbe | None = None
        self.shift = ""
        self.error = ""

    def __call__(self, row: dict) -> None:
        try:
            self.probe, self.shift = self.watch.check()
        except Exception as exc:  # noqa: BLE001 - a probe that fails costs the point its probe, not the run
            self.probe, self.shift, self.error = None, "", f"host probe failed: {exc}"
            return
        self.error = ""
        row.update(self.probe.fields())

    def mark(self, row: dict) -> None:
        """Fill host_shifted and add the verdict (or the probe's failure) to the row's reason."""
        if self.probe is not None:
            row["host_shifted"] = bool(self.shift)
        if note := self.shift or self.error:
            row["reason"] = "; ".join(filter(None, [row.get("reason"), note]))


def _attempts(
    run_id: str,
    spec: PointSpec,
    timing: Timing,
    pinning: Pinning,
    watch: ShiftWatch,
    remeasure: int,
    on_phase: Callable[[str], None] | None = None,
) -> Iterator[tuple[dict, dict[str, str]]]:
    """The point, measured once more while the probe before it says the host shifted, or its
    own timeline says it was unsteady (the host can change phase during a point, where no
    probe before it can see), up to `remeasure` times. Every attempt is a row with its number
    in `attempt`; an attempt that a later one replaces has `superseded` True, and only the
    final attempt may enter statistics."""
    for attempt in range(1, remeasure + 2):
        hook = _ProbeHook(watch)
        row, hists = run_point(run_id, spec, timing, pinning, hook, on_phase)
        hook.mark(row)
        again = (bool(hook.shift) or row.get("unsteady") is True) and attempt <= remeasure
        row.update(attempt=attempt, superseded=again)
        if again:
            # Measuring again at once would land in the same phase of the host: wait (bounded)
            # for the probe to come back to the run's median first.
            if on_phase is not None:
                on_phase("waiting for the host to settle")
            try:
                waited, back = watch.wait_until_usual(SHIFT_WAIT_S)
            except OSError:
                waited, back = 0.0, False
            how = "once the probe was back" if back else "though the probe was not back"
            row["reason"] += f"; measured again (attempt {attempt + 1}) {how} after {waited:.1f} s"
            # histograms.jsonl is keyed by point_id and RunDirectory.read_histograms keeps the
            # last line per point_id: a superseded attempt's histograms are not written, so the
            # ones kept are the final attempt's (even when it failed before it had any).
            yield row, {}
            continue
        if hook.probe is not None:
            # One vote per point in the history (bench.measuring.host_probe.ShiftWatch).
            watch.record(hook.probe)
        yield row, hists
        return


def _searched(
    results: Iterable[tuple[dict, dict[str, str]]], watch: ShiftWatch | None
) -> Iterator[tuple[dict, dict[str, str]]]:
    """--find-max: one probe before the search, its figures and verdict on every row of it.
    A search is not re-measured: its steps are a bisection whose earlier steps chose the later
    rates, and it confirms a missed objective by itself (bench.planning.find_max)."""
    hook = _ProbeHook(watch) if watch is not None else None
    fields: dict = {}
    if hook is not None:
        hook(fields)
        if hook.probe is not None:
            hook.watch.record(hook.probe)
    for row, hists in results:
        row.update(fields, attempt=1, superseded=False)
        if hook is not None:
            hook.mark(row)
        yield row, hists


def _start_watch(config: RunConfig, specs: list[PointSpec], meta: dict) -> ShiftWatch | None:
    """The run's host-shift watch with its baseline probes taken, recorded in run.json's
    `host_probe`; None when no point will be measured or the probe cannot run here (then said
    in `host_probe.error` and on stderr, and points are measured unprobed)."""
    if all(spec.model in config.unavailable for spec in specs):
        return None
    watch = ShiftWatch(config.pinning.server, config.pinning.client)
    meta["host_probe"] = {"method": PROBE_METHOD, "threshold": watch.threshold}
    try:
        watch.start()
    except OSError as exc:
        meta["host_probe"]["error"] = f"the host probe failed, points are not probed: {exc}"
        print(f"warning: {meta['host_probe']['error']}", file=sys.stderr, flush=True)
        return None
    baseline = {str(cpu): [round(v, 3) for v in values] for cpu, values in watch.history.items()}
    meta["host_probe"]["baseline_us"] = baseline
    return watch


def run_sweep(
    config: RunConfig,
    on_point: Callable[[dict, Path], None] | None = None,
    on_phase: Callable[[PointSpec, str], None] | None = None,
) -> RunDirectory:
    """Plan the run's points and measure them in order into a new run directory under
    config.out. `on_point(row, run_path)` is called with each row once it is written;
    `on_phase(spec, text)` with each phase of the point being measured (bench.running.point.run_point's,
    cheap calls made inside the measurement), then PHASE_DONE once all of its rows are written."""
    run_id = new_run_id()
    run_dir = RunDirectory.create(config.out, run_id)
    specs = plan(config)
    meta = {
        **new_run_meta(run_id),
        "config": config.as_dict(),
        "points_planned": len(specs),
        "models": [registry.describe(m).as_dict() for m in config.models if not config.point.target],
        "host": describe_host(config.pinning.as_dict()),
    }
    run_dir.write_run(meta)
    # The harness itself runs beside the load workers, off the server's CPUs (after the host
    # description, which records the CPUs this process may use).
    os.sched_setaffinity(0, set(config.pinning.client))
    with recording_status(run_dir, meta, on_finish=lambda m: m.update(summary=_summary(run_dir, config))):
        watch = _start_watch(config, specs, meta)
        try:
            for spec in specs:
                timing = Timing(config.duration_s, config.warmup_s, config.ready_timeout_s, config.quiet_wait_s)
                phase = functools.partial(on_phase, spec) if on_phase is not None else None
                if spec.model in config.unavailable:
                    reason = f"unavailable here: {config.unavailable[spec.model]}"
                    results = [(unmeasured_row(run_id, spec, STATUS_SKIPPED, reason), {})]
                elif config.slo_p99_us is not None:
                    # bench.planning.find_max measures its own steps; it is told no phases.
                    if phase is not None:
                        phase("searching the highest rate")
                    results = _searched(find_max_rate(run_id, spec, timing, config.pinning, config.slo_p99_us), watch)
                elif watch is not None:
                    results = _attempts(run_id, spec, timing, config.pinning, watch, config.remeasure, phase)
                else:
                    results = [run_point(run_id, spec, timing, config.pinning, on_phase=phase)]
                for row, hists in results:
                    row.setdefault("attempt", 1)
                    run_dir.append_point(row, hists)
                    if on_point is not None:
                        on_point(row, run_dir.path)
                if phase is not None:
                    phase(PHASE_DONE)
        finally:
            if watch is not None:
                watch.close()
    return run_dir
