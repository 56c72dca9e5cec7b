"""`bench`: run sweeps, render reports, list the servers."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bench.errors import UsageError
from bench.planning.model_selection import select_models
from bench.running.cpus import default_pinning, parse_pinning
from bench.storing.columns import STATUS_OK

if TYPE_CHECKING:
    from bench.live_display import LiveProgress
    from bench.running.point import PointSpec

DEFAULT_CONNECTIONS = "10,100,1000,2000"
# The model column of points driven against --target: the harness does not know what runs there.
EXTERNAL_MODEL = "external"


def _int_list(text: str, name: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{name} takes a comma-separated list of integers, not {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise UsageError(f"{name} values must be integers >= {minimum}, got {text!r}")
    return values


def _rate_list(text: str) -> list[float]:
    """--rate: offered rates in requests per second over all connections, one point each, in
    the order given. Each must be a finite number > 0, and none may repeat: two points with
    the same rate would share a point_id, and histograms.jsonl keeps one line per point_id."""
    message = f"--rate must be a finite number > 0 (req/s) or a comma-separated list of them, not {text!r}"
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(message) from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise UsageError(message)
    if twice := sorted({f"{v:g}" for v in values if values.count(v) > 1}):
        raise UsageError(f"--rate lists {', '.join(twice)} more than once: each rate is one point")
    return values


def _positive(value: float, name: str, allow_zero: bool = False) -> float:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def _server_workers(text: str) -> int:
    """--server-workers: a count >= 1, or 'auto' (0: chosen per point by bench.planning.sweep)."""
    if text.strip() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"--server-workers takes 'auto' or an integer >= 1, not {text!r}")
    return value


def _backlog(value: int | None) -> int:
    """--backlog: the servers' default when not given, else an int listen() takes."""
    from bench.measuring.tcp_counters import check_backlog
    from servers.base import DEFAULT_BACKLOG

    return DEFAULT_BACKLOG if value is None else check_backlog(value)


