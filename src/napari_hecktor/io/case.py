"""A PET/CT case in memory: CT (HU), PET (SUVbw, own grid), optional GTVp/GTVn label (CT grid)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError
from .dataset import CaseFiles, case_of_file, discover
from .geometry import Geometry, overlap_fraction, resample_to
from .volumes import check_label, read_image

#: Minimum fraction of the CT box that the PET box must cover to call them co-registered.
MIN_PET_OVERLAP = 0.10


@dataclass
class Case:
    """One patient's images. ``pet`` stays on its own grid; :attr:`pet_on_ct` is resampled."""

    case_id: str
    ct: sitk.Image
    pet: sitk.Image | None = None
    label: sitk.Image | None = None
    sources: dict[str, str] = field(default_factory=dict)
    pet_info: dict[str, Any] = field(default_factory=dict)
    layout: str = "files"

    @property
    def geometry(self) -> Geometry:
        """The CT grid: every mask and output of the case lives on it."""
        return Geometry.of(self.ct)

    @cached_property
    def pet_on_ct(self) -> sitk.Image | None:
        """PET in SUV resampled into CT space by physical coordinates (linear)."""
        if self.pet is None:
            return None
        return resample_to(sitk.Cast(self.pet, sitk.sitkFloat32), self.ct, interpolator="linear")

    def ct_array(self) -> np.ndarray:
        return sitk.GetArrayFromImage(self.ct)

    def pet_array(self) -> np.ndarray | None:
        """PET on the CT grid as a float32 (z, y, x) array."""
        pet = self.pet_on_ct
        return None if pet is None else sitk.GetArrayFromImage(pet)

    def label_array(self) -> np.ndarray | None:
        return None if self.label is None else sitk.GetArrayFromImage(self.label)


def check_pet_ct_pair(ct: sitk.Image, pet: sitk.Image, *, source: str = "") -> None:
    """Refuse a PET that does not overlap the CT in physical space."""
    covered = overlap_fraction(Geometry.of(ct), Geometry.of(pet))
    if covered < MIN_PET_OVERLAP:
        where = f" ({source})" if source else ""
        raise HecktorInputError(
            f"CT and PET do not overlap in space{where}: the PET covers {covered:.0%} of the CT "
            f"(CT {Geometry.of(ct).describe()}; PET {Geometry.of(pet).describe()})"
        )


def load_case(
    ct: str | Path,
    pet: str | Path | None = None,
    label: str | Path | None = None,
    *,
    case_id: str | None = None,
    label_is_gtvt: bool = False,
    layout: str = "files",
) -> Case:
    """Read and validate a case from files (or DICOM folders). Nothing is written."""
    ct_path = Path(ct)
    ct_image = read_image(ct_path, what="CT")
    pet_image = read_image(pet, what="PET") if pet is not None else None
    if pet_image is not None:
        check_pet_ct_pair(ct_image, pet_image, source=f"{ct_path.name} / {Path(pet).name}")
        pet_image = sitk.Cast(pet_image, sitk.sitkFloat32)
    label_image = None
    if label is not None:
        label_image = read_image(label, what="label")
        if label_is_gtvt:  # 2021 binary GTVt: any non-zero is primary tumour
            label_image = sitk.Cast(label_image > 0, sitk.sitkUInt8)
        label_image = check_label(label_image, Geometry.of(ct_image), source=Path(label).name)
    sources = {"ct": str(ct_path)}
    if pet is not None:
        sources["pet"] = str(pet)
    if label is not None:
        sources["label"] = str(label)
    return Case(
        case_id=case_id or ct_path.name.split("__")[0].split(".")[0],
        ct=ct_image,
        pet=pet_image,
        label=label_image,
        sources=sources,
        layout=layout,
    )


def load_dicom_case(folder: str | Path, *, case_id: str | None = None) -> Case:
    """A DICOM folder with a CT and (optionally) a PET series; PET converted to SUVbw."""
    from .dicom import read_dicom_study

    folder = Path(folder)
    ct_image, pet_image, factor = read_dicom_study(folder)
    if pet_image is not None:
        check_pet_ct_pair(ct_image, pet_image, source=folder.name)
    return Case(
        case_id=case_id or folder.name,
        ct=ct_image,
        pet=pet_image,
        sources={"ct": str(folder), "pet": str(folder)},
        pet_info={"suv": factor.as_dict()} if factor is not None else {},
        layout="dicom",
    )


def load_case_files(files: CaseFiles) -> Case:
    """Load a discovered case."""
    if files.layout == "dicom":
        return load_dicom_case(files.ct, case_id=files.case_id)
    return load_case(
        files.ct,
        files.pet,
        files.label,
        case_id=files.case_id,
        label_is_gtvt=files.label_is_gtvt,
        layout=files.layout,
    )


def open_path(path: str | Path) -> tuple[Case, list[CaseFiles]]:
    """Open whatever the user pointed at: a file of a case, a case folder, a dataset or DICOM.

    Returns the case that was loaded (the first one for a dataset) and all cases found, so
    that a caller can offer the rest (next/previous).
    """
    path = Path(path)
    cases = [case_of_file(path)] if path.is_file() else discover(path)
    return load_case_files(cases[0]), cases
