"""The figures of explain.html, drawn from `bench explain`'s run.json: one sequence diagram per
model (Stevens, UNP 3rd ed., figures 6.1-6.5: the application, the kernel and the client side by
side, time running downward, an arrow for each system call and its return) and the comparison
of every model on one time axis (figure 6.6), plus the rows of the table beneath it.

Everything here is a pure function of an explanation dict (bench.tracing.explain.ModelExplanation as
stored): times in the steps are s since the epoch (CLOCK_REALTIME), durations in the summaries
µs. The SVG is sized in CSS pixels and fits a 1366 px laptop page.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable
from html import escape
from typing import Any

from bench.storing.columns import STATUS_OK
from bench.tracing.io_phases import (
    BLOCKING,
    BUSY_POLLING,
    COMPLETION,
    COPY,
    ECHO,
    NEXT_WAIT,
    OTHER,
    POLL,
    SIGNAL,
    WAIT,
    WAIT_AND_COPY,
)

FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
MAX_WIDTH = 1100

# Colour per role: the wait amber, polling red (hatched), the copy blue, the echo green.
COLOURS = {
    WAIT: "#e8a317",
    WAIT_AND_COPY: "#e8a317",
    POLL: "#d62728",
    COPY: "#1f6fc5",
    ECHO: "#2ca02c",
    NEXT_WAIT: "#f6d98e",
    OTHER: "#a0a0a0",
}
LEGEND_TEXT = {
    WAIT: "wait for data",
    WAIT_AND_COPY: "wait + copy in one call (split at the send)",
    POLL: "polling: calls failing with EAGAIN",
    COPY: "copy to user",
    ECHO: "send echo",
    NEXT_WAIT: "waits for the next request",
    OTHER: "other call",
}
INK = "#222"
MUTED = "#666"

# Vertical scale of the sequence diagrams: a gap of dt s is GAP_MIN + GAP_PER_DECADE *
# log10(1 + dt / GAP_UNIT_S) px, so 10 µs calls stay readable beside a 20 ms wait. GAP_MIN is a
# little over one 11 px text line, so labels on consecutive arrows cannot overlap.
GAP_MIN = 12.0
GAP_PER_DECADE = 26.0
GAP_UNIT_S = 10e-6
BREAK_S = 1e-3
MIN_BAR = 4.0
BAR_W = 18.0
TRACK_GAP = 8.0
LABEL_SIZE = 11.0
LINE_H = 13.0
TAIL = 34.0
RULER_X = 92.0

# The comparison's shared axis: t (s, from the client's send) drawn at sign(t) * log10(1 +
# |t| / AXIS_UNIT_S) * PX_PER_DECADE px from the zero line.
AXIS_UNIT_S = 10e-6
PX_PER_DECADE = 80.0
COL_W = 84.0  # at most; narrower (down to COL_W_MIN) to fit MAX_WIDTH
COL_W_MIN = 56.0
AXIS_W = 124.0


# ---------------------------------------------------------------- formatting


def duration(seconds: float) -> str:
    """A duration in s as people read it: '8.1 µs', '165 µs', '1.25 ms', '20.3 ms', '1.2 s'."""
    us = abs(seconds) * 1e6
    if us < 9.95:
        return f"{us:.1f} µs"
    if us < 999.5:
        return f"{us:.0f} µs"
    if us < 9_995:
        return f"{us / 1e3:.2f} ms"
    if us < 999_500:
        return f"{us / 1e3:.1f} ms"
    return f"{us / 1e6:.2f} s"


def relative(seconds: float) -> str:
    """A time relative to the client's send (s) with its sign: '−20.3 ms', '0', '+165 µs'."""
    if abs(seconds) < 5e-8:
        return "0"
    return ("−" if seconds < 0 else "+") + duration(seconds)


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def short_result(result: str) -> str:
    """A call's return value as an arrow label: 'EAGAIN' for an error, '= 64', or '= 1' for a
    long result whose detail ('1 ([{fd=5, revents=POLLIN}])') would not fit."""
    text = (result or "").strip()
    if not text:
        return "returns"
    if m := re.match(r"^-1 (E[A-Z0-9]+)", text):
        return m.group(1)
    if re.fullmatch(r"E[A-Z0-9]+( E[A-Z0-9]+)*", text):
        return text.replace(" ", ", ")
    if len(text) <= 16:
        return f"= {text}"
    first = text.split()[0]
    return f"= {first[:14]}…" if len(first) > 14 else f"= {first}"


# Advance widths (em) of DejaVu Sans, the widest of the usual sans-serif fonts (and Debian's
# default), so that a layout built on them leaves room in any narrower font.
_EM = {
    **dict.fromkeys("il.,:;'|!", 0.3),
    **dict.fromkeys(" ·", 0.32),
    **dict.fromkeys("()[]tfjr-/", 0.4),
    **dict.fromkeys("0123456789µ{}", 0.64),
    **dict.fromkeys("mw", 0.95),
    **dict.fromkeys("MW×…—=+−≈↓→", 0.9),
    **dict.fromkeys("csvxyzk", 0.58),
}


def text_width(text: str, size: float = LABEL_SIZE, bold: bool = False) -> float:
    """Estimated width (px) of `text` in a sans-serif font of `size` px (DejaVu Sans metrics,
    the widest usual one, so layouts built on it do not overlap in others)."""
    em = sum(_EM.get(ch, 0.72 if ch.isupper() else 0.63) for ch in text)
    return em * size * (1.13 if bold else 1.0)


