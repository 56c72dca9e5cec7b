"""explain.html in a real browser (headless Chromium, see browser.py), rendered from the real `bench explain` run kept
in tests/fixtures/explain_run.

The page must load with no console error, no uncaught exception and nothing asked of the network; the comparison
figure must be drawn at a non-zero size, and every model that was explained must have its sequence diagram drawn,
with its bars and arrows, and no two of its labels overlapping as the browser lays them out. A full-page screenshot
at a laptop's width is kept in test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

# The report tests' browser fixture and page helpers, shared rather than written again.
from test_browser_reports import _assert_drawn, _open, _screenshot, _svg_sizes, chromium  # noqa: F401

from bench.reporting.explain_page import render_explain

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "explain_run"

# Each label's box as the browser draws it (CSS px), for every unrotated text of an svg.
_LABEL_BOXES = """svg => Array.from(svg.querySelectorAll("text")).filter(t => !t.getAttribute("transform")).map(t => {
    const b = t.getBoundingClientRect();
    return {text: t.textContent, left: b.left, top: b.top, right: b.right, bottom: b.bottom};
})"""


def _overlaps(boxes: list[dict[str, Any]], slack: float) -> list[tuple[str, str]]:
    """Pairs of labels whose boxes overlap by more than `slack` px both ways (a text box includes its line spacing,
    so two labels on neighbouring lines touch by a px or two without their ink meeting)."""
    found = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            wide = min(a["right"], b["right"]) - max(a["left"], b["left"])
            high = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
            if wide > slack and high > slack:
                found.append((a["text"], b["text"]))
    return found


@pytest.mark.timeout(100)
def test_explain_page_in_a_browser(chromium, tmp_path, capsys):  # noqa: F811 - the imported fixture
    run = tmp_path / "results" / FIXTURE.name
    shutil.copytree(FIXTURE, run)
    meta = json.loads((run / "run.json").read_text())
    ok = [e["model"] for e in meta["explanations"] if e["status"] == "ok"]
    assert len(ok) >= 10

    page = _open(chromium, render_explain(run))  # fails on any console error, exception or network request

    figures = _svg_sizes(page, "#comparison-figure")
    assert len(figures) == 1
    _assert_drawn(figures)
    assert figures[0]["width"] > 600 and figures[0]["height"] > 300, figures
    columns = page.eval_on_selector_all(
        "svg.comparison g.column",
        "groups => groups.map(g => { const b = g.getBBox(); return [g.dataset.model, b.width, b.height]; })",
    )
    assert [c[0] for c in columns] == ok
    assert all(w > 20 and h > 100 for _, w, h in columns), columns
    labels = page.eval_on_selector("svg.comparison", _LABEL_BOXES)
    assert len(labels) > 20 and not _overlaps(labels, 2.5)

    rows = page.eval_on_selector_all("#comparison-table tbody tr", "rows => rows.map(r => r.dataset.model)")
    assert rows == [e["model"] for e in meta["explanations"]]

    for model in ok:
        selector = f'svg.sequence[data-model="{model}"]'
        drawn = page.eval_on_selector(
            selector,
            """svg => {
                const box = svg.getBBox();
                const shapes = Array.from(svg.querySelectorAll("rect.bar, line.call, polyline, path, polygon"))
                    .map(s => s.getBBox()).filter(b => b.width > 0 || b.height > 0);
                const bars = Array.from(svg.querySelectorAll("rect.bar")).map(r => r.getBBox())
                    .filter(b => b.width > 0 && b.height > 0);
                const shown = svg.getBoundingClientRect();
                return {width: box.width, height: box.height, shapes: shapes.length, bars: bars.length,
                        shownWidth: shown.width, declaredWidth: Number(svg.getAttribute("width"))};
            }""",
        )
        assert drawn["width"] > 300 and drawn["height"] > 200, (model, drawn)
        assert drawn["shapes"] >= 3 and drawn["bars"] >= 2, (model, drawn)
        # Drawn at its own size, not squeezed: the page is wide enough at 1366 px.
        assert drawn["shownWidth"] == pytest.approx(drawn["declaredWidth"], abs=1), (model, drawn)
        labels = page.eval_on_selector(selector, _LABEL_BOXES)
        assert len(labels) > 10, (model, labels)
        assert not _overlaps(labels, 2.5), (model, _overlaps(labels, 2.5))
        section = page.locator(f"#model-{model}")
        assert section.locator("h2").text_content().startswith(f"{model} — ")
        assert "after the send" in section.locator("p.reading").text_content()

    # Nothing below the page's width: no horizontal scrolling on a laptop.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1366

    _screenshot(page, "explain", capsys)
    page.close()
