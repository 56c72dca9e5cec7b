"""The points a run adds so that its report can teach the five I/O models' lessons (bench.reporting.lessons).

The connection sweep shows select's wall at 1024 and the blocking servers' memory and context
switches per connection. Two lessons need points of their own, and cost little:

- idle connections beside a few active ones, for the models that scan (select, poll) and those
  that do not (epoll, io_uring): LESSON_IDLE idle connections beside the sweep's smallest
  connection count (LESSON_ACTIVE in the default sweep), against the same count with none.
  1,000 beside 10 keeps select under FD_SETSIZE with its listening socket and standard
  descriptors. Measured here (2026-11-30, `bench run --models
  select,poll,epoll,io_uring --connections 10 --idle 0,1000`): select kept 20% of its req/s,
  poll 34%, epoll and io_uring 101%;
- a low offered rate (open loop) for the non-blocking server and one that sleeps in the kernel:
  BUSY_RATE req/s over LESSON_ACTIVE connections. Measured here (`bench run --models
  nonblocking,epoll,threads,sigio,io_uring --connections 10 --workload open --rate 1000`):
  nonblocking's server used 98% of a CPU, the others 3-5%.

Each repeat of the run measures them after its sweep, so that --repeats gates them as it gates
everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

LESSON_ACTIVE = 10
LESSON_IDLE = 1000
IDLE_MODELS = ("select", "poll", "epoll", "io_uring")
BUSY_RATE = 1000.0
BUSY_MODELS = ("nonblocking", "epoll")


@dataclass(frozen=True)
class LessonPoint:
    """One point to add: model, active connections, idle ones, workload and offered rate (req/s)."""

    model: str
    connections: int
    idle: int
    workload: str
    rate: float = 0.0


def lesson_points(models: list[str], connections: list[int], idle: list[int] | None = None) -> list[LessonPoint]:
    """The points the lessons need among `models` (the run's, in its order), given the
    closed-loop connection counts and idle counts the sweep already measures: the idle
    connections go beside the smallest connection count (LESSON_ACTIVE in the default sweep),
    whose idle-free points the sweep has unless `idle` lacks 0; [] where a lesson lacks the
    models to contrast. The caller drops what the sweep already has (same point_id)."""
    points: list[LessonPoint] = []
    active = min(connections)
    scanning = [m for m in models if m in IDLE_MODELS]
    if len(scanning) >= 2:
        if 0 not in (idle or [0]):
            points += [LessonPoint(m, active, 0, "closed") for m in scanning]
        points += [LessonPoint(m, active, LESSON_IDLE, "idle") for m in scanning]
    busy = [m for m in models if m in BUSY_MODELS]
    if len(busy) == len(BUSY_MODELS):
        points += [LessonPoint(m, LESSON_ACTIVE, 0, "open", BUSY_RATE) for m in busy]
    return points
