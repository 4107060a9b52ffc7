"""DICOM CT and PET series: discovery, reading (HU, Bq/mL) and conversion of PET to SUVbw.

Series are found with pydicom (headers only) and read with SimpleITK/GDCM, which applies
RescaleSlope/RescaleIntercept slice by slice. Note: with SimpleITK's default output pixel
type the whole volume gets the pixel type chosen for the *first* slice, so a PET series
whose first slice has RescaleSlope 1 would be read as int16 and every other slice's
rescaled values truncated or wrapped; PET (and any series whose slices rescale differently)
is therefore read as float32. The geometry (LPS mm) is built from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, after checking that the slices form a regular
grid. SUVbw follows the QIBA vendor-neutral definition. Files are only ever read.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError

if TYPE_CHECKING:
    import pydicom

#: Keys accepted in ``overrides`` of :func:`suv_factor`.
SUV_OVERRIDE_KEYS = (
    "PatientWeight",
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
    "decay_s",
    "factor",
)
_FIX_VALUE = "enter it in the SUV factor fields"
_FIX_DECAY = "enter the decay time in the SUV factor fields"
_FIX_FACTOR = "enter the SUV factor by hand"
_INT16 = (-32768, 32767)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder."""

    series_uid: str
    modality: str  # "CT", "PT", ...
    description: str
    files: tuple[Path, ...]  # sorted along the slice normal


@dataclass(frozen=True)
class SUVFactor:
    """The factor from activity concentration (Bq/mL) to SUVbw and how it was obtained."""

    factor: float
    patient_weight_kg: float
    injected_dose_bq: float
    half_life_s: float
    injection_time: str
    reference_time: str
    decay_s: float
    decayed_dose_bq: float
    units: str
    decay_correction: str

    def as_dict(self) -> dict[str, object]:
        """JSON-serialisable fields (NaN, i.e. unknown, becomes None), for layer metadata."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in asdict(self).items()
        }


# --------------------------------------------------------------------------- discovery


def find_series(folder: str | Path) -> list[DicomSeries]:
    """All DICOM series under ``folder`` (recursively), each with its files in slice order.

    Raises :class:`HecktorInputError` if the folder does not exist or holds no DICOM file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HecktorInputError(f"{folder} is not a folder.")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_header(path)
        uid = str(ds.get("SeriesInstanceUID", "")).strip() if ds is not None else ""
        if uid:
            groups[uid].append((path, ds))
    if not groups:
        raise HecktorInputError(f"no DICOM files in {folder}.")
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        series.append(
            DicomSeries(
                series_uid=uid,
                modality=str(first.get("Modality", "")).strip().upper(),
                description=str(first.get("SeriesDescription", "")).strip(),
                files=tuple(path for path, _ in _sorted_slices(members)),
            )
        )
    return sorted(series, key=lambda s: (s.modality, s.description, s.series_uid))


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file (no pixel data), or None if ``path`` is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    except Exception:  # a corrupt or unreadable file is simply not part of any series
        return None
    # Old files without the 128-byte preamble: accept them only if they start with an
    # element of group 0002 or 0008 (little endian), so that random files are not forced.
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head not in (b"\x02\x00", b"\x08\x00"):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # forced parsing of a non-DICOM file warns a lot
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # anything pydicom raises on a non-DICOM file
        return None


def _sorted_slices(
    members: list[tuple[Path, pydicom.Dataset]],
) -> list[tuple[Path, pydicom.Dataset]]:
    """Members sorted along the slice normal (InstanceNumber then name where no geometry)."""

    def instance(item: tuple[Path, pydicom.Dataset]) -> tuple[int, str]:
        try:
            number = int(item[1].get("InstanceNumber", 0) or 0)
        except (TypeError, ValueError):
            number = 0
        return number, item[0].name

    try:
        normal = _normal(members[0][1])
        keys = [float(np.dot(_floats(ds, "ImagePositionPatient", 3), normal)) for _, ds in members]
    except HecktorInputError:
        return sorted(members, key=instance)
    order = sorted(range(len(members)), key=lambda i: (keys[i], instance(members[i])))
    return [members[i] for i in order]


# --------------------------------------------------------------------------- reading


