"""Runs written by earlier versions: run.json schema 1 (a sweep's point fields at the top of its
config) still renders and compares, read as schema 2 (those fields under config.point)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bench_cli import run_bench

from bench.reporting import compare
from bench.storing.results_store import POINT_TEMPLATE_FIELDS, SCHEMA_VERSION, RunDirectory, upgrade_run_meta

# A real default `bench run` written by schema 1 (2026-11-30), kept as it was written.
OLD_RUN = Path(__file__).resolve().parent / "fixtures" / "lessons_run" / "20261130-140244-e093"


def test_the_fixture_is_a_schema_1_run():
    meta = json.loads((OLD_RUN / "run.json").read_text())
    assert meta["schema_version"] == 1 < SCHEMA_VERSION
    assert meta["config"]["payload"] == 64 and "point" not in meta["config"]


def test_schema_1_is_read_as_schema_2():
    old = json.loads((OLD_RUN / "run.json").read_text())
    meta = RunDirectory(OLD_RUN).read_run()
    assert meta["config"]["point"] == {k: old["config"][k] for k in POINT_TEMPLATE_FIELDS if k in old["config"]}
    assert meta["config"]["point"]["payload"] == 64 and meta["config"]["point"]["workload"] == "closed"
    assert not set(POINT_TEMPLATE_FIELDS) & set(meta["config"])
    assert meta["config"]["models"] == old["config"]["models"]
    # Reading never changes what is on disk, and a current run.json is left as it is.
    assert json.loads((OLD_RUN / "run.json").read_text()) == old
    assert upgrade_run_meta({**meta, "schema_version": SCHEMA_VERSION}) == {**meta, "schema_version": SCHEMA_VERSION}


@pytest.mark.timeout(120)
def test_an_old_run_renders_and_compares_with_a_new_one(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(OLD_RUN, old)
    report = run_bench("report", str(old))
    assert report.returncode == 0, report.stderr
    html = (old / "report.html").read_text()
    assert "Workload <b>closed</b>" in html and "sends 64 B" in html
    # The same measurements under schema 2: no setting may differ just because of the layout.
    new = tmp_path / "new"
    shutil.copytree(OLD_RUN, new)
    run_dir = RunDirectory(new)
    run_dir.write_run({k: v for k, v in run_dir.read_run().items() if k != "schema_version"})
    assert json.loads(run_dir.run_file.read_text())["schema_version"] == SCHEMA_VERSION
    compared = run_bench("compare", str(old), str(new), "--out", str(tmp_path / "compare.html"))
    assert compared.returncode == 0, compared.stderr
    assert compare.build_comparison([str(old), str(new)]).settings == []


def test_a_schema_version_this_bench_cannot_read_is_a_one_line_error(tmp_path):
    for version in ("2a", 99):
        run = tmp_path / f"v{version}"
        shutil.copytree(OLD_RUN, run)
        meta = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**meta, "schema_version": version}))
        for argv in (["report", str(run)], ["compare", str(run), str(OLD_RUN), "--out", str(tmp_path / "c.html")]):
            proc = run_bench(*argv)
            assert proc.returncode == 2, proc.stderr
            assert proc.stderr.count("\n") == 1 and "schema_version" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(60)
def test_a_profile_run_reports_its_own_engine_and_payload(tmp_path):
    # A profile run's config was never a sweep's: its engine and payload stay at the top.
    profile = tmp_path / "profile"
    shutil.copytree(OLD_RUN.parent / "20261130-140518-1f04", profile)
    proc = run_bench("report", str(profile))
    assert proc.returncode == 0, proc.stderr
    html = (profile / "report.html").read_text()
    assert "load engine <b>c</b>" in html and "sends 64 B" in html