def cmd_run(args: argparse.Namespace) -> int:
    from bench.live_display import LiveProgress
    from bench.planning.sweep import RunConfig, plan, run_sweep
    from bench.running.engines import choose_engine
    from bench.running.point import PointSpec
    from bench.storing.results_store import create_results_dir
    from bench.storing.statistics import default_reference
    from servers.base import DEFAULT_BACKLOG

    if args.engine != "locust" and (args.locust_workers or args.locust_ui or args.locust_remote_workers):
        raise UsageError("--locust-workers, --locust-ui and --locust-remote-workers apply to --engine locust")
    if args.engine == "locust" and (args.workload != "closed" or args.find_max or args.idle != "0"):
        raise UsageError("--engine locust drives the closed loop only (no --workload open/churn, --idle or --find-max)")
    if args.target:
        from bench.running.target import parse_target

        target = parse_target(args.target, args.allow_remote)
        if args.models != "all":
            raise UsageError("--target drives a server started elsewhere; --models does not apply")
        if args.server_workers != "auto" or args.fork_cap != 1000:
            raise UsageError("--server-workers and --fork-cap apply to servers bench starts, not to --target")
        if args.backlog is not None:
            raise UsageError("--backlog applies to servers bench starts, not to --target")
        models, unavailable = [EXTERNAL_MODEL], {}
    else:
        if args.allow_remote:
            raise UsageError("--allow-remote applies to --target only")
        target = ""
        models, unavailable = select_models(args.models)
    if not models:
        raise UsageError("no model is available on this host (see `bench models`)")
    try:
        pinning = parse_pinning(args.server_cpus, args.client_cpus) if args.server_cpus else default_pinning()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    workload = args.workload
    if workload == "open" and not args.find_max and args.rate is None:
        raise UsageError("--workload open needs --rate R or R1,R2,... (requests per second in total, R > 0)")
    rates = _rate_list(args.rate) if args.rate is not None else []
    if rates and workload != "open":
        raise UsageError("--rate applies to --workload open only")
    slo_p99_us = None
    if args.find_max:
        from bench.planning.find_max import parse_slo

        if not args.slo:
            raise UsageError("--find-max needs an objective, e.g. --slo p99=2ms")
        slo_p99_us = parse_slo(args.slo)
        if workload == "churn":
            raise UsageError("--find-max searches an open-loop rate; it does not apply to --workload churn")
        if rates:
            # The search chooses its own offered rates (a bisection below the closed-loop
            # capacity); its probes are drawn on the same rate plots as a --rate list's points.
            raise UsageError("--find-max chooses the offered rates itself: give --rate or --find-max, not both")
    elif args.slo:
        raise UsageError("--slo applies to --find-max only")
    if args.reference and args.reference not in models:
        raise UsageError(f"--reference {args.reference!r} is not one of the run's models ({', '.join(models)})")
    default_sweep = (
        workload == "closed"
        and args.connections == DEFAULT_CONNECTIONS
        and args.idle == "0"
        and not (target or args.find_max or args.engine == "locust")
    )
    lessons = default_sweep if args.lessons is None else args.lessons
    if lessons and (workload != "closed" or target or args.engine == "locust" or args.find_max):
        raise UsageError("--lessons goes with a closed loop on servers bench starts (no --target, Locust, --find-max)")
    engine, engine_warnings = choose_engine(args.engine)
    point = PointSpec(
        model="",
        connections=0,
        payload=int(_positive(args.payload, "--payload")),
        repeat=0,
        workload=workload,
        server_workers=_server_workers(args.server_workers),
        fork_cap=int(_positive(args.fork_cap, "--fork-cap")),
        request_timeout_s=_positive(args.request_timeout, "--request-timeout"),
        target=target,
        engine=engine,
        locust_workers=int(_positive(args.locust_workers, "--locust-workers", allow_zero=True)),
        locust_ui=args.locust_ui,
        locust_remote_workers=int(_positive(args.locust_remote_workers, "--locust-remote-workers", allow_zero=True)),
        # With --target the listen backlog is the other server's: recorded as the servers' default.
        backlog=_backlog(args.backlog) if not target else DEFAULT_BACKLOG,
    )
    config = RunConfig(
        models=models,
        connections=_int_list(args.connections, "--connections"),
        duration_s=_positive(args.duration, "--duration"),
        warmup_s=_positive(args.warmup, "--warmup", allow_zero=True),
        repeats=int(_positive(args.repeats, "--repeats")),
        out=Path(args.out),
        pinning=pinning,
        point=point,
        unavailable=unavailable,
        ready_timeout_s=_positive(args.ready_timeout, "--ready-timeout"),
        idle=_int_list(args.idle, "--idle", minimum=0),
        rates=rates,
        lessons=lessons,
        slo_p99_us=slo_p99_us,
        quiet_wait_s=_positive(args.quiet_wait, "--quiet-wait", allow_zero=True),
        remeasure=int(_positive(args.remeasure, "--remeasure", allow_zero=True)),
        engine_warnings=engine_warnings,
        reference=args.reference or default_reference([m for m in models if m not in unavailable]),
    )
    _stop_on_sigterm()
    create_results_dir(config.out)
    runner = _Progress(LiveProgress(len(plan(config))))
    try:
        # Left before the except below prints: the live display is gone by then.
        with runner.display:
            run_dir = run_sweep(config, on_point=runner.point, on_phase=runner.phase)
    except KeyboardInterrupt:
        print("interrupted: the points measured so far are kept", file=sys.stderr)
        if runner.run_dir is not None:
            _render(runner.run_dir)
        return 130
    report = _render(run_dir.path)
    for warning in run_dir.read_run().get("summary", {}).get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"run directory: {run_dir.path}\nreport: {report}")
    if not any(row.get("status") == STATUS_OK for row in run_dir.read_points()):
        print("bench: no point of this run was measured successfully (see the reasons above)", file=sys.stderr)
        return 1
    return 0


