"""A whole run: plan the points, run them one by one, append each row as it is measured."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.columns import STATUS_SKIPPED
from bench.cpus import Pinning
from bench.find_max import find_max_rate
from bench.host import describe_host
from bench.point import PointSpec, Timing, run_point, unmeasured_row
from bench.preflight import SERVER_FD_MARGIN, nofile_limit
from bench.results_store import RunDirectory, new_run_id, new_run_meta, recording_status
from bench.statistics import finalize_run_statistics
from servers import registry


@dataclass(frozen=True)
class RunConfig:
    models: list[str]
    connections: list[int]
    payload: int
    duration_s: float
    warmup_s: float
    repeats: int
    out: Path
    pinning: Pinning
    workload: str = "closed"
    ready_timeout_s: float = 15.0
    unavailable: dict[str, str] = field(default_factory=dict)
    idle: list[int] = field(default_factory=lambda: [0])
    rate: float = 0.0
    # 0: auto, per point (auto_server_workers).
    server_workers: int = 0
    fork_cap: int = 1000
    request_timeout_s: float = 2.0
    slo_p99_us: float | None = None
    quiet_wait_s: float = 0.0
    target: str = ""
    engine: str = "c"
    # Why the run uses another engine than the one it would have by default (bench.engines).
    engine_warnings: list[str] = field(default_factory=list)
    locust_workers: int = 0
    locust_ui: bool = False
    locust_remote_workers: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        d["pinning"] = self.pinning.as_dict()
        return d


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


def plan(config: RunConfig) -> list[PointSpec]:
    """Every (model, connections) point per repeat; the model order rotates between repeats
    so that a slow drift of the host does not always land on the same model."""
    specs = []
    for repeat in range(config.repeats):
        shift = repeat % len(config.models)
        models = config.models[shift:] + config.models[:shift]
        for connections in config.connections:
            for idle in config.idle:
                workload = "idle" if idle and config.workload == "closed" else config.workload
                for model in models:
                    specs.append(
                        PointSpec(
                            model,
                            connections,
                            config.payload,
                            repeat,
                            workload,
                            idle=idle,
                            rate=config.rate if config.workload == "open" else 0.0,
                            server_workers=config.server_workers
                            or auto_server_workers(model, 0 if workload == "churn" else connections + idle),
                            fork_cap=config.fork_cap,
                            request_timeout_s=config.request_timeout_s,
                            target=config.target,
                            engine=config.engine,
                            locust_workers=config.locust_workers,
                            locust_ui=config.locust_ui,
                            locust_remote_workers=config.locust_remote_workers,
                        )
                    )
    return specs


def _summary(run_dir: RunDirectory, config: RunConfig) -> dict:
    return {"warnings": [*config.engine_warnings, *finalize_run_statistics(run_dir)]}


def run_sweep(config: RunConfig, on_point: Callable[[dict, Path], None] | None = None) -> RunDirectory:
    run_id = new_run_id()
    run_dir = RunDirectory.create(config.out, run_id)
    specs = plan(config)
    meta = {
        **new_run_meta(run_id),
        "config": config.as_dict(),
        "points_planned": len(specs),
        "models": [registry.describe(m).as_dict() for m in config.models if not config.target],
        "host": describe_host(config.pinning.as_dict()),
    }
    run_dir.write_run(meta)
    # The harness itself runs beside the load workers, off the server's CPUs (after the host
    # description, which records the CPUs this process may use).
    os.sched_setaffinity(0, set(config.pinning.client))
    with recording_status(run_dir, meta, on_finish=lambda m: m.update(summary=_summary(run_dir, config))):
        for spec in specs:
            timing = Timing(config.duration_s, config.warmup_s, config.ready_timeout_s, config.quiet_wait_s)
            if spec.model in config.unavailable:
                reason = f"unavailable here: {config.unavailable[spec.model]}"
                results = [(unmeasured_row(run_id, spec, STATUS_SKIPPED, reason), {})]
            elif config.slo_p99_us is not None:
                results = find_max_rate(run_id, spec, timing, config.pinning, config.slo_p99_us)
            else:
                results = [run_point(run_id, spec, timing, config.pinning)]
            for row, hists in results:
                run_dir.append_point(row, hists)
                if on_point is not None:
                    on_point(row, run_dir.path)
    return run_dir
