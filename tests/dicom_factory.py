"""Write small synthetic DICOM CT and PET series with pydicom, for tests.

One file per slice, identity orientation, explicit VR little endian. CT is stored as
int16 with RescaleIntercept -1024 (so the intercept matters); PET as int16 with a
per-slice RescaleSlope (so per-slice rescale matters). The returned paths are in slice
(z index) order, whatever order and names the files were written with, so that tests of
DICOM-SEG / RTSTRUCT can reference the slices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

SOP_CLASSES = {"CT": CTImageStorage, "PT": PositronEmissionTomographyImageStorage}
INT16_MAX = 32767
CT_INTERCEPT = -1024.0
RADIOPHARMACEUTICAL_KEYWORDS = (
    "Radiopharmaceutical",
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
    "RadionuclidePositronFraction",
    "RadiopharmaceuticalStartTime",
    "RadiopharmaceuticalStartDateTime",
)


def write_series(
    folder: str | Path,
    array_zyx: np.ndarray,
    *,
    modality: str,
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "HECKTOR-TEST-001",
    patient_weight: float = 75.0,
    dose_bq: float = 3.7e8,
    half_life_s: float = 6586.2,
    injection_time: str = "100000",
    injection_datetime: str | None = None,
    series_date: str = "20240102",
    series_time: str = "110000",
    acquisition_times: Sequence[str] | None = None,
    units: str = "BQML",
    decay_correction: str = "START",
    rescale_slopes: Sequence[float] | None = None,
    slice_positions_z: Sequence[float] | None = None,
    series_description: str | None = None,
    series_number: int = 1,
    shuffle_seed: int | None = None,
    omit: Iterable[str] = (),
) -> list[Path]:
    """Write ``array_zyx`` as a CT (values in HU) or PT (values in ``units``) series.

    Geometry: ``spacing_xyz`` and ``origin_xyz`` in LPS mm, identity orientation; slice
    ``k`` sits at z = ``origin_z + k * spacing_z`` unless ``slice_positions_z`` gives the
    positions. ``rescale_slopes`` gives one RescaleSlope per slice (default: CT 1, PT the
    slice maximum / 32767). ``acquisition_times`` gives one AcquisitionTime per slice
    (default ``series_time``). ``injection_datetime`` (``YYYYMMDDHHMMSS``) also writes
    RadiopharmaceuticalStartDateTime. ``shuffle_seed`` writes the files in a random order
    with random names and instance numbers. ``omit`` lists keywords to leave out (top
    level or inside RadiopharmaceuticalInformationSequence). Returns the paths in z order.
    """
    modality = modality.upper()
    if modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASSES)}, not {modality!r}")
    array = np.asarray(array_zyx, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"array_zyx must be 3D, got shape {array.shape}")
    nz, ny, nx = array.shape
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    omit = set(omit)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    sx, sy, sz = (float(v) for v in spacing_xyz)
    ox, oy, oz = (float(v) for v in origin_xyz)
    if slice_positions_z is None:
        positions = [oz + k * sz for k in range(nz)]
    else:
        positions = [float(v) for v in slice_positions_z]
        if len(positions) != nz:
            raise ValueError("slice_positions_z needs one position per slice")
    slopes = [float(_ds(s)) for s in _slopes(array, modality, rescale_slopes)]
    intercept = CT_INTERCEPT if modality == "CT" else 0.0
    acq_times = list(acquisition_times) if acquisition_times is not None else [series_time] * nz
    if len(acq_times) != nz:
        raise ValueError("acquisition_times needs one time per slice")

    order = np.arange(nz)
    instance_numbers = np.arange(1, nz + 1)
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        order = rng.permutation(nz)
        instance_numbers = rng.permutation(nz) + 1
    prefix = "CT" if modality == "CT" else "PT"
    paths = [
        folder / f"{prefix}_{series_uid[-8:]}_{int(instance_numbers[k]):04d}.dcm" for k in range(nz)
    ]
    for k in order:
        raw = np.rint((array[k] - intercept) / slopes[k])
        if raw.min() < -INT16_MAX - 1 or raw.max() > INT16_MAX:
            raise ValueError(f"slice {k} does not fit int16 with RescaleSlope {slopes[k]}")
        ds = _dataset(modality)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PatientName = "Test^Phantom"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.PatientWeight = _ds(patient_weight)
        ds.StudyDate = series_date
        ds.StudyTime = series_time
        ds.SeriesDate = series_date
        ds.SeriesTime = series_time
        ds.AcquisitionDate = series_date
        ds.AcquisitionTime = acq_times[k]
        ds.ContentDate = series_date
        ds.ContentTime = series_time
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "napari-hecktor tests"
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description or f"synthetic {modality}"
        ds.InstanceNumber = int(instance_numbers[k])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(ox), _ds(oy), _ds(positions[k])]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = _ds(positions[k])
        ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (y), column spacing (x)
        ds.SliceThickness = _ds(sz)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ny
        ds.Columns = nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = _ds(slopes[k])
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "HU" if modality == "CT" else units
        ds.PixelData = raw.astype("<i2").tobytes()
        if modality == "CT":
            ds.KVP = "120"
        else:
            ds.Units = units
            ds.DecayCorrection = decay_correction
            ds.CorrectedImage = ["ATTN", "DECY"]
            ds.SeriesType = ["STATIC", "IMAGE"]
            ds.CountsSource = "EMISSION"
            ds.NumberOfSlices = nz
            ds.ImageIndex = int(k) + 1
            ds.DecayFactor = "1"
            item = Dataset()
            item.Radiopharmaceutical = "Fluorodeoxyglucose"
            item.RadionuclideTotalDose = _ds(dose_bq)
            item.RadionuclideHalfLife = _ds(half_life_s)
            item.RadionuclidePositronFraction = "0.97"
            item.RadiopharmaceuticalStartTime = injection_time
            if injection_datetime is not None:
                item.RadiopharmaceuticalStartDateTime = injection_datetime
            for keyword in omit & set(RADIOPHARMACEUTICAL_KEYWORDS):
                if keyword in item:
                    delattr(item, keyword)
            ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
        for keyword in omit:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(paths[k], enforce_file_format=True)
    return paths


def _slopes(
    array: np.ndarray, modality: str, rescale_slopes: Sequence[float] | None
) -> list[float]:
    """One RescaleSlope per slice: given, 1 for CT, or slice max / 32767 for PET."""
    if rescale_slopes is not None:
        slopes = [float(s) for s in rescale_slopes]
        if len(slopes) != array.shape[0] or min(slopes) <= 0:
            raise ValueError("rescale_slopes needs one positive slope per slice")
        return slopes
    if modality == "CT":
        return [1.0] * array.shape[0]
    peaks = np.abs(array).reshape(array.shape[0], -1).max(axis=1)
    return [float(p) / INT16_MAX if p > 0 else 1.0 for p in peaks]


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters for ``value``."""
    return f"{float(value):.10g}"


def _dataset(modality: str) -> Dataset:
    """An empty dataset with the file meta for one ``modality`` image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.Modality = modality
    return ds
