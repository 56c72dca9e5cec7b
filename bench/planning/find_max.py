"""`--find-max --slo p99=2ms`: the highest open-loop rate whose p99 stays under the objective.

What wrk2 and tcpkali users do by hand: measure the closed-loop capacity, then bisect the
offered rate between zero and a little above it. A probe passes when the p99 latency
(coordinated-omission corrected) meets the objective *and* the achieved rate is within 2% of
the offered one; a probe that misses is measured once more before its rate is called too high.
Every probe is a real point and is written as a row; the answer is one more row, workload
`find-max`, with `max_rate`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

from bench.errors import UsageError
from bench.running.cpus import Pinning
from bench.running.point import PointSpec, Timing, run_point, unmeasured_row, with_rate
from bench.storing.columns import STATUS_FAILED, STATUS_OK

PROBES = 6
CONFIRMATIONS = 2
RATE_TOLERANCE = 0.02
_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def parse_slo(text: str) -> float:
    """'p99=2ms' -> 2000.0 (microseconds)."""
    match = re.fullmatch(r"\s*p99\s*=\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--slo takes the form p99=2ms (units us, ms or s), not {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def keeps_up(achieved_rate: float, offered_rate: float) -> bool:
    """Whether a server kept up with an open loop's offered rate: it completed at least
    (1 - RATE_TOLERANCE) of it (req/s). The search's probes and the report's knee
    (bench.reporting.report_rates) share this one definition."""
    return achieved_rate >= offered_rate * (1 - RATE_TOLERANCE)


def passes(row: dict, slo_p99_us: float) -> bool:
    return (
        row.get("status") == STATUS_OK
        and row.get("p99_us") is not None
        and row["p99_us"] <= slo_p99_us
        and keeps_up(row.get("achieved_rate", 0), row["target_rate"])
    )


def find_max_rate(
    run_id: str, spec: PointSpec, timing: Timing, pinning: Pinning, slo_p99_us: float
) -> Iterator[tuple[dict, dict[str, str]]]:
    slo = f"p99<={slo_p99_us:g}us"
    closed, hists = run_point(run_id, replace(spec, workload="closed", rate=0.0), timing, pinning)
    yield closed, hists
    if closed.get("status") != STATUS_OK:
        yield _answer(run_id, spec, slo, None, f"the closed-loop probe failed: {closed.get('reason')}"), {}
        return
    lo, hi = 0.0, closed["rps"] * 1.1
    best: tuple[dict, dict[str, str]] | None = None
    for _ in range(PROBES):
        rate = round((lo + hi) / 2, 1)
        for attempt in range(CONFIRMATIONS):
            row, hists = run_point(run_id, with_rate(spec, rate), timing, pinning)
            row["slo"] = slo
            # One tail spike on a shared host would send the bisection down for good: a rate
            # counts as too high only when every attempt at it misses the objective.
            again = not passes(row, slo_p99_us) and row.get("status") == STATUS_OK and attempt + 1 < CONFIRMATIONS
            if again:
                row["reason"] = "; ".join(filter(None, [row.get("reason"), "missed the SLO: measured again"]))
            yield row, hists
            if not again:
                break
        if passes(row, slo_p99_us):
            lo, best = rate, (row, hists)
        else:
            hi = rate
    if best is None:
        yield _answer(run_id, spec, slo, None, f"no offered rate down to {hi:.0f} req/s met {slo}"), {}
        return
    row, hists = best
    yield _answer(run_id, spec, slo, row, ""), hists


def _answer(run_id: str, spec: PointSpec, slo: str, probe: dict | None, reason: str) -> dict:
    if probe is None:
        row = unmeasured_row(run_id, replace(spec, workload="find-max"), STATUS_FAILED, reason)
        row["slo"] = slo
        return row
    row = dict(probe)
    row.update(workload="find-max", point_id=probe["point_id"] + "-max", max_rate=probe["target_rate"], slo=slo)
    return row
