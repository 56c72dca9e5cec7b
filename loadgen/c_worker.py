"""The compiled load worker (loadgen/native/worker.c): `python -m loadgen`'s job without the
interpreter's ~2 us per request, so that the load generator is not the bottleneck it would
blame on a fast server.

Built on first use with the system compiler through cbuild, like the native server: same cache,
same key (source, compiler, flags), same atomic rename. It takes the Python worker's options and
speaks the same protocol (loadgen/control.py), except that its latencies travel as HdrHistogram
bucket counts (loadgen.histogram.encode_counts folds them).
"""

from __future__ import annotations

from pathlib import Path

import cbuild

SOURCE = Path(__file__).with_name("native") / "worker.c"
BINARY_NAME = "loadgen-worker"


def worker_binary() -> tuple[Path | None, str | None]:
    """(path, None) when the worker can run here, else (None, the reason in one line)."""
    return cbuild.build_once(BINARY_NAME, SOURCE)
