"""`bench explain`: each I/O model's path of one request, drawn from a real trace.

Method, per model: start the server (pinned to the server CPUs as in `bench run`), open one
connection from the harness (on the client CPUs) and wait until the server has accepted it.
Exchange `requests + 1` requests untraced, with `think` seconds between them, to measure the
round trip without tracing. Attach `strace -f -ttt -T` to the server's whole process tree, then
make the same exchange again: the client stamps each request's send and the end of its echo
with time.time(), the clock strace's -ttt prints. Detach, and read the trace with
bench.tracing.strace_log and bench.tracing.io_phases. The first traced request is not analysed: the call the
server was blocked in when strace attached is restarted by the kernel (restart_syscall) and
its entry time is strace's, not the server's.

The think time is what makes waiting visible: between two requests the server has nothing to
do, and what it does then (sleep in a call, or spin) is what separates the five models.
"""

from __future__ import annotations

import argparse
import math
import socket
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import PointFailed, UsageError
from bench.measuring.host import describe_host
from bench.running.server_control import ServerUnderTest, wait_until_held
from bench.storing.columns import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED
from bench.storing.results_store import RunDirectory, create_results_dir, new_run_id, new_run_meta, recording_status
from bench.tracing.io_phases import UNEXPLAINED, Exchange, medians, request_paths, typical
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
from bench.tracing.strace_log import parse_trace

KIND = "explain"
TRACE_DIR = "explain"
# -s 16: enough of each buffer to see the request's sequence number in the raw trace.
STRACE_OPTIONS = ("-ttt", "-T", "-s", "16")
SOCKET_TIMEOUT_S = 5.0
MIN_PAYLOAD = 8
# A handful is what the figures need; more only lengthens the trace (a busy-polling server
# makes ~700 calls per 20 ms think time).
MAX_REQUESTS = 100

METHOD_NOTE = (
    "One connection from the harness to the server. The exchange was made first untraced, then "
    "with strace -f -ttt -T attached to the server's whole process tree; the client stamped each "
    "request's send and the end of its echo with the wall clock strace prints. Durations are the "
    "kernel's time in each call (-T) as measured under tracing: ptrace stops the server twice per "
    "call, so every call and every gap between calls is longer than untraced. The first traced "
    "request is not analysed (the call in progress when strace attached is restarted)."
)


@dataclass(frozen=True, kw_only=True)
class ExplainConfig(TracedRunConfig):
    requests: int
    think_s: float
    payload: int


def exchange(sock: socket.socket, count: int, think_s: float, payload: int, first: int = 0) -> list[Exchange]:
    """`count` requests of `payload` bytes on `sock`, one at a time, `think_s` seconds apart,
    each echo read whole and checked byte for byte (the request's sequence number in its first
    8 bytes). Returns when each was sent and its echo read (s, CLOCK_REALTIME). Raises
    PointFailed on a closed connection, a timeout (SOCKET_TIMEOUT_S) or a wrong echo."""
    done: list[Exchange] = []
    for seq in range(first, first + count):
        time.sleep(think_s)  # think time: the gap the figure is about, not a synchronisation
        message = struct.pack("!Q", seq) + bytes((seq + i) % 251 for i in range(payload - 8))
        echo = bytearray()
        try:
            sent = time.time()
            sock.sendall(message)
            while len(echo) < payload:
                chunk = sock.recv(payload - len(echo))
                if not chunk:
                    raise PointFailed(f"the server closed the connection after {len(echo)} of {payload} echo bytes")
                echo += chunk
            received = time.time()
        except TimeoutError:
            raise PointFailed(f"no whole echo of request {seq} within {SOCKET_TIMEOUT_S:g} s") from None
        except OSError as exc:
            raise PointFailed(f"request {seq}: {exc.strerror or exc}") from None
        if bytes(echo) != message:
            raise PointFailed(f"the echo of request {seq} differs from the request")
        done.append(Exchange(sent, received))
    return done


