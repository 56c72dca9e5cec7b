"""The live progress display: `bench run` in a pseudo-terminal draws it and ends it cleanly;
piped, the same run prints the plain lines it always printed, with no escape sequence."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bench_cli import bench_command, bench_env, only_run_dir, read_points, run_bench
from rich.console import Console

from bench.live_display import LiveProgress, is_live_terminal

# Two closed-loop points with a window long enough for a few redraws (4 a second) to show it.
RUN_ARGS = ("run", "--models", "epoll", "--connections", "2,4", "--duration", "1", "--warmup", "0.1", "--no-lessons")
COLUMNS = 100
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SHOW_CURSOR = "\x1b[?25h"
HIDE_CURSOR = "\x1b[?25l"
BAR = "━"


def point_line(connections: int) -> re.Pattern[str]:
    """bench run's line for a measured epoll point, as it has always been printed."""
    return re.compile(rf" {{7}}epoll c={connections:<6} r0 ok: [\d,]+ req/s, p99 [\d,]+ us")


def _terminal_env() -> dict[str, str]:
    env = bench_env(TERM="xterm", COLUMNS=str(COLUMNS), LINES="30")
    # Whatever the test's own environment says about colour or terminals, the pty decides.
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    return env


class PtyBench:
    """`bench ARGS` with stdin, stdout and stderr on a pseudo-terminal of COLUMNS columns."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, COLUMNS, 0, 0))
        try:
            self.proc = subprocess.Popen(
                bench_command(*args), stdin=slave, stdout=slave, stderr=slave, env=_terminal_env(), close_fds=True
            )
        finally:
            os.close(slave)
        self.output = ""

    def read(self, timeout: float, until: Callable[[str], bool] | None = None) -> str:
        """Everything written so far, read until EOF, or with `until`, until `until(output)`."""
        raw = self.output.encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every holder of the slave end has closed it
                chunk = b""
            raw += chunk
            self.output = raw.decode(errors="replace")
            if not chunk or (until is not None and until(self.output)):
                return self.output
        self.close()
        pytest.fail(f"bench wrote no EOF within {timeout} s; output so far: {self.output!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def _plain_lines(text: str) -> list[str]:
    return [line.strip("\r") for line in ANSI.sub("", text).split("\n") if line.strip("\r ")]


def _assert_ended_cleanly(out: str) -> list[str]:
    """The display was drawn and then taken away: the cursor hidden, shown again after the last
    bar, and nothing of a bar after it. Returns the plain lines printed after it."""
    assert HIDE_CURSOR in out, out
    assert SHOW_CURSOR in out, out
    end = out.rindex(SHOW_CURSOR)
    assert out.rindex(BAR) < end
    tail = out[end:]
    assert BAR not in tail and "ETA" not in tail, tail
    return _plain_lines(tail)


@pytest.mark.timeout(120)
def test_run_in_a_terminal_shows_the_live_display_and_ends_it_cleanly(tmp_path: Path) -> None:
    bench = PtyBench([*RUN_ARGS, "--out", str(tmp_path)])
    try:
        out = bench.read(timeout=110)
        assert bench.proc.wait(timeout=10) == 0, out
    finally:
        bench.close()

    # The display: a bar, points done of planned, an ETA, and a point with its phase.
    plain = ANSI.sub("", out)
    assert BAR in plain
    assert re.search(r"\b[0-2]/2\b", plain), out
    assert re.search(r"ETA (-:--:--|\d+:\d\d:\d\d)", plain), out
    assert re.search(r"epoll c=[24] r0: window", plain), out
    # Each finished point's line, whole, as piped output has it.
    for connections in (2, 4):
        assert point_line(connections).search(out), out

    run_dir = only_run_dir(tmp_path)
    after = [line for line in _assert_ended_cleanly(out) if not line.startswith("warning: ")]
    assert after == [f"run directory: {run_dir}", f"report: {run_dir / 'report.html'}"], after
    assert [r["status"] for r in read_points(run_dir)] == ["ok", "ok"]


@pytest.mark.timeout(120)
def test_run_piped_prints_the_plain_lines_and_no_escape_sequence(tmp_path: Path) -> None:
    # FORCE_COLOR, often set in CI, makes rich call a pipe a terminal: it must not bring the
    # display (or any colour) into a pipe.
    proc = run_bench(
        *RUN_ARGS, "--out", str(tmp_path), timeout=110, env={"TERM": "xterm", "COLUMNS": "100", "FORCE_COLOR": "1"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr
    lines = proc.stdout.splitlines()
    run_dir = only_run_dir(tmp_path)
    assert len(lines) == 4, lines
    assert point_line(2).fullmatch(lines[0]), lines
    assert point_line(4).fullmatch(lines[1]), lines
    assert lines[2:] == [f"run directory: {run_dir}", f"report: {run_dir / 'report.html'}"]


@pytest.mark.timeout(120)
def test_ctrl_c_under_the_live_display_keeps_rows_and_writes_the_report(tmp_path: Path) -> None:
    args = [*RUN_ARGS[:4], "2,4,6,8,10,12", *RUN_ARGS[5:], "--out", str(tmp_path)]
    bench = PtyBench(args)
    try:
        bench.read(timeout=90, until=lambda text: point_line(2).search(text) is not None)
        bench.proc.send_signal(signal.SIGINT)
        out = bench.read(timeout=60)
        assert bench.proc.wait(timeout=10) == 130, out
    finally:
        bench.close()
    assert "Traceback" not in out
    after = _assert_ended_cleanly(out)
    assert after[0] == "interrupted: the points measured so far are kept", after
    run_dir = only_run_dir(tmp_path)
    rows = read_points(run_dir)
    assert rows and all(r["status"] == "ok" for r in rows)
    # Every row kept had its line printed before the display ended.
    for row in rows:
        assert point_line(int(row["connections"])).search(out), out
    assert (run_dir / "report.html").exists()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_prints_plain_lines_and_no_phases(capsys: pytest.CaptureFixture[str]) -> None:
    for console in (Console(file=io.StringIO()), Console(file=io.StringIO(), force_terminal=True)):
        # The second is FORCE_COLOR's case: rich says terminal, the file says otherwise.
        assert not is_live_terminal(console)
        with LiveProgress(2, console=console) as display:
            display.phase("epoll c=2 r0: window")
            display.line("       epoll c=2      r0 ok: 1,000 req/s, p99 [200] us")
            display.advance()
        assert console.file.getvalue() == ""
        assert capsys.readouterr().out == "       epoll c=2      r0 ok: 1,000 req/s, p99 [200] us\n"


def test_live_display_starts_on_first_use_and_stops_on_ctrl_c() -> None:
    tty = _Tty()
    console = Console(file=tty, force_terminal=True, width=COLUMNS, color_system=None)
    assert is_live_terminal(console)
    display = LiveProgress(2, console=console)
    with pytest.raises(KeyboardInterrupt), display:
        # Not drawn on entry: its thread is made by the first call (see LiveProgress).
        assert tty.getvalue() == ""
        display.phase("epoll c=2 r0: window")
        display.line("point [one] done")
        display.advance()
        raise KeyboardInterrupt
    out = tty.getvalue()
    assert "epoll c=2 r0: window" in out and "1/2" in out and "ETA" in out
    # Brackets printed as they are, not read as markup.
    assert "point [one] done" in out
    assert out.rindex(SHOW_CURSOR) > out.rindex(BAR)
    # After the display, lines are plain again.
    display.line("after")
    assert "after" not in tty.getvalue()
