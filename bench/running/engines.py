"""The load engines behind one interface, chosen once per run.

  c       the compiled worker (loadgen/native/worker.c): the default wherever a C compiler exists,
          so that the load generator is not the bottleneck it would blame on a fast server;
  python  `python -m loadgen`: the portable fallback, and an independent cross-check of c;
  locust  a Locust master and workers with the raw-TCP echo user: the distributed engine.

Every engine object has the same small surface: start(), wait_connected(timeout) ->
ConnectPhase, schedule(warmup_s, duration_s) -> window, collect(timeout) -> LoadResult, stop(),
pids(), and the attributes engine, workers, notes, can_add_workers, extra_connect_timeout_s.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Protocol

from bench.errors import UsageError
from bench.running.load_workers import ConnectPhase, CWorkers, LoadPlan, LoadResult, PythonWorkers, c_io_choice

ENGINES = ("c", "python", "locust")
# Runs written before the C engine existed called the Python worker "builtin".
LEGACY_NAMES = {"builtin": "python"}


class LoadEngine(Protocol):
    engine: str
    workers: int
    notes: list[str]
    can_add_workers: bool
    extra_connect_timeout_s: float

    @classmethod
    def plan_workers(cls, plan: LoadPlan, client_cpus: int, requested: int = 0) -> int: ...

    def start(self) -> None: ...
    def wait_connected(self, timeout: float, progress: Callable[[int], None] | None = None) -> ConnectPhase: ...
    def schedule(self, warmup_s: float, duration_s: float) -> tuple[float, float]: ...
    def collect(self, timeout: float) -> LoadResult: ...
    def stop(self) -> None: ...
    def pids(self) -> list[int]: ...


# How each engine measures, in the words of a report's "How it was measured".
HOW = {
    "c": "compiled worker processes (loadgen/native/worker.c), each one loop over its connections on io_uring "
    "(a multishot recv per connection into kernel-provided buffers, sends batched into the wait's system call; "
    "Linux 6.1+), else on epoll (the engine_io column says which), latencies at 1 µs resolution folded into "
    "HdrHistograms (1 µs..60 s, 3 significant digits)",
    "python": "`python -m loadgen` worker processes, each one epoll loop over its connections (the portable "
    "engine: on a fast server its ~2 µs of interpreter per request can make it the bottleneck)",
    "locust": "a Locust master and worker processes running a raw-TCP echo user, microsecond HdrHistograms per "
    "worker (one Locust user is one connection)",
}


def describe(engine: str) -> dict[str, str]:
    """{"name", "how"} of an engine as a run recorded it (older runs: "builtin" is python)."""
    name = canonical(engine or "builtin")
    how = HOW.get(name, "an engine this version does not know")
    if name != engine:
        how += f" (recorded as '{engine}')"
    return {"name": name, "how": how}


def unavailable_reason(engine: str) -> str | None:
    """Why `engine` cannot run on this host (one line), or None. The C engine is compiled here,
    on first use, which is why asking may take a second."""
    if engine == "c":
        from loadgen.c_worker import worker_binary

        return worker_binary()[1]
    if engine == "locust" and importlib.util.find_spec("locust") is None:
        return "locust is not installed"
    return None


def choose_engine(requested: str | None) -> tuple[str, list[str]]:
    """The engine a run uses, and warnings: no request means c, or python (with a warning
    saying why) where c cannot be built. An engine asked for by name that cannot run is a
    UsageError."""
    if requested in (None, "c"):
        c_io_choice()  # a bad $IOMODEL_C_IO is an error before the run, not at every point
    if requested is None:
        reason = unavailable_reason("c")
        if reason is None:
            return "c", []
        return "python", [f"load engine: python, because the C engine cannot be built here ({reason})"]
    if requested not in ENGINES:
        raise UsageError(f"--engine is one of {', '.join(ENGINES)}, not {requested!r}")
    if (reason := unavailable_reason(requested)) is not None:
        raise UsageError(f"--engine {requested} cannot run here: {reason}")
    return requested, []


def canonical(engine: str) -> str:
    """The engine's name today, for a name read from an older run."""
    return LEGACY_NAMES.get(engine, engine)


def engine_class(engine: str) -> type[LoadEngine]:
    """The class of `engine` (ValueError for an unknown name)."""
    if engine == "locust":
        from bench.running.locust_engine import LocustWorkers

        return LocustWorkers
    if engine == "c":
        return CWorkers
    if engine == "python":
        return PythonWorkers
    raise ValueError(f"unknown load engine {engine!r}")


def make_engine(
    engine: str,
    host: str,
    port: int,
    plan: LoadPlan,
    cpus: tuple[int, ...],
    workers: int,
    *,
    locust_ui: bool = False,
    locust_remote_workers: int = 0,
) -> LoadEngine:
    """A not yet started engine for one point. Raises PointFailed when it cannot drive `plan`."""
    cls = engine_class(engine)
    if engine == "locust":
        return cls(host, port, plan, cpus, workers, ui=locust_ui, expect_remote_workers=locust_remote_workers)
    return cls(host, port, plan, cpus, workers)
