"""`bench explain`: each model's path of one request, read from a real strace of a real server.

The category tests read the raw trace files themselves (bench.tracing.strace_log only splits lines) and
check, against the client's own send and receive times, the pattern that gives each of Stevens'
five I/O models its figure (UNP §6.2). They do not trust bench.tracing.io_phases' classification; a
further test checks that the classification agrees.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from bench_cli import TESTS_DIR, alive, bench_command, bench_env, only_run_dir, run_bench
from faulty_models import EXTRA_MODELS

from bench.reporting.report import render_report
from bench.tracing.io_phases import READ_CALLS, READINESS_CALLS, Exchange, request_paths
from bench.tracing.strace_log import TracedCall, parse_trace
from servers import registry

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")

ROOT = TESTS_DIR.parent
AVAILABLE = [m for m in registry.model_names() if registry.describe(m).available]
EXPECTED = {
    "threads": "blocking",
    "fork": "blocking",
    "nonblocking": "busy polling",
    "select": "readiness",
    "poll": "readiness",
    "epoll": "readiness",
    "epoll-et": "readiness",
    "selectors": "readiness",
    "asyncio": "readiness",
    "uvloop": "readiness",
    "native": "readiness",
    "sigio": "signal",
    "io_uring": "completion",
}


@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> Path:
    """One `bench explain` of every model that runs here, as a user would start it."""
    out = tmp_path_factory.mktemp("explain")
    proc = run_bench("explain", "--models", "all", "--requests", "5", "--out", str(out), timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return only_run_dir(out)


def _model(run_dir: Path, model: str) -> tuple[dict, list[TracedCall], list[Exchange]]:
    """The model's explanation, its raw trace's calls, and the analysed exchanges as the client
    stamped them."""
    if model not in AVAILABLE:
        pytest.skip(f"{model} cannot run here: {registry.describe(model).reason}")
    meta = json.loads((run_dir / "run.json").read_text())
    entry = next(e for e in meta["explanations"] if e["model"] == model)
    assert entry["status"] == "ok", entry["reason"]
    calls, _ = parse_trace((run_dir / entry["trace_file"]).read_text())
    exchanges = [Exchange(r["sent"], r["received"]) for r in entry["requests"]]
    assert len(exchanges) == 5
    return entry, calls, exchanges


def _data_call(calls: list[TracedCall], ex: Exchange) -> TracedCall:
    """The read that returned this request's bytes: the first successful read ending after the send."""
    return next(c for c in calls if c.name in READ_CALLS and (c.retval or 0) > 0 and c.end >= ex.sent)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("model", ["threads", "fork"])
def test_blocking_the_data_arrives_while_recvfrom_blocks(explained, model):
    _, calls, exchanges = _model(explained, model)
    for ex in exchanges:
        data = _data_call(calls, ex)
        assert data.name == "recvfrom"
        # Entered before the client sent, returned with the bytes after: blocked through both phases.
        assert data.start < ex.sent < data.end <= ex.received


@pytest.mark.timeout(180)
def test_nonblocking_eagain_before_the_recvfrom_that_returns_data(explained):
    _, calls, exchanges = _model(explained, "nonblocking")
    previous_echo = 0.0
    for ex in exchanges:
        data = _data_call(calls, ex)
        assert data.start >= ex.sent, "a non-blocking recvfrom never waits for the data"
        failed = [
            c
            for c in calls
            if c.name == "recvfrom" and c.errno == "EAGAIN" and previous_echo < c.start and c.end <= data.start
        ]
        assert failed, "no EAGAIN recvfrom before the data arrived"
        previous_echo = ex.received


@pytest.mark.timeout(180)
@pytest.mark.parametrize("model", ["select", "poll", "epoll", "epoll-et", "selectors", "asyncio", "uvloop", "native"])
def test_multiplexing_readiness_returns_before_the_recvfrom_that_copies(explained, model):
    _, calls, exchanges = _model(explained, model)
    for ex in exchanges:
        data = _data_call(calls, ex)
        assert data.start >= ex.sent
        ready = [c for c in calls if c.name in READINESS_CALLS and ex.sent <= c.end <= data.start]
        assert ready, f"no readiness call returned between the send and the {data.name}"
        assert ready[-1].start < ex.sent, "the readiness call was not already waiting when the client sent"


@pytest.mark.timeout(180)
def test_sigio_the_signal_wait_returns_before_the_recvfrom(explained):
    _, calls, exchanges = _model(explained, "sigio")
    for ex in exchanges:
        data = _data_call(calls, ex)
        waits = [c for c in calls if c.name == "rt_sigtimedwait" and ex.sent <= c.end <= data.start]
        assert waits, "no signal wait returned between the send and the recvfrom"
        assert waits[-1].start < ex.sent
        assert data.name == "recvfrom" and data.start >= ex.sent