def read_series(series: DicomSeries) -> sitk.Image:
    """Read an image series: rescale applied slice by slice, LPS geometry from the headers.

    PET, and any series whose slices rescale differently or by non-integers, is returned as
    float32 (PET in Bq/mL as stored); CT as int16 when the rescaled values fit. Raises
    :class:`HecktorInputError` for a single slice, slices of different sizes or
    orientations, duplicate positions, non-uniform spacing or gantry tilt.
    """
    headers = read_headers(series)
    return _read_pixels(series, headers)


def read_headers(series: DicomSeries) -> list[pydicom.Dataset]:
    """Headers of the files of ``series`` in order; raise if one cannot be read."""
    headers = []
    for path in series.files:
        ds = _read_header(Path(path))
        if ds is None:
            raise HecktorInputError(f"{path} is not a readable DICOM file.")
        headers.append(ds)
    return headers


def _read_pixels(series: DicomSeries, headers: list[pydicom.Dataset]) -> sitk.Image:
    """Pixel data of ``series`` as a 3D image with the geometry checked from ``headers``."""
    name = _series_name(series)
    if not headers:
        raise HecktorInputError(f"DICOM series {name} has no files.")
    frames = headers[0].get("NumberOfFrames", 1) or 1
    if len(headers) == 1 and int(frames) > 1:
        raise HecktorInputError(
            f"DICOM series {name} is a multi-frame (enhanced) object, which is not supported; "
            "export it as one file per slice."
        )
    if len(headers) < 2:
        raise HecktorInputError(
            f"DICOM series {name} has a single slice; a 3D volume needs at least two."
        )
    origin, spacing, direction, size = stack_geometry(headers, name)

    rescale = {
        (
            _number(ds, "RescaleSlope", 1.0),
            _number(ds, "RescaleIntercept", 0.0),
            ds.get("BitsStored"),
            ds.get("PixelRepresentation"),
        )
        for ds in headers
    }
    uniform = len(rescale) == 1
    integral = all(float(s).is_integer() and float(i).is_integer() for s, i, _, _ in rescale)
    float_output = series.modality == "PT" or not (uniform and integral)

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(p) for p in series.files])
    # sitkUnknown lets GDCM pick the type of the first slice: only safe when all slices
    # rescale alike (see the module docstring).
    reader.SetOutputPixelType(sitk.sitkFloat32 if float_output else sitk.sitkUnknown)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        detail = str(error).strip().splitlines()
        raise HecktorInputError(
            f"cannot read the pixel data of DICOM series {name}: "
            f"{detail[-1] if detail else 'unknown error'}."
        ) from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise HecktorInputError(f"DICOM series {name} is not a grey-level 3D image.")
    if tuple(image.GetSize()) != size:
        raise HecktorInputError(
            f"DICOM series {name} was read with size {image.GetSize()}, "
            f"but its headers describe {size}."
        )
    if not float_output and image.GetPixelID() != sitk.sitkInt16:
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        if _INT16[0] <= stats.GetMinimum() and stats.GetMaximum() <= _INT16[1]:
            image = sitk.Cast(image, sitk.sitkInt16)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def stack_geometry(
    headers: Sequence[pydicom.Dataset], name: str
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[int, int, int]]:
    """Origin, spacing, direction (row-major) and size (x, y, z) of a regular slice stack."""
    first = headers[0]
    orientation = _floats(first, "ImageOrientationPatient", 6)
    row, col = orientation[:3], orientation[3:]
    normal = _normal(first)
    pixel_spacing = _floats(first, "PixelSpacing", 2)
    rows, columns = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        raise HecktorInputError(f"DICOM series {name} has no Rows/Columns: it is not an image.")
    for ds in headers[1:]:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6), orientation, atol=1e-4):
            raise HecktorInputError(
                f"slices of DICOM series {name} have different ImageOrientationPatient."
            )
        if not np.allclose(_floats(ds, "PixelSpacing", 2), pixel_spacing, rtol=1e-4):
            raise HecktorInputError(f"slices of DICOM series {name} have different PixelSpacing.")
        if (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) != (rows, columns):
            raise HecktorInputError(f"slices of DICOM series {name} have different sizes.")
    positions = np.array([_floats(ds, "ImagePositionPatient", 3) for ds in headers])
    along = positions @ normal
    steps = np.diff(along)
    if np.any(np.abs(steps) < 1e-3):
        raise HecktorInputError(
            f"DICOM series {name} has several slices at the same position (several time "
            "frames or acquisitions in one series?); split it into one series per volume."
        )
    if np.any(steps < 0):
        raise HecktorInputError(f"files of DICOM series {name} are not in slice order.")
    slice_spacing = float(along[-1] - along[0]) / (len(headers) - 1)
    if np.max(np.abs(steps - slice_spacing)) > 1e-3 + 0.01 * slice_spacing:
        raise HecktorInputError(
            f"slice spacing of DICOM series {name} is not uniform (from {steps.min():.4g} to "
            f"{steps.max():.4g} mm): slices are missing or the series mixes acquisitions."
        )
    lateral = positions[-1] - positions[0] - (along[-1] - along[0]) * normal
    if np.linalg.norm(lateral) > 0.5 * min(pixel_spacing):
        raise HecktorInputError(
            f"DICOM series {name} is sheared (gantry tilt: slices are not stacked along their "
            "normal); resample it to an orthogonal grid first."
        )
    row_unit = row / np.linalg.norm(row)
    col_unit = col / np.linalg.norm(col)
    direction = np.column_stack([row_unit, col_unit, normal])
    origin = tuple(float(v) for v in positions[0])
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), slice_spacing)
    return (
        origin,
        spacing,
        tuple(float(v) for v in direction.ravel()),
        (columns, rows, len(headers)),
    )


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    """Unit slice normal (row x column direction) of a slice."""
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise HecktorInputError("ImageOrientationPatient (0020,0037) is degenerate.")
    return normal / norm


