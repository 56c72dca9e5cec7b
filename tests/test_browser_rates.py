"""The rate plots of report.html in a real browser (headless Chromium, see browser.py): a rate sweep of three
models, and a --find-max search whose answer is marked on the achieved-rate plot.

Each report must load with no console error, no uncaught exception and nothing asked of the network; each of the
three rate plots must be drawn at a non-zero size with one panel per model and the knee marked. Full-page
screenshots at a laptop's width are kept in test-artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from bench_cli import only_run_dir, run_bench

# The report tests' browser fixture and page helpers, shared rather than written again.
from test_browser_reports import _assert_drawn, _open, _screenshot, _svg_sizes, chromium  # noqa: F401

MODELS = ["epoll", "poll", "native"]
RATE_PLOTS = ["plot-rate-achieved", "plot-rate-latency", "plot-rate-cpu"]
SHORT = ("--duration", "0.3", "--warmup", "0.1")


def _run(out: Path, *args: str) -> Path:
    proc = run_bench("run", *args, *SHORT, "--out", str(out), timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return only_run_dir(out)


def _panels(page: Any, plot: str) -> list[dict[str, Any]]:
    """The panels of one figure (groups that report_plots.to_svg marks class "panel", or with an id panel-MODEL
    before it does), with each one's model and drawn size."""
    return page.eval_on_selector_all(
        f'#{plot} svg g.panel, #{plot} svg g[id^="panel-"]',
        """groups => groups.map(g => {
            const box = g.getBBox();
            return {model: g.dataset.panel || g.id.replace(/^panel-/, ""), width: box.width, height: box.height};
        })""",
    )


@pytest.mark.timeout(100)
def test_rate_sweep_plots_in_a_browser(chromium, tmp_path, capsys):  # noqa: F811 - the imported fixture
    run = _run(
        tmp_path, "--models", ",".join(MODELS), "--workload", "open", "--rate", "5000,20000,60000,120000",
        "--connections", "100",
    )  # fmt: skip
    page = _open(chromium, run / "report.html")

    figures = {f["id"]: f for f in _svg_sizes(page, "figure.plot")}
    assert set(RATE_PLOTS) <= set(figures), list(figures)
    assert "plot-open-p99" not in figures  # the single p99 plot the three replace
    # Four rates at one connection count: no line against connections blends them into one dot.
    assert "plot-rps" not in figures and "plot-p99_us" not in figures, list(figures)
    _assert_drawn([figures[p] for p in RATE_PLOTS])
    for plot in RATE_PLOTS:
        panels = _panels(page, plot)
        assert [p["model"] for p in panels] == MODELS, (plot, panels)
        assert all(p["width"] > 50 and p["height"] > 50 for p in panels), (plot, panels)
        # Small multiples take the report's whole width, readable at 1366 px.
        assert figures[plot]["width"] > 0.8 * page.locator(".plots").bounding_box()["width"], figures[plot]

    # Every model's knee is marked: a triangle at it, or the words saying it lies outside the rates measured.
    knees = page.eval_on_selector_all('#plot-rate-achieved svg [id^="knee-"]', "marks => marks.map(m => m.id)")
    assert sorted(knees) == sorted(f"knee-{m}-100" for m in MODELS), knees
    text = page.locator("#plot-rate-achieved svg").text_content()
    assert "knee" in text and "achieved = offered" in text
    assert "p99 service time (uncorrected)" in page.locator("#plot-rate-latency svg").text_content()
    assert "server CPUs busy" in page.locator("#plot-rate-cpu svg").text_content()

    # One finding per model on its knee.
    findings = [t.strip() for t in page.locator("#findings li").all_text_contents()]
    for model in MODELS:
        assert any(f.startswith(f"{model} at 100 connections") and "offered rate" in f for f in findings), findings

    _screenshot(page, "report-rates", capsys)
    page.close()


@pytest.mark.timeout(100)
def test_find_max_answer_is_marked_on_the_achieved_rate_plot(chromium, tmp_path, capsys):  # noqa: F811
    run = _run(tmp_path, "--models", "epoll", "--connections", "10", "--find-max", "--slo", "p99=5ms")
    page = _open(chromium, run / "report.html")

    figures = {f["id"]: f for f in _svg_sizes(page, "figure.plot")}
    assert set(RATE_PLOTS) <= set(figures), list(figures)
    _assert_drawn([figures[p] for p in RATE_PLOTS])
    assert [p["model"] for p in _panels(page, "plot-rate-achieved")] == ["epoll"]

    text = page.locator("#plot-rate-achieved svg").text_content()
    line = page.locator('#plot-rate-achieved svg [id="find-max-epoll-10"]')
    if "no rate met" in text:
        # This host could not hold even the lowest probe under the objective: said in words instead of a line.
        assert line.count() == 0
    else:
        assert line.count() == 1, text
        box = line.bounding_box()
        assert box is not None and box["height"] > 50, box  # a vertical line across the panel
        # "find-max: N req/s" and "at p99 ≤ 5 ms", the label's two lines.
        assert re.search(r"find-max: [\d,]+ req/s\s*at p99 ≤ 5 ms", text), text
    assert page.locator('#plot-rate-achieved svg [id^="knee-epoll-10"]').count() == 1
    assert "find-max objective" in page.locator("#plot-rate-latency svg").text_content()

    _screenshot(page, "report-find-max", capsys)
    page.close()
