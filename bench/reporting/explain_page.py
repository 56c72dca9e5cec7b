"""`explain.html` of a `bench explain` run: the comparison of the models' request paths (Stevens'
figure 6.6, from real traces), its table, and per model the sequence diagram of one request with
a reading of it in words, every analysed request, and the raw trace.

Every sentence here is computed from run.json: it says what the trace shows (which call was in
the kernel when the client sent, when it returned, which call copied), nothing a model is
supposed to do.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from bench.reporting.explain_svg import (
    SUMMARY_COLUMNS,
    comparison_figure,
    duration,
    lane_labels,
    relative,
    sequence_diagram,
    summary_rows,
)
from bench.reporting.index_page import write_index
from bench.reporting.pages import environment
from bench.storing.columns import STATUS_OK
from bench.storing.results_store import EXPLAIN_FILE, RUN_FILE, effective_status, write_text_atomic
from bench.tracing.io_phases import (
    BLOCKING,
    BUSY_POLLING,
    COMPLETION,
    COPY,
    ECHO,
    OTHER,
    POLL,
    READINESS,
    SIGNAL,
    WAIT,
    WAIT_AND_COPY,
)
from bench.wording import and_list, plural

STATUS_COMPLETE = "complete"
# The figure of Stevens' UNP (3rd ed., §6.2) each pattern of bench.tracing.io_phases corresponds to.
STEVENS_FIGURE = {BLOCKING: "6.1", BUSY_POLLING: "6.2", READINESS: "6.3", SIGNAL: "6.4", COMPLETION: "6.5"}

REQUEST_COLUMNS = [
    ("index", "request"),
    ("pattern", "pattern"),
    ("calls", "calls"),
    ("failed_calls", "failed"),
    ("blocked_in", "in the kernel at the send"),
    ("wait_call", "waited in"),
    ("wait_us", "wait (µs)"),
    ("copy_us", "copy (µs)"),
    ("learned_after_send_us", "learned after send (µs)"),
    ("round_trip_us", "round trip (µs)"),
    ("calls_by_name", "calls by name"),
]


def _bytes(result: str) -> str:
    """'the 64 bytes' for a read's result '64'; 'the data' when it is not a byte count."""
    try:
        return f"the {int(str(result).split()[0]):,} bytes"
    except (ValueError, IndexError):
        return "the data"


def _result(result: str) -> str:
    """A call's result for a sentence: its first words, without strace's long decodings."""
    text = str(result).strip()
    return text if len(text) <= 16 else text.split()[0]


def reading(explanation: dict[str, Any]) -> list[str]:
    """Sentences reading one model's sequence diagram, computed from its typical request: what
    the server was in when the client sent, when and how it learned of the data, which call
    copied it, when the echo left, and the round trip traced and untraced."""
    typ = explanation.get("typical") or {}
    steps = typ.get("steps") or []
    if not steps:
        return []
    sent, received = float(typ["sent"]), float(typ["received"])
    pattern = str(typ.get("pattern") or explanation.get("pattern") or "")
    lanes = lane_labels(explanation)
    by_role: dict[str, list[dict[str, Any]]] = {}
    for s in steps:
        by_role.setdefault(s["role"], []).append(s)
    wait = (by_role.get(WAIT_AND_COPY) or by_role.get(WAIT) or [None])[0]
    copy = (by_role.get(COPY) or [None])[0]
    echo = (by_role.get(ECHO) or [None])[0]
    polls = by_role.get(POLL) or []
    out: list[str] = []

    if pattern == BUSY_POLLING and polls:
        failed = sum(s["calls"] for s in polls)
        names = sum((Counter(s.get("names") or {}) for s in polls), Counter())
        spread = and_list([f"{n} ×{k:,}" for n, k in names.items()])
        first = (
            f"The process never blocked: from {relative(polls[0]['start'] - sent)} to "
            f"{relative(polls[-1]['end'] - sent)} it made {plural(failed, 'call')} that failed at once with EAGAIN "
            f"({spread})"
        )
        if copy is not None:
            first += (
                f"; then {copy['label']} returned {_bytes(copy['result'])} "
                f"{duration(copy['end'] - sent)} after the send, in {duration(copy['end'] - copy['start'])}"
            )
        out.append(first + ".")
    elif wait is not None:
        before, after = sent - wait["start"], wait["end"] - sent
        if before > 0:
            opening = f"{wait['label']} was already blocked {duration(before)} when the request was sent"
        else:
            opening = f"{wait['label']} was entered {duration(-before)} after the request was sent"
        if wait["role"] == WAIT_AND_COPY:
            out.append(
                f"{opening}; it returned {duration(after)} later with {_bytes(wait['result'])}: "
                "one call waited and copied."
            )
        else:
            line = f"{opening} and returned {duration(after)} later with result {_result(wait['result'])}"
            if copy is not None:
                line += (
                    f"; {copy['label']} then copied {_bytes(copy['result'])} to user space in "
                    f"{duration(copy['end'] - copy['start'])}, {duration(copy['end'] - sent)} after the send"
                )
            elif pattern == COMPLETION:
                line += "; no read call follows: the data had been copied by the kernel before it posted the completion"
            out.append(line + ".")
    for s in steps:
        if s.get("blocked") and s is not wait:
            out.append(f"{lanes[s['tid']].capitalize()} was blocked in {s['label']} at the send too.")
    others = [s for s in steps if s["role"] == OTHER and not s.get("blocked")]
    if others:
        counts = Counter()
        for s in others:
            counts[s["label"]] += s["calls"]
        out.append(
            f"Besides, the request took {plural(sum(counts.values()), 'other call')} "
            f"({and_list([f'{n} ×{k}' if k > 1 else n for n, k in counts.items()])})."
        )
    if echo is not None:
        who = ""
        if wait is not None and echo["tid"] != wait["tid"]:
            who = f", from {lanes[echo['tid']]}, not the thread that read"
        untraced = explanation.get("untraced_round_trip_us")
        tail = f"; {duration(untraced / 1e6)} untraced" if untraced is not None else ""
        # With a completion queue the call only submits the send; the kernel may finish it later.
        verb = "was submitted in" if pattern == COMPLETION else "left in"
        out.append(
            f"The echo {verb} {echo['label']} {duration(echo['start'] - sent)} after the send{who}; the client "
            f"had read it {duration(received - sent)} after sending (traced{tail})."
        )
    return out


