"""Repeats and their statistics, interference flags, cost accounting."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from bench_cli import only_run_dir, read_points, run_bench

from bench.measuring.cpu_visit import visit
from bench.measuring.idle_clock import IdleReading, idle_seconds, parse_timer_list, read_idle
from bench.measuring.interference import HostSnapshot, cpu_split, snapshot
from bench.measuring.sampler import task_runtime_s
from bench.storing.statistics import add_repeat_statistics, estimate, median_interval, ranking_warnings, ratio_estimate


def test_estimate_median_ci_and_cv():
    est = estimate([10.0, 12.0, 11.0, 13.0, 9.0])
    assert est.median == 11.0 and est.n == 5
    assert 9.0 <= est.ci_low <= est.median <= est.ci_high <= 13.0
    assert est.cv == pytest.approx(pd.Series([10.0, 12, 11, 13, 9]).std() / 11.0)
    single = estimate([5.0])
    assert single.median == 5.0 and single.ci_low is None and single.cv is None


def test_cpu_split_sums_the_busy_fields_of_the_given_cpus_only():
    def ticks(user, nice, system, idle, irq, softirq, steal):
        return {"user": user, "nice": nice, "system": system, "idle": idle, "iowait": 0, "irq": irq,
                "softirq": softirq, "steal": steal}  # fmt: skip

    before = HostSnapshot(10.0, {0: ticks(100, 5, 50, 900, 1, 20, 3), 1: ticks(0, 0, 0, 0, 0, 0, 0)}, 0.0)
    after = HostSnapshot(12.0, {0: ticks(160, 15, 90, 950, 3, 50, 9), 1: ticks(999, 0, 999, 0, 0, 999, 0)}, 0.0)
    split = cpu_split(before, after, (0,))
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    # The total is the interval less idle and iowait (precise under NO_HZ), steal left in
    # (printed in 10 ms units, too coarse to subtract): 2 s less 50 idle ticks; the sampled
    # fields only split it: user+nice 70, system+irq 42, softirq 30 of 142 sampled ticks.
    # CPU 1 was not asked for.
    busy = 2.0 - 50 * tick
    assert split.busy_s == pytest.approx(busy) and split.seconds == pytest.approx(2.0)
    assert split.user_s == pytest.approx(busy * 70 / 142)
    assert split.sys_s == pytest.approx(busy * 42 / 142)
    assert split.softirq_s == pytest.approx(busy * 30 / 142)
    assert split.unsplit_s == 0
    assert cpu_split(before, before, (0,)).busy_s == 0
    # A light, bursty load that no tick caught is still busy time: the interval less idle, unsplit.
    quiet = HostSnapshot(10.3, {0: ticks(100, 5, 50, 925, 1, 20, 3)}, 0.0)
    light = cpu_split(before, quiet, (0,))
    assert light.busy_s == pytest.approx(0.3 - 25 * tick) and light.unsplit_s == light.busy_s
    assert light.user_s == light.sys_s == light.softirq_s == 0


# The shape of /proc/timer_list (kernel/time/timer_list.c), cut to what idle_clock reads.
TIMER_LIST = """Timer List Version: v0.10
HRTIMER_MAX_CLOCK_BASES: 8
now at 35643486706608 nsecs

cpu: 0
 clock 0:
  .base:               pK-error
  .idle_entrytime : 35643486723422 nsecs
  .idle_sleeptime : 22307103713849 nsecs
  .iowait_sleeptime: 75497231240 nsecs
jiffies: 4303803289

cpu: 1
  .idle_sleeptime : 16236290360493 nsecs
  .iowait_sleeptime: 161205929394 nsecs