class _Progress:
    """bench run's progress: each point's line, and on a terminal the live display's current
    point and phase (bench.live_display)."""

    def __init__(self, display: LiveProgress) -> None:
        from bench.planning.sweep import PHASE_DONE

        self.run_dir: Path | None = None
        self.display = display
        self.done = PHASE_DONE

    def point(self, row: dict, run_path: Path) -> None:
        self.run_dir = run_path
        status = row.get("status")
        detail = (
            f"{row['rps']:,.0f} req/s, p99 {row['p99_us']:,.0f} us" if status == STATUS_OK else row.get("reason", "")
        )
        again = " (host shifted: measuring again)" if row.get("superseded") else ""
        point = f"{row['model']:>12} c={row['connections']:<6}"
        kind = _kind(_number(row.get("idle")), _number(row.get("target_rate")))
        self.display.line(f"{point}{kind} r{row['repeat']} {status}: {detail}{again}")

    def phase(self, spec: PointSpec, text: str) -> None:
        if text == self.done:
            self.display.advance()
            return
        self.display.phase(f"{spec.model} c={spec.connections}{_kind(spec.idle, spec.rate)} r{spec.repeat}: {text}")


def _kind(idle: float, rate: float) -> str:
    """What sets a point apart from the closed-loop one at the same connections, as its line and
    the live display name it: ' idle=1000', ' rate=1000' (req/s offered), or ''."""
    return (f" idle={idle:g}" if idle else "") + (f" rate={rate:g}" if rate else "")


