"""servers.shedding on its own: the accept gate against a simulated descriptor table, and the
ledger's JSON lines. Every model's behaviour at a real RLIMIT_NOFILE is checked in
test_conformance.py (test_descriptor_limit_sheds_and_keeps_serving); what a real limit cannot
show here (the spare descriptor lost to another process, ENOMEM) is simulated.
"""

from __future__ import annotations

import errno
import json
import os
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from servers import shedding
from servers.shedding import BACKOFF_MIN_S, AcceptGate, ShedLedger


class Table:
    """A process's descriptor table with `free` slots, as accept() and open() meet it."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.fail_with = errno.EMFILE  # what a full table says

    def take(self) -> None:
        if self.free <= 0:
            raise OSError(self.fail_with, os.strerror(self.fail_with))
        self.free -= 1

    def give(self) -> None:
        self.free += 1


class FakeSocket:
    def __init__(self, table: Table, name: str) -> None:
        self.table = table
        self.name = name
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.table.give()


class FakeListener:
    """A non-blocking listener over `table`: like Linux, accept() takes a descriptor before it
    looks at the queue, so a full table fails with EMFILE even when nothing is queued."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.queue: deque[str] = deque()
        self.accepted: list[FakeSocket] = []
        self.calls = 0
        # Run before each accept(): what other threads or processes do meanwhile.
        self.meanwhile: list[Callable[[], None]] = []

    def accept(self) -> tuple[FakeSocket, tuple[str, int]]:
        self.calls += 1
        if self.meanwhile:
            self.meanwhile.pop(0)()
        self.table.take()
        if not self.queue:
            self.table.give()
            raise BlockingIOError(errno.EAGAIN, "queue empty")
        sock = FakeSocket(self.table, self.queue.popleft())
        self.accepted.append(sock)
        return sock, ("127.0.0.1", 1)


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Table:
    """One free slot, for the gate's spare: the process is then at its limit."""
    table = Table(free=1)
    spares = iter(range(1000, 2000))

    def open_reserve() -> int:
        try:
            table.take()
        except OSError:
            return -1
        return next(spares)

    monkeypatch.setattr(shedding, "_open_reserve", open_reserve)
    monkeypatch.setattr(shedding, "_close_reserve", lambda fd: table.give())
    return table


class Calls:
    def __init__(self) -> None:
        self.pauses = 0
        self.resumes = 0

    def pause(self) -> None:
        self.pauses += 1

    def resume(self) -> None:
        self.resumes += 1


def gate_over(listener: FakeListener, ledger: ShedLedger, calls: Calls | None = None, **options: bool) -> AcceptGate:
    calls = calls or Calls()
    return AcceptGate(
        listener,  # type: ignore[arg-type]
        on_pause=calls.pause,
        on_resume=calls.resume,
        ledger=ledger,
        **options,
    )


def lines(text: str) -> Iterator[dict]:
    return (json.loads(line) for line in text.splitlines() if line.strip())


def test_sheds_the_queue_at_the_limit_and_the_next_served_connection_ends_the_episode(
    table: Table, capsys: pytest.CaptureFixture[str]
) -> None:
    listener, ledger = FakeListener(table), ShedLedger()
    gate = gate_over(listener, ledger)
    assert table.free == 0
    listener.queue.extend(["a", "b", "c"])
    assert gate.accept() == []
    assert gate.drained and not gate.paused
    assert [s.closed for s in listener.accepted] == [True, True, True]
    assert ledger.total == 3 and ledger.episodes == 1 and ledger.in_episode
    assert table.free == 0, "the spare is held again"
    assert capsys.readouterr().out == "", "nothing is said until the episode ends"
    table.give()  # a connection closed elsewhere
    listener.queue.append("d")
    (kept,) = gate.accept()
    assert kept.name == "d" and not kept.closed
    (line,) = lines(capsys.readouterr().out)
    assert line["event"] == "shed" and line["count"] == 3 and line["errno"] == "EMFILE"
    assert 0 <= line["seconds"] < 5
    assert not ledger.in_episode


def test_an_empty_queue_at_the_limit_sheds_nothing(table: Table) -> None:
    listener, ledger = FakeListener(table), ShedLedger()
    gate = gate_over(listener, ledger)
    assert gate.accept() == [] and gate.drained
    assert ledger.total == 0 and ledger.episodes == 0
    assert table.free == 0


def test_keeps_the_connection_when_a_descriptor_was_freed_meanwhile(table: Table) -> None:
    """Another thread closed a connection between the failed accept() and the spare's: the
    connection taken in the spare's place is served, not shed (the threads model's case)."""
    listener, ledger = FakeListener(table), ShedLedger()
    gate = gate_over(listener, ledger)
    listener.queue.append("a")
    listener.meanwhile = [lambda: None, table.give]
    (kept,) = gate.accept()
    assert kept.name == "a" and not kept.closed
    assert ledger.total == 0


