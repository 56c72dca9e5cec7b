"""notebooks/analysis.ipynb runs top to bottom against a fresh run made by the real CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import psutil
import pytest
from bench_cli import only_run_dir, read_points, run_bench

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

# The fixture's bench run and one or two kernel start-ups share the budget of the first test.
pytestmark = pytest.mark.timeout(240)

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"
# Appended to the in-memory copy only: proves which interpreter ran the notebook and gives the kernel's pid.
PROBE = "import os, sys\nprint(sys.executable, os.getpid())"


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real sweep: select past its wall (a failed point) beside epoll, two repeats (intervals)."""
    out = tmp_path_factory.mktemp("results")
    proc = run_bench(
        "run",
        "--models", "epoll,select",
        "--connections", "10,1100",
        "--repeats", "2",
        "--duration", "0.3",
        "--warmup", "0.1",
        "--out", str(out),
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = only_run_dir(out)
    statuses = {(row["model"], row["connections"]): row["status"] for row in read_points(run_dir)}
    assert statuses[("select", "1100")] == "failed", statuses
    return run_dir


def execute_notebook(results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """Run the notebook in a fresh kernel of this interpreter; return every output of its code cells."""
    # A kernelspec of our own, first on JUPYTER_PATH, so "python3" cannot resolve to some other
    # interpreter registered for the user or the system (one without pandas, say).
    kernelspec.write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    # Agg from the caller's environment would keep the inline backend from emitting the figures.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    # The client owns its kernel manager, so it shuts the kernel down when execute() returns or raises.
    client.execute()
    outputs = [cell.outputs for cell in nb.cells if cell.cell_type == "code"]
    probe = "".join(out.get("text", "") for out in outputs[-1] if out.output_type == "stream").split()
    assert Path(probe[0]).resolve() == Path(sys.executable).resolve(), probe
    pid = int(probe[1])
    try:
        psutil.Process(pid).wait(timeout=10)
    except psutil.NoSuchProcess:
        pass
    assert not psutil.pid_exists(pid), f"kernel {pid} still running after the notebook ran"
    errors = [out for cell in outputs for out in cell if out.output_type == "error"]
    assert not errors, errors
    return [out for cell in outputs[:-1] for out in cell]


def images(outputs: list) -> int:
    return sum(1 for out in outputs if "image/png" in out.get("data", {}))


def text_of(outputs: list) -> str:
    parts = []
    for out in outputs:
        parts.append(out.get("text", ""))
        data = out.get("data", {})
        parts.append(data.get("text/markdown", "") or data.get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_runs_against_one_run(fresh_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    all_outputs = execute_notebook(fresh_run.parent, tmp_path, monkeypatch)
    # The four-panel figure of the run (one scenario: closed loop, 64 B).
    assert images(all_outputs) == 1
    text = text_of(all_outputs)
    assert fresh_run.name in text
    assert "filedescriptor out of range" in text or "FD_SETSIZE" in text
    assert "Only one run" in text


def test_notebook_compares_two_runs(fresh_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the fresh run, dated later and on another 'kernel', stands in for a second run, so the
    comparison is exercised without measuring twice."""
    results = tmp_path / "results"
    shutil.copytree(fresh_run, results / fresh_run.name)
    newer = results / "29991231-235959-beef"
    shutil.copytree(fresh_run, newer)
    meta = json.loads((newer / "run.json").read_text())
    meta.update(run_id=newer.name, started="2999-12-31T23:59:59+00:00")
    meta["host"]["kernel"] = "9.9.9-notebook-test"
    (newer / "run.json").write_text(json.dumps(meta))
    csv_text = (newer / "points.csv").read_text()
    (newer / "points.csv").write_text(csv_text.replace(fresh_run.name, newer.name))

    all_outputs = execute_notebook(results, tmp_path, monkeypatch)
    # The run's four panels, then the ratio plot.
    assert images(all_outputs) == 2
    text = text_of(all_outputs)
    assert "Only one run" not in text
    assert "9.9.9-notebook-test" in text
    # Identical numbers: every aligned point that worked is within noise, select at 1100 failed in both.
    assert "within noise" in text
    assert "failed in both" in text
    assert "faster" not in text and "slower" not in text
