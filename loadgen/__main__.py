"""`python -m loadgen --host H --port P --connections N [--workload closed|open|churn]`: one worker.

Speaks the protocol of loadgen.control on stdin/stdout; the harness (bench) is its manager.
"""

from __future__ import annotations

import argparse
import socket
import sys

from childproc import die_with_parent, parse_cpus, pin_to_cpus
from loadgen import control
from loadgen.churn import run_churn
from loadgen.connect import ConnectResult, open_connections
from loadgen.histogram import encode, new_histogram
from loadgen.request_loop import REQUEST_TIMEOUT_S, Window, run_request_loop

WORKLOADS = ("closed", "open", "idle", "churn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True, help="active connections (churn: concurrency)")
    parser.add_argument("--workload", choices=WORKLOADS, default="closed")
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: this worker's requests per second")
    parser.add_argument("--idle", type=int, default=0, help="silent connections held open beside the active ones")
    parser.add_argument("--worker-id", type=int, default=0)
    parser.add_argument("--first-index", type=int, default=0, help="index of this worker's first connection")
    parser.add_argument("--spread", type=int, default=1, help="source addresses the point's connections use")
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S, help="seconds per echo")
    parser.add_argument("--cpus", default="", help="pin to these CPUs, e.g. 1")
    parser.add_argument("--die-with-parent", action="store_true")
    args = parser.parse_args(argv)
    if args.die_with_parent:
        die_with_parent()
    pin_to_cpus(parse_cpus(args.cpus))

    churn = args.workload == "churn"
    wanted = 0 if churn else args.connections + args.idle
    conn = open_connections(
        args.host, args.port, wanted, timeout_s=args.connect_timeout, first_index=args.first_index, spread=args.spread
    )
    control.send(
        {
            "event": "connected",
            "worker": args.worker_id,
            "connected": len(conn.sockets),
            "errors": dict(conn.errors),
            "seconds": conn.seconds,
            "histogram": encode(conn.histogram),
            "notes": conn.notes,
        }
    )
    schedule = control.parse(sys.stdin.readline())
    if schedule is None or schedule["event"] != "schedule":
        _close(conn)
        return 1
    window = Window(schedule["window_start"], schedule["window_end"])
    held: list[socket.socket] = []
    if churn:
        start_at = schedule["start_at"]
        result = run_churn(
            args.host,
            args.port,
            args.connections,
            args.payload,
            window,
            start_at,
            args.worker_id,
            args.request_timeout,
            args.spread,
        )
    else:
        active, idle = conn.sockets[: args.connections], conn.sockets[args.connections :]
        rate = args.rate if args.workload == "open" else None
        result = run_request_loop(
            active,
            args.payload,
            window,
            schedule["start_at"],
            rate=rate,
            idle=idle,
            request_timeout_s=args.request_timeout,
            hold=held,
        )
    control.send(
        {
            "event": "result",
            "worker": args.worker_id,
            "requests": result.requests,
            "sent_in_window": result.sent_in_window,
            "errors": dict(result.errors),
            "window_start": result.window_start,
            "window_end": result.window_end,
            "cpu_user_s": result.cpu_user_s,
            "cpu_sys_s": result.cpu_sys_s,
            "live_connections": result.live_connections,
            "max_rss_bytes": peak_rss_bytes(),
            "closed_before_echo": result.closed_before_echo,
            "histogram": encode(result.histogram),
            "uncorrected": encode(result.uncorrected) if result.uncorrected is not None else "",
            "connect_histogram": encode(result.connect_histogram or new_histogram()),
            "timeline": result.timeline,
        }
    )
    # The connections stay open until the manager closes stdin: it reads the server's counters
    # at the window's end, and a thread-per-connection server whose connections closed at that
    # moment would take its threads' counts with them.
    sys.stdin.read()
    return 0


def peak_rss_bytes() -> int:
    """VmHWM of /proc/self/status (proc(5)), in bytes; -1 when unreadable. Not ru_maxrss, which
    keeps the peak of the process this one was forked from."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return -1


def _close(conn: ConnectResult) -> None:
    for sock in conn.sockets:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
