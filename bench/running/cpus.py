"""Splitting the host's CPUs between the server under test and the load generator."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Pinning:
    server: tuple[int, ...]
    client: tuple[int, ...]

    @property
    def disjoint(self) -> bool:
        return not set(self.server) & set(self.client)

    def as_dict(self) -> dict:
        return {"server_cpus": list(self.server), "client_cpus": list(self.client), "disjoint": self.disjoint}


def default_pinning(available: set[int] | None = None) -> Pinning:
    """First half of the CPUs this process may use for the server, the rest for the client.

    With one CPU there is nothing to split: both share it, and the record says so.
    """
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(tuple(cpus), tuple(cpus))
    half = len(cpus) // 2
    return Pinning(tuple(cpus[:half]), tuple(cpus[half:]))


def parse_pinning(server: str, client: str) -> Pinning:
    from childproc import parse_cpus

    allowed = os.sched_getaffinity(0)
    s, c = parse_cpus(server), parse_cpus(client)
    for label, cpus in (("server", s), ("client", c)):
        if not cpus or not cpus <= allowed:
            raise ValueError(f"--{label}-cpus must name CPUs this process may use ({sorted(allowed)})")
    return Pinning(tuple(sorted(s)), tuple(sorted(c)))
