"""The host fingerprint: what a run was measured on, for run.json and `bench host`.

One small collector per area. Each returns only what it actually read on this host; a file that
is missing, a tool that is not installed or a collector that fails leaves its fields out, so a
field is never a guess, a placeholder or None. Results from two hosts can then be compared field
by field (`bench compare`) without wondering which values were real.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from childproc import parse_cpus

PACKAGES = ("psutil", "pandas", "matplotlib", "hdrhistogram", "uvloop", "rich", "jinja2", "locust", "gevent")

# The knobs that decide whether a point fails for the host's sake rather than the model's:
# accept backlog, ephemeral ports, TIME_WAIT reuse, SYN queue, socket buffers, descriptor caps.
SYSCTLS = (
    "net.core.somaxconn",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_congestion_control",
    "fs.nr_open",
    "fs.file-max",
    "kernel.io_uring_disabled",
)

CPU_SYS = Path("/sys/devices/system/cpu")
PROC_SYS = Path("/proc/sys")
# systemd-detect-virt normally answers in milliseconds; a hung one must not hold up a run.
DETECT_VIRT_TIMEOUT_S = 2.0

Info = dict[str, Any]


def _read(path: str | Path) -> str | None:
    """The stripped content of a small kernel file, or None when this host lacks it."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _number_or_text(text: str) -> int | list[int] | str:
    """Kernel files hold one integer, several (tcp_rmem, ip_local_port_range) or a word (cubic)."""
    parts = text.split()
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        return text
    if len(numbers) == 1:
        return numbers[0]
    return numbers if numbers else text


def _kernel() -> Info:
    uname = os.uname()
    out: Info = {
        "kernel": uname.release,
        "kernel_version": uname.version,
        "machine": uname.machine,
        "hostname": uname.nodename,
    }
    cmdline = _read("/proc/cmdline")
    if cmdline:
        out["kernel_cmdline"] = cmdline
    return out


def _cpuinfo_first() -> dict[str, str]:
    """The fields of the first processor block of /proc/cpuinfo (the model is the same for all)."""
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if not line.strip():
                if fields:
                    break
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu() -> Info:
    out: Info = {}
    count = os.cpu_count()
    if count is not None:
        out["cpu_count"] = count
    # The affinity of the calling process: under `bench run` that is already the client CPUs.
    out["cpus_usable"] = sorted(os.sched_getaffinity(0))
    for name, key in (("online", "cpus_online"), ("isolated", "cpus_isolated")):
        text = _read(CPU_SYS / name)
        if text is not None:
            out[key] = sorted(parse_cpus(text))
    try:
        fields = _cpuinfo_first()
    except OSError:
        fields = {}
    for src, key in (
        ("model name", "cpu_model"),
        ("vendor_id", "cpu_vendor"),
        ("cpu family", "cpu_family"),
        ("model", "cpu_model_number"),
        ("stepping", "cpu_stepping"),
        ("microcode", "cpu_microcode"),
    ):
        if fields.get(src):
            out[key] = fields[src]
    nodes = list(Path("/sys/devices/system/node").glob("node[0-9]*"))
    if nodes:
        out["numa_nodes"] = len(nodes)
    return out


def _topology() -> Info:
    """Physical cores and sockets from sysfs topology; SMT as the kernel reports it."""
    cores: set[tuple[str, str]] = set()
    packages: set[str] = set()
    shared_core = False
    for topo in CPU_SYS.glob("cpu[0-9]*/topology"):
        package, core = _read(topo / "physical_package_id"), _read(topo / "core_id")
        if package is None or core is None:
            continue
        packages.add(package)
        cores.add((package, core))
        siblings = _read(topo / "thread_siblings_list")
        if siblings and len(parse_cpus(siblings)) > 1:
            shared_core = True
    out: Info = {}
    if cores:
        out["physical_cores"] = len(cores)
        out["sockets"] = len(packages)
    active = _read(CPU_SYS / "smt/active")
    if active in ("0", "1"):
        out["smt_active"] = active == "1"
    elif cores:
        # No smt/active (old kernels): two online CPUs sharing a core is SMT, by definition.
        out["smt_active"] = shared_core
    control = _read(CPU_SYS / "smt/control")
    if control:
        out["smt_control"] = control
    return out


def _cpufreq() -> Info:
    """Per-CPU scaling governor and frequencies; VMs usually have no cpufreq and get nothing."""
    per_cpu: dict[str, dict[str, Any]] = {}
    for freq in sorted(CPU_SYS.glob("cpu[0-9]*/cpufreq"), key=lambda p: int(p.parent.name[3:])):
        entry: dict[str, Any] = {}
        for name, key in (
            ("scaling_governor", "governor"),
            ("scaling_driver", "driver"),
            ("scaling_cur_freq", "cur_khz"),
            ("scaling_min_freq", "min_khz"),
            ("scaling_max_freq", "max_khz"),
            ("energy_performance_preference", "epp"),
        ):
            text = _read(freq / name)
            if text:
                entry[key] = _number_or_text(text)
        if entry:
            per_cpu[freq.parent.name] = entry
    out: Info = {}
    if per_cpu:
        out["cpufreq"] = per_cpu
        governors = {e.get("governor") for e in per_cpu.values()}
        # One summary value only when every CPU reported the same governor.
        if len(governors) == 1 and None not in governors:
            out["governor"] = governors.pop()
    boost = _read(CPU_SYS / "cpufreq/boost")
    if boost in ("0", "1"):
        out["cpu_boost"] = boost == "1"
    return out


