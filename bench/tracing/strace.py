"""strace attached to a running server's process tree, for `bench profile` and `bench explain`.

The harness never starts a server under strace: start-up is not what either command measures,
and a server started by strace would be strace's child, not the harness's. Instead strace
attaches (`-p`, PTRACE_SEIZE) to every process of the tree once the server is ready, follows
new threads and children (`-f`), and is detached with SIGINT, which makes it write what it
has and let the tracees go unharmed. Only strace is ever signalled.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import PointFailed, UsageError
from bench.planning.model_selection import select_models
from bench.running.cpus import Pinning, default_pinning, parse_pinning
from bench.running.pipes import deadline_in, remaining
from bench.running.processes import process_tree
from bench.storing.results_store import RunDirectory
from childproc import set_parent_death_signal

ATTACH_TIMEOUT_S = 15.0
DETACH_TIMEOUT_S = 15.0
PTRACE_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")


def find_strace() -> str | None:
    return shutil.which("strace")


def require_strace(command: str) -> str:
    """strace's path, once it is known to be able to attach here; raises UsageError with one line
    naming what to install or allow (for `command`, e.g. "bench explain")."""
    strace = find_strace()
    if strace is None:
        raise UsageError(f"strace not found on PATH; `{command}` needs it (e.g. apt-get install strace)")
    if (blocker := ptrace_blocker(strace)) is not None:
        raise UsageError(blocker)
    return strace


def add_traced_run_options(parser: argparse.ArgumentParser, client: str) -> None:
    """The options `bench profile` and `bench explain` share: which models, where the run goes,
    how long a server may take to listen (s), and the CPUs of the server (with strace) and of
    `client` (who drives the load)."""
    parser.add_argument("--models", default="all", help="comma-separated model names, or 'all' (default)")
    parser.add_argument("--out", default=os.environ.get("BENCH_RESULTS", "results"), help="results directory")
    parser.add_argument("--ready-timeout", type=float, default=15.0, help="seconds a server may take to listen")
    parser.add_argument("--server-cpus", default="", help="CPUs for the server and strace (default: first half)")
    parser.add_argument("--client-cpus", default="", help=f"CPUs for {client} (default: the rest)")


@dataclass(frozen=True, kw_only=True)
class TracedRunConfig:
    """What `bench profile` and `bench explain` are told alike: the models that can run, the
    others with why not, where the run goes, the pinning, and how long a server may take to
    listen (s). Each command's config adds its own fields."""

    models: list[str]
    out: Path
    pinning: Pinning
    ready_timeout_s: float = 15.0
    unavailable: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """run.json's `config`."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["pinning"] = self.pinning.as_dict()
        return d


def traced_run_choices(args: argparse.Namespace) -> dict[str, Any]:
    """TracedRunConfig's fields from add_traced_run_options' options, as keyword arguments for
    a command's config; raises UsageError on a bad choice."""
    models, unavailable = select_models(args.models)
    # Each model once: a second trace of it would overwrite the first's file.
    models = list(dict.fromkeys(models))
    if not models:
        raise UsageError("no model is available on this host (see `bench models`)")
    if not math.isfinite(args.ready_timeout) or args.ready_timeout <= 0:
        raise UsageError(f"--ready-timeout must be a finite number of seconds > 0, got {args.ready_timeout}")
    if bool(args.server_cpus) != bool(args.client_cpus):
        raise UsageError("--server-cpus and --client-cpus go together")
    try:
        pinning = parse_pinning(args.server_cpus, args.client_cpus) if args.server_cpus else default_pinning()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return {
        "models": models,
        "unavailable": unavailable,
        "pinning": pinning,
        "out": Path(args.out),
        "ready_timeout_s": args.ready_timeout,
    }