def _number(value: object) -> float:
    """A row's cell as a number; 0 for an empty, missing or non-finite one."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _stop_on_sigterm() -> None:
    # SIGTERM takes the same path as Ctrl-C: children stopped, rows kept, report written.
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.run_dir)
    if not (path / "run.json").is_file():
        raise UsageError(f"{args.run_dir} is not a run directory (no run.json)")
    print(_render(path))
    return 0


def _render(path: Path) -> Path:
    """The run's report (an explain run's page), or a one-line error naming what is damaged."""
    from bench.reporting.explain_page import render_explain
    from bench.reporting.report import render_report

    try:
        if json.loads((path / "run.json").read_text()).get("kind") == "explain":
            return render_explain(path)
        return render_report(path)
    except (ValueError, KeyError, AttributeError, TypeError, OSError) as exc:
        # json and pandas parse errors are ValueErrors; a run.json of the wrong shape, the rest.
        raise UsageError(f"cannot render {path}: damaged run directory ({type(exc).__name__}: {exc})") from None


def cmd_models(args: argparse.Namespace) -> int:
    from servers import registry

    infos = registry.describe_all()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "I/O model (UNP §6.2)", "available", "mechanism / reason")
    for i in infos:
        table.add_row(i.name, i.category, "yes" if i.available else "no", i.mechanism if i.available else i.reason)
    Console().print(table)
    return 0


class _OneLineErrors(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr (and exit 2), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="bench", description="Benchmark Linux network I/O models.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="sweep models over connection counts and write a run directory")
    run.add_argument("--models", default="all", help="comma-separated model names, or 'all' (default)")
    run.add_argument("--connections", default=DEFAULT_CONNECTIONS, help=f"list (default {DEFAULT_CONNECTIONS})")
    run.add_argument("--payload", type=int, default=64, help="bytes per request (default 64)")
    run.add_argument("--duration", type=float, default=1.0, help="measured window, seconds (default 1)")
    run.add_argument("--warmup", type=float, default=0.5, help="warm-up before the window, seconds (default 0.5)")
    run.add_argument(
        "--request-timeout",
        type=float,
        default=2.0,
        help="seconds a request may wait for its echo before it counts as a timeout and its connection is "
        "closed (default 2, as wrk's)",
    )
    run.add_argument("--repeats", type=int, default=1, help="how many times to run the whole sweep (default 1)")
    run.add_argument(
        "--reference",
        default="",
        metavar="MODEL",
        help="the model each repeat's req/s is divided by (paired ratios); default native if it runs, else the first",
    )
    run.add_argument("--out", default=os.environ.get("BENCH_RESULTS", "results"), help="results directory")
    load = run.add_argument_group("workload")
    load.add_argument(
        "--workload",
        choices=["closed", "open", "churn"],
        default="closed",
        help="closed loop (default), open loop at --rate, or churn (connect, one request, close)",
    )
    load.add_argument(
        "--rate",
        default=None,
        help="open loop: requests per second over all connections, or a list (e.g. 5000,20000,60000): a point per "
        "rate, drawn against the offered rate in the report",
    )
    load.add_argument("--idle", default="0", help="silent connections held beside the active ones, a list (default 0)")
    load.add_argument(
        "--lessons",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the points the report's five I/O-model lessons need: 1,000 idle connections beside 10 active ones "
        "for select, poll, epoll, io_uring, and 1,000 req/s open loop for nonblocking and epoll (default: on for the "
        "default sweep only)",
    )
    load.add_argument("--find-max", action="store_true", help="search the highest open-loop rate meeting --slo")
    load.add_argument("--slo", default="", help="latency objective for --find-max, e.g. p99=2ms")
    server = run.add_argument_group("server")
    server.add_argument("--target", default="", help="HOST:PORT of a server started elsewhere (e.g. by bench serve)")
    server.add_argument("--allow-remote", action="store_true", help="let --target name a non-loopback address")
    server.add_argument(
        "--server-workers",
        default="auto",
        help="SO_REUSEPORT processes of an event-driven model (default auto: one, or as many as the point's "
        "connections need under RLIMIT_NOFILE)",
    )
    server.add_argument("--fork-cap", type=int, default=1000, help="live children the fork model may have")
    server.add_argument(
        "--backlog",
        type=int,
        default=None,
        metavar="N",
        help="listen() backlog of the servers bench starts (default 4096, the servers' own); the kernel caps it at "
        "net.core.somaxconn",
    )
    engine = run.add_argument_group("load engine")
    engine.add_argument(
        "--engine",
        choices=["c", "python", "locust"],
        default=None,
        help="c (default where a C compiler exists: compiled workers), python (portable, a cross-check) or locust "
        "(distributed: master plus workers, closed loop only)",
    )
    engine.add_argument(
        "--locust-workers", type=int, default=0, help="local Locust workers (default: one per client CPU)"
    )
    engine.add_argument("--locust-ui", action="store_true", help="serve Locust's web UI on 127.0.0.1 for a live view")
    engine.add_argument(
        "--locust-remote-workers",
        type=int,
        default=0,
        help="wait for this many Locust workers from other hosts to join (the command to start them is printed)",
    )
    noise = run.add_argument_group("noise")
    noise.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each point, wait up to S seconds for the host's CPUs to be mostly idle (default 0: off)",
    )
    noise.add_argument(
        "--remeasure",
        type=int,
        default=0,
        metavar="N",
        help="measure a point again, up to N times, when the host probe before it says the host shifted or its "
        "timeline was unsteady; every attempt is kept as a row, only the last counts (default 0: flag only; "
        "--find-max searches are not re-measured)",
    )
    run.add_argument("--ready-timeout", type=float, default=15.0, help="seconds a server may take to listen")
    run.add_argument("--server-cpus", default="", help="CPUs for the server, e.g. 0 (default: first half)")
    run.add_argument("--client-cpus", default="", help="CPUs for the load workers (default: the rest)")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="(re)write report.html of a run directory")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)
    models = sub.add_parser(
        "models", help="list the servers (one per I/O model or variant of one) and whether each can run here"
    )
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    from bench.measuring.host import add_host_parser

    add_host_parser(sub)
    from bench.reporting.compare import add_compare_parser

    add_compare_parser(sub)
    from bench.tracing.syscall_profile import add_profile_parser

    add_profile_parser(sub)
    from bench.tracing.explain import add_explain_parser

    add_explain_parser(sub)
    from bench.running.serve import add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must stop a run cleanly even when bench inherits SIGINT ignored (as background jobs
    # of a non-interactive shell do): Python would otherwise keep ignoring it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # numpy's OpenBLAS starts a worker thread per CPU when numpy is first imported, which is
    # after this line (this module imports none of it). The harness pins itself to the client
    # CPUs later, and a thread keeps the affinity it was born with, so that thread would stay
    # free to run on the server's CPUs. The harness does no linear algebra worth a second
    # thread; a user's own setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    if (
        getattr(args, "server_cpus", "")
        and not args.client_cpus
        or getattr(args, "client_cpus", "")
        and not args.server_cpus
    ):
        print("bench: error: --server-cpus and --client-cpus go together", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
