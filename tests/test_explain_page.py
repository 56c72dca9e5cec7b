"""explain.html and its figures (bench.reporting.explain_svg, .explain_page) from a real `bench explain` run.

The fixture is the run.json of a real run on a 2-CPU VM (13 models, 6 requests each, 20 ms think time) with the raw
traces of two models, epoll and threads; the other models' trace links point at files not kept. Every expected number
is read from that run.json, not typed in, so the tests hold for any real run put in its place.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from bench.reporting.explain_page import reading, render_explain
from bench.reporting.explain_svg import (
    BREAK_S,
    MAX_WIDTH,
    comparison_figure,
    duration,
    relative,
    sequence_diagram,
    short_result,
    summary_rows,
    text_width,
)
from bench.tracing.io_phases import COPY, NEXT_WAIT, POLL, WAIT, WAIT_AND_COPY

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "explain_run"
SVG = "{http://www.w3.org/2000/svg}"
AMBER, BLUE = "#e8a317", "#1f6fc5"


@pytest.fixture
def meta() -> dict[str, Any]:
    return json.loads((FIXTURE / "run.json").read_text())


def _ok(meta: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in meta["explanations"] if e["status"] == "ok"]


def _by_model(meta: dict[str, Any], model: str) -> dict[str, Any]:
    return next(e for e in meta["explanations"] if e["model"] == model)


def _parse(svg: str) -> ET.Element:
    """The svg as XML: it must be well-formed to be inlined in HTML and read by any SVG viewer."""
    return ET.fromstring(svg)


def _texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def _bars(root: ET.Element) -> list[ET.Element]:
    return [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]


def _boxes(root: ET.Element, dx: float = 0.0, dy: float = 0.0) -> list[tuple[str, float, float, float, float]]:
    """Each unrotated label's estimated box (text, left, top, right, bottom) in px, through translated groups."""
    out = []
    for child in root:
        if child.tag == f"{SVG}g":
            move = re.fullmatch(r"translate\(([-\d.]+),([-\d.]+)\)", child.get("transform", "translate(0,0)"))
            out += _boxes(child, dx + float(move.group(1)), dy + float(move.group(2)))
            continue
        if child.tag != f"{SVG}text" or child.get("transform"):
            continue
        t = child
        text, size = "".join(t.itertext()), float(t.get("font-size", 11))
        bold = t.get("font-weight") in ("600", "700")
        w, x, y = text_width(text, size, bold), float(t.get("x")) + dx, float(t.get("y")) + dy
        left = {"start": x, "middle": x - w / 2, "end": x - w}[t.get("text-anchor", "start")]
        # Cap height above the baseline, descenders below: the ink, not the line box.
        out.append((text, left, y - 0.75 * size, left + w, y + 0.2 * size))
    return out


def test_fixture_is_the_real_run(meta):
    assert meta["kind"] == "explain"
    assert len(_ok(meta)) >= 10
    assert (FIXTURE / "explain" / "epoll.trace").is_file() and (FIXTURE / "explain" / "threads.trace").is_file()
    for model in ("epoll", "threads"):
        assert _by_model(meta, model)["trace_file"] == f"explain/{model}.trace"


def test_every_ok_model_gets_a_sequence_diagram(meta):
    for e in _ok(meta):
        typ = e["typical"]
        svg = sequence_diagram(e)
        root = _parse(svg)
        assert root.get("class") == "sequence" and root.get("data-model") == e["model"], e["model"]
        assert root.get("role") == "img" and root.find(f"{SVG}title") is not None
        width, height = float(root.get("width")), float(root.get("height"))
        assert 300 < width <= MAX_WIDTH and height > 200, (e["model"], width, height)
        assert root.get("viewBox") == f"0 0 {width:.0f} {height:.0f}"
        # One bar per step; a blocking read split at the send is two.
        split = sum(1 for s in typ["steps"] if s["role"] == WAIT_AND_COPY and s["start"] < typ["sent"] < s["end"])
        assert len(_bars(root)) == len(typ["steps"]) + split, e["model"]
        texts = _texts(root)
        assert "request sent (t = 0)" in texts
        assert f"echo read: round trip {duration(typ['received'] - typ['sent'])} (traced)" in texts
        assert f"identical exchange untraced: {duration(e['untraced_round_trip_us'] / 1e6)}" in texts
        assert "kernel" in texts and "client" in texts
        for s in typ["steps"]:
            assert s["label"] in texts, (e["model"], s["label"])
        # Every returned call's result on its arrow (a cut call has no return drawn).
        for s in typ["steps"]:
            if s["role"] != NEXT_WAIT:
                assert short_result(s["result"]) in texts, (e["model"], s["result"])
        assert any("compressed axis" in t for t in texts)


