"""Connections a server shed at its descriptor limit, as the server or its clients tell it.

A reference server whose accept() fails for want of a descriptor (EMFILE) sheds the connections
it cannot hold instead of dying, and says so on stdout, each of its processes for itself:

    {"event": "shed", "count": N, "errno": "EMFILE", "seconds": S}   as a shedding episode ends
    {"event": "stats", "shed": TOTAL, "episodes": E}                 the last line of a clean exit

The harness reads them from a server it started (bench.running.server_control), writes the total in the
row's `shed` column with a sentence in its `reason`, and the report states it once per run. The
stdout of a server started elsewhere (`bench run --target`) is not the harness's to read (`bench
serve` prints these lines); there the load workers' count of connections the server closed or
reset before their first echo stands in, in words only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.wording import plural

SHED_EVENT = "shed"
STATS_EVENT = "stats"
# accept(2)'s errors that mean "no descriptor for the new connection": the words for where the
# server stood, and what would have let it hold the connections.
LIMITS = {
    "EMFILE": ("at its descriptor limit (EMFILE)", "raise RLIMIT_NOFILE (ulimit -n) or use --server-workers"),
    "ENFILE": ("at the host's descriptor limit (ENFILE)", "raise fs.file-max"),
    # The fork model's own causes (servers/fork_server.py): its cap, and fork() failing.
    "fork-cap": ("past its cap of live children (--fork-cap)", "raise --fork-cap"),
    "EAGAIN": ("when fork() failed (EAGAIN)", "raise RLIMIT_NPROC (ulimit -u) or lower --fork-cap"),
    # Out of memory, not descriptors (man 2 accept).
    "ENOMEM": ("out of memory at accept (ENOMEM)", "free memory, or lower the connections per server"),
    "ENOBUFS": ("out of socket buffer memory at accept (ENOBUFS)", "raise net.ipv4.tcp_mem"),
}


def _count(value: Any) -> int | None:
    """A whole number >= 0 from a JSON line, else None (a bool is not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class ShedTally:
    """What a server's processes said on stdout about the connections they shed.

    `processes` is how many processes are expected to print a stats line at exit (the ready
    line's `workers`, else 1): with fewer received (a process killed, or a server that never
    prints one), the total is a floor taken from whatever was said. A server also prints its
    totals so far when asked (SIGUSR1, which the harness never sends): with one process the
    last stats line wins; with several, the lines carry no PID to tell them apart, and each is
    taken as another process's exit."""

    processes: int = 1
    # "shed" lines: one per ended episode, with its connections and its length (seconds).
    episodes_ended: int = 0
    shed_in_episodes: int = 0
    seconds: float = 0.0
    errnos: Counter[str] = field(default_factory=Counter)
    # "stats" lines: one per process that exited cleanly.
    stats_lines: int = 0
    stats_shed: int = 0
    stats_episodes: int = 0

    def take(self, message: dict[str, Any]) -> bool:
        """Count a shed or stats line; False for any other message. A line whose counts are not
        whole numbers >= 0 is ignored (taken, counted nowhere): a server's bug must not cost
        the point its row."""
        event = message.get("event")
        if event == SHED_EVENT:
            count, seconds = _count(message.get("count")), message.get("seconds", 0.0)
            if count is not None:
                self.episodes_ended += 1
                self.shed_in_episodes += count
                if count:
                    self.errnos[str(message.get("errno") or "")] += count
                if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
                    self.seconds += float(seconds)
            return True
        if event == STATS_EVENT:
            shed, episodes = _count(message.get("shed")), _count(message.get("episodes"))
            if shed is not None and self.processes == 1:
                # Cumulative: the last line (at exit) holds every earlier one's counts.
                self.stats_lines, self.stats_shed, self.stats_episodes = 1, shed, episodes or 0
            elif shed is not None:
                self.stats_lines += 1
                self.stats_shed += shed
                self.stats_episodes += episodes or 0
            return True
        return False

    @property
    def heard(self) -> bool:
        """Whether the server said anything about shedding (a server that prints neither line
        leaves the row's `shed` empty: unknown, not 0)."""
        return bool(self.episodes_ended or self.stats_lines)

    @property
    def complete(self) -> bool:
        """Every process printed its stats line: the total is exact, not a floor."""
        return self.stats_lines >= self.processes

    def total(self) -> int | None:
        """Connections shed over all the server's processes, None when it said nothing. An
        episode still under way at exit is in the stats lines only, so they win; when some are
        missing the ended episodes may say more."""
        if not self.heard:
            return None
        return max(self.stats_shed, self.shed_in_episodes)

    def episodes(self) -> int:
        return max(self.stats_episodes, self.episodes_ended)

    def sentence(self, who: str = "the server") -> str | None:
        """The row's words, e.g. "the server shed 37 connections at its descriptor limit
        (EMFILE) in 1 episode (840 ms in all): raise RLIMIT_NOFILE (ulimit -n) or use
        --server-workers"; None when nothing was shed."""
        total = self.total()
        if not total:
            return None
        errno = self.errnos.most_common(1)[0][0] if self.errnos else "EMFILE"
        where, fix = LIMITS.get(errno, (f"when accept() failed with {errno}", "see accept(2)"))
        episodes = self.episodes()
        at_least = "" if self.complete else "at least "
        text = f"{who} shed {at_least}{plural(total, 'connection')} {where}"
        if episodes:
            text += f" in {plural(episodes, 'episode')}"
            # Only ended episodes have a length: an episode under way at exit has none.
            if self.seconds > 0 and self.episodes_ended == episodes:
                text += f" ({_duration(self.seconds)} in all)"
        if not self.complete:
            missing = self.processes - self.stats_lines
            text += f" ({plural(missing, 'process', 'processes')} printed no exit statistics)"
        return f"{text}: {fix}"


def _duration(seconds: float) -> str:
    """'1.2 s', '840 ms', 'under 1 ms'."""
    if seconds >= 1:
        return f"{seconds:.1f} s"
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.001 else "under 1 ms"


def fill_row(row: dict[str, Any], tally: ShedTally | None, closed_before_echo: int | None = None) -> None:
    """What the point's server shed, in the row; a failed row keeps it too (nothing measured
    is lost). From a server the harness reads (`tally`): the `shed` column (empty when it said
    nothing) and, when it shed any, a sentence at the end of `reason`. From one it cannot read
    (`tally` None, --target): the load workers' count of connections the server closed or reset
    before their first echo, in words only, since it is not the server's own count."""
    if tally is not None:
        row["shed"] = tally.total()
        _add_note(row, tally.sentence())
    elif closed_before_echo:
        _add_note(
            row,
            f"the server closed or reset {plural(closed_before_echo, 'connection')} before their first echo, as a "
            "server shedding connections at its descriptor limit does (bench serve prints the count it shed): "
            "raise the server's RLIMIT_NOFILE or its --server-workers",
        )


def _add_note(row: dict[str, Any], note: str | None) -> None:
    if note:
        row["reason"] = "; ".join(filter(None, [row.get("reason"), note]))


def shed_findings(df: pd.DataFrame) -> list[str]:
    """One sentence for the report's findings when any point's server shed connections."""
    if "shed" not in df.columns:
        return []
    counts = pd.to_numeric(df["shed"], errors="coerce").fillna(0)
    hit = df[counts > 0]
    if hit.empty:
        return []
    worst = hit.loc[counts[hit.index].idxmax()]
    return [
        f"Servers shed connections they could not hold (a descriptor limit, fork's cap, memory) at "
        f"{plural(len(hit), 'point')}, "
        f"{int(counts.sum()):,} connections in all (most: {worst['model']} at {int(worst['connections']):,} "
        f"connections, {int(counts[worst.name]):,} shed): those points measured the connections the server kept, "
        "and their reasons say what to raise."
    ]
