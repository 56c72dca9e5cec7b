"""The HTML pages opened in a real browser (headless Chromium, see browser.py), as a person would: report.html and
index.html of a tiny real run, and the `bench compare` page of two such runs.

Each page must load with no console error, no uncaught exception, no failed request and nothing asked of the
network; every plot must be drawn at a non-zero size, each panel of the small multiples too; the summary table must
have a row per model; the points table must sort when a heading is clicked; the index must link to the report.
Full-page screenshots at a laptop's width are kept in test-artifacts/.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import browser
import pytest
from bench_cli import only_run_dir, run_bench

# Two bench runs and one browser start share the first test's budget.
pytestmark = pytest.mark.timeout(150)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@dataclass
class Runs:
    a: Path  # run directory of the first run (the baseline)
    b: Path
    index: Path  # index.html beside the first run
    compare: Path  # the comparison page


@pytest.fixture(scope="module")
def chromium() -> Iterator[browser.Chromium]:
    browser.require()
    with browser.Chromium() as chrome:
        yield chrome
    assert not chrome.blocked, f"pages asked for the network: {chrome.blocked}"
    assert not chrome.leftovers, f"browser processes had to be killed: {chrome.leftovers}"


def _tiny_run(out: Path) -> Path:
    # select at 1100 connections fails (FD_SETSIZE): the report has a failed point beside epoll's.
    proc = run_bench(
        "run", "--models", "select,epoll", "--connections", "2,1100", "--repeats", "2",
        "--duration", "0.3", "--warmup", "0.1", "--out", str(out), timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return only_run_dir(out)


@pytest.fixture(scope="module")
def runs(chromium: browser.Chromium, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("browser")
    a = _tiny_run(base / "a")
    b = _tiny_run(base / "b")
    page = base / "compare.html"
    proc = run_bench("compare", str(a), str(b), "--out", str(page), timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Runs(a=a, b=b, index=a.parent / "index.html", compare=page)


def _open(chromium: browser.Chromium, path: Path) -> Any:
    page, log = chromium.open(path)
    assert not log.problems(), f"{path.name}:\n" + "\n".join(log.problems())
    return page


def _screenshot(page: Any, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nscreenshot: {path}")
    return path


def _svg_sizes(page: Any, selector: str) -> list[dict[str, Any]]:
    """Each matching figure: its id, and the drawn size of its svg and of what is drawn inside it (CSS pixels)."""
    return page.eval_on_selector_all(
        selector,
        """figures => figures.map(f => {
            const svg = f.querySelector("svg");
            if (!svg) return {id: f.id, width: 0, height: 0, content: 0};
            const box = svg.getBoundingClientRect();
            const drawn = Array.from(svg.children).filter(c => typeof c.getBBox === "function")
                .map(c => c.getBBox()).reduce((area, b) => area + b.width * b.height, 0);
            return {id: f.id, width: box.width, height: box.height, content: drawn};
        })""",
    )


def _assert_drawn(figures: list[dict[str, Any]]) -> None:
    for fig in figures:
        assert fig["width"] > 0 and fig["height"] > 0, fig
        assert fig["content"] > 0, f"svg of {fig['id'] or 'a figure'} draws nothing: {fig}"


def _panels(page: Any) -> dict[str, list[dict[str, Any]]]:
    """Each small-multiples figure (data-panels): its declared count and each panel's drawn size (CSS pixels)."""
    return page.eval_on_selector_all(
        "figure.plot[data-panels]",
        """figures => Object.fromEntries(figures.map(f => [f.id, {
            declared: Number(f.dataset.panels),
            width: f.getBoundingClientRect().width,
            panels: Array.from(f.querySelectorAll("svg g.panel")).map(g => {
                const box = g.getBoundingClientRect();
                return {name: g.dataset.panel, width: box.width, height: box.height};
            }),
        }]))""",
    )