Tick Device: mode:     1
"""


def test_timer_list_gives_each_cpus_idle_and_iowait_to_the_nanosecond():
    reading = parse_timer_list(TIMER_LIST)
    assert reading == IdleReading(35643486706608, {0: 22307103713849 + 75497231240, 1: 16236290360493 + 161205929394})
    # A CPU without its two sleep times, or no clock reading: not a reading at all.
    assert parse_timer_list(TIMER_LIST.replace("  .iowait_sleeptime: 75497231240 nsecs\n", "")) is None
    assert parse_timer_list(TIMER_LIST.replace("now at", "then at")) is None
    assert parse_timer_list("") is None
    # Both figures are lower bounds of the idle time (timer_list's leaves out a running idle
    # period, /proc/stat's truncates to 10 ms): the larger is taken.
    assert idle_seconds(reading, 0, 22307.0) == pytest.approx(22307103713849e-9 + 75497231240e-9)
    assert idle_seconds(reading, 0, 22400.0) == 22400.0
    assert idle_seconds(None, 0, 12.5) == 12.5 and idle_seconds(reading, 7, 12.5) == 12.5


def test_a_slow_read_of_timer_list_is_not_used_and_a_crowded_one_not_repeated(tmp_path, monkeypatch):
    from bench.measuring import idle_clock

    path = tmp_path / "timer_list"
    monkeypatch.setattr(idle_clock, "TIMER_LIST", str(path))
    monkeypatch.setattr(idle_clock, "_too_many_timers", False)
    path.write_text(TIMER_LIST)
    assert read_idle() == parse_timer_list(TIMER_LIST)
    # Dated late: only the figure of the CPU the thread is pinned to stays (it cannot have
    # idled while the thread was runnable there); unpinned, none. The next read is whole again.
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {1 if 1 in mine else min(mine)})
        here = next(iter(os.sched_getaffinity(0)))
        late = read_idle(max_read_s=0.0)
        assert late is not None and late.sleep_ns == {here: parse_timer_list(TIMER_LIST).sleep_ns[here]}
    finally:
        os.sched_setaffinity(0, mine)
    if len(mine) > 1:
        assert read_idle(max_read_s=0.0) is None
    assert read_idle() == parse_timer_list(TIMER_LIST)
    # More hrtimers than MAX_TIMERS: this reading stands, and no other is taken.
    timers = "".join(f" #{i}: <0>, hrtimer_wakeup, S:01\n" for i in range(idle_clock.MAX_TIMERS + 1))
    path.write_text(TIMER_LIST.replace("jiffies:", timers + "jiffies:"))
    assert read_idle() is not None
    path.write_text(TIMER_LIST)
    assert read_idle() is None


def test_cpu_split_takes_idle_from_timer_list_and_the_span_from_its_clock():
    ticks = {"user": 100, "nice": 0, "system": 50, "idle": 900, "iowait": 0, "irq": 0, "softirq": 50, "steal": 0}
    later = {**ticks, "user": 200, "system": 100, "idle": 910, "softirq": 100}
    before = HostSnapshot(10.0, {0: ticks}, 0.0, IdleReading(10_000_000_000, {0: 9_000_000_000}))
    after = HostSnapshot(12.5, {0: later}, 0.0, IdleReading(12_000_000_000, {0: 9_123_456_789}))
    split = cpu_split(before, after, (0,))
    # 2 s between the readings less 0.123456789 s idle; /proc/stat's 10 idle ticks are coarser
    # and smaller than timer_list's (a lower bound), so they change nothing.
    assert split.seconds == pytest.approx(2.0)
    assert split.busy_s == pytest.approx(2.0 - 0.123456789)
    assert split.user_s == pytest.approx(split.busy_s * 100 / 200)
    assert split.softirq_s == pytest.approx(split.busy_s * 50 / 200)


@pytest.mark.timeout(30)
@pytest.mark.skipif(read_idle() is None, reason="/proc/timer_list is not readable (root only)")
def test_a_cpu_is_at_least_as_busy_as_the_process_that_ran_on_it():
    # A process spins on one CPU for 0.25 s, then sleeps: the CPU's busy time between readings
    # that bracket the process's own holds all of its run time. Read as the harness reads (the
    # host on that CPU, then the process ... the process, then the host on that CPU), with no
    # 10 ms truncation of idle to lose it in; the CPU idles at the last reading, as a server's
    # does when the load has stopped. The slack is for the microseconds between a visit and
    # the process's reading.
    cpu = max(os.sched_getaffinity(0))
    code = (
        "import sys, time\nend = time.monotonic() + 0.25\nwhile time.monotonic() < end: pass\n"
        "time.sleep(0.15)\nprint('done', flush=True)\nsys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as spinner:
        try:
            os.sched_setaffinity(spinner.pid, {cpu})
            readings: list[HostSnapshot] = []
            visit([cpu], then=lambda: readings.append(snapshot(with_idle=True)))
            ran_before = task_runtime_s(spinner.pid)
            assert spinner.stdout.readline() == "done\n"
            visit([cpu])
            ran = task_runtime_s(spinner.pid) - ran_before
            visit([cpu], then=lambda: readings.append(snapshot(with_idle=True)))
            busy = cpu_split(readings[0], readings[1], (cpu,)).busy_s
        finally:
            spinner.stdin.close()
            spinner.wait(timeout=10)
    assert ran > 0.05  # it spun inside the readings (part of its 0.25 s went before them)
    assert busy >= ran - 0.0005, (busy, ran)


def test_paired_ratios_divide_within_a_repeat_and_skip_superseded_attempts():
    def row(model, repeat, rps, **extra):
        return {"model": model, "workload": "closed", "connections": 100, "payload": 64, "idle": 0,
                "target_rate": "", "server_workers": 1, "status": "ok", "repeat": repeat, "rps": rps,
                "p99_us": 100, "point_id": f"{model}-r{repeat}", **extra}  # fmt: skip

    df = pd.DataFrame(
        [
            row("native", 0, 200.0), row("epoll", 0, 100.0),
            row("native", 1, 100.0), row("epoll", 1, 60.0),
            row("native", 2, 150.0), row("epoll", 2, 999.0, superseded="True"), row("epoll", 2, 90.0),
            row("poll", 0, 50.0),
        ]
    )  # fmt: skip
    out = add_repeat_statistics(df, "native")
    epoll = out[(out["model"] == "epoll") & (out["superseded"] != "True")]
    assert list(epoll["rps_vs_reference"]) == pytest.approx([0.5, 0.6, 0.6])
    assert epoll["rps_ratio"].tolist() == pytest.approx([0.6] * 3)
    # The replaced attempt enters neither the ratio nor the repeats' statistics.
    assert out.loc[out["superseded"] == "True", "rps_vs_reference"].isna().all()
    assert set(epoll["repeats_ok"]) == {3.0}
    # poll's repeat 0 has its pair; the reference divides itself to exactly 1.
    assert out.loc[out["model"] == "poll", "rps_vs_reference"].tolist() == pytest.approx([0.25])
    assert set(out.loc[out["model"] == "native", "rps_vs_reference"]) == {1.0}
    assert add_repeat_statistics(df, "")["rps_vs_reference"].isna().all()
    # A superseded attempt whose re-measurement never landed (an interrupted run) still counts.
    cut = add_repeat_statistics(df.iloc[:6], "native")
    assert cut.loc[5, "rps_vs_reference"] == pytest.approx(999.0 / 150.0)


def test_ranking_warnings_name_noisy_points_and_leave_ranking_to_the_paired_ratios():
    def row(model, lo, med, hi, cv=0.01):
        return {"model": model, "workload": "closed", "connections": 100, "payload": 64, "idle": 0,
                "target_rate": "", "server_workers": 1, "status": "ok", "rps_median": med, "rps_ci_low": lo,
                "rps_ci_high": hi, "rps_cv": cv, "repeats_ok": 5}  # fmt: skip

    overlapping = pd.DataFrame([row("epoll", 90, 100, 110), row("poll", 80, 95, 105)])
    assert ranking_warnings(overlapping) == []
    (warning,) = ranking_warnings(pd.DataFrame([row("epoll", 90, 100, 110, cv=0.12), row("poll", 50, 60, 70)]))
    assert (
        warning
        == "epoll at 100 connections (closed) is noisy: req/s varied by 12% (coefficient of variation) over 5 repeats"
    )


@pytest.mark.timeout(150)
def test_repeats_rotate_models_and_give_confidence_intervals(tmp_path, engine):
    proc = run_bench(
        "run", "--engine", engine, "--models", "epoll,poll", "--connections", "10", "--repeats", "3",
        "--duration", "0.4", "--warmup", "0.1", "--out", str(tmp_path), timeout=140,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = read_points(only_run_dir(tmp_path))
    precise_idle = read_idle() is not None
    assert [(r["repeat"], r["model"]) for r in rows] == [
        ("0", "epoll"), ("0", "poll"), ("1", "poll"), ("1", "epoll"), ("2", "epoll"), ("2", "poll"),
    ]  # fmt: skip
    for r in rows:
        assert r["status"] == "ok", r
        assert r["repeats_ok"] == "3"
        assert float(r["rps_ci_low"]) <= float(r["rps_median"]) <= float(r["rps_ci_high"])
        assert float(r["rps_cv"]) >= 0 and float(r["p99_ci_low"]) <= float(r["p99_ci_high"])
        same = sorted(float(x["rps"]) for x in rows if x["model"] == r["model"])
        assert float(r["rps_median"]) == pytest.approx(same[1], rel=1e-4)
        # Cost accounting is there for every measured point.
        assert float(r["server_cpu_user_us_per_req"]) + float(r["server_cpu_sys_us_per_req"]) > 0
        assert float(r["ctx_per_req"]) >= 0 and int(r["server_uss_bytes"]) > 0
        assert 0 <= float(r["softirq_pct"]) <= 100 and 0 <= float(r["steal_pct"]) <= 100
        # The server CPU's busy time is the sum of its parts, and it holds the server's own
        # processes' CPU: on a pinned CPU nothing is subtracted, only the kernel's work added.
        # Idle comes to the nanosecond from /proc/timer_list as root (1 ms of slack for an idle
        # period running at a reading); otherwise /proc/stat prints it in 10 ms units.
        parts = [float(r[f"server_cpus_{p}_us_per_req"]) for p in ("user", "sys", "softirq")]
        assert float(r["server_cpus_us_per_req"]) == pytest.approx(sum(parts), rel=1e-3)
        slack = (0.001 if precise_idle else 0.02) * 1e6 / float(r["rps"]) / float(r["duration_s"])
        assert float(r["server_cpus_us_per_req"]) >= float(r["cpu_us_per_req"]) - slack
        assert 0 <= float(r["server_cpus_softirq_share"]) <= 1
    # Paired ratios: each repeat's req/s over the reference's (here the first model, epoll, as
    # native did not run) in the same repeat, and their median over the repeats.
    rps = {(r["model"], r["repeat"]): float(r["rps"]) for r in rows}
    for r in rows:
        assert r["reference"] == "epoll"
        paired = rps[r["model"], r["repeat"]] / rps["epoll", r["repeat"]]
        assert float(r["rps_vs_reference"]) == pytest.approx(paired, rel=1e-4)
    ratios = sorted(rps["poll", k] / rps["epoll", k] for k in "012")
    poll = next(r for r in rows if r["model"] == "poll")
    assert float(poll["rps_ratio"]) == pytest.approx(ratios[1], rel=1e-4)
    # Three repeats are too few for a distribution-free 95% interval of a median (six are needed).
    assert poll["rps_ratio_ci_low"] == poll["rps_ratio_ci_high"] == ""


@pytest.mark.timeout(120)
def test_blocking_servers_switch_context_for_every_request(tmp_path, engine):
    # A thread or child blocked in recv() must be woken for each request: threads at least once
    # (the reader thread), fork once per request. The counts are read at the window's end, while
    # the load workers still hold the connections: were they closed at that moment, the
    # per-connection threads would exit and take their counts with them.
    proc = run_bench(
        "run", "--engine", engine, "--models", "threads,fork,epoll", "--connections", "1,4",
        "--duration", "0.4", "--warmup", "0.1", "--out", str(tmp_path), timeout=110,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for r in read_points(only_run_dir(tmp_path)):
        assert r["status"] == "ok", r
        if r["model"] in ("threads", "fork"):
            assert float(r["ctx_per_req"]) >= 0.9, r
        elif r["connections"] == "1":
            # epoll_wait sleeps between the requests of one connection.
            assert float(r["ctx_per_req"]) >= 0.9, r


@pytest.mark.timeout(120)
def test_cpu_hog_during_a_point_is_flagged(tmp_path, engine):
    # Two spinning processes that are not the harness's: one per CPU of this 2-core host.
    hogs = [
        subprocess.Popen([sys.executable, "-c", "import time\nt=time.monotonic()+60\nwhile time.monotonic()<t: pass"])
        for _ in range(2)
    ]
    try:
        proc = run_bench(
            "run", "--engine", engine, "--models", "epoll", "--connections", "10", "--duration", "1",
            "--warmup", "0.2", "--out", str(tmp_path), timeout=100,
        )  # fmt: skip
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert proc.returncode == 0, proc.stderr
    (row,) = read_points(only_run_dir(tmp_path))
    assert row["status"] == "ok", row
    assert float(row["foreign_cpu_pct"]) > 20
    assert "other processes used" in row["disturbed"]
    assert "disturbed" in row["reason"]


def test_the_median_interval_is_the_order_statistics_with_at_least_95_percent_coverage():
    # Coverage of [x(k), x(n+1-k)] is 1 - 2 P(Binomial(n, 1/2) < k): 93.75% for [min, max] of five
    # values (no 95% interval), 96.9% for six, and for twenty [x(6), x(15)] at 95.9% (Conover, table A3).
    assert median_interval([1, 2, 3, 4, 5]) is None
    assert median_interval([6, 1, 5, 2, 4, 3]) == (1, 6)
    assert median_interval(list(range(1, 21))) == (6, 15)
    est = ratio_estimate([1.1, 1.2, 1.15, 1.12, 1.18, 1.3])
    assert est.ci_low == 1.1 and est.ci_high == 1.3 and est.n == 6
    assert ratio_estimate([1.1, 1.2]).ci_low is None


def _current_cpu() -> int:
    """The CPU the calling thread runs on (field 39 of /proc/thread-self/stat, man 5 proc)."""
    with open("/proc/thread-self/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[36])


def test_a_visit_runs_on_each_cpu_reads_on_the_last_and_gives_the_affinity_back():
    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    seen: list[object] = []
    for order in (cpus, cpus[::-1]):
        assert visit(order, then=lambda: seen.append(_current_cpu())) is True
        assert seen[-1] == order[-1] and os.sched_getaffinity(0) == mine
    # A CPU this host does not have: refused; the reading still happens, and the affinity is
    # still given back.
    assert visit([cpus[-1], 4096], then=lambda: seen.append("read")) is False
    assert seen[-1] == "read" and os.sched_getaffinity(0) == mine
    assert visit([]) is False