def _request_rows(explanation: dict[str, Any]) -> list[dict[str, Any]]:
    typical_index = (explanation.get("typical") or {}).get("index")
    rows = []
    for r in explanation.get("requests") or []:
        cells = []
        for key, _ in REQUEST_COLUMNS:
            value = r.get(key)
            if key == "blocked_in":
                value = ", ".join(value or []) or "—"
            elif key == "calls_by_name":
                value = ", ".join(f"{n} ×{k}" for n, k in (value or {}).items()) or "—"
            elif isinstance(value, float):
                value = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
            elif value is None:
                value = "—"
            cells.append(str(value))
        rows.append({"cells": cells, "typical": r.get("index") == typical_index})
    return rows


def _model_view(explanation: dict[str, Any], run_path: Path) -> dict[str, Any]:
    ok = explanation.get("status") == STATUS_OK and bool(explanation.get("typical"))
    trace = str(explanation.get("trace_file") or "")
    return {
        "name": str(explanation.get("model", "?")),
        "category": str(explanation.get("category", "")),
        "mechanism": str(explanation.get("mechanism", "")),
        "status": str(explanation.get("status") or "?"),
        "reason": str(explanation.get("reason") or ""),
        "pattern": str(explanation.get("pattern") or ""),
        "figure": STEVENS_FIGURE.get(str(explanation.get("pattern") or "")),
        "ok": ok,
        "svg": sequence_diagram(explanation) if ok else "",
        "reading": reading(explanation) if ok else [],
        "typical_index": (explanation.get("typical") or {}).get("index"),
        "requests": _request_rows(explanation),
        "trace": trace,
        "trace_kept": bool(trace) and (run_path / trace).is_file(),
        "processes": explanation.get("traced_processes"),
        "threads": explanation.get("traced_threads"),
    }


def _tracing_cost(explanations: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How much slower the traced exchange was: the range of traced / untraced round trips
    (medians of each) over the ok models, and the model nearest the middle as an example."""
    pairs = [
        (e["model"], (e.get("medians") or {}).get("round_trip_us"), e.get("untraced_round_trip_us"))
        for e in explanations
        if e.get("status") == STATUS_OK
    ]
    pairs = [(m, t, u) for m, t, u in pairs if t and u]
    if not pairs:
        return None
    ratios = sorted((t / u, m, t, u) for m, t, u in pairs)
    _, model, traced, untraced = ratios[(len(ratios) - 1) // 2]
    return {
        "low": ratios[0][0],
        "high": ratios[-1][0],
        "model": model,
        "traced": duration(traced / 1e6),
        "untraced": duration(untraced / 1e6),
    }


def render_explain(run_path: Path) -> Path:
    """Write explain.html into the explain run directory `run_path` from its run.json (atomically),
    refresh the results index beside it, and return the page's path."""
    run_path = Path(run_path)
    meta = json.loads((run_path / RUN_FILE).read_text())
    explanations = [e for e in meta.get("explanations") or [] if isinstance(e, dict)]
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    host = meta.get("host") if isinstance(meta.get("host"), dict) else {}
    explained = {e.get("model") for e in explanations}
    status = effective_status(meta, run_path) or "?"
    env = environment()
    html = env.get_template("explain.html.j2").render(
        meta=meta,
        status=status,
        complete=status == STATUS_COMPLETE,
        config=config,
        pinning=config.get("pinning") if isinstance(config.get("pinning"), dict) else {},
        think_ms=(config.get("think_s") or 0) * 1e3,
        host=host,
        strace=meta.get("strace") if isinstance(meta.get("strace"), dict) else {},
        cost=_tracing_cost(explanations),
        comparison=comparison_figure(explanations),
        columns=SUMMARY_COLUMNS,
        rows=summary_rows(explanations),
        models=[_model_view(e, run_path) for e in explanations],
        not_reached=[m for m in config.get("models") or [] if m not in explained],
        request_columns=[title for _, title in REQUEST_COLUMNS],
    )
    path = run_path / EXPLAIN_FILE
    write_text_atomic(path, html)
    write_index(run_path.parent)
    return path