def _assert_panels(figures: dict[str, Any], expected: list[str]) -> None:
    """Every plot against connections is small multiples of the `expected` categories; every small-multiples figure
    has as many panels as it declares, each drawn at a non-zero size."""
    main = {"plot-rps", "plot-p50_us", "plot-p99_us", "plot-cpu_us_per_req"}
    assert main <= set(figures), figures
    for fid, fig in figures.items():
        assert 0 < len(fig["panels"]) == fig["declared"], (fid, fig)
        assert all(p["width"] > 50 and p["height"] > 50 for p in fig["panels"]), (fid, fig)
        if fid in main:
            assert [p["name"] for p in fig["panels"]] == expected, (fid, fig)


def _summary(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#summary tbody tr",
        "rows => rows.map(r => ({model: r.dataset.model, status: r.className, rank: r.cells[0].textContent.trim(),"
        " text: r.textContent}))",
    )


def _column(page: Any, heading: str) -> list[str]:
    index = page.eval_on_selector_all("#points thead th", "ths => ths.map(th => th.textContent.trim())").index(heading)
    return page.eval_on_selector_all(
        "#points tbody tr", f"rows => rows.map(r => r.cells[{index}].textContent.trim())"
    )  # fmt: skip


def _numbers(cells: list[str]) -> tuple[list[float], list[str]]:
    """The numeric cells in order, and what follows the last of them (it must all be empty)."""
    values = [float(c.replace(",", "")) for c in cells if c]
    last = max((i for i, c in enumerate(cells) if c), default=-1)
    return values, cells[last + 1 :]


def _rows(page: Any) -> list[str]:
    return page.eval_on_selector_all("#points tbody tr", "rows => rows.map(r => r.textContent)")


def test_report_page_in_a_browser(chromium, runs, capsys):
    page = _open(chromium, runs.a / "report.html")
    assert runs.a.name in page.title()

    figures = _svg_sizes(page, "figure.plot")
    ids = {f["id"] for f in figures}
    assert {"plot-rps", "plot-p99_us", "plot-timeline", "plot-cost"} <= ids, ids
    _assert_drawn(figures)
    # select and epoll are both I/O multiplexing: one panel per plot, half the page wide.
    panels = _panels(page)
    _assert_panels(panels, ["I/O multiplexing"])
    assert all(f["width"] < 700 for f in panels.values()), panels

    # The summary opens the report at the headline level (1,100 connections: the middle of 2 and 1,100), a row per
    # model: epoll ranked, select failed there with its reason.
    assert page.locator("h2").first.inner_text().startswith("Summary at 1,100 connections")
    summary = _summary(page)
    assert [(r["model"], r["status"], r["rank"]) for r in summary] == [
        ("epoll", "ranked", "1"),
        ("select", "failed", "—"),
    ]
    assert "FD_SETSIZE" in summary[1]["text"], summary
    _screenshot(page, "report", capsys)
    # Every ok point's timeline is a sparkline in the table, drawn at a non-zero size.
    sparks = page.eval_on_selector_all(
        "#points svg.spark", "svgs => svgs.map(s => s.getBoundingClientRect().width * s.getBoundingClientRect().height)"
    )
    assert len(sparks) == page.locator("#points tbody tr.ok").count() == 6 and all(sparks), sparks

    findings = [t.strip() for t in page.locator("#findings li").all_text_contents()]
    assert findings and all(findings), findings
    assert any(f.startswith("select cannot watch a descriptor numbered 1024") for f in findings), findings
    assert page.locator("#points tbody tr.failed").count() == 2

    # Numbers sort as numbers ("1100" after "2"), ascending then descending; empty cells (the failed points' rps)
    # stay at the bottom; whole rows move, not just the cells.
    before = sorted(_rows(page))
    for heading in ("rps", "connections"):
        th = page.locator("#points thead th", has_text=re.compile(rf"^\s*{heading}\s*$"))
        assert th.count() == 1, heading
        th.click()
        assert th.get_attribute("aria-sort") == "ascending"
        values, tail = _numbers(_column(page, heading))
        assert len(values) >= 4 and values == sorted(values), (heading, values)
        assert not any(tail), tail
        th.click()
        assert th.get_attribute("aria-sort") == "descending"
        values, tail = _numbers(_column(page, heading))
        assert values == sorted(values, reverse=True), (heading, values)
        assert not any(tail), tail
        assert sorted(_rows(page)) == before
        assert page.locator("#points th[aria-sort]").count() == 1
    assert _column(page, "rps").count("") == 2  # the two failed points
    page.close()