def test_without_a_spare_it_pauses_until_a_close_then_backs_off_longer(table: Table) -> None:
    """The spare was lost (another process took the slot: ENFILE): nothing can be shed, so the
    gate stops accepting (on_pause) until a connection closes (freed, then tick) or its
    back-off passes, and the next pause lasts twice as long."""
    listener, ledger, calls = FakeListener(table), ShedLedger(), Calls()
    gate = gate_over(listener, ledger, calls)
    table.fail_with = errno.ENFILE
    gate._reserve = -1  # lost: reopening it failed, and its slot is taken
    listener.queue.append("a")
    assert gate.accept() == []
    assert gate.paused and calls.pauses == 1 and ledger.in_episode and ledger.total == 0
    timeout = gate.timeout()
    assert timeout is not None and 0 <= timeout <= BACKOFF_MIN_S
    made = listener.calls
    assert gate.accept() == [] and listener.calls == made, "a paused gate does not call accept()"
    gate.freed()
    gate.tick()
    assert not gate.paused and calls.resumes == 1
    assert gate.accept() == []
    second = gate.timeout()
    assert second is not None and BACKOFF_MIN_S < second <= 2 * BACKOFF_MIN_S


def test_a_pause_ends_at_its_back_off(table: Table, monkeypatch: pytest.MonkeyPatch) -> None:
    listener, ledger, calls = FakeListener(table), ShedLedger(), Calls()
    gate = gate_over(listener, ledger, calls)
    gate._reserve = -1
    table.free = 0
    listener.queue.append("a")
    gate.accept()
    gate.tick()
    assert gate.paused, "neither a close nor the back-off yet"
    now = shedding.time.monotonic()
    monkeypatch.setattr(shedding.time, "monotonic", lambda: now + 2 * BACKOFF_MIN_S)
    assert gate.timeout() == 0.0
    gate.tick()
    assert not gate.paused and calls.resumes == 1


def test_enomem_even_with_the_spare_free_pauses(table: Table) -> None:
    listener, ledger, calls = FakeListener(table), ShedLedger(), Calls()
    gate = gate_over(listener, ledger, calls)
    listener.queue.append("a")

    def no_memory() -> None:
        table.fail_with = errno.ENOMEM
        table.free = 0

    listener.meanwhile = [lambda: None, no_memory]
    assert gate.accept() == []
    assert gate.paused and calls.pauses == 1 and ledger.episodes == 1


def test_a_gate_that_does_not_serve_leaves_the_episode_to_the_model(
    table: Table, capsys: pytest.CaptureFixture[str]
) -> None:
    """fork: a connection the gate hands over may still be shed past the cap, so only the
    model's served() ends the episode."""
    listener, ledger = FakeListener(table), ShedLedger()
    gate = gate_over(listener, ledger, serves=False)
    listener.queue.extend(["a", "b"])
    gate.accept()
    table.give()
    listener.queue.append("c")
    assert len(gate.accept()) == 1
    assert ledger.in_episode
    gate.served()
    assert [line["count"] for line in lines(capsys.readouterr().out)] == [2]


def test_a_blocking_gate_sleeps_out_a_pause(table: Table, monkeypatch: pytest.MonkeyPatch) -> None:
    listener, ledger = FakeListener(table), ShedLedger()
    gate = gate_over(listener, ledger)
    gate._reserve = -1
    table.free = 0
    listener.queue.append("a")
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        table.give()  # meanwhile a connection closed

    monkeypatch.setattr(shedding.time, "sleep", sleep)
    sock = gate.accept_blocking()
    assert sock.name == "a"  # type: ignore[attr-defined]
    assert len(slept) == 1 and 0 <= slept[0] <= BACKOFF_MIN_S


def test_ledger_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """The protocol the harness reads (bench/measuring/shed.py): shed lines as episodes end, the stats
    line at a clean exit and on request (written straight to fd 1, signal-safe)."""
    ledger = ShedLedger()
    ledger.shed("EMFILE")
    ledger.shed("ENFILE")  # same episode: its cause stays the first one
    ledger.served()
    ledger.begin("ENOMEM")  # a pause that shed nothing
    ledger.report()
    ledger.finish(clean=True)
    out = list(lines(capfd.readouterr().out))
    assert [{k: v for k, v in line.items() if k != "seconds"} for line in out] == [
        {"event": "shed", "count": 2, "errno": "EMFILE"},
        {"event": "stats", "shed": 2, "episodes": 2},
        {"event": "shed", "count": 0, "errno": "ENOMEM"},
        {"event": "stats", "shed": 2, "episodes": 2},
    ]
    assert set(out[0]) == {"event", "count", "errno", "seconds"}
