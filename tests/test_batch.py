"""`hecktor run`: the full pipeline over a phantom cohort on dask.distributed, resumable."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import digest

from napari_hecktor.batch import DONE_NAME, RunSettings, process_case, read_done
from napari_hecktor.data.phantom import write_cohort
from napari_hecktor.io.dataset import discover
from napari_hecktor.io.geometry import Geometry

HECKTOR = [sys.executable, "-m", "napari_hecktor.cli"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*HECKTOR, *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=300)


def cohort_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "cohort.csv", newline="", encoding="utf-8") as handle:
        return {row["PatientID"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """3 phantom cases with lesions and 1 lesion-free one, with clinical.csv."""
    return write_cohort(tmp_path_factory.mktemp("batch") / "ds", 3, seed=7, n_empty=1)


@pytest.fixture(scope="module")
def first_run(cohort, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("batch-out") / "out"
    before = digest(cohort)
    result = run("run", cohort, "-o", out, "--workers", "2", "--no-features", "--device", "cpu")
    assert digest(cohort) == before, "the dataset folder was written to"
    return out, result


def test_run_with_two_workers_writes_masks_on_the_ct_grid_and_the_cohort_table(
    cohort, first_run
):
    out, result = first_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert "local cluster of 2 worker process(es)" in result.stdout
    cases = discover(cohort)
    assert len(cases) == 4
    for k in range(1, 5):
        assert f"[{k}/4] " in result.stdout
    rows = cohort_rows(out)
    assert sorted(rows) == sorted(c.case_id for c in cases)
    workers = set()
    for files in cases:
        folder = out / "cases" / files.case_id
        mask = sitk.ReadImage(str(folder / f"{files.case_id}.nii.gz"))
        assert Geometry.of(mask).matches(Geometry.of(sitk.ReadImage(str(files.ct))))
        done = read_done(folder)
        assert done is not None
        assert {"segment", "crf", "features", "outcome"} <= set(done["timings"])
        workers.add(done["worker"])
        assert (folder / "features.csv").is_file()
        assert (folder / "outcome.json").is_file()  # the phantom's clinical.csv was found
        row = rows[files.case_id]
        assert row["status"] == "ok", row
        assert row["resumed"] == "False"
        assert float(row["seconds"]) > 0
        assert row["GTVp_volume_ml"] != "" and 0 <= float(row["hpv_probability"]) <= 1
        assert row["risk_group"] in ("low", "high")
    assert len(workers) == 2, "both worker processes should have taken cases"


def test_rerun_skips_finished_cases_and_redoes_an_unfinished_one(first_run, cohort, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    cases = sorted(p.name for p in (out / "cases").iterdir())
    stamps = {c: (out / "cases" / c / DONE_NAME).stat().st_mtime_ns for c in cases}
    again = run("run", cohort, "-o", out, "--no-features", "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert "[4/4] skipped 4 case(s) finished earlier" in again.stdout
    assert all(r["resumed"] == "True" and r["status"] == "ok" for r in cohort_rows(out).values())
    redo = cases[1]
    (out / "cases" / redo / DONE_NAME).unlink()  # as if the run died while writing it
    third = run("run", cohort, "-o", out, "--no-features", "--device", "cpu")
    assert third.returncode == 0, third.stderr
    assert "3 finished earlier, 1 to run" in third.stdout
    assert f"[4/4] {redo} ok" in third.stdout
    rows = cohort_rows(out)
    assert rows[redo]["resumed"] == "False" and rows[redo]["status"] == "ok"
    for c in cases:
        if c != redo:
            assert (out / "cases" / c / DONE_NAME).stat().st_mtime_ns == stamps[c]
            assert rows[c]["resumed"] == "True"
    assert read_done(out / "cases" / redo) is not None
    # other settings than the finished cases': refused, nothing redone
    other = run("run", cohort, "-o", out, "--no-features", "--no-crf", "--device", "cpu")
    assert other.returncode == 2
    assert "finished with other settings" in other.stderr and "crf True then" in other.stderr


def test_a_corrupt_case_fails_alone_and_the_exit_status_says_so(cohort, tmp_path):
    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    keep = [c for c in discover(cohort)][:2]
    for files in keep:
        for f in (files.ct, files.pet):
            shutil.copy(f, ds / "imagesTr" / f.name)
    bad = keep[0]
    ct = ds / "imagesTr" / bad.ct.name
    ct.write_bytes(ct.read_bytes()[: ct.stat().st_size // 2])  # truncated download
    out = tmp_path / "out"
    result = run("run", ds, "-o", out, "--workers", "1", "--no-features", "--no-crf",
                 "--device", "cpu")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{bad.case_id} failed: " in result.stdout
    assert f"1 failed ({bad.case_id};" in result.stdout
    rows = cohort_rows(out)
    assert rows[bad.case_id]["status"] == "failed"
    message = rows[bad.case_id]["message"]
    assert "CT" in message and bad.ct.name in message, message
    error = (out / "cases" / bad.case_id / "error.txt").read_text()
    assert error.startswith(f"{bad.case_id}: {message}")
    assert not (out / "cases" / bad.case_id / DONE_NAME).exists()
    good = keep[1].case_id
    assert rows[good]["status"] == "ok"
    assert "no clinical table" in rows[good]["message"]  # none given: no outcome, no crash
    assert not (out / "cases" / good / "outcome.json").exists()


def test_an_output_folder_inside_the_dataset_is_refused(cohort):
    before = digest(cohort)
    for out in (cohort / "results", cohort):
        result = run("run", cohort, "-o", out, "--no-features")
        assert result.returncode == 2
        assert "hecktor: error: " in result.stderr and "inside the dataset" in result.stderr
    assert digest(cohort) == before
    both = run("run", cohort, "-o", cohort.parent / "x", "--workers", "2",
               "--scheduler", "tcp://127.0.0.1:1")
    assert both.returncode == 2 and "not both" in both.stderr


def test_process_case_without_dask_writes_radiomics_and_pet_metrics(cohort, tmp_path):
    files = discover(cohort)[0]
    settings = RunSettings(device="cpu", crf=False, features=True,
                           clinical=str(cohort / "clinical.csv"))
    row = process_case(files, tmp_path, settings)
    assert row["status"] == "ok", row
    assert 0 <= row["hpv_probability"] <= 1
    folder = tmp_path / "cases" / files.case_id
    with open(folder / "features.csv", newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header[0] == "PatientID"
    for column in ("GTVp_volume_ml", "GTVp_SUVmax", "GTVp_SUVpeak", "GTVall_TLG"):
        assert column in header
    radiomics = [c for c in header if "original_" in c or "wavelet" in c]
    assert len(radiomics) > 100, header[:20]
    assert any(c.startswith("GTVp_") and "glcm" in c for c in header)
    prediction = json.loads((folder / "outcome.json").read_text())
    assert prediction["risk_group"] in ("low", "high")
    assert json.loads((folder / DONE_NAME).read_text())["settings"]["features"] is True
