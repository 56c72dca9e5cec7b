"""`bench compare`: run directories written by hand with known numbers, plus two real tiny runs."""

from __future__ import annotations

import copy
import csv
import html as html_module
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench_cli import bench_env, run_bench

from bench.errors import UsageError
from bench.reporting import compare
from bench.storing.columns import POINT_COLUMNS

HOST: dict[str, Any] = {
    "kernel": "6.18.0-1",
    "hostname": "bench-1",
    "cpu_model": "AMD EPYC 7B13",
    "cpu_count": 2,
    "cpufreq": {"cpu0": {"governor": "performance", "cur_khz": 2_450_000}},
    "packages": {"uvloop": "0.21.0"},
    "sysctl": {"net.core.somaxconn": 4096, "net.ipv4.ip_local_port_range": [32768, 60999]},
}

# epoll: B has 1.5x the throughput and 0.5x the p99 on every repeat (clearly faster);
# poll: the same values in both runs, interleaved (no difference);
# select: two repeats each (too few to tell); threads: failed in B.
BASE_RPS = [10_000.0, 10_400.0, 9_800.0, 10_200.0, 9_900.0]
BASE_P99 = [1_000.0, 1_040.0, 980.0, 1_020.0, 990.0]
POLL_RPS_A = [19_800.0, 20_300.0, 20_000.0, 19_600.0, 20_150.0]
POLL_RPS_B = [20_050.0, 19_700.0, 20_250.0, 19_900.0, 19_950.0]


def _row(model: str, connections: int, repeat: int, payload: int, **metrics: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: "" for c in POINT_COLUMNS}
    row.update(
        model=model, workload="closed", connections=connections, payload=payload, repeat=repeat, idle=0,
        server_workers=1, status="ok", cpu_us_per_req=20.0,
    )  # fmt: skip
    row.update(metrics)
    return row


def _points(factor_rps: float, factor_p99: float, payload: int, threads_status: str = "ok") -> list[dict[str, Any]]:
    rows = []
    for i, (rps, p99) in enumerate(zip(BASE_RPS, BASE_P99, strict=True)):
        rows.append(_row("epoll", 100, i, payload, rps=rps * factor_rps, p99_us=p99 * factor_p99))
    # Two samples that interleave (rank sums 28 and 27): no difference to find.
    poll = POLL_RPS_A if factor_rps == 1.0 else POLL_RPS_B
    for i, rps in enumerate(poll):
        rows.append(_row("poll", 100, i, payload, rps=rps, p99_us=2_000.0 + i))
    for i in range(2):
        rows.append(_row("select", 100, i, payload, rps=5_000.0 * factor_rps + i, p99_us=500.0 + i))
    for i in range(3):
        if threads_status == "ok":
            rows.append(_row("threads", 100, i, payload, rps=7_000.0 + i, p99_us=900.0 + i))
        else:
            rows.append(
                _row("threads", 100, i, payload, status=threads_status, reason="server exited with status 1", rps="")
            )
    return rows