def test_lanes_one_per_thread(meta):
    threads = _parse(sequence_diagram(_by_model(meta, "threads")))
    tids = list(dict.fromkeys(s["tid"] for s in _by_model(meta, "threads")["typical"]["steps"]))
    assert len(tids) == 2
    texts = _texts(threads)
    assert [f"thread {i} (tid {tid})" for i, tid in enumerate(tids, 1)] == [t for t in texts if t.startswith("thread ")]
    epoll = _by_model(meta, "epoll")
    assert f"process (pid {epoll['typical']['steps'][0]['tid']})" in _texts(_parse(sequence_diagram(epoll)))


def test_labels_do_not_overlap(meta):
    """No two labels of a sequence diagram share ink, by the same width estimate the layout uses: the threads model
    (two threads, ten steps) and nonblocking (a 747-call run) are the hard cases."""
    figures = {e["model"]: sequence_diagram(e) for e in _ok(meta)}
    figures["comparison"] = comparison_figure(meta["explanations"])
    for name, svg in figures.items():
        boxes = _boxes(_parse(svg))
        assert len(boxes) > 10, name
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                overlap_x = min(a[3], b[3]) - max(a[1], b[1])
                overlap_y = min(a[4], b[4]) - max(a[2], b[2])
                assert overlap_x <= 1 or overlap_y <= 1, (name, a, b)


def test_blocking_read_is_split_at_the_send(meta):
    for model in ("threads", "fork"):
        e = _by_model(meta, model)
        typ = e["typical"]
        read = next(s for s in typ["steps"] if s["role"] == WAIT_AND_COPY)
        assert read["blocked"] and read["start"] < typ["sent"] < read["end"]
        root = _parse(sequence_diagram(e))
        halves = [r for r in _bars(root) if r.get("data-role") == WAIT_AND_COPY]
        assert [h.get("fill") for h in halves] == [AMBER, BLUE], model
        top, bottom = halves
        assert float(top.get("y")) + float(top.get("height")) == pytest.approx(float(bottom.get("y")), abs=0.11)
        texts = _texts(root)
        assert f"wait for data · {duration(typ['sent'] - read['start'])}" in texts, texts
        assert f"after the send: delivery, wake-up, copy · {duration(read['end'] - typ['sent'])}" in texts, texts
        assert "blocked" in texts  # the application lane shows the thread asleep in the call
        # The split is at the client's send: the same height as the "0" on the ruler.
        zero = next(t for t in root.iter(f"{SVG}text") if "".join(t.itertext()) == "0")
        assert float(zero.get("y")) - 4 == pytest.approx(float(bottom.get("y")), abs=0.11)
    # Readiness models wait in one call and copy in another: no split.
    epoll = _parse(sequence_diagram(_by_model(meta, "epoll")))
    assert not [r for r in _bars(epoll) if r.get("data-role") == WAIT_AND_COPY]
    assert any(t.startswith("copy to user · ") for t in _texts(epoll))


