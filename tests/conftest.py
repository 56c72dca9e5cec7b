"""Fixtures shared by the conformance suite: every model by name, and servers cleaned up by PID."""

from __future__ import annotations

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


@pytest.fixture(params=BUILTIN_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each built-in load engine by name; one that cannot run here is skipped with its reason."""
    from bench.running.engines import unavailable_reason

    if (reason := unavailable_reason(request.param)) is not None:
        pytest.skip(f"engine {request.param} unavailable: {reason}")
    return request.param


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
