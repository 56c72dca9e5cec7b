"""A live progress display for the commands that measure point after point (`bench run`,
`bench profile`, `bench explain`), with plain lines wherever stdout is not a terminal.

On a terminal, a rich.progress bar stays at the bottom: points done of planned, elapsed time,
an ETA, and the current point with its phase; each finished point's line is printed above it.
Anywhere else (CI, a pipe, `> log`) the same lines are printed as plain text, flushed one by
one, and phases print nothing, so logs read as they always have.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

# The display is redrawn by a thread of the harness, which shares the client CPUs with the load
# workers: a few redraws a second keep the clocks moving at a cost no measurement can see.
REFRESH_PER_SECOND = 4
# The ETA is the mean time per point over the whole run, not over rich's default 30 s: a point
# can take longer than that (thousands of connections, a long window), and then there would be
# no estimate at all.
SPEED_ESTIMATE_PERIOD_S = 7 * 24 * 3600.0
BAR_WIDTH = 16


def is_live_terminal(console: Console) -> bool:
    """Whether `console` writes to a terminal a live display can redraw: rich must see a terminal
    that is not dumb (TERM=dumb, TTY_COMPATIBLE=0 say no), and its file must really be a TTY,
    since FORCE_COLOR, often set in CI, makes rich call a pipe a terminal."""
    return _isatty(console.file) and console.is_terminal and not console.is_dumb_terminal


class _CurrentColumn(ProgressColumn):
    """The current point and its phase, read from the display's attribute at each redraw, so that
    reporting a phase is one assignment, with no lock a redraw could be holding."""

    def __init__(self, display: LiveProgress) -> None:
        super().__init__(table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"))
        self.display = display

    def render(self, task: Task) -> Text:
        return Text(self.display.current, no_wrap=True, overflow="ellipsis")


class LiveProgress:
    """Progress over `total` planned points: `line(text)` for a finished point, `phase(text)` for
    what the current one is doing, `advance()` when a point is done. Use it as a context
    manager: on the way out, however it is left (Ctrl-C included), the live display is stopped,
    the bar erased and the cursor shown again, so that what follows prints as usual.

    The display starts at the first call of any of the three, not on entry: rich redraws from a
    thread of its own, and a new thread takes the CPU affinity of the thread that creates it; by
    then the harness has pinned itself to the client CPUs, which keeps the redraws off the
    server's CPUs."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.total = total
        self.console = console if console is not None else Console(file=sys.stdout)
        self.live = is_live_terminal(self.console)
        self.current = ""
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._open = False

    def __enter__(self) -> LiveProgress:
        self._open = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        self.stop()

    def _started(self) -> Progress | None:
        """The running rich display, started on first use inside the `with`; None when plain."""
        if not self.live or not self._open:
            return None
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                _CurrentColumn(self),
                BarColumn(bar_width=BAR_WIDTH),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=REFRESH_PER_SECOND,
                speed_estimate_period=SPEED_ESTIMATE_PERIOD_S,
                transient=True,
                expand=True,
                # Stray prints (a load engine's notes, warnings) go above the bar, not through it;
                # stderr only when it is this terminal too, so `2> file` still gets them.
                redirect_stdout=True,
                redirect_stderr=_isatty(sys.stderr),
            )
            self._task = self._progress.add_task("", total=self.total)
            # A first sample at the start, so that the first point done already gives a speed.
            self._progress.advance(self._task, 0)
            self._progress.start()
        return self._progress

    def line(self, text: str) -> None:
        """A finished point's line: above the bar on a terminal, else printed and flushed."""
        progress = self._started()
        if progress is None:
            print(text, flush=True)
            return
        # Text, not a str: a reason may hold [brackets] or :colons: that rich would read as markup.
        progress.console.print(Text(text), soft_wrap=True)

    def phase(self, text: str) -> None:
        """What the current point is doing (its name and phase); nothing when not live. Cheap
        enough to call inside a point's measurement: one assignment, redrawn by rich's thread."""
        # Set first: starting the display draws it at once.
        self.current = text
        self._started()

    def advance(self) -> None:
        """One more point done; no point is current until the next phase."""
        progress = self._started()
        if progress is not None and self._task is not None:
            self.current = ""
            progress.advance(self._task)
            # Redrawn at once: the bar printed under the point's line was rich's last refresh,
            # from before the point's last phases. Points end between measurements, where a
            # redraw costs nothing.
            progress.refresh()

    def stop(self) -> None:
        """Stop the live display (the bar is erased, the cursor shown); idempotent."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed file
        return False
