"""Fixtures shared by the conformance suite: every model by name, and servers cleaned up by PID."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Iterator, Sequence

import pytest
from server_process import ALL_MODELS, SCALABLE_MODELS, ArgvServer, ServerProcess, StartServer, describe


def pytest_report_header() -> list[str]:
    lines = []
    for name in ALL_MODELS:
        info = describe(name)
        lines.append(f"  {name:12} {'available' if info.available else 'UNAVAILABLE: ' + info.reason}")
    return ["I/O models:", *lines]


def _require_available(name: str) -> str:
    info = describe(name)
    if not info.available:
        pytest.skip(f"model {name} unavailable: {info.reason}")
    return name


# The built-in load engines: every test that exercises the engine runs on both.
BUILTIN_ENGINES = ("c", "python")
# The same, with the C engine's request loop on each of its back ends (tests of the loop itself).
EVERY_LOOP = ("c/io_uring", "c/epoll", "python")


@functools.cache
def c_io_uring_problem() -> str | None:
    """Why the C worker cannot run its request loop on io_uring here, or None: its own answer.
    With --io io_uring it sets the ring up before connecting and exits 1 saying why it cannot;
    otherwise port 1 refuses its connect and stdin at EOF ends it at once."""
    from loadgen.c_worker import worker_binary

    binary, reason = worker_binary()
    if binary is None:
        return reason
    argv = [str(binary), "--port", "1", "--connections", "1", "--io", "io_uring"]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    marker = "--io io_uring: "
    return proc.stderr.split(marker, 1)[1].strip() if marker in proc.stderr else None


def builtin_engine(param: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine named by `param` ("c/epoll", "c/io_uring": c with its request loop on that
    back end, through $IOMODEL_C_IO; plain "c": its default); one that cannot run here is
    skipped with its reason."""
    from bench.running.engines import unavailable_reason
    from bench.running.load_workers import C_IO_ENV

    name, _, io = param.partition("/")
    if io:
        monkeypatch.setenv(C_IO_ENV, io)
    else:
        monkeypatch.delenv(C_IO_ENV, raising=False)
    if (reason := unavailable_reason(name)) is not None:
        pytest.skip(f"engine {name} unavailable: {reason}")
    if io == "io_uring" and (reason := c_io_uring_problem()) is not None:
        pytest.skip(f"the C engine cannot use io_uring here: {reason}")
    return name


@pytest.fixture(params=BUILTIN_ENGINES)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each built-in load engine by name."""
    return builtin_engine(request.param, monkeypatch)


@pytest.fixture(params=ALL_MODELS)
def model(request: pytest.FixtureRequest) -> str:
    """Each model by name; an unavailable one is skipped with its reason."""
    return _require_available(request.param)


@pytest.fixture(params=SCALABLE_MODELS)
def scalable_model(request: pytest.FixtureRequest) -> str:
    """Each model that must work past descriptor number 1024 (all but select)."""
    return _require_available(request.param)


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """`start_server(model, args=(), nofile=None, prelude="")` -> a ready ServerProcess (with
    RLIMIT_NOFILE lowered to `nofile` in the server only, and `prelude`, Python code, run in it
    first); every one started is stopped at teardown, and a server that needed SIGKILL or left
    a child behind fails the test."""
    started: list[ServerProcess] = []

    def start(name: str, args: Sequence[str] = (), nofile: int | None = None, prelude: str = "") -> ServerProcess:
        server = ServerProcess.start(name, args, nofile=nofile, prelude=prelude)
        started.append(server)
        return server

    yield start
    errors = []
    for server in started:
        try:
            server.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("server clean-up failed:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def server(model: str, start_server: StartServer) -> ServerProcess:
    """A ready server of the parametrised model."""
    return start_server(model)


@pytest.fixture
def spawn() -> Iterator[Callable[..., ArgvServer]]:
    """Start servers from an argv (optionally with a preexec hook); each is killed by PID at teardown."""
    started: list[ArgvServer] = []

    def _spawn(argv: list[str], preexec_fn: Callable[[], None] | None = None) -> ArgvServer:
        server = ArgvServer(argv, preexec_fn)
        started.append(server)
        return server

    yield _spawn
    for server in started:
        server.kill()