def test_busy_polling_annotation_counts_the_failed_calls(meta):
    e = _by_model(meta, "nonblocking")
    polls = [s for s in e["typical"]["steps"] if s["role"] == POLL]
    failed = sum(s["calls"] for s in polls)
    assert failed > 100
    span = duration(polls[-1]["end"] - polls[0]["start"])
    texts = _texts(_parse(sequence_diagram(e)))
    assert f"busy polling: {failed:,} failed calls · {span}" in texts, texts
    assert polls[0]["label"] in texts  # "accept4 ×374, recvfrom ×373" on the first arrow
    # Counted from the data, not written in: a different run reads differently.
    changed = copy.deepcopy(e)
    next(s for s in changed["typical"]["steps"] if s["role"] == POLL)["calls"] = 1234
    texts = _texts(_parse(sequence_diagram(changed)))
    assert "busy polling: 1,234 failed calls · " + span in texts
    # A lone failed read in a readiness model (edge-triggered draining) is not called busy polling.
    assert not any("busy polling" in t for t in _texts(_parse(sequence_diagram(_by_model(meta, "epoll-et")))))


def test_completion_has_no_copy_call(meta):
    e = _by_model(meta, "io_uring")
    assert e["pattern"] == "completion"
    root = _parse(sequence_diagram(e))
    assert not [r for r in _bars(root) if r.get("data-role") == COPY]
    assert "kernel waits for data, copies it," in _texts(root)
    assert any(t.startswith("posts the completion · ") for t in _texts(root))


def test_next_wait_is_cut_at_the_end(meta):
    e = _by_model(meta, "threads")
    typ = e["typical"]
    nxt = next(s for s in typ["steps"] if s["role"] == NEXT_WAIT)
    assert nxt["end"] - typ["received"] > 0.01  # it runs on into the think time
    root = _parse(sequence_diagram(e))
    texts = _texts(root)
    assert "continues ↓" in texts
    assert f"continues, {duration(nxt['end'] - nxt['start'])} in all" in texts
    # Cut, the 20 ms of the next wait do not stretch the figure: the whole request fits a laptop screen or so.
    assert float(root.get("height")) < 900


def test_long_gaps_are_broken_with_their_length(meta):
    for e in _ok(meta):
        typ = e["typical"]
        ends = [s["end"] for s in typ["steps"] if s["role"] != NEXT_WAIT]
        core_end = max([typ["received"], *ends])
        times = sorted(
            {typ["sent"], typ["received"], *(s["start"] for s in typ["steps"]), *(t for t in ends if t <= core_end)}
        )
        gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b - a > BREAK_S]
        assert gaps, e["model"]  # the think time shows in every model
        root = _parse(sequence_diagram(e))
        breaks = [("".join(t.itertext())) for t in root.iter(f"{SVG}text") if t.get("class") == "break"]
        assert breaks == [f"≈ {duration(g)}" for g in gaps], e["model"]
        assert len([p for p in root.iter(f"{SVG}polygon") if p.get("class") == "axis-break"]) == len(gaps)


def test_ruler_is_relative_to_the_send(meta):
    e = _by_model(meta, "epoll")
    typ = e["typical"]
    wait = next(s for s in typ["steps"] if s["role"] == WAIT)
    ticks = [
        ("".join(t.itertext())) for t in _parse(sequence_diagram(e)).iter(f"{SVG}text") if t.get("class") == "tick"
    ]
    assert "0" in ticks
    assert relative(wait["start"] - typ["sent"]) in ticks and ticks[ticks.index("0")] == "0"
    assert relative(wait["start"] - typ["sent"]).startswith("−")
    assert relative(typ["received"] - typ["sent"]) in ticks
    assert len(ticks) == len(set(ticks))


def test_durations_read_naturally():
    assert duration(8.1e-6) == "8.1 µs"
    assert duration(165e-6) == "165 µs"
    assert duration(0.0203) == "20.3 ms"
    assert duration(0.00125) == "1.25 ms"
    assert relative(-0.0203) == "−20.3 ms" and relative(0) == "0" and relative(165e-6) == "+165 µs"
    assert short_result("-1 EAGAIN (Resource temporarily unavailable)") == "EAGAIN"
    assert short_result("1 ([{fd=5, revents=POLLIN}])") == "= 1"
    assert short_result("64") == "= 64"