def _cpuidle() -> Info:
    # haltpoll and friends change wake-up latency, which shows in the low percentiles.
    out: Info = {}
    for name, key in (("current_driver", "cpuidle_driver"), ("current_governor", "cpuidle_governor")):
        text = _read(CPU_SYS / "cpuidle" / name)
        if text and text != "none":
            out[key] = text
    return out


def _memory() -> Info:
    values: dict[str, int] = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                # /proc/meminfo says "kB" and means KiB.
                values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    out: Info = {}
    for src, key in (("MemTotal", "memory_bytes"), ("SwapTotal", "swap_bytes"), ("Hugepagesize", "hugepage_bytes")):
        if src in values:
            out[key] = values[src]
    if "HugePages_Total" in values:
        out["hugepages_total"] = values["HugePages_Total"]
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    chosen = re.search(r"\[(\w+)\]", thp or "")
    if chosen:
        out["transparent_hugepage"] = chosen.group(1)
    return out


def _detect_virt(flag: str) -> str | None:
    exe = shutil.which("systemd-detect-virt")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, flag], capture_output=True, text=True, timeout=DETECT_VIRT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # Exit status 1 with "none" is an answer ("not virtualized"), so keep whatever it printed.
    return done.stdout.strip() or None


def _virtualization() -> Info:
    """Each source as read, side by side: they can disagree (a container inside a VM)."""
    found: dict[str, Any] = {}
    for flag, key in (("--vm", "systemd_detect_virt_vm"), ("--container", "systemd_detect_virt_container")):
        answer = _detect_virt(flag)
        if answer:
            found[key] = answer
    for name in ("sys_vendor", "product_name"):
        text = _read(f"/sys/class/dmi/id/{name}")
        if text:
            found[f"dmi_{name}"] = text
    try:
        flags = _cpuinfo_first().get("flags")
    except OSError:
        flags = None
    if flags is not None:
        found["cpuinfo_hypervisor_flag"] = "hypervisor" in flags.split()
    return {"virtualization": found} if found else {}


def _clocksource() -> Info:
    base = Path("/sys/devices/system/clocksource/clocksource0")
    out: Info = {}
    current = _read(base / "current_clocksource")
    if current:
        out["clocksource"] = current
    available = _read(base / "available_clocksource")
    if available:
        out["clocksources_available"] = available.split()
    return out


def _mitigations() -> Info:
    found = {}
    for path in sorted(CPU_SYS.glob("vulnerabilities/*")):
        text = _read(path)
        if text:
            found[path.name] = text
    return {"mitigations": found} if found else {}


def _python() -> Info:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out: Info = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "packages": versions,
    }
    libc, libc_version = platform.libc_ver()
    if libc and libc_version:
        out["libc"] = f"{libc} {libc_version}"
    return out


def _limits() -> Info:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"rlimit_nofile": [soft, hard]}


def _sysctls() -> Info:
    found: dict[str, Any] = {}
    for name in SYSCTLS:
        text = _read(PROC_SYS / name.replace(".", "/"))
        if text:
            found[name] = _number_or_text(text)
    return {"sysctl": found} if found else {}


def _io_uring() -> Info:
    try:
        # Lazy: the binding is only wanted here, and a checkout without it simply has no field.
        from servers import uring
    except ImportError:
        return {}
    problem = uring.support_problem()
    if problem is None:
        return {"io_uring": {"available": True}}
    return {"io_uring": {"available": False, "reason": problem}}


COLLECTORS: list[Callable[[], Info]] = [
    _kernel,
    _cpu,
    _topology,
    _cpufreq,
    _cpuidle,
    _memory,
    _virtualization,
    _clocksource,
    _mitigations,
    _python,
    _limits,
    _sysctls,
    _io_uring,
]


def _prune(value: Any) -> Any:
    """Drop None and empty containers at any depth: a missing reading is left out, not recorded."""
    if isinstance(value, Mapping):
        kept = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    return value


def describe_host(pinning: Mapping[str, Any] | None = None) -> Info:
    """The fingerprint of this host, plus the CPU pinning of the run when one is given.

    Never raises: a fingerprint is context for a run, and must not be the reason a run fails.
    """
    info: Info = {}
    for collect in COLLECTORS:
        try:
            info.update(collect())
        except Exception:  # noqa: BLE001 - any failure of one collector only costs its own fields
            continue
    if pinning:
        info["pinning"] = dict(pinning)
    return _prune(info)


def flatten_host(info: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in info.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flatten_host(value, f"{name}."))
        else:
            rows.append((name, value))
    return rows


def show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        # An empty list is a reading too (no isolated CPUs), not a missing one.
        if not value:
            return "none"
        return " ".join(str(v) for v in value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_host(info: Mapping[str, Any]) -> Any:
    """A two-column rich table, nested fields as dotted names (sysctl.net.core.somaxconn)."""
    from rich.table import Table

    table = Table(title="host fingerprint", title_justify="left")
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in flatten_host(info):
        shown = show_value(value)
        if name.endswith("_bytes") and isinstance(value, int) and value >= 1 << 20:
            unit, size = ("GiB", 1 << 30) if value >= 1 << 30 else ("MiB", 1 << 20)
            shown = f"{value / size:.1f} {unit} ({shown})"
        table.add_row(name, shown)
    return table


def cmd_host(args: argparse.Namespace) -> int:
    info = describe_host()
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console

    Console().print(format_host(info))
    return 0


def add_host_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench host [--json]` on the `add_subparsers()` object of the bench parser."""
    parser = subparsers.add_parser("host", help="show the host fingerprint recorded in run.json")
    parser.add_argument("--json", action="store_true", help="print it as JSON")
    parser.set_defaults(func=cmd_host)
    return parser