def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> np.ndarray:
    """A multi-valued numeric tag as an array of ``count`` floats; raise if absent or bad."""
    value = ds.get(keyword)
    try:
        values = np.array([float(v) for v in (value if value is not None else [])], dtype=float)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise HecktorInputError(
            f"{keyword} {_tag(keyword)} is missing or invalid in "
            f"{Path(getattr(ds, 'filename', '') or 'a DICOM file').name}."
        )
    return values


def _number(ds: pydicom.Dataset, keyword: str, default: float) -> float:
    """A numeric tag as float, ``default`` where absent or empty."""
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _series_name(series: DicomSeries) -> str:
    """A short name for messages."""
    label = f"'{series.description}' " if series.description else ""
    return f"{label}({series.modality or '?'}, {series.series_uid})"


# --------------------------------------------------------------------------- SUV


def suv_factor(
    ds: pydicom.Dataset, *, overrides: Mapping[str, float | None] | None = None
) -> SUVFactor:
    """The SUVbw factor of a PET slice header (QIBA vendor-neutral definition).

    Activity in Bq/mL (Units BQML, decay corrected to the series start as stored) times
    ``factor`` gives SUVbw. DecayCorrection START decays the dose from injection to
    SeriesDate/SeriesTime, or to the AcquisitionDate/Time of ``ds`` where that is earlier
    (pass the slice acquired first, as :func:`read_pet_suv` does); ADMIN means no decay.
    ``overrides`` (keys in :data:`SUV_OVERRIDE_KEYS`; None values ignored) replace header
    values: ``factor`` replaces the result entirely, ``decay_s`` the decay time. Raises
    :class:`HecktorInputError` naming the DICOM tag that is missing or unusable.
    """
    over = _check_overrides(overrides)
    units = _text(ds, "Units").upper()
    decay_correction = _text(ds, "DecayCorrection").upper()
    item = _radiopharmaceutical(ds)

    if "factor" in over:
        return _given_factor(over["factor"], ds, item, over, units, decay_correction)
    if not units:
        raise _missing("Units", _FIX_FACTOR)
    if units == "GML":  # already SUVbw (g/mL)
        return _given_factor(1.0, ds, item, over, units, decay_correction)
    if units != "BQML":
        raise HecktorInputError(
            f"cannot compute SUVbw: Units {_tag('Units')} is {units}, not BQML (Bq/mL); "
            f"{_FIX_FACTOR}."
        )

    weight = over.get("PatientWeight") or _required(ds, "PatientWeight")
    dose = over.get("RadionuclideTotalDose") or _required(item, "RadionuclideTotalDose")
    half_life = over.get("RadionuclideHalfLife") or _required(item, "RadionuclideHalfLife")

    if "decay_s" in over:
        decay_s = over["decay_s"]
        injection_time, reference_time = _soft_injection(ds, item), ""
    elif decay_correction == "ADMIN":
        decay_s = 0.0
        injection_time = _soft_injection(ds, item)
        reference_time = injection_time
    elif decay_correction == "START":
        injection, reference, date_known = _start_decay_times(ds, item)
        decay_s = (reference - injection).total_seconds()
        injection_time = _iso(injection, date_known)
        reference_time = _iso(reference, date_known)
    elif not decay_correction:
        raise _missing("DecayCorrection", _FIX_DECAY)
    elif decay_correction == "NONE":
        raise HecktorInputError(
            f"cannot compute SUVbw: DecayCorrection {_tag('DecayCorrection')} is NONE (images "
            f"not decay corrected), which would need a decay per slice; {_FIX_FACTOR}."
        )
    else:
        raise HecktorInputError(
            f"cannot compute SUVbw: DecayCorrection {_tag('DecayCorrection')} is "
            f"{decay_correction}, not START or ADMIN; {_FIX_DECAY}."
        )

    decayed = dose * 2.0 ** (-decay_s / half_life)
    return SUVFactor(
        factor=weight * 1000.0 / decayed,
        patient_weight_kg=weight,
        injected_dose_bq=dose,
        half_life_s=half_life,
        injection_time=injection_time,
        reference_time=reference_time,
        decay_s=decay_s,
        decayed_dose_bq=decayed,
        units=units,
        decay_correction=decay_correction,
    )


