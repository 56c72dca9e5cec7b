"""`python -m loadgen --host H --port P --connections N --payload BYTES`: one load worker.

Speaks the protocol of loadgen.control on stdin/stdout; the harness (bench) is its manager.
"""

from __future__ import annotations

import argparse
import sys

from bench.child import die_with_parent, parse_cpus, pin_to_cpus
from loadgen import control
from loadgen.closed_loop import Window, run_closed_loop
from loadgen.connect import open_connections
from loadgen.histogram import encode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--worker-id", type=int, default=0)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--cpus", default="", help="pin to these CPUs, e.g. 1")
    parser.add_argument("--die-with-parent", action="store_true")
    args = parser.parse_args(argv)
    if args.die_with_parent:
        die_with_parent()
    pin_to_cpus(parse_cpus(args.cpus))

    conn = open_connections(args.host, args.port, args.connections, timeout_s=args.connect_timeout)
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
    line = sys.stdin.readline()
    schedule = control.parse(line)
    if schedule is None or schedule["event"] != "schedule":
        for sock in conn.sockets:
            sock.close()
        return 1
    window = Window(schedule["window_start"], schedule["window_end"])
    result = run_closed_loop(conn.sockets, args.payload, window, schedule["start_at"])
    control.send(
        {
            "event": "result",
            "worker": args.worker_id,
            "requests": result.requests,
            "errors": dict(result.errors),
            "window_start": result.window_start,
            "window_end": result.window_end,
            "cpu_user_s": result.cpu_user_s,
            "cpu_sys_s": result.cpu_sys_s,
            "live_connections": result.live_connections,
            "histogram": encode(result.histogram),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