def write_run(
    parent: Path,
    run_id: str,
    rows: list[dict[str, Any]],
    host: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    path = parent / run_id
    path.mkdir(parents=True)
    meta = {
        "schema_version": 1,
        "run_id": run_id,
        "started": "2026-01-01T00:00:00+00:00",
        "status": "complete",
        "command": f"bench run --out {parent}",
        "config": config or {"duration_s": 1.5, "warmup_s": 0.5, "repeats": 5, "out": str(parent)},
        "host": HOST if host is None else host,
    }
    (path / "run.json").write_text(json.dumps(meta))
    with open(path / "points.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=POINT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    host_b = copy.deepcopy(HOST)
    host_b["kernel"] = "6.19.0-2"
    host_b["sysctl"]["net.core.somaxconn"] = 128
    host_b["packages"]["uvloop"] = "0.22.1"
    host_b["cpufreq"]["cpu0"]["cur_khz"] = 1_800_000  # sampled, differs every run: not a difference
    a = write_run(tmp_path / "resA", "run-a", _points(1.0, 1.0, payload=64))
    b_rows = _points(1.5, 0.5, payload=4096, threads_status="failed")
    b_rows.append(_row("epoll", 1000, 0, 4096, rps=1.0, p99_us=1.0))  # only in B
    b = write_run(tmp_path / "resB", "run-b", b_rows, host=host_b, config={"duration_s": 3.0, "repeats": 5})
    return a, b


def _page_text(page: str) -> str:
    """What the page shows, without its tags: a command is marked up so that it wraps only at spaces and slashes."""
    return html_module.unescape(re.sub(r"<[^>]+>", "", page))


def _by_model(comp: compare.Comparison, metric: str) -> dict[str, compare.Difference]:
    pair = comp.pairs[0]
    model_at = comp.align_on.index("model")
    return {key[model_at]: diff for key, diff in zip(pair.keys, pair.diffs[metric], strict=True)}


# ------------------------------------------------------------- statistics


def test_mann_whitney_matches_scipy_reference_values():
    # The example of scipy.stats.mannwhitneyu's documentation: U1 = 17, exact p = 0.1111,
    # asymptotic p = 0.11134688653314041.
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    u, p = compare.mann_whitney_u(females, males)
    assert u == 17 and p == pytest.approx(1 / 9)
    assert compare.mann_whitney_u(females, males, method="asymptotic")[1] == pytest.approx(0.1113468865, rel=1e-6)
    # Complete separation: the smallest p these sizes allow.
    assert compare.mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])[1] == pytest.approx(2 / 252)
    assert compare.mann_whitney_u([1, 2, 3], [4, 5, 6])[1] == pytest.approx(0.1) == compare.smallest_p(3, 3)
    assert compare.mann_whitney_u([5, 5, 5], [5, 5, 5]) == (4.5, 1.0)
    # U counts the pairs where b is the larger, a tie as half: 3 > 1, 2, 2 and 2 > 1 with two ties.
    assert compare.mann_whitney_u([1, 2, 2], [2, 3])[0] == 5.0
    assert compare.mann_whitney_u([2, 3], [1, 2, 2])[0] == 1.0  # the other side's: 2 * 3 - 5
    # The exact distribution assumes distinct values: not offered with ties, nor an unknown method.
    with pytest.raises(ValueError, match="distinct"):
        compare.mann_whitney_u([1, 2, 2], [2, 3], method="exact")
    with pytest.raises(ValueError, match="unknown method"):
        compare.mann_whitney_u([1, 2], [3, 4], method="permutation")
    with pytest.raises(ValueError, match="at least one value"):
        compare.mann_whitney_u([], [3, 4])


def test_smallest_p_is_that_of_a_complete_separation_and_exact_agrees_with_the_normal_approximation():
    for m, n in [(1, 1), (2, 5), (3, 4), (5, 5), (7, 5), (10, 10)]:
        # Two of the C(m + n, m) equally likely orderings (all of b above, or all below) are as extreme.
        assert compare.smallest_p(m, n) == pytest.approx(min(1.0, 2 / math.comb(m + n, m)))
        a, b = list(range(m)), list(range(m, m + n))
        assert compare.mann_whitney_u(a, b, method="exact") == (m * n, pytest.approx(compare.smallest_p(m, n)))
    rng = np.random.default_rng(7)
    x, y = rng.normal(0, 1, 15), rng.normal(0.6, 1, 15)
    exact = compare.mann_whitney_u(x, y, method="exact")[1]
    approx = compare.mann_whitney_u(x, y, method="asymptotic")[1]
    assert exact == pytest.approx(approx, abs=0.01)
    # The test is symmetric: swapping the runs swaps U for m*n - U and keeps p.
    u_xy, p_xy = compare.mann_whitney_u(x, y)
    u_yx, p_yx = compare.mann_whitney_u(y, x)
    assert u_xy + u_yx == 15 * 15 and p_xy == pytest.approx(p_yx)


def test_ratio_ci_contains_the_true_ratio_and_needs_two_values():
    rng = np.random.default_rng(3)
    a = 10_000 * rng.lognormal(0, 0.05, 8)
    low, high = compare.ratio_ci(a, a * 1.3)
    assert low is not None and high is not None and low <= 1.3 <= high
    assert compare.ratio_ci(a, a * 1.3) == (low, high)  # seeded: the same values give the same interval
    assert compare.ratio_ci([1.0], [1.0, 2.0]) == (None, None)