@pytest.mark.timeout(180)
def test_io_uring_no_recvfrom_only_io_uring_enter_around_the_completion(explained):
    _, calls, exchanges = _model(explained, "io_uring")
    assert not [c for c in calls if c.name in READ_CALLS], "io_uring's server read with a system call"
    assert not [c for c in calls if c.name in {"sendto", "send", "write", "sendmsg", "writev"}]
    for ex in exchanges:
        around = [c for c in calls if c.name == "io_uring_enter" and c.start < ex.sent < c.end]
        assert around and around[0].end <= ex.received, "no io_uring_enter was waiting when the client sent"


@pytest.mark.timeout(180)
def test_the_classification_agrees_with_the_traces(explained):
    meta = json.loads((explained / "run.json").read_text())
    for entry in meta["explanations"]:
        if entry["model"] not in AVAILABLE:
            assert entry["status"] == "skipped" and entry["reason"].startswith("unavailable here")
            continue
        assert entry["status"] == "ok", (entry["model"], entry["reason"])
        assert entry["pattern"] == EXPECTED[entry["model"]], entry["model"]
        assert {r["pattern"] for r in entry["requests"]} == {EXPECTED[entry["model"]]}, entry["model"]
        # The untraced exchange beside the traced one, both measured.
        assert entry["untraced_round_trip_us"] > 0 and entry["medians"]["round_trip_us"] > 0
        typical = entry["typical"]
        assert typical["steps"] and typical["sent"] < typical["received"]
        if entry["pattern"] == "busy polling":
            assert typical["blocked_in"] == [] and typical["failed_calls"] >= 1
        else:
            assert typical["wait_call"] in typical["blocked_in"], entry["model"]
    assert (explained / "explain.html").is_file()
    index = (explained.parent / "index.html").read_text()
    assert f'href="{explained.name}/explain.html"' in index