def test_text_is_escaped(meta):
    e = copy.deepcopy(_by_model(meta, "epoll"))
    e["model"] = 'x"<&>'
    e["typical"]["steps"][0]["label"] = "<script>alert(1)</script>"
    svg = sequence_diagram(e)
    root = _parse(svg)
    assert root.get("data-model") == 'x"<&>'
    assert "<script>" not in svg and "<script>alert(1)</script>" in _texts(root)


def test_comparison_has_one_column_per_ok_model(meta):
    root = _parse(comparison_figure(meta["explanations"]))
    assert root.get("class") == "comparison" and root.find(f"{SVG}title") is not None
    assert float(root.get("width")) <= MAX_WIDTH
    columns = [g for g in root.iter(f"{SVG}g") if g.get("class") == "column"]
    assert [g.get("data-model") for g in columns] == [e["model"] for e in _ok(meta)]
    for g, e in zip(columns, _ok(meta), strict=True):
        typ = e["typical"]
        # The wait (or polling), the copy unless the kernel did it, the echo.
        bars = len([r for r in g.iter(f"{SVG}rect") if r.get("class") == "bar"])
        assert bars >= (2 if e["pattern"] == "completion" else 3), e["model"]
        assert duration(typ["received"] - typ["sent"]) in _texts(g), e["model"]
        assert len([ln for ln in g.iter(f"{SVG}line") if ln.get("class") == "round-trip"]) == 1
    texts = _texts(root)
    for tick in ("−10 ms", "−1 ms", "−100 µs", "−10 µs", "+10 µs", "+100 µs", "+1 ms"):
        assert tick in texts, tick
    assert "0: request sent" in texts
    # One header per category (over its columns), every category named.
    headers = " ".join(("".join(t.itertext())) for t in root.iter(f"{SVG}text") if t.get("class") == "category")
    headers = headers.replace("- ", "-")  # a line broken after a hyphen
    for category in {e["category"] for e in _ok(meta)}:
        assert all(word in headers for word in category.split()), (category, headers)
    polling = next(g for g in columns if g.get("data-model") == "nonblocking")
    calls = sum(s["calls"] for s in _by_model(meta, "nonblocking")["typical"]["steps"] if s["role"] == POLL)
    assert any(t.startswith(f"polling: {calls:,} calls") for t in _texts(polling))


def test_comparison_shares_one_axis(meta):
    """t = 0 is one height in every column: the blocking models' split and the zero line coincide."""
    root = _parse(comparison_figure(meta["explanations"]))
    zero = next(t for t in root.iter(f"{SVG}text") if "".join(t.itertext()) == "0: request sent")
    y0 = float(zero.get("y")) - 4
    for g in root.iter(f"{SVG}g"):
        if g.get("data-model") in ("threads", "fork"):
            halves = [r for r in g.iter(f"{SVG}rect") if r.get("data-role") == WAIT_AND_COPY]
            assert float(halves[1].get("y")) == pytest.approx(y0, abs=0.11)
    # Ticks are symmetric about zero, a decade apart: log10(1 + t / 10 µs) per decade.
    ys = {"".join(t.itertext()): float(t.get("y")) for t in root.iter(f"{SVG}text") if t.get("class") == "tick"}
    above = {label: y0 - (y - 4) for label, y in ys.items() if label.startswith("−")}
    below = {label: (y - 4) - y0 for label, y in ys.items() if label.startswith("+")}
    assert above["−1 ms"] == pytest.approx(below["+1 ms"], abs=0.2)
    assert above["−1 ms"] / above["−100 µs"] == pytest.approx(math.log10(101) / math.log10(11), rel=0.01)
    assert above["−10 ms"] > above["−1 ms"] > above["−100 µs"] > above["−10 µs"] > 0