class StraceAttachment:
    """`strace -f -q OPTIONS -o OUTPUT -p ...` on a process tree: attached, confirmed, detached
    with SIGINT so that it writes its output. The tracees are never harmed: only strace is
    signalled. `options` choose what is written: ("-c", ...) a summary table, ("-ttt", "-T")
    one timed line per call."""

    def __init__(self, strace: str, output: Path, cpus: tuple[int, ...], options: Sequence[str]) -> None:
        self.strace = strace
        self.output = output
        self.cpus = cpus
        self.options = list(options)
        self.popen: subprocess.Popen | None = None
        self.processes = 0
        self.threads = 0

    def attach(self, root_pid: int, timeout: float = ATTACH_TIMEOUT_S) -> None:
        """Attach to `root_pid` and its descendants; returns once every thread has strace as its
        tracer. Raises PointFailed when the tree is gone, strace exits, or the timeout passes."""
        tree = process_tree(root_pid)
        if not tree:
            raise PointFailed("server exited before strace could attach")
        pids = [str(p.pid) for p in tree]
        # -f also follows threads and children made while attached; a fork model's children
        # made before are in the tree, so each gets its own -p. -q: no attach/detach chatter.
        cmd = [self.strace, "-f", "-q", *self.options, "-o", str(self.output)]
        for pid in pids:
            cmd += ["-p", pid]
        self.popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_detach_if_parent_dies,
        )
        # On the server's CPUs: a traced call is a hand-off between tracee and tracer, and a
        # cross-core hand-off costs ~100 us here; on the client's CPUs it would slow the load.
        try:
            os.sched_setaffinity(self.popen.pid, set(self.cpus))
        except OSError:
            pass
        self._wait_attached([p.pid for p in tree], timeout)

    def _wait_attached(self, pids: list[int], timeout: float) -> None:
        assert self.popen is not None
        deadline = deadline_in(timeout)
        while True:
            if self.popen.poll() is not None:
                raise PointFailed(f"strace exited with status {self.popen.returncode}: {self._stderr_tail()}")
            tasks = [t for pid in pids for t in _tasks(pid)]
            untraced = [t for t in tasks if _tracer(*t) not in (self.popen.pid, None)]
            if tasks and not untraced:
                self.processes, self.threads = len(pids), len(tasks)
                return
            if remaining(deadline) <= 0:
                raise PointFailed(
                    f"strace did not attach to {len(untraced)} of {len(tasks)} threads in {timeout:.0f} s"
                )
            time.sleep(0.01)

    def detach(self, timeout: float = DETACH_TIMEOUT_S) -> str:
        """SIGINT strace (it detaches from everything and finishes its output); returns the
        output file's text. Raises PointFailed when strace hangs or wrote nothing."""
        if self.popen is None:
            return ""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGINT)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                raise PointFailed(f"strace did not detach within {timeout:.0f} s") from None
        stderr = self._stderr_tail()
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        try:
            return self.output.read_text()
        except OSError as exc:
            raise PointFailed(f"strace wrote no output ({exc.strerror}); stderr: {stderr}") from None

    def _stderr_tail(self) -> str:
        assert self.popen is not None
        if self.popen.poll() is None or self.popen.stderr is None or self.popen.stderr.closed:
            return "no output on stderr"
        lines = [line.strip() for line in self.popen.stderr.read().splitlines() if line.strip()]
        return lines[-1] if lines else "no output on stderr"

    def stop(self) -> None:
        """Detach if still attached, whatever state we are in; the output is not needed."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            self.detach(timeout=5.0)
        except PointFailed:
            pass


def ptrace_blocker(strace: str, timeout: float = 5.0) -> str | None:
    """Why strace cannot attach to a process here, in one line naming what to allow; None
    when it can.

    Tried on a `sleep` of our own, started the way a server is (a sibling of strace, not its
    child): Yama's ptrace_scope 1 allows tracing one's descendants only, and a container
    without CAP_SYS_PTRACE refuses PTRACE_SEIZE altogether (Documentation/admin-guide/LSM/Yama.rst).
    """
    sleeper = subprocess.Popen(
        ["sleep", str(int(timeout) + 5)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_detach_if_parent_dies,
    )
    tracer = StraceAttachment(strace, Path(os.devnull), tuple(sorted(os.sched_getaffinity(0))), ["-c"])
    try:
        tracer.attach(sleeper.pid, timeout)
    except PointFailed as exc:
        return (
            f"strace cannot attach to a process here ({exc}); allow ptrace: run as root or with "
            f"CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE), or set kernel.yama.ptrace_scope "
            f"to 0 (it is {_ptrace_scope()})"
        )
    finally:
        if tracer.popen is not None and tracer.popen.poll() is None:
            tracer.popen.send_signal(signal.SIGINT)
            try:
                tracer.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                tracer.popen.kill()
                tracer.popen.wait()
        if tracer.popen is not None and tracer.popen.stderr is not None:
            tracer.popen.stderr.close()
        sleeper.kill()
        sleeper.wait()
    return None


def _ptrace_scope() -> str:
    try:
        return PTRACE_SCOPE.read_text().strip()
    except OSError:
        return "absent: no Yama"


def strace_version(strace: str) -> str:
    try:
        out = subprocess.run([strace, "-V"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0].strip() if out else ""


def _tasks(pid: int) -> list[tuple[int, int]]:
    try:
        return [(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _tracer(pid: int, tid: int) -> int | None:
    """The thread's tracer PID (0: none), or None when the thread is gone and needs none."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as fh:
            for line in fh:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def harness_context(client_cpus: tuple[int, ...]) -> Iterator[None]:
    """The harness process on the client's CPUs, with SIGTERM raising KeyboardInterrupt, for the
    body; both put back afterwards."""

    # As in `bench run`: the harness sits beside the load workers, off the server's CPUs, and
    # SIGTERM takes Ctrl-C's path so strace is detached and every child stopped. Both are put
    # back afterwards, so a caller in the same process (a test) is left as it was.
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    affinity = os.sched_getaffinity(0)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        os.sched_setaffinity(0, set(client_cpus))
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.sched_setaffinity(0, affinity)


