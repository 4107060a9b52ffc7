"""Shared fixtures: small synthetic volumes with known geometry, and the sample case."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROTATED_DIRECTION = (
    # 20 degrees about z: a real-world oblique acquisition
    0.9396926207859084, -0.3420201433256687, 0.0,
    0.3420201433256687, 0.9396926207859084, 0.0,
    0.0, 0.0, 1.0,
)  # fmt: skip


def make_image(
    array: np.ndarray,
    spacing=(1.0, 1.0, 3.0),
    origin=(-40.0, -35.0, -120.0),
    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
) -> sitk.Image:
    """A SimpleITK image from a (z, y, x) array with the given geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


@pytest.fixture
def small_case(tmp_path: Path) -> dict[str, Path]:
    """CT (HU), PET (SUV, own coarser grid and origin) and label files of a tiny case."""
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 10, size=(20, 48, 40)).astype(np.int16)
    ct[:, :, :4] = -1000
    label = np.zeros(ct.shape, dtype=np.uint8)
    label[8:12, 20:28, 16:24] = 1
    label[8:11, 30:34, 28:32] = 2
    pet = rng.uniform(0.5, 1.0, size=(20, 14, 12)).astype(np.float32)
    files = {
        "ct": tmp_path / "CASE-001__CT.nii.gz",
        "pet": tmp_path / "CASE-001__PT.nii.gz",
        "label": tmp_path / "CASE-001.nii.gz",
    }
    sitk.WriteImage(make_image(ct), str(files["ct"]))
    sitk.WriteImage(make_image(pet, spacing=(4.0, 4.0, 3.0), origin=(-42.0, -37.0, -121.0)),
                    str(files["pet"]))
    sitk.WriteImage(make_image(label), str(files["label"]))
    return files


def digest(path: Path) -> str:
    """Content hash of a file or of every file under a folder (to prove inputs are untouched)."""
    h = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()