def test_comparison_leaves_out_models_that_failed(meta):
    explanations = copy.deepcopy(meta["explanations"])
    explanations[0]["status"], explanations[0]["typical"] = "failed", None
    root = _parse(comparison_figure(explanations))
    models = [g.get("data-model") for g in root.iter(f"{SVG}g") if g.get("class") == "column"]
    assert explanations[0]["model"] not in models and len(models) == len(_ok(meta)) - 1
    assert comparison_figure([]) == ""


def test_summary_rows(meta):
    rows = {r["model"]: r for r in summary_rows(meta["explanations"])}
    assert list(rows) == [e["model"] for e in meta["explanations"]]
    for e in _ok(meta):
        m, row = e["medians"], rows[e["model"]]
        assert row["calls"] == f"{m['calls']:,g} ({m['failed_calls']:,g} failed)"
        assert row["wait_ms"] == f"{m['wait_us'] / 1e3:,.2f}"
        assert row["waited_in"] in (e["typical"]["wait_call"], "nowhere: polled (EAGAIN)")
        assert row["status"] == "ok" and row["pattern"] == e["pattern"]
    assert rows["threads"]["copy_us"] == rows["fork"]["copy_us"] == "inside the wait"
    assert rows["io_uring"]["copy_us"] == "by the kernel"
    assert rows["epoll"]["copy_us"] == f"{_by_model(meta, 'epoll')['medians']['copy_us']:.1f}"
    assert rows["threads"]["blocked_in"] == "recvfrom, futex"
    assert rows["epoll"]["blocked_in"] == "epoll_wait"
    # Calls that failed with EAGAIN never slept, even one that was in the kernel at the send.
    assert rows["nonblocking"]["blocked_in"] == "never blocked"
    assert rows["nonblocking"]["waited_in"] == "nowhere: polled (EAGAIN)"
    noted = {**_by_model(meta, "epoll-et"), "reason": "requests differed: readiness 4, unexplained 1"}
    assert summary_rows([noted])[0]["reason"] == noted["reason"]

    e = copy.deepcopy(_by_model(meta, "epoll"))
    e["typical"]["blocked_in"] = []
    assert summary_rows([e])[0]["blocked_in"] == "never blocked"
    failed = {"model": "sigio", "category": "signal-driven", "status": "failed", "reason": "boom", "medians": {}}
    row = summary_rows([failed])[0]
    assert (row["status"], row["reason"], row["calls"], row["wait_ms"]) == ("failed", "boom", "—", "—")


def test_reading_is_computed_from_the_trace(meta):
    e = _by_model(meta, "threads")
    typ = e["typical"]
    read = next(s for s in typ["steps"] if s["role"] == WAIT_AND_COPY)
    text = " ".join(reading(e))
    assert (
        f"recvfrom was already blocked {duration(typ['sent'] - read['start'])} when the request was sent; it returned "
        f"{duration(read['end'] - typ['sent'])} later with the 64 bytes: one call waited and copied."
    ) in text
    assert "not the thread that read" in text  # threads' echo leaves from the writer thread
    assert f"{duration(e['untraced_round_trip_us'] / 1e6)} untraced" in text

    epoll = " ".join(reading(_by_model(meta, "epoll")))
    assert "epoll_wait was already blocked" in epoll and "recvfrom then copied the 64 bytes" in epoll
    polling = " ".join(reading(_by_model(meta, "nonblocking")))
    failed = sum(s["calls"] for s in _by_model(meta, "nonblocking")["typical"]["steps"] if s["role"] == POLL)
    assert polling.startswith("The process never blocked")
    assert f"{failed:,} calls that failed at once with EAGAIN" in polling
    assert "copied by the kernel" in " ".join(reading(_by_model(meta, "io_uring")))


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    run = tmp_path / "results" / "20261130-161208-c495"
    shutil.copytree(FIXTURE, run)
    return run


