"""Packaging: manifest imports, npe2 validation, napari.yaml in the wheel, Qt-free core."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import npe2
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_manifest_python_name_imports():
    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == "napari-hecktor"
    manifest.validate_imports()  # raises if any python_name does not resolve
    assert len(manifest.contributions.commands) >= 4


def test_installed_plugin_is_discovered_by_npe2():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-hecktor"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_package_manifest_is_the_root_manifest():
    packaged = ROOT / "src" / "napari_hecktor" / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()


@pytest.mark.slow
def test_wheel_contains_the_manifest(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("napari_hecktor-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_hecktor/napari.yaml" in names
        for bundled in ("resources/models/mmpl_demo/model.safetensors",
                        "resources/models/mmpl_demo/model_card.json",
                        "resources/models/normresse_demo/model.safetensors",
                        "resources/models/normresse_demo/model_card.json",
                        "resources/outcome/demo/outcome_model.json",
                        "features/radiomics_params.yaml"):
            assert f"napari_hecktor/{bundled}" in names, bundled
        text = zf.read("napari_hecktor/napari.yaml").decode()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari_hecktor:napari.yaml" in zf.read(entry_points).decode()
    assert text == (ROOT / "napari.yaml").read_text()


def test_core_imports_without_qt_or_torch():
    code = (
        "import sys\n"
        "import napari_hecktor.cli, napari_hecktor.io.case, napari_hecktor.io.dataset\n"
        "import napari_hecktor.display, napari_hecktor._reader, napari_hecktor._writer\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('PyQt6', 'PyQt5', 'PySide6', 'qtpy', 'torch', 'radiomics')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
