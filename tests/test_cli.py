"""The ``hecktor`` command line: help, info, and one clear line for bad input."""

from __future__ import annotations

import subprocess
import sys

from conftest import digest

HECKTOR = [sys.executable, "-m", "napari_hecktor.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*HECKTOR, *args], capture_output=True, text=True, check=False)


def test_help_lists_the_verbs():
    out = run("--help")
    assert out.returncode == 0
    for verb in ("view", "phantom", "info"):
        assert verb in out.stdout


def test_info_lists_cases(small_case):
    out = run("info", str(small_case["ct"].parent), "--load")
    assert out.returncode == 0, out.stderr
    assert "CASE-001" in out.stdout and "40x48x20 voxels" in out.stdout


def test_bad_input_exits_with_one_line_and_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    before = digest(tmp_path)
    out = run("info", str(tmp_path / "empty"))
    assert out.returncode == 2
    expected = f"hecktor: error: the folder {tmp_path / 'empty'} is empty"
    assert out.stderr.strip().splitlines() == [expected]
    assert "Traceback" not in out.stderr
    assert digest(tmp_path) == before


def test_phantom_writes_a_cohort_and_refuses_to_overwrite_it(tmp_path):
    out = run("phantom", str(tmp_path / "cohort"), "--cases", "2", "--empty", "1",
              "--centers", "2", "--seed", "3")
    assert out.returncode == 0, out.stderr
    listing = run("info", str(tmp_path / "cohort"))
    assert listing.stdout.startswith("3 case(s)") and "hecktor2022" in listing.stdout
    before = digest(tmp_path / "cohort")
    again = run("phantom", str(tmp_path / "cohort"), "--cases", "2")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert digest(tmp_path / "cohort") == before


def test_features_writes_one_row_and_protects_inputs(small_case, tmp_path):
    out = tmp_path / "features.csv"
    result = run("features", "--ct", str(small_case["ct"]), "--pet", str(small_case["pet"]),
                 "--mask", str(small_case["label"]), "-o", str(out), "--id", "P1",
                 "--workers", "1")
    assert result.returncode == 0, result.stderr
    header, row = out.read_text().splitlines()
    columns = header.split(",")
    assert columns[0] == "PatientID" and row.startswith("P1,")
    assert "GTVp_PET_original_firstorder_Maximum" in columns and "GTVp_SUVpeak" in columns
    before = digest(small_case["label"])
    again = run("features", "--ct", str(small_case["ct"]), "--pet", str(small_case["pet"]),
                "--mask", str(small_case["label"]), "-o", str(small_case["label"]))
    assert again.returncode == 2 and digest(small_case["label"]) == before


def test_outcome_verbs_train_and_predict_on_the_demo_table(tmp_path):
    from napari_hecktor.outcome.demo import DEMO_MODEL_DIR

    table = DEMO_MODEL_DIR / "demo_table.csv"
    trained = run("train-outcome", str(table), "-o", str(tmp_path / "m"), "--models",
                  "cox_clinical,cox", "--folds", "3", "--target", "survival")
    assert trained.returncode == 0, trained.stderr
    assert "cox" in trained.stdout
    out = tmp_path / "pred.csv"
    predicted = run("predict-outcome", str(table), "--model", str(tmp_path / "m"), "-o", str(out))
    assert predicted.returncode == 0, predicted.stderr
    header = out.read_text().splitlines()[0]
    assert header.startswith("PatientID,") and "risk_group" in header
