"""The host fingerprint: real values read on this machine, and quiet gaps where the host has none."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.measuring import host
from bench.running.cpus import default_pinning

PLACEHOLDER = re.compile(r"\{[^{}]*\}|%[sdr]")
REQUIRED_SYSCTLS = (
    "net.core.somaxconn",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_syn_backlog",
)


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    return host.describe_host()


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _leaves(item, f"{path}[{n}]")
    else:
        yield path, value


def _proc_sys(name: str) -> str:
    return Path("/proc/sys", name.replace(".", "/")).read_text().strip()


def test_basic_fields_are_what_the_host_says(info):
    assert info["kernel"] == os.uname().release
    assert info["kernel_version"] == os.uname().version
    assert info["cpu_count"] == os.cpu_count()
    assert info["python"] == platform.python_version()
    assert info["rlimit_nofile"] == list(resource.getrlimit(resource.RLIMIT_NOFILE))
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M).group(1))
    assert info["memory_bytes"] == total_kib * 1024
    assert info["kernel_cmdline"] == Path("/proc/cmdline").read_text().strip()
    # The keys run.json had before the full fingerprint are still there.
    for key in ("kernel", "cpu_count", "cpu_model", "python", "packages", "rlimit_nofile", "memory_bytes"):
        assert key in info, key
    assert info["packages"]["psutil"]


def test_no_value_is_none_or_a_format_placeholder(info):
    for path, value in _leaves(info):
        assert value is not None, path
        if isinstance(value, str):
            assert not PLACEHOLDER.search(value), (path, value)


def test_sysctls_equal_proc_sys(info):
    sysctls = info["sysctl"]
    for name in REQUIRED_SYSCTLS:
        assert name in sysctls, name
    for name, value in sysctls.items():
        raw = _proc_sys(name)
        if isinstance(value, list):
            assert value == [int(v) for v in raw.split()], name
        elif isinstance(value, int):
            assert value == int(raw), name
        else:
            assert value == raw, name
    # Every listed sysctl this host has is recorded; the ones it lacks are simply absent.
    present = {n for n in host.SYSCTLS if Path("/proc/sys", n.replace(".", "/")).exists()}
    assert set(sysctls) == present


def test_mitigations_are_the_vulnerabilities_files(info):
    vuln = Path("/sys/devices/system/cpu/vulnerabilities")
    if not vuln.is_dir():
        assert "mitigations" not in info
        return
    mitigations = info["mitigations"]
    assert isinstance(mitigations, dict) and mitigations
    for name, text in mitigations.items():
        assert isinstance(text, str) and text
        assert text == (vuln / name).read_text().strip()


def test_cpu_topology_and_clock(info):
    assert 1 <= info.get("physical_cores", 1) <= info["cpu_count"]
    if Path("/sys/devices/system/cpu/smt/active").exists():
        assert info["smt_active"] == (Path("/sys/devices/system/cpu/smt/active").read_text().strip() == "1")
    clocksource = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    if clocksource.exists():
        assert info["clocksource"] == clocksource.read_text().strip()
    has_cpufreq = any(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
    assert ("cpufreq" in info) == has_cpufreq


def test_virtualization_is_reported_as_read(info):
    virt = info.get("virtualization", {})
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    if flags:
        assert virt["cpuinfo_hypervisor_flag"] == ("hypervisor" in flags.group(1).split())
    for key, value in virt.items():
        assert isinstance(value, (str, bool)), key


def test_io_uring_matches_the_binding_probe(info):
    uring = pytest.importorskip("servers.uring")
    problem = uring.support_problem()
    assert info["io_uring"]["available"] is (problem is None)
    if problem is not None:
        assert info["io_uring"]["reason"] == problem


def test_a_failing_collector_costs_only_its_own_fields(monkeypatch):
    def broken() -> dict[str, Any]:
        raise RuntimeError("collector bug")

    def unreadable() -> dict[str, Any]:
        raise OSError("no such file")

    def half_empty() -> dict[str, Any]:
        return {"found_nothing": None, "empty_area": {"missing": None}, "real": 1}

    monkeypatch.setattr(host, "COLLECTORS", [broken, host._kernel, unreadable, half_empty, host._limits])
    info = host.describe_host()
    assert info["kernel"] == os.uname().release
    assert "rlimit_nofile" in info
    assert info["real"] == 1
    assert "found_nothing" not in info and "empty_area" not in info


def test_a_host_without_the_files_gets_no_fields(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "CPU_SYS", tmp_path / "cpu")
    monkeypatch.setattr(host, "PROC_SYS", tmp_path / "sys")
    for collect in (host._topology, host._cpufreq, host._cpuidle, host._mitigations, host._sysctls):
        assert collect() == {}, collect.__name__


def test_pinning_is_recorded_when_given():
    pinning = default_pinning().as_dict()
    info = host.describe_host(pinning)
    assert info["pinning"] == pinning
    assert "pinning" not in host.describe_host()


def test_describe_host_is_fast():
    host.describe_host()  # imports and first probes out of the way
    start = time.perf_counter()
    host.describe_host()
    assert time.perf_counter() - start < 0.5


def _host_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench")
    sub = parser.add_subparsers(dest="command", required=True)
    host.add_host_parser(sub)
    return parser.parse_args(["host", *argv])


def test_cmd_host_json_parses(capsys):
    args = _host_args("--json")
    assert args.func is host.cmd_host
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kernel"] == os.uname().release
    assert printed["sysctl"]["net.core.somaxconn"] == int(_proc_sys("net.core.somaxconn"))


def test_cmd_host_table_shows_the_fields(capsys):
    args = _host_args()
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert os.uname().release in out
    assert "sysctl.net.core.somaxconn" in out
    assert "memory_bytes" in out


def test_format_host_flattens_nested_fields():
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(host.format_host({"sysctl": {"net.core.somaxconn": 4096}, "smt_active": False, "cpus": [0, 1]}))
    text = console.export_text()
    assert "sysctl.net.core.somaxconn" in text and "4,096" in text
    assert "no" in text and "0 1" in text