def _given_factor(
    factor: float,
    ds: pydicom.Dataset,
    item: pydicom.Dataset | None,
    over: Mapping[str, float],
    units: str,
    decay_correction: str,
) -> SUVFactor:
    """An SUVFactor with a factor not computed from the header; other fields for information."""
    return SUVFactor(
        factor=factor,
        patient_weight_kg=over.get("PatientWeight", _soft(ds, "PatientWeight")),
        injected_dose_bq=over.get("RadionuclideTotalDose", _soft(item, "RadionuclideTotalDose")),
        half_life_s=over.get("RadionuclideHalfLife", _soft(item, "RadionuclideHalfLife")),
        injection_time=_soft_injection(ds, item),
        reference_time="",
        decay_s=over.get("decay_s", math.nan),
        decayed_dose_bq=math.nan,
        units=units,
        decay_correction=decay_correction,
    )


def read_pet_suv(
    series: DicomSeries, *, overrides: Mapping[str, float | None] | None = None
) -> tuple[sitk.Image, SUVFactor]:
    """Read a PET series and convert it to SUVbw (float32); return it with its factor."""
    if series.modality != "PT":
        raise HecktorInputError(
            f"DICOM series {_series_name(series)} is not PET (Modality {series.modality})."
        )
    headers = read_headers(series)
    factor = suv_factor(_earliest_acquisition(headers), overrides=overrides)
    activity = _read_pixels(series, headers)
    return sitk.Cast(activity * factor.factor, sitk.sitkFloat32), factor


def read_dicom_study(
    folder: str | Path, *, suv_overrides: Mapping[str, float | None] | None = None
) -> tuple[sitk.Image, sitk.Image | None, SUVFactor | None]:
    """CT (HU) and PET (SUVbw, on its own grid) of a DICOM folder, with the SUV factor.

    Takes the CT series with the most slices and the PET series with the most slices
    (attenuation-corrected ones first). PET may be absent: then (ct, None, None).
    """
    series = find_series(folder)
    cts = [s for s in series if s.modality == "CT"]
    if not cts:
        found = ", ".join(sorted({s.modality or "?" for s in series}))
        raise HecktorInputError(f"no CT series in {folder} (found: {found}).")
    ct = read_series(max(cts, key=lambda s: len(s.files)))
    pets = [s for s in series if s.modality == "PT"]
    if not pets:
        return ct, None, None
    pet_series = max(pets, key=lambda s: (_attenuation_corrected(s), len(s.files)))
    pet, factor = read_pet_suv(pet_series, overrides=suv_overrides)
    return ct, pet, factor