@dataclass
class ModelExplanation:
    """One model's explained exchange, or why there is none (times in µs)."""

    model: str
    category: str = ""
    mechanism: str = ""
    status: str = STATUS_FAILED
    reason: str = ""
    pattern: str = ""
    trace_file: str = ""
    traced_processes: int = 0
    traced_threads: int = 0
    untraced_round_trip_us: float | None = None
    # Every traced request as the client stamped it, [sent, received] (s, CLOCK_REALTIME), the
    # first (not analysed) included: with the trace file, enough to analyse the run again.
    exchanges: list[list[float]] = field(default_factory=list)
    medians: dict[str, float | None] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    typical: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain_model(
    model: str, config: ExplainConfig, strace: str, trace_dir: Path, on_phase: Callable[[str], None] = quiet
) -> ModelExplanation:
    """Trace one model's exchange; a failure becomes the explanation's status and reason.
    on_phase(text) is told each step as it starts (for the live display)."""
    from servers import registry

    info = registry.describe(model)
    result = ModelExplanation(model, info.category, info.mechanism)
    server = ServerUnderTest(model, config.pinning.server)
    trace = trace_dir / f"{model}.trace"
    tracer = StraceAttachment(strace, trace, config.pinning.server, STRACE_OPTIONS)
    sock: socket.socket | None = None
    try:
        on_phase("starting")
        server.start(config.ready_timeout_s)
        try:
            sock = socket.create_connection((server.host, server.port), timeout=SOCKET_TIMEOUT_S)
        except OSError as exc:
            raise PointFailed(f"cannot connect to the server: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wait_until_held(server, 1, config.ready_timeout_s)
        # One more than analysed, as in the traced exchange, so both have the same warm history.
        on_phase(f"{config.requests + 1} requests untraced")
        untraced = exchange(sock, config.requests + 1, config.think_s, config.payload)[1:]
        result.untraced_round_trip_us = round(statistics.median(e.round_trip_s for e in untraced) * 1e6, 1)
        on_phase("attaching strace")
        tracer.attach(server.pid)
        result.traced_processes, result.traced_threads = tracer.processes, tracer.threads
        on_phase(f"{config.requests + 1} requests traced")
        traced = exchange(sock, config.requests + 1, config.think_s, config.payload, first=config.requests + 1)
        # Let the server go back to its wait after the last echo before strace leaves.
        time.sleep(config.think_s)
        on_phase("detaching strace")
        text = tracer.detach()
        result.trace_file = f"{TRACE_DIR}/{trace.name}"
        if (reason := server.failure()) is not None:
            raise PointFailed(reason)
        calls, _ = parse_trace(text)
        if not calls:
            raise PointFailed("strace recorded no system call")
        result.exchanges = [[e.sent, e.received] for e in traced]
        paths = request_paths(calls, traced, config.payload)[1:]
        result.requests = [p.summary() for p in paths]
        result.medians = medians(paths)
        drawn = typical(paths)
        if drawn is None:
            raise PointFailed(f"no request's path could be read from the trace ({len(calls)} calls)")
        result.typical = {**drawn.summary(), "steps": [s.as_dict() for s in drawn.steps]}
        result.pattern = _majority([p.pattern for p in paths if p.pattern != UNEXPLAINED])
        result.status = STATUS_OK
        notes = [*server.warnings]
        if (unexplained := sum(1 for p in paths if p.pattern == UNEXPLAINED)) > 0:
            notes.append(f"{unexplained} of {len(paths)} requests' paths could not be read from the trace")
        if len({p.pattern for p in paths}) > 1:
            counts = {k: sum(1 for p in paths if p.pattern == k) for k in dict.fromkeys(p.pattern for p in paths)}
            notes.append("requests differed: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        result.reason = "; ".join(notes)
    except PointFailed as exc:
        result.status = STATUS_FAILED
        result.reason = "; ".join([str(exc), *server.warnings])
    except OSError as exc:
        # Not the exchange's (exchange() turns those into PointFailed): strace or the trace file.
        result.status = STATUS_FAILED
        result.reason = f"cannot trace: {exc.strerror or exc}"
    finally:
        on_phase("stopping")
        tracer.stop()
        if sock is not None:
            sock.close()
        server.stop()
    return result


def _majority(patterns: list[str]) -> str:
    return max(dict.fromkeys(patterns), key=patterns.count) if patterns else UNEXPLAINED


def run_explain(
    config: ExplainConfig,
    strace: str,
    on_model: Callable[[ModelExplanation], None] | None = None,
    run_dir: RunDirectory | None = None,
    on_phase: Callable[[str, str], None] | None = None,
) -> tuple[RunDirectory, list[ModelExplanation]]:
    """Explain every model in turn into `run_dir` (default: a new one under config.out); run.json
    grows model by model, so an interrupted run keeps what it traced."""
    from servers import registry

    if run_dir is None:
        run_dir = RunDirectory.create(config.out, new_run_id())
    traces = run_dir.path / TRACE_DIR
    traces.mkdir()
    meta: dict[str, Any] = {
        "kind": KIND,
        **new_run_meta(run_dir.path.name),
        "config": config.as_dict(),
        "method": METHOD_NOTE,
        "strace": {"path": strace, "version": strace_version(strace)},
        "models": [registry.describe(m).as_dict() for m in config.models],
        "host": describe_host(config.pinning.as_dict()),
        "explanations": [],
    }
    run_dir.write_run(meta)
    explanations: list[ModelExplanation] = []
    with recording_status(run_dir, meta):
        for model in config.models:
            if model in config.unavailable:
                info = registry.describe(model)
                why = f"unavailable here: {config.unavailable[model]}"
                explanation = ModelExplanation(model, info.category, info.mechanism, STATUS_SKIPPED, why)
            else:
                explanation = explain_model(model, config, strace, traces, for_model(on_phase, model))
            explanations.append(explanation)
            meta["explanations"].append(explanation.as_dict())
            run_dir.write_run(meta)
            if on_model is not None:
                on_model(explanation)
    return run_dir, explanations


def add_explain_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `bench explain` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "explain",
        help="draw each model's path of one request from a real strace (explain.html)",
        description=(
            "Trace each model's server with strace -f -ttt -T while one client connection exchanges a few "
            "requests with think time between them, and draw, per model, where the server waited for the "
            "data and where it copied it (Stevens, UNP figures 6.1-6.6)."
        ),
    )
    add_traced_run_options(parser, "the client")
    parser.add_argument("--requests", type=int, default=6, help="requests analysed per model (default 6)")
    parser.add_argument("--think", type=float, default=0.02, help="seconds between requests (default 0.02)")
    parser.add_argument("--payload", type=int, default=64, help=f"bytes per request, >= {MIN_PAYLOAD} (default 64)")
    parser.set_defaults(func=cmd_explain)
    return parser


def _config(args: argparse.Namespace) -> ExplainConfig:
    common = traced_run_choices(args)
    if not 1 <= args.requests <= MAX_REQUESTS:
        raise UsageError(f"--requests must be an integer from 1 to {MAX_REQUESTS}, got {args.requests}")
    if not math.isfinite(args.think) or not 0.001 <= args.think <= 1.0:
        raise UsageError(f"--think must be from 0.001 to 1 s, got {args.think}")
    if not MIN_PAYLOAD <= args.payload <= 65536:
        raise UsageError(f"--payload must be from {MIN_PAYLOAD} to 65536 bytes, got {args.payload}")
    return ExplainConfig(**common, requests=args.requests, think_s=args.think, payload=args.payload)


def cmd_explain(args: argparse.Namespace) -> int:
    """`bench explain`: 0 when the run completed (a model that failed is shown with its reason),
    130 if interrupted; raises UsageError (exit 2 via bench.cli.main) on bad options, without
    strace, or where ptrace is not allowed."""
    from bench.reporting.explain_page import render_explain

    config = _config(args)
    strace = require_strace("bench explain")
    create_results_dir(config.out)

    def line(e: ModelExplanation) -> str:
        if e.status == STATUS_OK:
            m, waited_in = e.medians, (e.typical or {}).get("wait_call")
            where = f"waited in {waited_in}" if waited_in else "never waited in a call"
            detail = (
                f"{e.pattern}: {m.get('calls') or 0:g} calls/request, {where}, round trip "
                f"{m.get('round_trip_us') or 0:,.0f} us traced, {e.untraced_round_trip_us or 0:,.0f} us untraced"
            )
        else:
            detail = e.reason
        return f"{e.model:>12} {e.status}: {detail}"

    def run(
        on_model: Callable[[ModelExplanation], None], run_dir: RunDirectory, on_phase: Callable[[str, str], None]
    ) -> None:
        run_explain(config, strace, on_model=on_model, run_dir=run_dir, on_phase=on_phase)

    done = trace_each_model(config.models, "explaining", config.pinning.client, config.out, run, line, render_explain)
    if done is None:
        return 130
    run_dir, _ = done
    page = render_explain(run_dir.path)
    print(f"run directory: {run_dir.path}\nexplain: {page}")
    return 0