@pytest.mark.timeout(180)
def test_a_sweep_report_shows_the_diagrams_of_an_explain_run_of_its_host(explained, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(explained, results / explained.name)
    sweep = results / "sweep"
    shutil.copytree(TESTS_DIR / "fixtures" / "lessons_run" / "20261130-140244-e093", sweep)
    # The fixture was measured on this project's host; the same host and kernel as the trace, here by fiat.
    meta = json.loads((sweep / "run.json").read_text())
    host = json.loads((explained / "run.json").read_text())["host"]
    meta["host"].update(hostname=host["hostname"], kernel=host["kernel"])
    (sweep / "run.json").write_text(json.dumps(meta))
    html = render_report(sweep).read_text()
    for model in (m["name"] for m in meta["models"] if m["name"] in AVAILABLE):
        assert f'<details class="explained" data-model="{model}">' in html
        assert f'<svg class="sequence" data-model="{model}"' in html
    assert f'href="../{explained.name}/explain.html"' in html
    # Another host's trace says nothing about this one.
    meta["host"]["kernel"] = "0.0.0-elsewhere"
    (sweep / "run.json").write_text(json.dumps(meta))
    html = render_report(sweep).read_text()
    assert 'class="explained"' not in html and "bench explain --models all" in html


def test_strace_lines_unfinished_resumed_restarted_detached_and_signals():
    text = "\n".join(
        [
            "10  100.000100 recvfrom(5,  <unfinished ...>",
            "11  100.000200 futex(0x1, FUTEX_WAIT, 0, NULL <unfinished ...>",
            '10  100.020400 <... recvfrom resumed>"abc", 65536, 0, NULL, NULL) = 3 <0.020300>',
            "12  100.000050 restart_syscall(<... resuming interrupted read ...>) = 1 <0.001000>",
            "12  100.001100 recvfrom(6, 0x55, 65536, 0, NULL, NULL) = -1 EAGAIN (Resource temporarily unavailable) "
            "<0.000008>",
            "12  100.002000 --- SIGIO {si_signo=SIGIO, si_code=POLL_IN, si_band=65} ---",
            "12  100.003000 rt_sigtimedwait([IO RT_3], {si_signo=SIGRT_3}, NULL, 8) = 35 (SIGRT_3) <0.000500>",
            "13  100.004000 +++ exited with 0 +++",
            "12  100.030000 epoll_wait(4,  <detached ...>",
            '14  100.000300 write(1, "a) = 5 <9.9>", 12) = 12 <0.000010>',
            "15  100.000400 recvfrom(7,  <unfinished ...>",
            "15  100.000900 <... recvfrom resumed> <unfinished ...>) = ?",
            "15  100.001000 +++ killed by SIGKILL +++",
            "16  100.002000 <... epoll_wait resumed>[], 4, -1) = 0 <0.001500>",
            "17  100.002100 getpid() = 17 <unavailable>",
        ]
    )
    calls, signals = parse_trace(text)
    by = {(c.tid, c.name): c for c in calls}
    recv = by[(10, "recvfrom")]
    assert (recv.start, recv.retval, recv.errno, recv.finished) == (100.0001, 3, None, True)
    assert recv.end == pytest.approx(100.0204)
    assert by[(12, "restart_syscall")].retval == 1
    failed = by[(12, "recvfrom")]
    assert (failed.retval, failed.errno) == (-1, "EAGAIN")
    assert by[(12, "rt_sigtimedwait")].retval == 35
    # Still in the kernel when strace left: kept, marked unfinished, not mistaken for a return.
    assert by[(11, "futex")].finished is False and by[(12, "epoll_wait")].finished is False
    assert [(s.tid, s.name) for s in signals] == [(12, "SIGIO")]
    # A string argument holding ") = 5" is not the result.
    assert by[(14, "write")].retval == 12 and by[(14, "write")].args.endswith("12")
    # Killed inside the call: it never returned.
    assert by[(15, "recvfrom")].finished is False
    # Resumed without its entry line: it began -T before it returned.
    assert by[(16, "epoll_wait")].start == pytest.approx(100.0005) and by[(16, "epoll_wait")].finished
    assert by[(17, "getpid")].retval == 17 and by[(17, "getpid")].duration == 0
    assert [c.start for c in calls] == sorted(c.start for c in calls)


def _call(tid: int, name: str, start_us: float, duration_us: float, result: str) -> TracedCall:
    retval = int(result.split()[0])
    errno = result.split()[1] if retval < 0 else None
    return TracedCall(tid, name, 100 + start_us / 1e6, duration_us / 1e6, result, retval, errno, "")


def test_a_request_without_its_data_call_in_the_trace_is_unexplained_not_guessed():
    # Only the readiness call is traced: no read returned the bytes before the client had its echo.
    calls = [_call(1, "epoll_wait", 0, 500, "1")]
    (path,) = request_paths(calls, [Exchange(100.0002, 100.0009)])
    assert path.pattern == "unexplained" and path.steps == []


def test_busy_polling_is_told_apart_from_a_drain_before_a_wait():
    sent = 100 + 300 / 1e6
    polling = [_call(1, "recvfrom", t, 5, "-1 EAGAIN") for t in range(0, 300, 10)]
    polling += [_call(1, "recvfrom", 310, 5, "64"), _call(1, "sendto", 320, 10, "64")]
    (path,) = request_paths(polling, [Exchange(sent, 100 + 400 / 1e6)])
    assert path.pattern == "busy polling" and path.failed == 30 and path.blocked_in == []
    drained = [_call(1, "recvfrom", 0, 5, "-1 EAGAIN"), _call(1, "epoll_wait", 10, 295, "1")]
    drained += [_call(1, "recvfrom", 310, 5, "64"), _call(1, "sendto", 320, 10, "64")]
    (path,) = request_paths(drained, [Exchange(sent, 100 + 400 / 1e6)])
    assert path.pattern == "readiness" and path.blocked_in == ["epoll_wait"] and path.wait_call == "epoll_wait"


def test_without_strace_one_line_error_and_exit_2(tmp_path):
    proc = run_bench("explain", "--models", "epoll", "--out", str(tmp_path / "out"), env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert (
        proc.stderr.count("\n") == 1 and "strace not found" in proc.stderr and "apt-get install strace" in proc.stderr
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(30)
def test_ptrace_not_permitted_names_what_to_allow(tmp_path):
    fake = tmp_path / "bin" / "strace"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted" >&2\nexit 1\n')
    fake.chmod(0o755)
    path = f"{fake.parent}:/usr/bin:/bin"
    proc = run_bench("explain", "--models", "epoll", "--out", str(tmp_path / "out"), env={"PATH": path})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert (
        "Operation not permitted" in proc.stderr and "ptrace_scope" in proc.stderr and "CAP_SYS_PTRACE" in proc.stderr
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["--think", "0"], "--think"),
        (["--requests", "0"], "--requests"),
        (["--payload", "4"], "--payload"),
        (["--models", "epoll,nope"], "nope"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, args, words):
    proc = run_bench("explain", *args, "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr


@pytest.mark.timeout(60)
def test_a_failing_model_is_recorded_and_the_others_go_on(tmp_path):
    proc = run_bench("explain", "--models", "crash,epoll", "--out", str(tmp_path), extra_models=EXTRA_MODELS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = only_run_dir(tmp_path)
    entries = {e["model"]: e for e in json.loads((run_dir / "run.json").read_text())["explanations"]}
    assert entries["crash"]["status"] == "failed" and entries["crash"]["reason"]
    assert entries["epoll"]["status"] == "ok"
    assert "crash" in (run_dir / "explain.html").read_text()


@pytest.mark.timeout(60)
def test_interrupt_while_tracing_keeps_the_models_done_and_leaves_no_process(tmp_path):
    # Each model takes about 7 s at 2 requests 1 s apart: threads is done when epoll is traced.
    argv = ["explain", "--models", "threads,epoll", "--requests", "2", "--think", "1", "--out", str(tmp_path)]
    proc = subprocess.Popen(
        bench_command(*argv), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bench_env()
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children(recursive=True)
            if any(_is_tracing(c, "epoll") for c in children):
                break
            time.sleep(0.05)
        else:
            pytest.fail("epoll was never traced")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert [c for c in children if alive(c)] == []
    run_dir = only_run_dir(tmp_path)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "interrupted"
    assert [e["model"] for e in meta["explanations"]] == ["threads"] and meta["explanations"][0]["status"] == "ok"
    assert (run_dir / "explain.html").is_file()


def _is_tracing(proc: psutil.Process, model: str) -> bool:
    try:
        return proc.name() == "strace" and any(arg.endswith(f"{model}.trace") for arg in proc.cmdline())
    except psutil.Error:
        return False


def test_the_fixture_traces_analyse_again_to_what_the_run_recorded():
    # A stored run, traced on this project's host: its trace files and client stamps, read again
    # by today's parser and analysis, must give the figures its page shows.
    run_dir = TESTS_DIR / "fixtures" / "explain_run"
    meta = json.loads((run_dir / "run.json").read_text())
    replayed = 0
    for entry in meta["explanations"]:
        trace = run_dir / entry.get("trace_file", "")
        if entry["status"] != "ok" or not trace.is_file():
            continue
        calls, _ = parse_trace(trace.read_text())
        exchanges = [Exchange(sent, received) for sent, received in entry["exchanges"]]
        paths = request_paths(calls, exchanges, meta["config"]["payload"])[1:]
        assert [p.summary() for p in paths] == entry["requests"], entry["model"]
        replayed += 1
    assert replayed == 2


def test_a_request_read_and_echoed_in_two_calls_is_booked_whole():
    # 100 bytes: read as 60 + 40 and echoed as 60 + 40, between two requests of one call each.
    calls = [
        _call(1, "epoll_wait", 0, 300, "1"),
        _call(1, "recvfrom", 310, 5, "60"),
        _call(1, "recvfrom", 320, 5, "40"),
        _call(1, "sendto", 330, 10, "60"),
        _call(1, "sendto", 345, 10, "40"),
        _call(1, "epoll_wait", 360, 1000, "1"),
        _call(1, "recvfrom", 1370, 5, "100"),
        _call(1, "sendto", 1380, 10, "100"),
    ]
    first, second = request_paths(
        calls, [Exchange(100 + 250e-6, 100 + 400e-6), Exchange(100 + 1300e-6, 100 + 1450e-6)], payload=100
    )
    assert first.pattern == second.pattern == "readiness"
    assert first.summary()["calls_by_name"] == {"epoll_wait": 1, "recvfrom": 2, "sendto": 2}
    assert first.copy_s == pytest.approx(10e-6)
    assert second.summary()["calls_by_name"] == {"epoll_wait": 1, "recvfrom": 1, "sendto": 1}


def test_after_an_unexplained_request_the_next_starts_after_its_echo():
    # The first request's echo is missing from the trace; its calls must not be booked to the second.
    calls = [
        _call(1, "epoll_wait", 0, 300, "1"),
        _call(1, "recvfrom", 310, 5, "64"),
        _call(1, "epoll_wait", 500, 800, "1"),
        _call(1, "recvfrom", 1310, 5, "64"),
        _call(1, "sendto", 1320, 10, "64"),
    ]
    first, second = request_paths(
        calls, [Exchange(100 + 250e-6, 100 + 450e-6), Exchange(100 + 1250e-6, 100 + 1400e-6)], payload=64
    )
    assert first.pattern == "unexplained"
    assert second.pattern == "readiness"
    assert second.summary()["calls_by_name"] == {"epoll_wait": 1, "recvfrom": 1, "sendto": 1}


def test_a_read_entered_just_before_the_send_after_eagain_is_polling_not_blocking():
    # strace stamps a call's entry when it sees it: a polling loop's read may appear to start
    # a few microseconds before the client's send. The EAGAIN just before it says it never slept.
    sent = 100 + 300e-6
    calls = [_call(1, "recvfrom", t, 5, "-1 EAGAIN") for t in range(0, 290, 10)]
    calls += [_call(1, "recvfrom", 298, 8, "64"), _call(1, "sendto", 320, 10, "64")]
    (path,) = request_paths(calls, [Exchange(sent, 100 + 400e-6)], payload=64)
    assert path.pattern == "busy polling" and path.blocked_in == []