def quiet(text: str) -> None:
    """The default phase callback of profile_model and explain_model: nobody is watching."""


def for_model(on_phase: Callable[[str, str], None] | None, model: str) -> Callable[[str], None]:
    """on_phase(model, text) as a callback of the text alone (quiet when None)."""
    return quiet if on_phase is None else lambda text: on_phase(model, text)


def trace_each_model(
    models: list[str],
    verb: str,
    client_cpus: tuple[int, ...],
    out: Path,
    run: Callable[[Callable[[Any], None], RunDirectory, Callable[[str, str], None]], Any],
    line: Callable[[Any], str],
    render: Callable[[Path], Path],
) -> tuple[RunDirectory, Any] | None:
    """The flow `bench profile` and `bench explain` share: a new run directory under `out`, the
    harness on `client_cpus`, a live display of the models done (bench.live_display), and
    run(on_model, run_dir, on_phase) called inside, on_phase(model, text) showing the current
    model's step; each finished model's line() kept above the bar. Returns (run_dir, what run
    returned), or None when interrupted (Ctrl-C or SIGTERM), after saying so and rendering what
    was kept with render(run path); `verb` ("profiling") words that message."""
    from bench.live_display import LiveProgress
    from bench.storing.results_store import new_run_id

    display = LiveProgress(len(models))

    def on_model(result: Any) -> None:
        display.line(line(result))
        display.advance()

    def on_phase(model: str, text: str) -> None:
        display.phase(f"{model}: {text}")

    run_dir = RunDirectory.create(out, new_run_id())
    with harness_context(client_cpus):
        try:
            # Inside harness_context: the display's thread starts on the client CPUs.
            with display:
                result = run(on_model, run_dir, on_phase)
        except KeyboardInterrupt:
            print(f"interrupted: the models {verb.replace('ing', 'ed')} so far are kept", file=sys.stderr)
            if run_dir.run_file.exists():
                render(run_dir.path)
            return None
    return run_dir, result


def _detach_if_parent_dies() -> None:
    # In the forked child before exec: if bench dies (even by SIGKILL), strace gets SIGTERM,
    # detaches and lets the server go on to be stopped by its own die-with-parent.
    set_parent_death_signal()
