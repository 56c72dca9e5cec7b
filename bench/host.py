"""A basic description of the host a run was made on; one small collector per area.

A collector that finds nothing on this host leaves its field out rather than guess.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

PACKAGES = ("psutil", "pandas", "matplotlib", "hdrhistogram", "uvloop", "rich", "jinja2")


def _kernel() -> dict[str, Any]:
    uname = os.uname()
    return {
        "kernel": uname.release,
        "kernel_version": uname.version,
        "machine": uname.machine,
        "hostname": uname.nodename,
    }


def _cpu() -> dict[str, Any]:
    model = None
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "cpus_usable": sorted(os.sched_getaffinity(0))}
    if model:
        out["cpu_model"] = model
    return out


def _memory() -> dict[str, Any]:
    import psutil

    return {"memory_bytes": psutil.virtual_memory().total}


def _python() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "packages": versions,
    }


def _limits() -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"rlimit_nofile": [soft, hard]}


COLLECTORS: list[Callable[[], dict[str, Any]]] = [_kernel, _cpu, _memory, _python, _limits]


def describe_host() -> dict[str, Any]:
    info: dict[str, Any] = {}
    for collect in COLLECTORS:
        try:
            info.update(collect())
        except (OSError, ValueError, ImportError):
            continue
    return info