def test_ratio_ci_of_constant_runs_is_a_point_and_none_without_a_ratio():
    # Identical repeats: every resample gives the same ratio (where BCa would give NaN).
    assert compare.ratio_ci([100.0] * 3, [150.0] * 4) == pytest.approx((1.5, 1.5))
    # Two of three of a's repeats are 0: 20 of 27 resamples have a median of 0 and no ratio.
    assert compare.ratio_ci([0.0, 0.0, 1.0], [1.0, 2.0, 3.0]) == (None, None)


def test_verdicts_follow_direction_of_metric():
    a = [100.0, 101.0, 102.0, 103.0, 104.0]
    b = [200.0, 201.0, 202.0, 203.0, 204.0]
    assert compare.compare_samples(a, b, higher_is_better=True).verdict == compare.BETTER
    assert compare.compare_samples(a, b, higher_is_better=False).verdict == compare.WORSE
    assert compare.compare_samples(a, a[::-1], higher_is_better=True).verdict == compare.NOT_SIGNIFICANT
    # 3 against 3 completely separated is still p = 0.1: the test cannot tell, and says so.
    assert compare.compare_samples(a[:3], b[:3], higher_is_better=True).verdict == compare.TOO_FEW
    assert compare.compare_samples(a[:2], b, higher_is_better=True).verdict == compare.TOO_FEW
    assert compare.compare_samples([], b, higher_is_better=True).verdict == compare.MISSING


# ------------------------------------------------------------- comparing run directories


def test_points_verdicts_ratios_and_what_differs(two_runs):
    a, b = two_runs
    comp = compare.build_comparison([str(a), str(b)], ["rps", "p99_us", "cpu_us_per_req"])

    # payload is fixed in each run and differs: stated, not used to align.
    assert comp.run_level == [("payload", ["64", "4096"])]
    assert "payload" not in comp.align_on and "model" in comp.align_on and "connections" in comp.align_on
    # connections tells the point only in B (1000) from the others, so it is a column of the tables.
    assert comp.shown == ["model", "connections"]
    assert comp.common == {"workload": "closed", "idle": "0", "server_workers": "1"}

    rps = _by_model(comp, "rps")
    assert set(rps) == {"epoll", "poll", "select", "threads"}
    assert rps["epoll"].verdict == compare.BETTER
    assert rps["epoll"].ratio == pytest.approx(1.5)
    assert rps["epoll"].ci_low <= 1.5 <= rps["epoll"].ci_high
    assert rps["epoll"].p < 0.05 and (rps["epoll"].n_a, rps["epoll"].n_b) == (5, 5)
    assert rps["poll"].verdict == compare.NOT_SIGNIFICANT and rps["poll"].p >= 0.05
    assert rps["poll"].ci_low <= 1.0 <= rps["poll"].ci_high
    assert rps["select"].verdict == compare.TOO_FEW
    assert rps["threads"].verdict == compare.MISSING and "failed in B" in rps["threads"].note

    p99 = _by_model(comp, "p99_us")
    assert p99["epoll"].verdict == compare.BETTER and p99["epoll"].ratio == pytest.approx(0.5)
    assert compare.verdict_word(p99["epoll"], compare.METRICS["p99_us"], "B") == "B faster"
    # Identical values on both sides: every value tied, p = 1.
    assert _by_model(comp, "cpu_us_per_req")["epoll"].verdict == compare.NOT_SIGNIFICANT
    [only_b] = comp.pairs[0].only_other
    assert only_b[comp.align_on.index("model")] == "epoll" and only_b[comp.align_on.index("connections")] == "1000"
    assert comp.pairs[0].only_base == []

    sentence = compare.summary_sentence(comp.pairs[0], compare.METRICS["rps"])
    assert sentence.startswith(
        "Throughput (req/s): B is faster than A on 1 of 4 points, slower on 0, not significant on 1"
    )
    assert "too few repeats to tell on 1" in sentence

    differing = dict(comp.host_diff)
    assert differing == {
        "kernel": ["6.18.0-1", "6.19.0-2"],
        "packages.uvloop": ["0.21.0", "0.22.1"],
        "sysctl.net.core.somaxconn": ["4,096", "128"],
    }
    settings = dict(comp.settings)
    assert settings["duration_s"] == ["1.5", "3.0"] and settings["warmup_s"] == ["0.5", "(not recorded)"]
    assert "out" not in settings