def test_page_renders_every_model(run_copy, meta):
    page = render_explain(run_copy)
    assert page == run_copy / "explain.html"
    html = page.read_text()
    assert "<title>How each I/O model serves one request" in html
    assert "How each I/O model serves one request — from a real trace" in html
    assert 'id="comparison-table"' in html and '<svg class="comparison"' in html
    for e in meta["explanations"]:
        section = re.search(rf'<section [^>]*id="model-{re.escape(e["model"])}".*?</section>', html, re.S)
        assert section, e["model"]
        assert f"<h2>{e['model']} — {e['category']}</h2>" in section.group(0)
        if e["status"] == "ok":
            figure = {
                "blocking": "6.1",
                "busy polling": "6.2",
                "readiness": "6.3",
                "signal": "6.4",
                "completion": "6.5",
            }
            assert f"<b>{e['pattern']}</b> (Stevens, figure {figure[e['pattern']]})" in section.group(0)
        assert f'<svg class="sequence" data-model="{e["model"]}"' in section.group(0)
        assert section.group(0).count("<tr") == len(e["requests"]) + 1  # every analysed request, and the header
    table = re.search(r'<table id="comparison-table">.*?</table>', html, re.S).group(0)
    assert table.count('<tr class="ok"') == len(_ok(meta))
    # Honesty: traced and untraced, the method, strace and the host, the exchange.
    assert "strace stops the server twice per system call" in html
    assert meta["method"] in html.replace("&#39;", "'")
    assert meta["strace"]["version"] in html and meta["host"]["kernel"] in html
    assert f"{meta['config']['payload']} B per request" in html and "20 ms think time" in html
    assert meta["command"] in html
    # The raw traces kept are linked; the others are named as missing.
    assert '<a href="explain/epoll.trace">' in html and '<a href="explain/threads.trace">' in html
    assert "<code>explain/poll.trace</code> (not in this directory)" in html
    assert 'id="run-status"' not in html  # a complete run has no banner
    # No script, nothing from the network.
    assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html)
    # The results index beside the run is refreshed.
    assert (run_copy.parent / "index.html").is_file()
    assert run_copy.name in (run_copy.parent / "index.html").read_text()


def test_page_shows_failed_and_skipped_models_with_their_reasons(run_copy, meta):
    doc = copy.deepcopy(meta)
    epoll = next(e for e in doc["explanations"] if e["model"] == "epoll")
    epoll.update(status="failed", reason="the server exited with status 1 <stderr: boom>", typical=None, requests=[])
    epoll["medians"] = {}
    doc["explanations"].append(
        {"model": "kqueue", "category": "I/O multiplexing", "mechanism": "BSD", "status": "skipped",
         "reason": "unavailable here: Linux has no kqueue", "trace_file": ""}
    )  # fmt: skip
    (run_copy / "run.json").write_text(json.dumps(doc))
    html = render_explain(run_copy).read_text()
    failed = re.search(r'<section [^>]*id="model-epoll".*?</section>', html, re.S).group(0)
    assert "failed: the server exited with status 1 &lt;stderr: boom&gt;" in failed
    assert "<svg" not in failed
    skipped = re.search(r'<section [^>]*id="model-kqueue".*?</section>', html, re.S).group(0)
    assert "skipped: unavailable here: Linux has no kqueue" in skipped and "<svg" not in skipped
    assert '<g class="column" data-model="epoll">' not in html
    assert re.search(r'<tr class="failed" data-model="epoll">', html)
    assert re.search(r'<tr class="skipped" data-model="kqueue">', html)


def test_interrupted_run_says_so(run_copy, meta):
    doc = copy.deepcopy(meta)
    doc["status"] = "interrupted"
    doc["explanations"] = doc["explanations"][:3]
    (run_copy / "run.json").write_text(json.dumps(doc))
    html = render_explain(run_copy).read_text()
    banner = re.search(r'<p class="banner" id="run-status">(.*?)</p>', html, re.S)
    assert banner and "interrupted" in banner.group(1)
    assert "not reached: " + ", ".join(meta["config"]["models"][3:]) in banner.group(1)
    assert html.count("<section ") == 3