def _attenuation_corrected(series: DicomSeries) -> bool:
    """Whether the first file says CorrectedImage includes ATTN."""
    ds = _read_header(Path(series.files[0]))
    corrected = ds.get("CorrectedImage", []) if ds is not None else []
    if isinstance(corrected, str):
        corrected = [corrected]
    return "ATTN" in {str(v).strip().upper() for v in corrected}


def _check_overrides(overrides: Mapping[str, float | None] | None) -> dict[str, float]:
    """Validated overrides: known keys, finite positive numbers (decay_s may be 0)."""
    checked: dict[str, float] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in SUV_OVERRIDE_KEYS:
            raise HecktorInputError(
                f"unknown SUV override {key!r}; use one of {', '.join(SUV_OVERRIDE_KEYS)}."
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        minimum_ok = number >= 0 if key == "decay_s" else number > 0
        if not (math.isfinite(number) and minimum_ok):
            raise HecktorInputError(f"SUV override {key} must be a positive number, not {value!r}.")
        checked[key] = number
    return checked


def _radiopharmaceutical(ds: pydicom.Dataset) -> pydicom.Dataset | None:
    """The first item of RadiopharmaceuticalInformationSequence, if any."""
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    return seq[0] if seq else None


def _text(ds: pydicom.Dataset | None, keyword: str) -> str:
    """A tag's value as stripped text ("" where absent)."""
    value = ds.get(keyword) if ds is not None else None
    if value is None:
        return ""
    return str(getattr(value, "original_string", value)).strip()


def _soft(ds: pydicom.Dataset | None, keyword: str) -> float:
    """A positive numeric tag, NaN where absent or unusable (for information only)."""
    try:
        return _required(ds, keyword)
    except HecktorInputError:
        return math.nan


def _required(ds: pydicom.Dataset | None, keyword: str) -> float:
    """A positive numeric tag; raise naming the tag where absent, zero or not a number."""
    text = _text(ds, keyword)
    if not text:
        raise _missing(keyword, _FIX_VALUE)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        if number == 0:
            raise _missing(keyword, _FIX_VALUE, "is 0")
        raise _missing(keyword, _FIX_VALUE, f"is {text!r}, not a positive number")
    return number


def _missing(keyword: str, fix: str, problem: str = "is missing") -> HecktorInputError:
    """The error for an unusable SUV tag."""
    return HecktorInputError(f"cannot compute SUVbw: {keyword} {_tag(keyword)} {problem}; {fix}.")


def _tag(keyword: str) -> str:
    """``(gggg,eeee)`` for a DICOM keyword."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""


def _earliest_acquisition(headers: Sequence[pydicom.Dataset]) -> pydicom.Dataset:
    """The header acquired first (AcquisitionDate/Time), else the first header."""
    best, best_time = headers[0], None
    for ds in headers:
        try:
            date = _parse_date(_text(ds, "AcquisitionDate") or _text(ds, "SeriesDate"), "")
            time = _parse_time(_text(ds, "AcquisitionTime"), "")
        except HecktorInputError:
            continue
        if time is None:
            continue
        stamp = dt.datetime.combine(date or dt.date.min, time)
        if best_time is None or stamp < best_time:
            best, best_time = ds, stamp
    return best


def _start_decay_times(
    ds: pydicom.Dataset, item: pydicom.Dataset | None
) -> tuple[dt.datetime, dt.datetime, bool]:
    """Injection and reference date-times for DecayCorrection START, and whether dates are known.

    The reference is SeriesDate/SeriesTime, or AcquisitionDate/Time where earlier (QIBA).
    """
    series_date = _parse_date(_text(ds, "SeriesDate"), "SeriesDate")
    if series_date is None:
        series_date = _parse_date(_text(ds, "StudyDate"), "StudyDate")
    series_time = _parse_time(_text(ds, "SeriesTime"), "SeriesTime")
    acq_date = _parse_date(_text(ds, "AcquisitionDate"), "AcquisitionDate") or series_date
    acq_time = _parse_time(_text(ds, "AcquisitionTime"), "AcquisitionTime")
    if series_time is None and acq_time is None:
        raise _missing("SeriesTime", _FIX_DECAY)

    start_text = _text(item, "RadiopharmaceuticalStartDateTime")
    inferred_date = False
    if start_text:
        start_date, start_time = _parse_datetime(start_text, "RadiopharmaceuticalStartDateTime")
    else:
        start_time = _parse_time(
            _text(item, "RadiopharmaceuticalStartTime"), "RadiopharmaceuticalStartTime"
        )
        if start_time is None:
            raise _missing("RadiopharmaceuticalStartTime", _FIX_DECAY)
        start_date, inferred_date = series_date, True

    date_known = series_date is not None or acq_date is not None or start_date is not None
    fallback = series_date or acq_date or start_date or dt.date(2000, 1, 1)
    candidates = []
    if series_time is not None:
        candidates.append(dt.datetime.combine(series_date or fallback, series_time))
    if acq_time is not None:
        candidates.append(dt.datetime.combine(acq_date or fallback, acq_time))
    reference = min(candidates)
    injection = dt.datetime.combine(start_date or fallback, start_time)
    if injection > reference and (inferred_date or start_date is None):
        injection -= dt.timedelta(days=1)  # injected before midnight, scanned after
    if injection > reference:
        raise HecktorInputError(
            f"cannot compute SUVbw: the injection time {_iso(injection, date_known)} is after "
            f"the scan time {_iso(reference, date_known)}; check RadiopharmaceuticalStartTime "
            f"{_tag('RadiopharmaceuticalStartTime')} or {_FIX_DECAY}."
        )
    return injection, reference, date_known


def _soft_injection(ds: pydicom.Dataset, item: pydicom.Dataset | None) -> str:
    """The injection date-time as ISO text where it can be read, else ""."""
    try:
        start_text = _text(item, "RadiopharmaceuticalStartDateTime")
        if start_text:
            date, time = _parse_datetime(start_text, "RadiopharmaceuticalStartDateTime")
        else:
            time = _parse_time(_text(item, "RadiopharmaceuticalStartTime"), "")
            date = _parse_date(_text(ds, "SeriesDate") or _text(ds, "StudyDate"), "")
    except HecktorInputError:
        return ""
    if time is None:
        return ""
    return _iso(dt.datetime.combine(date or dt.date(2000, 1, 1), time), date is not None)


def _iso(stamp: dt.datetime, date_known: bool) -> str:
    """ISO text of ``stamp``; only the time when the date is unknown."""
    return stamp.isoformat() if date_known else stamp.time().isoformat()


def _parse_date(text: str, keyword: str) -> dt.date | None:
    """A DICOM DA (``YYYYMMDD``, legacy ``YYYY.MM.DD``); None where empty."""
    digits = text.replace(".", "").replace("-", "").strip()
    if not digits:
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise _bad_time(keyword, text) from None


def _parse_time(text: str, keyword: str) -> dt.time | None:
    """A DICOM TM (``HHMMSS.FFFFFF``, partial or legacy ``HH:MM:SS``); None where empty."""
    text = text.replace(":", "").strip()
    if not text:
        return None
    main, _, fraction = text.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        raise _bad_time(keyword, text)
    hour, minute, second = int(main[:2]), int(main[2:4] or 0), int(main[4:6] or 0)
    micro = int((fraction + "000000")[:6]) if fraction else 0
    try:
        return dt.time(hour, minute, min(second, 59), micro)
    except ValueError:
        raise _bad_time(keyword, text) from None


def _parse_datetime(text: str, keyword: str) -> tuple[dt.date, dt.time]:
    """A DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``); the UTC offset is ignored."""
    core = text.strip()
    for sign in "+-":
        position = core.find(sign, 8)
        if position > 0:
            core = core[:position]
    date = _parse_date(core[:8], keyword)
    if date is None or len(core) < 8:
        raise _bad_time(keyword, text)
    time = _parse_time(core[8:], keyword) or dt.time(0, 0)
    return date, time


def _bad_time(keyword: str, text: str) -> HecktorInputError:
    """The error for an unreadable date or time tag."""
    return HecktorInputError(
        f"cannot compute SUVbw: {keyword} {_tag(keyword)} is {text!r}, not a valid DICOM "
        f"date/time; {_FIX_DECAY}."
    )