def _wrap(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """Words of `text` (broken after spaces and hyphens) in lines of at most `width` px."""
    words = re.findall(r"[^\s-]+-?|\s+", text)
    lines: list[str] = []
    line = ""
    for word in words:
        if word.isspace():
            word = " "
        candidate = line + word
        if line and text_width(candidate.strip(), size, bold) > width:
            lines.append(line.strip())
            line = word.lstrip()
        else:
            line = candidate
    if line.strip():
        lines.append(line.strip())
    return lines or [""]


def _uid(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", model) or "model"


def _a(value: object) -> str:
    """An attribute value, escaped."""
    return escape(str(value), quote=True)


def _text(x: float, y: float, text: str, anchor: str = "start", size: float = LABEL_SIZE, **attrs: Any) -> str:
    extra = "".join(f' {"class" if k == "css_class" else k.replace("_", "-")}="{_a(v)}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size:g}"{extra}>{escape(text)}</text>'


def _lines(
    x: float, y_center: float, lines: list[str], anchor: str = "start", size: float = LABEL_SIZE, **attrs: Any
) -> str:
    """Text lines centred vertically on y_center."""
    top = y_center - (len(lines) * LINE_H) / 2 + LINE_H * 0.75
    return "".join(_text(x, top + i * LINE_H, line, anchor, size, **attrs) for i, line in enumerate(lines))


# ---------------------------------------------------------------- label placement


class _Column:
    """One vertical strip of labels: each label is placed as near its wanted height as it can
    be without overlapping the labels already placed or the fixed obstacles (arrows, breaks)."""

    def __init__(self, obstacles: Iterable[tuple[float, float]] = ()) -> None:
        self.taken: list[tuple[float, float]] = list(obstacles)

    def free(self, top: float, bottom: float) -> bool:
        return all(bottom <= a or top >= b for a, b in self.taken)

    def place(self, center: float, height: float, limit: float = 80.0) -> float:
        """The centre nearest `center` (px) at which a box of `height` px fits; marked taken."""
        for offset in _offsets(limit):
            c = center + offset
            if self.free(c - height / 2, c + height / 2):
                self.taken.append((c - height / 2, c + height / 2))
                return c
        self.taken.append((center - height / 2, center + height / 2))
        return center


def _offsets(limit: float) -> Iterable[float]:
    yield 0.0
    step = 1.0
    while step <= limit:
        yield step
        yield -step
        step += 1.0


# ---------------------------------------------------------------- the sequence diagram


class _TimeAxis:
    """Piecewise mapping of times (s) to heights (px) over sorted breakpoints: each gap is drawn
    by its logarithm; gaps over BREAK_S are marked as broken."""

    def __init__(self, times: Iterable[float], top: float) -> None:
        self.t = sorted(set(times))
        self.y = [top]
        for a, b in zip(self.t, self.t[1:], strict=False):
            self.y.append(self.y[-1] + gap_height(b - a))

    def __call__(self, t: float) -> float:
        if t <= self.t[0]:
            return self.y[0]
        if t >= self.t[-1]:
            return self.y[-1] + (TAIL if t > self.t[-1] else 0.0)
        i = bisect_right(self.t, t) - 1
        if self.t[i] == t:
            return self.y[i]
        frac = (t - self.t[i]) / (self.t[i + 1] - self.t[i])
        return self.y[i] + frac * (self.y[i + 1] - self.y[i])

    @property
    def bottom(self) -> float:
        return self.y[-1]

    def breaks(self) -> list[tuple[float, float]]:
        """(y of the middle of the gap in px, its real length in s) for each broken gap."""
        return [
            ((self.y[i] + self.y[i + 1]) / 2, self.t[i + 1] - self.t[i])
            for i in range(len(self.t) - 1)
            if self.t[i + 1] - self.t[i] > BREAK_S
        ]


def gap_height(dt: float) -> float:
    """Height (px) of a gap of dt s in a sequence diagram: GAP_MIN + 26 px per decade of dt over
    10 µs, so 1 µs is ~13 px, 100 µs ~39 px, 20 ms ~98 px; 0 for dt <= 0."""
    if dt <= 0:
        return 0.0
    return GAP_MIN + GAP_PER_DECADE * math.log10(1 + dt / GAP_UNIT_S)


def _defs(uid: str) -> str:
    return (
        "<defs>"
        f'<marker id="arrow-{uid}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{INK}"/></marker>'
        f'<pattern id="poll-{uid}" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="#f6c9c9"/><rect width="3" height="6" fill="{COLOURS[POLL]}"/></pattern>'
        f'<pattern id="blocked-{uid}" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(-45)"><rect width="6" height="6" fill="#eeeeee"/>'
        f'<rect width="2" height="6" fill="#9a9a9a"/></pattern>'
        "</defs>"
    )


def _fill(role: str, uid: str) -> str:
    return f"url(#poll-{uid})" if role == POLL else COLOURS.get(role, COLOURS[OTHER])


def lane_labels(explanation: dict[str, Any]) -> dict[int, str]:
    """Each thread of the typical request's steps by the name its lane carries in the sequence
    diagram ('process (pid N)', or 'thread 2 (tid N)'), in the steps' order."""
    tids = list(dict.fromkeys(s["tid"] for s in (explanation.get("typical") or {}).get("steps") or []))
    if len(tids) == 1:
        # Only a process whose every traced task is its own main thread has tid == pid.
        single = (explanation.get("traced_threads") or 1) <= (explanation.get("traced_processes") or 1)
        return {tids[0]: f"process (pid {tids[0]})" if single else f"thread (tid {tids[0]})"}
    return {tid: f"thread {i} (tid {tid})" for i, tid in enumerate(tids, 1)}


Note = tuple[int, float, float | None, list[str]]


def _annotations(steps: list[dict[str, Any]], pattern: str, sent: float, clipped: set[int]) -> list[Note]:
    """(step index, from, to (s; None: past the diagram's end), lines) of each phase annotation
    right of the kernel lane."""
    out: list[Note] = []
    polls = [i for i, s in enumerate(steps) if s["role"] == POLL]
    main_poll = max(polls, key=lambda i: steps[i]["calls"]) if polls else None
    for i, s in enumerate(steps):
        role, start, end = s["role"], s["start"], s["end"]
        took = duration(end - start)
        if role == WAIT_AND_COPY and start < sent < end:
            out.append((i, start, sent, [f"wait for data · {duration(sent - start)}"]))
            # Not the copy alone: delivery over loopback, the wake-up and strace's exit stop too.
            after = f"after the send: delivery, wake-up, copy · {duration(end - sent)}"
            out.append((i, sent, end, [after, "(one call waits and copies)"]))
        elif role == WAIT_AND_COPY:
            out.append((i, start, end, [f"wait for data + copy · {took}"]))
        elif role == WAIT and pattern == COMPLETION:
            out.append((i, start, end, ["kernel waits for data, copies it,", f"posts the completion · {took}"]))
        elif role == WAIT and pattern == SIGNAL:
            out.append((i, start, end, [f"wait for the data's signal · {took}"]))
        elif role == WAIT:
            out.append((i, start, end, [f"wait for data · {took}"]))
        elif role == POLL and pattern == BUSY_POLLING and i == main_poll:
            failed = sum(steps[j]["calls"] for j in polls)
            first, last = steps[polls[0]]["start"], steps[polls[-1]]["end"]
            out.append((i, start, end, [f"busy polling: {failed:,} failed calls · {duration(last - first)}"]))
        elif role == POLL and pattern != BUSY_POLLING:
            out.append((i, start, end, [f"{short_result(s['result'])}: nothing to read"]))
        elif role == COPY:
            out.append((i, start, end, [f"copy to user · {took}"]))
        elif role == ECHO:
            out.append((i, start, end, [f"send echo · {took}"]))
        elif role == NEXT_WAIT and i in clipped:
            out.append((i, start, None, ["waits for the next request:", f"continues, {took} in all"]))
        elif role == NEXT_WAIT:
            out.append((i, start, end, [f"waits for the next request · {took}"]))
    return out


def sequence_diagram(explanation: dict[str, Any]) -> str:
    """An inline `<svg class="sequence">` of one model's typical request, after Stevens' figures
    6.1-6.5: an application lane per thread, the kernel, the client; time downward on a
    compressed axis (each gap by its logarithm, gaps over 1 ms broken, their lengths written),
    an arrow per system call and its return, each call a bar in the kernel coloured by its role,
    its phases named beside it. `explanation` is one entry of run.json's `explanations` with
    status ok (step times in s since the epoch); returns '' when it has no typical request."""
    typ = explanation.get("typical") or {}
    steps = sorted((dict(s) for s in typ.get("steps") or []), key=lambda s: (s["start"], s["tid"]))
    if not steps or typ.get("sent") is None or typ.get("received") is None:
        return ""
    model = str(explanation.get("model", "?"))
    uid = _uid(model)
    pattern = str(typ.get("pattern") or explanation.get("pattern") or "")
    sent, received = float(typ["sent"]), float(typ["received"])

    # A call still in the kernel after everything else (the next request's wait) would stretch
    # the axis by the whole think time: it is cut at the diagram's end instead.
    core_end = max([received, *(s["end"] for s in steps if s["role"] != NEXT_WAIT)])
    clipped = {i for i, s in enumerate(steps) if s["end"] > core_end}

    tids = list(dict.fromkeys(s["tid"] for s in steps))
    lane_names = lane_labels(explanation)
    lane_x: dict[int, float] = {}
    x = RULER_X + 34
    for tid in tids:
        mine = [s for s in steps if s["tid"] == tid]
        widest = max(text_width(t) for s in mine for t in (s["label"], short_result(s["result"])))
        lane_x[tid] = x
        x += max(widest + 26, text_width(lane_names[tid], 12, bold=True) + 18, 96)
    kernel_left = x
    track_x = {tid: kernel_left + TRACK_GAP + i * (BAR_W + TRACK_GAP) for i, tid in enumerate(tids)}
    kernel_right = kernel_left + TRACK_GAP + len(tids) * (BAR_W + TRACK_GAP)
    notes = _annotations(steps, pattern, sent, clipped)
    ann_x = kernel_right + 22
    ann_w = max([text_width(line) for *_, lines in notes for line in lines] + [120])
    client_x = ann_x + ann_w + 22
    rt = received - sent
    untraced = explanation.get("untraced_round_trip_us")
    sent_label = "request sent (t = 0)"
    got_label = [f"echo read: round trip {duration(rt)} (traced)"]
    if untraced is not None:
        got_label.append(f"identical exchange untraced: {duration(untraced / 1e6)}")
    client_w = max([text_width(sent_label, bold=True), *(text_width(t) for t in got_label)])
    width = client_x + 10 + client_w + 10

    caption = _wrap(
        "Time runs downward on a compressed axis: each gap is drawn by its logarithm, and gaps over 1 ms are "
        "broken (≈) with their real length written. All durations were measured under strace.",
        width - 20,
        11,
    )
    head_y = 18 + len(caption) * LINE_H + 16
    top = head_y + 26
    times = [sent, received, *(s["start"] for s in steps), *(s["end"] for s in steps if s["end"] <= core_end)]
    axis = _TimeAxis(times, top)
    y_end = axis.bottom + TAIL

    def y_of(t: float) -> float:
        return y_end if t > core_end else axis(t)

    breaks = axis.breaks()
    y_sent, y_got = axis(sent), axis(received)
    roles = (WAIT, WAIT_AND_COPY, POLL, COPY, ECHO, NEXT_WAIT, OTHER)
    legend, legend_h = _legend(
        [r for r in roles if any(s["role"] == r for s in steps)], uid, width - 20, any(s.get("blocked") for s in steps)
    )
    height = y_end + 28 + legend_h

    title = f"{model}: one request's path through the server ({pattern}), from a real strace"
    out = [
        f'<svg class="sequence" data-model="{_a(model)}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'font-family="{_a(FONT)}" fill="{INK}">',
        f"<title>{escape(title)}</title>",
        _defs(uid),
        "".join(
            _text(10, 16 + i * LINE_H, line, size=11, fill=MUTED, css_class="caption") for i, line in enumerate(caption)
        ),
    ]

    for tid in tids:
        out.append(_text(lane_x[tid] - 4, head_y, lane_names[tid], size=12, font_weight="600"))
        out.append(_vline(lane_x[tid], head_y + 8, y_end, "#bbb"))
    out.append(
        f'<rect x="{kernel_left:.1f}" y="{head_y + 8:.1f}" width="{kernel_right - kernel_left:.1f}" '
        f'height="{y_end - head_y - 8:.1f}" fill="#f2f2f2" stroke="#ddd"/>'
    )
    out.append(_text((kernel_left + kernel_right) / 2, head_y, "kernel", "middle", 12, font_weight="600"))
    out.append(_text(client_x - 4, head_y, "client", size=12, font_weight="600"))
    out.append(_vline(client_x, head_y + 8, y_end, "#bbb"))
    out.append(_text(ann_x, head_y, "phases", size=12, font_weight="600", fill=MUTED))

    arrow_ys = {tid: [] for tid in tids}  # where other threads' arrows cross each lane
    for s in steps:
        for tid in tids:
            if lane_x[tid] > lane_x[s["tid"]]:
                arrow_ys[tid] += [y_of(s["start"]), y_of(s["end"])]
    for s in steps:
        if not s.get("blocked"):
            continue
        x0, y0, y1 = lane_x[s["tid"]], y_of(s["start"]), y_of(s["end"])
        out.append(
            f'<rect class="blocked" x="{x0 - 5:.1f}" y="{y0:.1f}" width="10" height="{max(y1 - y0, MIN_BAR):.1f}" '
            f'fill="url(#blocked-{uid})" stroke="#888" stroke-dasharray="3 2"/>'
        )
        column = _Column([(y - 4, y + 4) for y in arrow_ys[s["tid"]]] + [(b - 9, b + 9) for b, _ in breaks])
        yc = column.place((y0 + y1) / 2, LINE_H, limit=max((y1 - y0) / 2 - 8, 0))
        if y0 + 6 <= yc <= y1 - 6:
            out.append(_text(x0 + 9, yc + 4, "blocked", size=10, fill=MUTED, font_style="italic"))

    for i, s in enumerate(steps):
        bx = track_x[s["tid"]]
        y0 = y_of(s["start"])
        y1 = max(y_of(s["end"]), y0 + MIN_BAR)
        span = f"{relative(s['start'] - sent)} to {relative(s['end'] - sent)}"
        tip = f"{s['label']}: {span} ({duration(s['end'] - s['start'])}), {s['role']}"
        if s["role"] == WAIT_AND_COPY and s["start"] < sent < s["end"]:
            out.append(_bar(bx, y0, y_sent, COLOURS[WAIT_AND_COPY], tip, s["role"]))
            out.append(_bar(bx, y_sent, y1, COLOURS[COPY], tip, s["role"]))
            out.append(f'<line x1="{bx:.1f}" x2="{bx + BAR_W:.1f}" y1="{y_sent:.1f}" y2="{y_sent:.1f}" stroke="#fff"/>')
        else:
            out.append(_bar(bx, y0, y1, _fill(s["role"], uid), tip, s["role"]))
        if i in clipped:
            # Cut, not ended: the bar fades out past the diagram's end.
            out.append(
                f'<path d="M{bx:.1f},{y1:.1f} l{BAR_W / 3:.1f},-5 l{BAR_W / 3:.1f},5 l{BAR_W / 3:.1f},-5" '
                f'fill="none" stroke="#fff" stroke-width="2"/>'
                + _text(bx + BAR_W / 2, y1 + 12, "continues ↓", "middle", 9.5, fill=MUTED)
            )

    lanes = {tid: _Column() for tid in tids}
    for i, s in enumerate(steps):
        lx, bx = lane_x[s["tid"]], track_x[s["tid"]]
        y0, y1 = y_of(s["start"]), y_of(s["end"])
        out.append(_arrow(lx, bx, y0, uid))
        out.append(_arrow_label(lanes[s["tid"]], lx, y0, s["label"]))
        if s["calls"] > 1 and y1 - y0 > 30:
            out.append(_zigzag(lx, bx, y0 + 5, y1 - 16, s["calls"]))
        if i not in clipped:
            out.append(_arrow(bx, lx, y1, uid))
            out.append(_arrow_label(lanes[s["tid"]], lx, y1, short_result(s["result"])))

    obstacles = [(y_sent - 4, y_sent + 4), (y_got - 4, y_got + 4)] + [(b - 9, b + 9) for b, _ in breaks]
    column = _Column(obstacles)
    ordered = sorted(notes, key=lambda n: (0 if steps[n[0]]["role"] in (WAIT, WAIT_AND_COPY, POLL) else 1, n[1]))
    for i, t0, t1, lines in ordered:
        y0 = y_of(t0)
        y1 = y_end if t1 is None else max(y_of(t1), y0 + MIN_BAR)
        want = (y0 + y1) / 2
        # A few px more than the text, so that two phases' labels never read as one.
        yc = column.place(want, len(lines) * LINE_H + 4)
        bar_right = track_x[steps[i]["tid"]] + BAR_W
        out.append(
            f'<path d="M{bar_right + 1:.1f},{want:.1f} L{ann_x - 10:.1f},{want:.1f} L{ann_x - 3:.1f},{yc:.1f}" '
            f'fill="none" stroke="#999" stroke-width="0.8" stroke-dasharray="2 2"/>'
        )
        out.append(_lines(ann_x, yc, lines, css_class="phase"))

    out.append(_arrow(client_x, kernel_right, y_sent, uid, colour="#1a1a80", width=1.6))
    out.append(_text(client_x + 8, y_sent + 4, sent_label, fill="#1a1a80", font_weight="600"))
    out.append(_arrow(kernel_right, client_x, y_got, uid, colour="#1a1a80", width=1.6))
    out.append(_lines(client_x + 8, y_got + (len(got_label) - 1) * LINE_H / 2, got_label, fill="#1a1a80"))

    out.append(_vline(RULER_X, top - 6, y_end, "#888"))
    marks = [(sent, True)]
    for s in steps:
        if s["role"] in (WAIT, WAIT_AND_COPY, POLL, COPY, ECHO, NEXT_WAIT):
            marks.append((s["start"], False))
        if s["role"] in (WAIT, WAIT_AND_COPY) and s["end"] <= core_end:
            marks.append((s["end"], False))
    marks.append((received, False))
    ruler = _Column([(b - 9, b + 9) for b, _ in breaks])
    written: set[str] = set()
    for t, bold in marks:
        y, label = axis(t), relative(t - sent)
        # Two marks that round to the same label ("−20.2 ms" twice) would read as a mistake.
        if label in written or not ruler.free(y - 6, y + 6):
            continue
        ruler.taken.append((y - 6, y + 6))
        written.add(label)
        out.append(f'<line x1="{RULER_X - 4:.1f}" x2="{RULER_X + 4:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#555"/>')
        out.append(
            _text(RULER_X - 8, y + 4, label, "end", 10.5, font_weight="700" if bold else "400", css_class="tick")
        )
    out.append(
        f'<line x1="{RULER_X + 6:.1f}" x2="{client_x:.1f}" y1="{y_sent:.1f}" y2="{y_sent:.1f}" '
        f'stroke="#1a1a80" stroke-width="0.6" stroke-dasharray="4 3" opacity="0.6"/>'
    )

    for yb, dt in breaks:
        out.append(_tear(RULER_X - 6, client_x + 6, yb))
        out.append(
            _text(
                RULER_X - 8,
                yb + 4,
                f"≈ {duration(dt)}",
                "end",
                10.5,
                fill="#8a5a00",
                font_style="italic",
                css_class="break",
            )
        )

    out.append(f'<g transform="translate(10,{y_end + 22:.1f})">{legend}</g>')
    out.append("</svg>")
    return "".join(out)


def _vline(x: float, y0: float, y1: float, colour: str) -> str:
    return f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0:.1f}" y2="{y1:.1f}" stroke="{colour}"/>'


def _bar(x: float, y0: float, y1: float, fill: str, tip: str, role: str) -> str:
    return (
        f'<rect class="bar" data-role="{_a(role)}" x="{x:.1f}" y="{y0:.1f}" width="{BAR_W:g}" '
        f'height="{max(y1 - y0, MIN_BAR):.1f}" fill="{fill}" stroke="#555" stroke-width="0.6">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _arrow(x0: float, x1: float, y: float, uid: str, colour: str = INK, width: float = 1.0) -> str:
    return (
        f'<line class="call" x1="{x0:.1f}" x2="{x1:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" '
        f'stroke-width="{width:g}" marker-end="url(#arrow-{uid})"/>'
    )


def _arrow_label(lane: _Column, x: float, y: float, text: str) -> str:
    """A label just above its arrow near the lane; below it when a label is already there."""
    if lane.free(y - LINE_H, y - 1):
        lane.taken.append((y - LINE_H, y - 1))
        return _text(x + 9, y - 3, text, css_class="arrow-label")
    lane.taken.append((y + 1, y + LINE_H))
    return _text(x + 9, y + 11, text, css_class="arrow-label")


def _zigzag(x0: float, x1: float, y0: float, y1: float, calls: int) -> str:
    """Many calls and returns in a row, drawn as a back-and-forth line between lane and kernel."""
    teeth = max(2, min(calls, int((y1 - y0) / 7)))
    step = (y1 - y0) / teeth
    pts = [f"{x0 + 2:.1f},{y0:.1f}"]
    for k in range(teeth):
        pts.append(f"{x1 - 2:.1f},{y0 + (k + 0.5) * step:.1f}")
        pts.append(f"{x0 + 2:.1f},{y0 + (k + 1) * step:.1f}")
    return (
        f'<polyline class="poll-run" points="{" ".join(pts)}" fill="none" stroke="{COLOURS[POLL]}" '
        f'stroke-width="0.8" opacity="0.7"/>'
    )


def _tear(x0: float, x1: float, y: float) -> str:
    """An axis break across the figure: a white band between two zigzags."""
    n = max(int((x1 - x0) / 8), 1)
    step = (x1 - x0) / n
    up = [f"{x0 + k * step:.1f},{y - 3 - (2 if k % 2 else 0):.1f}" for k in range(n + 1)]
    down = [f"{x0 + k * step:.1f},{y + 3 - (2 if k % 2 else 0):.1f}" for k in range(n, -1, -1)]
    return (
        f'<polygon class="axis-break" points="{" ".join(up + down)}" fill="#fff" stroke="none"/>'
        f'<polyline points="{" ".join(up)}" fill="none" stroke="#999" stroke-width="0.8"/>'
        f'<polyline points="{" ".join(reversed(down))}" fill="none" stroke="#999" stroke-width="0.8"/>'
    )


def _legend(roles: list[str], uid: str, width: float, blocked: bool) -> tuple[str, float]:
    """Swatches for `roles` in rows of at most `width` px; (svg, height in px)."""
    items = [(r, f'fill="{_fill(r, uid)}"', LEGEND_TEXT[r]) for r in roles]
    if blocked:
        items.append(("", f'fill="url(#blocked-{uid})" stroke-dasharray="3 2"', "app blocked in a call"))
    parts, x, y = [], 0.0, 0.0
    for role, fill, label in items:
        w = 18 + text_width(label, 10.5) + 16
        if x and x + w > width:
            x, y = 0.0, y + 16
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="12" height="11" {fill} stroke="#555" stroke-width="0.6"/>')
        if role == WAIT_AND_COPY:
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 5.5:.1f}" width="12" height="5.5" fill="{COLOURS[COPY]}" '
                'stroke="#555" stroke-width="0.6"/>'
            )
        parts.append(_text(x + 17, y + 9.5, label, size=10.5))
        x += w
    return "".join(parts), y + 16


# ---------------------------------------------------------------- the comparison (Stevens figure 6.6)


def _symlog(t: float) -> float:
    """Decades of the shared axis at t s from the send: sign(t) * log10(1 + |t| / 10 µs)."""
    return math.copysign(math.log10(1 + abs(t) / AXIS_UNIT_S), t)


def _columns_of(explanations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in explanations if e.get("status") == STATUS_OK and (e.get("typical") or {}).get("steps")]


def _phases(e: dict[str, Any]) -> dict[str, Any]:
    """What the comparison draws of one model's typical request, times in s from the send."""
    typ = e["typical"]
    sent = float(typ["sent"])
    pattern = str(typ.get("pattern") or e.get("pattern") or "")
    steps = typ["steps"]
    out: dict[str, Any] = {"pattern": pattern, "bars": [], "received": float(typ["received"]) - sent}
    polls = [s for s in steps if s["role"] == POLL]
    if pattern == BUSY_POLLING and polls:
        start, end = polls[0]["start"] - sent, polls[-1]["end"] - sent
        calls = sum(s["calls"] for s in polls)
        out["bars"].append((POLL, start, end))
        out["label"] = (f"polling: {calls:,} calls · {duration(end - start)}", start, end)
    for s in steps:
        start, end = s["start"] - sent, s["end"] - sent
        if s["role"] in (WAIT, WAIT_AND_COPY):
            out["bars"].append((s["role"], start, end))
            out.setdefault("label", (f"{s['label']} · {duration(end - start)}", start, end))
        elif s["role"] in (COPY, ECHO):
            out["bars"].append((s["role"], start, end))
    return out


def comparison_figure(explanations: list[dict[str, Any]]) -> str:
    """Stevens' figure 6.6 from the traces: an inline `<svg class="comparison">` with a column
    per model with status ok (in the given order, under a header per category), on one shared
    symmetric-log time axis (t = 0 at the client's send; ticks at ±10 µs, ±100 µs, ±1 ms, ±10 ms)
    showing the typical request's wait (or polling), copy and echo, and a tick where the client
    had read the echo; '' when no model is ok."""
    cols = _columns_of(explanations)
    if not cols:
        return ""
    uid = "comparison"
    phases = [_phases(e) for e in cols]
    times = [t for p in phases for _, a, b in p["bars"] for t in (a, b)] + [p["received"] for p in phases]
    lo = min(_symlog(min(times)), _symlog(-1e-3)) - 0.2
    hi = max(_symlog(max(times)), _symlog(1e-3)) + 0.25

    col_w = max(COL_W_MIN, min(COL_W, (MAX_WIDTH - AXIS_W - 12) / len(cols)))
    groups = _groups(cols)
    head_lines = max(len(_wrap(cat, (j - i) * col_w - 10, 11, bold=True)) for cat, i, j in groups)
    plot_top = 18 + head_lines * LINE_H + 28.0
    y0 = plot_top - lo * PX_PER_DECADE

    def y(t: float) -> float:
        return y0 + _symlog(t) * PX_PER_DECADE

    plot_bottom = y0 + hi * PX_PER_DECADE
    left = AXIS_W
    right = left + len(cols) * col_w
    width = right + 12
    pattern_lines = max(len(_wrap(p["pattern"], col_w - 6, 10)) for p in phases)
    legend_top = plot_bottom + 14 + pattern_lines * 12 + 10
    legend_roles = [
        r for r in (WAIT, WAIT_AND_COPY, POLL, COPY, ECHO) if any(b[0] == r for p in phases for b in p["bars"])
    ]
    legend, legend_h = _legend(legend_roles, uid, width - 20, False)
    height = legend_top + legend_h + 22

    out = [
        f'<svg class="comparison" xmlns="http://www.w3.org/2000/svg" role="img" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" font-family="{_a(FONT)}" fill="{INK}">',
        "<title>Each model's typical request on one time axis (after Stevens, UNP figure 6.6)</title>",
        _defs(uid),
    ]
    ticks = [s * 10.0**k for k in (-5, -4, -3, -2, -1) for s in (-1, 1) if lo <= _symlog(s * 10.0**k) <= hi]
    for t in sorted(ticks):
        yt = y(t)
        out.append(f'<line x1="{left - 5:.1f}" x2="{right:.1f}" y1="{yt:.1f}" y2="{yt:.1f}" stroke="#e4e4e4"/>')
        out.append(_text(left - 8, yt + 4, _tick(t), "end", 10.5, css_class="tick"))
    out.append(
        f'<line x1="{left - 5:.1f}" x2="{right:.1f}" y1="{y0:.1f}" y2="{y0:.1f}" stroke="#1a1a80" stroke-width="1.4"/>'
    )
    out.append(_text(left - 8, y0 + 4, "0: request sent", "end", 10.5, font_weight="700", fill="#1a1a80"))
    out.append(_vline(left - 5, plot_top, plot_bottom, "#888"))
    mid = (plot_top + plot_bottom) / 2
    out.append(
        f'<text transform="translate(14,{mid:.1f}) rotate(-90)" text-anchor="middle" font-size="10.5" fill="{MUTED}">'
        "time from the client's send, symmetric log scale; time runs downward</text>"
    )

    for cat, i, j in groups:
        x0, x1 = left + i * col_w + 3, left + j * col_w - 3
        for k, line in enumerate(_wrap(cat, x1 - x0 - 4, 11, bold=True)):
            # A single word wider than its columns ("asynchronous") is set smaller rather than cut.
            size = round(max(8.5, min(11.0, 11.0 * (x1 - x0 + 2) / max(text_width(line, 11, bold=True), 1))), 1)
            out.append(
                _text((x0 + x1) / 2, 16 + k * LINE_H, line, "middle", size, font_weight="600", css_class="category")
            )
        yb = 16 + (head_lines - 1) * LINE_H + 5
        out.append(f'<path d="M{x0:.1f},{yb + 4:.1f} V{yb:.1f} H{x1:.1f} V{yb + 4:.1f}" fill="none" stroke="#888"/>')

    for k, (e, p) in enumerate(zip(cols, phases, strict=True)):
        cx = left + k * col_w + col_w / 2
        bx = cx - 16
        model = str(e.get("model", "?"))
        g = [f'<g class="column" data-model="{_a(model)}">']
        if k % 2:
            g.append(
                f'<rect x="{cx - col_w / 2:.1f}" y="{plot_top:.1f}" width="{col_w:.1f}" '
                f'height="{plot_bottom - plot_top:.1f}" fill="#000" opacity="0.025"/>'
            )
        g.append(_text(cx, plot_top - 10, model, "middle", 11.5, font_weight="700"))
        for role, a, b in p["bars"]:
            ya, yb = y(a), max(y(b), y(a) + MIN_BAR)
            tip = f"{model}: {LEGEND_TEXT[role]} from {relative(a)} to {relative(b)} ({duration(b - a)})"
            if role == WAIT_AND_COPY and a < 0 < b:
                g.append(_bar(bx, ya, y0, COLOURS[WAIT_AND_COPY], tip, role))
                g.append(_bar(bx, y0, yb, COLOURS[COPY], tip, role))
            else:
                g.append(_bar(bx, ya, yb, _fill(role, uid), tip, role))
        if "label" in p:
            text, a, b = p["label"]
            ym = (y(a) + min(y(b), y0)) / 2
            g.append(
                f'<text transform="translate({bx + BAR_W + 11:.1f},{ym:.1f}) rotate(-90)" text-anchor="middle" '
                f'font-size="10">{escape(text)}</text>'
            )
        yr = y(p["received"])
        g.append(
            f'<line class="round-trip" x1="{bx - 5:.1f}" x2="{bx + BAR_W + 5:.1f}" y1="{yr:.1f}" y2="{yr:.1f}" '
            f'stroke="{INK}" stroke-width="2.2"><title>{escape(model)}: echo read by the client '
            f"{relative(p['received'])} after the send (round trip, traced)</title></line>"
        )
        g.append(_text(cx, yr + 13, duration(p["received"]), "middle", 10, fill=INK))
        for n, line in enumerate(_wrap(p["pattern"], col_w - 6, 10)):
            g.append(_text(cx, plot_bottom + 14 + n * 12, line, "middle", 10, fill=MUTED, font_style="italic"))
        g.append("</g>")
        out.append("".join(g))

    tick = (
        f'<line x1="0" x2="16" y1="{legend_top + legend_h + 8:.1f}" y2="{legend_top + legend_h + 8:.1f}" '
        f'stroke="{INK}" stroke-width="2.2" transform="translate(10,0)"/>'
        + _text(
            32,
            legend_top + legend_h + 12,
            "the client has read the echo (traced round trip, written below it); pattern of each model in italics",
            size=10.5,
        )
    )
    out.append(f'<g transform="translate(10,{legend_top:.1f})">{legend}</g>{tick}')
    out.append("</svg>")
    return "".join(out)


def _groups(cols: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(category, first column, one past the last) of each run of columns of one category."""
    out: list[tuple[str, int, int]] = []
    for k, e in enumerate(cols):
        cat = str(e.get("category", ""))
        if out and out[-1][0] == cat and out[-1][2] == k:
            out[-1] = (cat, out[-1][1], k + 1)
        else:
            out.append((cat, k, k + 1))
    return out


def _tick(t: float) -> str:
    """A tick of the shared axis (s): '−10 ms', '−100 µs', '+1 ms'."""
    us = abs(t) * 1e6
    size = f"{us / 1e3:g} ms" if us >= 1e3 else f"{us:g} µs"
    return ("−" if t < 0 else "+") + size


# ---------------------------------------------------------------- the table beneath the comparison

SUMMARY_COLUMNS = [
    ("model", "model"),
    ("category", "category"),
    ("pattern", "pattern"),
    ("calls", "calls / request (failed)"),
    ("blocked_in", "blocked in (at the send)"),
    ("waited_in", "waited in"),
    ("wait_ms", "wait (ms)"),
    ("copy_us", "copy (µs)"),
    ("learned_us", "learned after send (µs)"),
    ("round_trip_us", "round trip traced (µs)"),
    ("untraced_us", "untraced (µs)"),
    ("status", "status / reason"),
]


def summary_rows(explanations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model (ok or not) of the table beneath the comparison, as display strings
    keyed as in SUMMARY_COLUMNS: medians over the analysed requests of calls per request (and
    how many failed), wait (ms), copy, time from the send to the process learning of the data
    and round trip (µs), the untraced round trip (µs); the calls in the kernel when the client
    sent and the call waited in come from the typical request. `status` is 'ok', 'failed' or
    'skipped', `reason` why (or a note)."""
    rows = []
    for e in explanations:
        m = e.get("medians") or {}
        typ = e.get("typical") or {}
        ok = e.get("status") == STATUS_OK and bool(typ)
        pattern = str(e.get("pattern") or "") if ok else ""
        row = {
            "model": str(e.get("model", "?")),
            "category": str(e.get("category", "")),
            "pattern": pattern or "—",
            "calls": "—",
            "blocked_in": "—",
            "waited_in": "—",
            "wait_ms": "—",
            "copy_us": "—",
            "learned_us": "—",
            "round_trip_us": "—",
            "untraced_us": _us(e.get("untraced_round_trip_us")),
            "status": str(e.get("status") or "?"),
            "reason": str(e.get("reason") or ""),
        }
        if ok:
            if m.get("calls") is not None:
                failed = m.get("failed_calls")
                row["calls"] = f"{m['calls']:,g}" + (f" ({failed:,g} failed)" if failed is not None else "")
            row["blocked_in"] = _blocked_in(typ)
            wait_call = typ.get("wait_call")
            row["waited_in"] = "nowhere: polled (EAGAIN)" if pattern == BUSY_POLLING else str(wait_call or "—")
            row["wait_ms"] = "—" if m.get("wait_us") is None else f"{m['wait_us'] / 1e3:,.2f}"
            if m.get("copy_us") is not None:
                row["copy_us"] = _us(m["copy_us"])
            elif pattern == BLOCKING:
                row["copy_us"] = "inside the wait"
            elif pattern == COMPLETION:
                row["copy_us"] = "by the kernel"
            row["learned_us"] = _us(m.get("learned_after_send_us"))
            row["round_trip_us"] = _us(m.get("round_trip_us"))
        rows.append(row)
    return rows


def _blocked_in(typ: dict[str, Any]) -> str:
    """The calls the process slept in across the send (bench.tracing.io_phases leaves out calls that
    failed with EAGAIN: they never blocked), or 'never blocked'."""
    return ", ".join(typ.get("blocked_in") or []) or "never blocked"
