"""`python -m servers MODEL [--host H] [--port P] [--backlog N] [--workers N] [--cpus LIST]`."""

from __future__ import annotations

import argparse
import sys

from childproc import die_with_parent, parse_cpus, pin_to_cpus
from servers import registry
from servers.base import DEFAULT_BACKLOG, ServerOptions, emit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servers", description=__doc__)
    parser.add_argument("model", help=f"one of: {', '.join(registry.model_names())}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--fork-cap", type=int, default=1000)
    parser.add_argument("--cpus", type=parse_cpus, default=None, help="pin to these CPUs, e.g. 0,1")
    parser.add_argument("--die-with-parent", action="store_true", help="exit when the parent dies")
    args = parser.parse_args(argv)
    if args.die_with_parent:
        die_with_parent()
    pin_to_cpus(args.cpus)
    try:
        server_cls = registry.load(args.model)
    except Exception as exc:  # noqa: BLE001 - any import failure of a model is reported as its reason
        emit({"event": "fatal", "model": args.model, "reason": str(exc).strip('"')})
        return 2
    reason = server_cls.unavailable_reason()
    if reason:
        emit({"event": "fatal", "model": args.model, "reason": f"unavailable: {reason}"})
        return 2
    options = ServerOptions(args.host, args.port, args.backlog, args.workers, args.fork_cap)
    return server_cls(options).run()


if __name__ == "__main__":
    sys.exit(main())
