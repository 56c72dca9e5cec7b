"""`bench serve MODEL`: one reference server in the foreground, for load from elsewhere.

Prints the server's JSON ready line on stdout (so scripts can read the port), then, as they
come, its `shed` and `stats` lines (bench.measuring.shed: the connections it shed at its descriptor limit,
which a `bench run --target` against it cannot read), runs for at most --duration seconds, and
stops the server and everything it started on Ctrl-C, SIGTERM or when the time is up; what it
shed in all is said on stderr at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from typing import Any

from bench.errors import UsageError
from bench.measuring.shed import ShedTally
from bench.measuring.tcp_counters import check_backlog
from bench.running.pipes import MessageReader
from bench.running.processes import READ_TO_END_S, spawn_python, terminate_tree
from servers.base import DEFAULT_BACKLOG


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    serve = subparsers.add_parser("serve", help="run one reference server in the foreground")
    serve.add_argument("model", help="a server by its model name (see `bench models`)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port (default 0: any free port, printed)")
    serve.add_argument("--server-workers", type=int, default=1, help="SO_REUSEPORT processes (event-driven models)")
    serve.add_argument("--fork-cap", type=int, default=1000, help="live children the fork model may have")
    serve.add_argument(
        "--backlog",
        type=int,
        default=DEFAULT_BACKLOG,
        help=f"listen() backlog (default {DEFAULT_BACKLOG}); the kernel caps it at net.core.somaxconn",
    )
    serve.add_argument("--duration", type=float, default=600.0, help="stop after this many seconds (default 600)")
    serve.set_defaults(func=cmd_serve)
    return serve


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _relay(message: dict[str, Any], tally: ShedTally) -> str:
    """Print a shed or stats line of the server's on stdout and count it; the reason of a
    fatal line is returned ('' for any other message)."""
    if tally.take(message):
        try:
            print(json.dumps(message), flush=True)
        except OSError:
            # Whoever read our stdout is gone (`bench serve ... | head -1`): the server's pipe is
            # still drained, by the reader.
            pass
        return ""
    return str(message.get("reason", "")) if message["event"] == "fatal" else ""


def cmd_serve(args: argparse.Namespace) -> int:
    from servers import registry

    info = {m.name: m for m in registry.describe_all()}.get(args.model)
    if info is None:
        raise UsageError(f"unknown model {args.model!r}; known: {', '.join(registry.model_names())}")
    if not info.available:
        raise UsageError(f"{args.model} is unavailable here: {info.reason}")
    bad_duration = not math.isfinite(args.duration) or args.duration <= 0
    if bad_duration or args.server_workers < 1 or args.fork_cap < 1 or not 0 <= args.port < 65536:
        raise UsageError("--duration must be > 0, --server-workers and --fork-cap >= 1, --port 0..65535")
    server_args = [args.model, "--host", args.host, "--port", str(args.port), "--fork-cap", str(args.fork_cap)]
    server_args += ["--workers", str(args.server_workers), "--backlog", str(check_backlog(args.backlog))]
    signal.signal(signal.SIGTERM, _stop)
    server = spawn_python("servers", server_args)
    # Read on a thread from the ready line on, so that the server never blocks on a full pipe.
    out: MessageReader | None = None
    tally = ShedTally(processes=args.server_workers)
    try:
        ready = server.stdout.readline()
        message = json.loads(ready) if ready.startswith("{") else {}
        if message.get("event") != "ready":
            reason = message.get("reason") or server.stderr.read().strip().splitlines()[-1:] or ["no ready line"]
            print(f"bench: error: {args.model} did not start: {''.join(reason)}", file=sys.stderr)
            return 1
        print(ready.strip(), flush=True)
        out = MessageReader(server.stdout, "serve-stdout")
        print(
            f"serving {args.model} on {message['host']}:{message['port']} for at most {args.duration:g} s "
            "(Ctrl-C stops it)",
            file=sys.stderr,
            flush=True,
        )
        deadline = time.monotonic() + args.duration
        fatal = ""
        while server.poll() is None and (left := deadline - time.monotonic()) > 0:
            if (message := out.next(min(left, 0.5))) is not None:
                fatal = _relay(message, tally) or fatal
        if server.poll() is not None:
            out.wait_closed(READ_TO_END_S)
            while (message := out.next(0)) is not None:
                fatal = _relay(message, tally) or fatal
            why = f": {fatal}" if fatal else ""
            print(f"bench: error: the server exited with status {server.returncode}{why}", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        # The stats lines come after SIGTERM: read to the end of the server's stdout (bounded).
        terminate_tree(server, readers=[out] if out is not None else [])
        while out is not None and (message := out.next(0)) is not None:
            _relay(message, tally)
        if said := tally.sentence():
            print(f"bench serve: {said}", file=sys.stderr, flush=True)