def test_small_multiples_of_two_categories_in_a_browser(chromium, runs, tmp_path, capsys):
    """A run of two categories draws two panels side by side across the page's width, one row per model in the
    summary. The tiny run's epoll points are relabelled threads (blocking) in a copy, so no second run is measured."""
    run = tmp_path / runs.a.name
    shutil.copytree(runs.a, run)
    with open(run / "points.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["model"] = "threads" if row["model"] == "epoll" else row["model"]
    with open(run / "points.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    proc = run_bench("report", str(run), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    page = _open(chromium, run / "report.html")
    _assert_drawn(_svg_sizes(page, "figure.plot"))
    panels = _panels(page)
    _assert_panels(panels, ["blocking", "I/O multiplexing"])
    for fid, fig in panels.items():
        # Two panels take the whole width at 1366 px; one (the timeline: select failed at 1,100) half of it.
        assert fig["width"] > 1000 if fig["declared"] > 1 else fig["width"] < 700, (fid, fig)
        assert all(p["width"] > 300 for p in fig["panels"]), (fid, fig)
    assert panels["plot-timeline"]["declared"] == 1
    assert [r["model"] for r in _summary(page)] == ["threads", "select"]
    assert page.evaluate("document.documentElement.scrollWidth") <= browser.VIEWPORT["width"]
    _screenshot(page, "report-small-multiples", capsys)
    page.close()


def test_index_page_links_to_the_report(chromium, runs, capsys):
    page = _open(chromium, runs.index)
    link = page.locator(f'#runs a[href="{runs.a.name}/report.html"]')
    assert link.count() == 1 and link.inner_text().strip() == runs.a.name
    _screenshot(page, "index", capsys)

    # Following the link, as a click, lands on that run's report, which loads cleanly too.
    log = browser.PageLog(url=link.evaluate("a => a.href"))
    page.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))
    with page.expect_navigation():
        link.click()
    assert page.url == (runs.a / "report.html").resolve().as_uri()
    assert runs.a.name in page.title()
    assert not log.problems(), log.problems()
    page.close()


def test_compare_page_in_a_browser(chromium, runs, capsys):
    page = _open(chromium, runs.compare)
    assert runs.a.name in page.title() and runs.b.name in page.title()
    assert page.locator(".summary li").count() > 0
    tables = page.locator("table.compare")
    assert tables.count() == 3  # rps, p99_us, cpu_us_per_req
    figures = _svg_sizes(page, "figure")
    assert len(figures) == 3, figures  # one ratio plot under each table
    _assert_drawn(figures)
    # select at 1100 failed in both runs: a row that says so, as a word.
    assert page.locator("table.compare .verdict", has_text="failed in A").count() == 3
    _screenshot(page, "compare", capsys)
    page.close()


@pytest.mark.parametrize("which", ["report", "index", "compare"])
def test_pages_fit_a_laptop_width(chromium, runs, which):
    """No page scrolls sideways at 1366 px: a wide table scrolls inside its own box, not the whole page."""
    path = {"report": runs.a / "report.html", "index": runs.index, "compare": runs.compare}[which]
    page = _open(chromium, path)
    width = page.evaluate("document.documentElement.scrollWidth")
    page.close()
    assert width <= browser.VIEWPORT["width"], f"{path.name} is {width} px wide"


def test_the_helper_sees_what_it_must_reject(chromium, tmp_path):
    """browser.py's own check: a page that logs an error, throws, misses a file and reaches for the network
    (loopback only, and blocked before it is sent) is reported for each of these."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!doctype html><title>bad</title><img src='missing.png'><img src='http://127.0.0.1:9/x.png'>"
        "<script>console.error('boom'); undefined_function();</script>"
    )
    page, log = chromium.open(bad)
    page.close()
    assert any("boom" in m for m in log.console_errors), log
    assert any("undefined_function" in m for m in log.page_errors), log
    assert any("missing.png" in m for m in log.failed_requests), log
    assert log.network_requests == ["http://127.0.0.1:9/x.png"], log