def test_html_page_default_beside_first_run_and_out(two_runs, tmp_path, capsys):
    a, b = two_runs
    args = _parse("compare", str(a), str(b))
    assert compare.cmd_compare(args) == 0
    page = a.parent / "compare.html"
    assert page.is_file()
    html = page.read_text()
    assert "payload: 64 in A, 4096 in B" in html
    assert "B is faster than A on 1 of 4 points" in html
    assert "sysctl.net.core.somaxconn" in html and "6.19.0-2" in html
    assert "run-a" in html and "run-b" in html and f"bench run --out {a.parent}" in _page_text(html)
    # The verdict is a word as well as a colour.
    assert 'class="verdict v-better">B faster<' in html and "too few repeats" in html
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org", "")
    out = capsys.readouterr().out
    assert "B is faster than A on 1 of 4 points" in out and str(page) in out

    elsewhere = tmp_path / "pages" / "c.html"
    assert compare.cmd_compare(_parse("compare", str(a), str(b), "--out", str(elsewhere))) == 0
    assert elsewhere.is_file()


def test_results_directory_holding_one_run_is_accepted(two_runs, tmp_path):
    a, b = two_runs
    comp = compare.build_comparison([str(a.parent), str(b.parent)])
    assert [r.run_id for r in comp.runs] == ["run-a", "run-b"]
    write_run(a.parent, "run-a2", _points(1.0, 1.0, payload=64))
    with pytest.raises(UsageError, match="holds 2 runs"):
        compare.build_comparison([str(a.parent), str(b)])


def test_three_runs_each_against_the_first(two_runs, tmp_path):
    a, b = two_runs
    c = write_run(tmp_path / "resC", "run-c", _points(1.0, 1.0, payload=64))
    comp = compare.build_comparison([str(a), str(b), str(c)])
    assert [(p.base.label, p.other.label) for p in comp.pairs] == [("A", "B"), ("A", "C")]
    assert _by_model(comp, "rps")["epoll"].verdict == compare.BETTER
    same = {k: d for k, d in zip(comp.pairs[1].keys, comp.pairs[1].diffs["rps"], strict=True)}
    assert all(d.verdict != compare.BETTER and d.verdict != compare.WORSE for d in same.values())
    assert comp.run_level == [("payload", ["64", "4096", "64"])]


# ------------------------------------------------------------- bad input: one line, exit 2

# What bench/cli.py's main() does with a UsageError, around the compare subcommand alone, so these
# tests do not depend on the subcommand being wired; `test_wired_into_bench_cli` covers the wiring.
SHIM = """
import argparse, sys
from bench.reporting.compare import add_compare_parser
from bench.errors import UsageError
parser = argparse.ArgumentParser(prog="bench")
add_compare_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.func(args))
except UsageError as exc:
    print(f"bench: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _parse(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="bench")
    compare.add_compare_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _run_shim(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SHIM, "compare", *argv], capture_output=True, text=True, timeout=60, env=bench_env()
    )


def _damage(kind: str, a: Path, b: Path, tmp_path: Path) -> list[str]:
    if kind == "no run.json":
        empty = tmp_path / "empty"
        empty.mkdir()
        return [str(a), str(empty)]
    if kind == "missing path":
        return [str(a), str(tmp_path / "nosuch")]
    if kind == "bad run.json":
        (b / "run.json").write_text('{"run_id": "run-b", "status": ')
        return [str(a), str(b)]
    if kind == "bad points.csv":
        with open(b / "points.csv", "a") as fh:
            fh.write(",".join(["x"] * (len(POINT_COLUMNS) + 5)) + "\n")
        return [str(a), str(b)]
    if kind == "short row inside points.csv":
        lines = (b / "points.csv").read_text().splitlines(keepends=True)
        lines[2] = "run-b,epoll,closed\n"
        (b / "points.csv").write_text("".join(lines))
        return [str(a), str(b)]
    if kind == "binary points.csv":
        (b / "points.csv").write_bytes(b"\x00\xff\xfe garbage \x81\n\x00\x00")
        return [str(a), str(b)]
    if kind == "no points.csv":
        (b / "points.csv").unlink()
        return [str(a), str(b)]
    if kind == "no shared points":
        rows = [_row("epoll", 10, i, 64, rps=1.0 + i) for i in range(3)]
        rows += [_row("epoll", 20, i, 64, rps=1.0 + i) for i in range(3)]
        return [str(a), str(write_run(tmp_path, "run-other", rows))]
    if kind == "out is a directory":
        return [str(a), str(b), "--out", str(tmp_path)]
    if kind == "out unwritable":
        (tmp_path / "afile").write_text("")
        return [str(a), str(b), "--out", str(tmp_path / "afile" / "c.html")]
    if kind == "one run":
        return [str(a)]
    if kind == "unknown metric":
        return [str(a), str(b), "--metrics", "rps,bogus"]
    raise AssertionError(kind)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no run.json", "is not a run directory (no run.json)"),
        ("missing path", "no such run directory"),
        ("bad run.json", "run.json is damaged: not valid JSON"),
        ("bad points.csv", "points.csv is damaged"),
        ("binary points.csv", "points.csv is damaged"),
        ("short row inside points.csv", "points.csv is damaged: line 3 has 3 fields"),
        ("no points.csv", "has no points.csv"),
        ("no shared points", "share no points: connections 100 in A but 10, 20 in B"),
        ("one run", "at least two run directories"),
        ("out is a directory", "is a directory; give a file name"),
        ("out unwritable", "cannot write"),
        ("unknown metric", "unknown metric(s) bogus"),
    ],
)
def test_bad_input_is_one_line_error(two_runs, tmp_path, kind, message):
    a, b = two_runs
    proc = _run_shim(*_damage(kind, a, b, tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (a.parent / "compare.html").exists()


def test_torn_last_row_is_left_out_with_a_warning(two_runs, capsys):
    a, b = two_runs
    text = (b / "points.csv").read_text()
    (b / "points.csv").write_text(text + "run-b,epoll,closed,100,4096,5,ok,,123")  # cut short mid-write
    assert compare.cmd_compare(_parse("compare", str(a), str(b))) == 0
    captured = capsys.readouterr()
    assert "warning: B: points.csv ends in an incomplete row" in captured.err
    assert "incomplete row" in (a.parent / "compare.html").read_text()
    comp = compare.build_comparison([str(a), str(b)])
    assert _by_model(comp, "rps")["epoll"].n_b == 5


def _wired() -> bool:
    from bench.cli import build_parser

    try:
        build_parser().parse_args(["compare", "x", "y"])
    except SystemExit:
        return False
    return True


@pytest.mark.skipif(not _wired(), reason="`compare` is not yet a subcommand of bench/cli.py")
def test_wired_into_bench_cli(two_runs, tmp_path):
    a, b = two_runs
    proc = run_bench("compare", str(a), str(b), "--out", str(tmp_path / "c.html"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c.html").is_file()
    proc = run_bench("compare", str(a), str(tmp_path / "nosuch"), timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# ------------------------------------------------------------- two real runs


@pytest.mark.timeout(120)
def test_two_real_tiny_runs(tmp_path):
    common = ["--models", "epoll", "--connections", "2", "--repeats", "2", "--duration", "0.3", "--warmup", "0.1"]
    for name, payload in (("a", "64"), ("b", "512")):
        proc = run_bench("run", *common, "--payload", payload, "--out", str(tmp_path / name), timeout=50)
        assert proc.returncode == 0, proc.stderr
    proc = _run_shim(str(tmp_path / "a"), str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert "payload: 64 in A, 512 in B" in proc.stdout
    assert "too few repeats" in proc.stdout  # two repeats: no verdict, and it says why
    page = tmp_path / "a" / "compare.html"
    html = page.read_text()
    assert "Host fingerprint" in html
    assert "epoll" in html and "--payload 512" in _page_text(html)


def test_the_same_run_twice_is_refused(tmp_path):
    from bench.errors import UsageError
    from bench.reporting.compare import build_comparison

    run = write_run(tmp_path / "res", "run-a", _points(1.0, 1.0, payload=64))
    with pytest.raises(UsageError, match="same run"):
        build_comparison([str(run), str(run)])
