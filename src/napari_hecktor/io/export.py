"""Export of GTVp/GTVn masks to DICOM (SEG, RTSTRUCT) and of results tables (CSV, JSON).

Masks are (z, y, x) uint8 arrays on the CT grid (0 background, 1 GTVp, 2 GTVn). For DICOM
the CT grid is the CT series as :func:`~napari_hecktor.io.dicom.read_series` reads it: slice
``k`` of the array is file ``k`` of :attr:`DicomSeries.files` (sorted along the slice
normal), row ``j`` and column ``i`` are DICOM rows and columns. Both writers reference the
CT instances slice by slice.

- DICOM-SEG: highdicom, BINARY, one segment per non-empty label (GTVp first), coded with
  SNOMED CT: category "Morphologically abnormal structure", type "Neoplasm, Primary"
  (GTVp) or "Neoplasm, Secondary" with the anatomic region "Lymph node" (GTVn). Segments
  are numbered 1, 2... in that order, so a SEG with only GTVn has it as segment 1; readers
  should go by label or code (as :func:`read_dicom_seg` does), not by number.
- RTSTRUCT: rt-utils builds the structure set and its ROIs, but the contour points are
  computed here: rt-utils puts the vertices on the centres of the boundary pixels, so every
  reader that fills the pixels whose centres lie inside the polygon (plastimatch, treatment
  planning systems) loses half a pixel on every side (Dice 0.87 for an 8x8-pixel node),
  and it swaps row and column spacing for non-square pixels (rt-utils issue 92). Here each
  outline runs a quarter pixel inside the pixel edges: centre-inside readers get the mask
  back exactly, and so does rt-utils' own reader (vertices rounded, boundary filled).
  Holes are inner contours (even-odd rule). :func:`read_rtstruct` fills by pixel centre.

Outputs are written atomically (temporary file in the same folder, then a rename). No file
of the inputs is ever overwritten, nor any existing file inside an input DICOM folder; an
existing output is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import math
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError
from .dicom import DicomSeries, find_series, read_headers, stack_geometry
from .geometry import Geometry

if TYPE_CHECKING:
    import pydicom

    from .case import Case

#: ROI / segment names of labels 1 and 2, and their display colours (GTVp red, GTVn blue).
LABEL_NAMES = ("GTVp", "GTVn")
LABEL_COLORS = ((255, 0, 0), (0, 0, 255))
#: Series numbers given to the exported objects (arbitrary, high to sort after the images).
SEG_SERIES_NUMBER = 901
RTSTRUCT_SERIES_NUMBER = 902
#: Modalities of the non-image objects that may share a folder with the CT.
_NON_IMAGE = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG"}

# --------------------------------------------------------------------------- the CT source


@dataclass(frozen=True)
class CTReference:
    """A CT series resolved for export: headers in slice order, grid, paths to protect."""

    series: DicomSeries
    headers: tuple[pydicom.Dataset, ...]  # without pixel data, in the order of series.files
    geometry: Geometry
    protected: tuple[Path, ...]  # files and folders of the inputs

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) shape of a mask on this grid."""
        return self.geometry.shape

    @property
    def sop_instance_uids(self) -> list[str]:
        """SOPInstanceUID of each slice, in z order."""
        return [str(ds.SOPInstanceUID) for ds in self.headers]


def resolve_ct(source: Case | DicomSeries | str | Path) -> CTReference:
    """The CT series to export against: a DICOM-loaded case, a series or a DICOM folder.

    A folder gives its CT series with the most slices (the one :func:`read_dicom_study`
    loads). Raises :class:`HecktorInputError` for a case that was not loaded from DICOM,
    a folder without CT, or a DICOM folder that no longer matches the loaded case.
    """
    case_geometry = None
    protected: list[Path] = []
    if isinstance(source, DicomSeries):
        series = source
        protected.extend(Path(p).parent for p in series.files)
    else:
        if hasattr(source, "layout") and hasattr(source, "sources"):  # a Case
            if source.layout != "dicom" or not source.sources.get("ct"):
                raise HecktorInputError(
                    "DICOM export needs a case loaded from DICOM (this case's layout is "
                    f"'{source.layout}'); save the mask as NIfTI instead."
                )
            case_geometry = source.geometry
            protected.extend(_source_paths(source.sources))
            folder = Path(source.sources["ct"])
        else:
            folder = Path(source)
        if folder.is_file():
            folder = folder.parent
        series = _ct_of_folder(folder)
        protected.append(folder)
    headers = read_headers(series)
    for ds in headers:
        if not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID"):
            raise HecktorInputError(
                f"{Path(ds.filename).name} has no SOPInstanceUID/SOPClassUID: the series "
                "cannot be referenced."
            )
    if len(headers) < 2:
        raise HecktorInputError("DICOM export needs a CT series of at least two slices.")
    origin, spacing, direction, size = stack_geometry(headers, series.series_uid)
    geometry = Geometry(size=size, spacing=spacing, origin=origin, direction=direction)
    if case_geometry is not None and not geometry.matches(case_geometry):
        raise HecktorInputError(
            f"the CT series in the DICOM folder ({geometry.describe()}) is not the CT of the "
            f"loaded case ({case_geometry.describe()}); was the folder changed? Reload the case."
        )
    protected.extend(Path(p) for p in series.files)
    return CTReference(series, tuple(headers), geometry, tuple(dict.fromkeys(protected)))


def _ct_of_folder(folder: Path) -> DicomSeries:
    """The CT series with the most slices in ``folder``."""
    series = find_series(folder)
    cts = [s for s in series if s.modality == "CT"]
    if not cts:
        found = ", ".join(sorted({s.modality or "?" for s in series}))
        raise HecktorInputError(f"no CT series in {folder} (found: {found}).")
    return max(cts, key=lambda s: len(s.files))


def _source_paths(sources: Mapping[str, Any]) -> list[Path]:
    """The paths of a case's ``sources`` mapping (files or folders)."""
    return [Path(str(v)).expanduser() for v in sources.values() if v]


def protected_paths(
    protected: Case | Mapping[str, Any] | Iterable[str | Path] | None,
) -> list[Path]:
    """Paths never to overwrite: a case's sources, a ``sources`` mapping or a list of paths.

    A folder in the list protects every file that exists inside it.
    """
    if protected is None:
        return []
    if hasattr(protected, "sources") and hasattr(protected, "layout"):
        return _source_paths(protected.sources)
    if isinstance(protected, Mapping):
        return _source_paths(protected)
    if isinstance(protected, (str, os.PathLike)):
        return [Path(protected).expanduser()]
    return [Path(p).expanduser() for p in protected if p]


def check_output_path(
    path: str | Path, protected: Iterable[str | Path] = (), *, overwrite: bool = False
) -> Path:
    """The resolved output path; raise if it is an input or exists (without ``overwrite``).

    An input file, or any existing file inside a protected folder, is refused even with
    ``overwrite``: writing a *new* file next to the inputs is allowed.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise HecktorInputError(f"{target} is a folder; give a file name to write.")
    resolved = target.resolve()
    for item in protected:
        p = Path(item).expanduser()
        if not p.exists():
            continue
        p = p.resolve()
        if p == resolved:
            raise HecktorInputError(
                f"refusing to overwrite the input file {target}; choose another file name."
            )
        if p.is_dir() and resolved.exists() and resolved.is_relative_to(p):
            raise HecktorInputError(
                f"refusing to overwrite {target}: it is an existing file in the input folder "
                f"{p}; choose a new file name."
            )
    if resolved.exists() and not overwrite:
        raise HecktorInputError(f"{target} already exists; choose another name or overwrite it.")
    return resolved


def atomic_write(target: Path, write: Callable[[Path], None], *, suffix: str = "") -> Path:
    """Call ``write(temporary_path)`` then rename the temporary file onto ``target``.

    The temporary file is created in the target's folder (same file system, so the rename
    is atomic) with the permissions a new file normally gets; it is removed on failure.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".hecktor-{uuid.uuid4().hex}{suffix}.part"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def _labels_on_grid(labels: np.ndarray | sitk.Image, ct: CTReference) -> np.ndarray:
    """``labels`` as a (z, y, x) uint8 array with values 0, 1, 2 on the CT grid."""
    if isinstance(labels, sitk.Image):
        if not Geometry.of(labels).matches(ct.geometry):
            raise HecktorInputError(
                f"the mask ({Geometry.of(labels).describe()}) is not on the grid of the CT "
                f"series ({ct.geometry.describe()})."
            )
        labels = sitk.GetArrayFromImage(labels)
    array = np.asarray(labels)
    if array.shape != ct.shape:
        raise HecktorInputError(
            f"the mask has shape {array.shape} (z, y, x) but the CT series has "
            f"{ct.shape}: masks must be on the CT grid."
        )
    if array.dtype != bool and not np.issubdtype(array.dtype, np.integer):
        raise HecktorInputError(f"the mask must hold integer labels, not {array.dtype}.")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    outside = (array < 0) | (array > 2)
    if outside.any():
        extra = np.unique(array[outside]).tolist()
        shown = ", ".join(str(v) for v in extra[:5])
        raise HecktorInputError(
            f"the mask has values outside 0 (background), 1 (GTVp), 2 (GTVn): {shown}."
        )
    if not np.any(array):
        raise HecktorInputError("nothing to export: the GTVp/GTVn mask is empty.")
    return array.astype(np.uint8, copy=False)


def _software_version() -> str:
    from .._version import __version__

    return __version__


def _require(module: str, what: str) -> Any:
    """Import ``module`` or raise an error that says which package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = {"highdicom": "highdicom", "rt_utils": "rt-utils"}.get(module, module)
        raise HecktorInputError(
            f"{what} needs the {package} package: pip install {package}"
        ) from error


# --------------------------------------------------------------------------- DICOM-SEG


def _segment_codes() -> dict[int, dict[str, Any]]:
    """SNOMED CT codes of the two labels."""
    from pydicom.sr.codedict import codes

    abnormal = codes.SCT.MorphologicallyAbnormalStructure  # 49755003
    return {
        1: {"category": abnormal, "type": codes.SCT.NeoplasmPrimary, "regions": None},
        2: {
            "category": abnormal,
            "type": codes.SCT.NeoplasmSecondary,  # 14799000, metastatic neoplasm
            "regions": [codes.SCT.LymphNode],  # 59441001
        },
    }


def write_dicom_seg(
    labels: np.ndarray | sitk.Image,
    ct_series: Case | DicomSeries | str | Path,
    out_path: str | Path,
    *,
    algorithm: str = "napari-hecktor",
    model_label: str = "",
    corrected: bool = False,
    manufacturer: str = "napari-hecktor",
    manufacturer_model_name: str = "napari-hecktor",
    series_description: str = "GTVp/GTVn segmentation",
    series_number: int = SEG_SERIES_NUMBER,
    content_creator: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the GTVp/GTVn mask as a DICOM Segmentation (BINARY) referencing the CT slices.

    ``ct_series`` is a case loaded from DICOM, its CT :class:`DicomSeries` or the DICOM
    folder. ``corrected`` marks masks edited by hand after the model (SEMIAUTOMATIC instead
    of AUTOMATIC). ``model_label`` (the model that produced the mask) goes into the
    algorithm parameters. Empty labels are left out and empty frames omitted; an empty
    mask raises :class:`HecktorInputError`. Returns the path written.
    """
    hd = _require("highdicom", "DICOM-SEG export")
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    ct = resolve_ct(ct_series)
    array = _labels_on_grid(labels, ct)
    target = check_output_path(out_path, ct.protected, overwrite=overwrite)

    present = [value for value in (1, 2) if np.any(array == value)]
    parameters = {"model": model_label} if model_label else None
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm,
        family=codes.cid7162.ArtificialIntelligence,
        version=_software_version(),
        parameters=parameters,
    )
    coded = _segment_codes()
    descriptions = []
    pixels = np.zeros(array.shape, dtype=np.uint8)
    for number, value in enumerate(present, start=1):
        pixels[array == value] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=LABEL_NAMES[value - 1],
                segmented_property_category=coded[value]["category"],
                segmented_property_type=coded[value]["type"],
                algorithm_type="SEMIAUTOMATIC" if corrected else "AUTOMATIC",
                algorithm_identification=algorithm_id,
                anatomic_regions=coded[value]["regions"],
                display_color=hd.color.CIELabColor.from_rgb(*LABEL_COLORS[value - 1]),
                tracking_id=LABEL_NAMES[value - 1],
                tracking_uid=generate_uid(),
            )
        )
    try:
        seg = hd.seg.Segmentation(
            source_images=list(ct.headers),
            pixel_array=pixels,  # frame k is derived from ct.headers[k]
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=int(series_number),
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=manufacturer,
            manufacturer_model_name=manufacturer_model_name,
            software_versions=_software_version(),
            device_serial_number="0",
            content_label="GTV",
            content_description="GTVp/GTVn" + (f" ({model_label})" if model_label else ""),
            content_creator_name=content_creator,
            series_description=series_description,
            omit_empty_frames=True,
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise HecktorInputError(f"cannot build the DICOM Segmentation: {error}") from error
    return atomic_write(target, lambda tmp: seg.save_as(tmp), suffix=".dcm")


def read_dicom_seg(seg_path: str | Path, ct_series: Case | DicomSeries | str | Path) -> np.ndarray:
    """A DICOM Segmentation of the CT series as a (z, y, x) uint8 GTVp/GTVn mask.

    Segments are matched by label (GTVp, GTVn, case-insensitive), else by property type
    (Neoplasm, Primary -> 1; Neoplasm, Secondary -> 2); other segments are ignored. Where
    segments overlap, GTVp wins.
    """
    hd = _require("highdicom", "Reading DICOM-SEG")
    ct = resolve_ct(ct_series)
    try:
        seg = hd.seg.segread(str(seg_path))
    except Exception as error:  # anything pydicom/highdicom raise on a bad file
        raise HecktorInputError(
            f"cannot read {Path(seg_path).name} as DICOM-SEG: {error}"
        ) from error
    wanted: dict[int, int] = {}
    codes = _segment_codes()
    for item in seg.SegmentSequence:
        label = str(item.get("SegmentLabel", "")).strip().lower()
        value = {name.lower(): i + 1 for i, name in enumerate(LABEL_NAMES)}.get(label)
        if value is None:
            kind = item.SegmentedPropertyTypeCodeSequence[0]
            for v, code in codes.items():
                if str(kind.CodeValue) == code["type"].value:
                    value = v
        if value is not None and value not in wanted.values():
            wanted[int(item.SegmentNumber)] = value
    if not wanted:
        found = ", ".join(str(s.get("SegmentLabel", "?")) for s in seg.SegmentSequence)
        raise HecktorInputError(f"{Path(seg_path).name} has no GTVp/GTVn segment (found: {found}).")
    try:
        pixels = seg.get_pixels_by_source_instance(
            ct.sop_instance_uids, segment_numbers=list(wanted), skip_overlap_checks=True
        )
    except (ValueError, KeyError, RuntimeError) as error:
        raise HecktorInputError(
            f"{Path(seg_path).name} does not fit this CT series: {error}"
        ) from error
    labels = np.zeros(ct.shape, dtype=np.uint8)
    for index, value in sorted(enumerate(wanted.values()), key=lambda t: -t[1]):
        labels[pixels[..., index] > 0] = value  # GTVn first, GTVp on top
    return labels


# --------------------------------------------------------------------------- RTSTRUCT


@contextlib.contextmanager
def _series_only_folder(series: DicomSeries) -> Iterator[Path]:
    """A temporary folder holding only ``series`` (links, or copies where links fail).

    rt-utils loads every image file under the folder it is given; the user's folder may
    also hold PET, earlier exports... and it must never be written to.
    """
    with tempfile.TemporaryDirectory(prefix="hecktor-series-") as tmp:
        for index, path in enumerate(series.files):
            link = Path(tmp) / f"{index:05d}.dcm"
            try:
                os.symlink(Path(path).resolve(), link)
            except OSError:
                shutil.copyfile(path, link)
        yield Path(tmp)


def _rt_utils_series(rt_series: Sequence[pydicom.Dataset], ct: CTReference) -> list[int]:
    """For each slice of rt-utils' sorted series, the index of that slice in our z order."""
    ours = {uid: k for k, uid in enumerate(ct.sop_instance_uids)}
    order = [ours.get(str(ds.SOPInstanceUID), -1) for ds in rt_series]
    if len(order) != len(ours) or sorted(order) != list(range(len(ours))):
        raise HecktorInputError(
            f"rt-utils read {len(order)} of the {len(ours)} CT slices (compressed pixel data "
            "that cannot be decoded?); cannot build the RTSTRUCT."
        )
    return order


def _slice_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask as (n, 2) arrays of (column, row) index coordinates.

    Traced on the mask upsampled 2x, so each outline runs a quarter pixel inside the pixel
    edges (see the module docstring); holes come out as separate inner outlines.
    """
    import cv2

    up = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return [(c.reshape(-1, 2).astype(float) - 0.5) / 2.0 for c in contours if len(c) >= 3]


def _plane(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Position, row and column directions, column and row spacing of a slice."""
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    return position, orientation[:3], orientation[3:], column_spacing, row_spacing


def _contour_items(mask: np.ndarray, ct: CTReference) -> list[pydicom.Dataset]:
    """ContourSequence items of a (z, y, x) mask: one CLOSED_PLANAR outline per item."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    items = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        ds = ct.headers[k]
        position, row_dir, col_dir, dx, dy = _plane(ds)
        for outline in _slice_outlines(mask[k]):
            points = (
                position[None, :]
                + outline[:, :1] * dx * row_dir[None, :]
                + outline[:, 1:] * dy * col_dir[None, :]
            )
            image = Dataset()
            image.ReferencedSOPClassUID = ds.SOPClassUID
            image.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            item = Dataset()
            item.ContourImageSequence = DicomSequence([image])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [_ds_value(v) for v in points.ravel()]
            items.append(item)
    return items


def _ds_value(value: float) -> str:
    """A coordinate as a DICOM decimal string (at most 16 characters, 0.1 micrometre)."""
    text = f"{round(float(value), 4):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def write_rtstruct(
    labels: np.ndarray | sitk.Image,
    ct_series: Case | DicomSeries | str | Path,
    out_path: str | Path,
    *,
    names: Sequence[str] = LABEL_NAMES,
    colors: Sequence[Sequence[int]] = LABEL_COLORS,
    corrected: bool = False,
    manufacturer: str = "napari-hecktor",
    series_description: str = "GTVp/GTVn contours",
    structure_set_label: str = "GTV",
    series_number: int = RTSTRUCT_SERIES_NUMBER,
    overwrite: bool = False,
) -> Path:
    """Write the GTVp/GTVn mask as an RT Structure Set referencing the CT slices.

    One ROI per non-empty label (``names[0]`` for label 1, ``names[1]`` for label 2), of
    type GTV, generated AUTOMATIC or, with ``corrected``, SEMIAUTOMATIC. The user's folder
    is only read (rt-utils works on a temporary folder holding the CT series alone).
    """
    rt_utils = _require("rt_utils", "RTSTRUCT export")
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if len(names) != 2 or len(colors) != 2:
        raise HecktorInputError("give two ROI names and two colours (GTVp, GTVn).")
    ct = resolve_ct(ct_series)
    array = _labels_on_grid(labels, ct)
    target = check_output_path(out_path, ct.protected, overwrite=overwrite)
    algorithm = "SEMIAUTOMATIC" if corrected else "AUTOMATIC"

    with _series_only_folder(ct.series) as folder, _quiet():
        rtstruct = rt_utils.RTStructBuilder.create_new(dicom_series_path=str(folder))
        order = _rt_utils_series(rtstruct.series_data, ct)
        for value in (1, 2):
            mask = array == value
            if not mask.any():
                continue
            try:
                rtstruct.add_roi(
                    mask=mask[order].transpose(1, 2, 0),  # (rows, columns, rt-utils' slices)
                    name=str(names[value - 1]),
                    color=[int(c) for c in colors[value - 1]],
                    roi_generation_algorithm=algorithm,
                )
            except (ValueError, TypeError, rt_utils.RTStruct.ROIException) as error:
                raise HecktorInputError(f"cannot add ROI {names[value - 1]}: {error}") from error
            # Replace rt-utils' contours (vertices on boundary pixel centres) by outlines
            # that centre-inside readers fill exactly; see the module docstring.
            rtstruct.ds.ROIContourSequence[-1].ContourSequence = DicomSequence(
                _contour_items(mask, ct)
            )
            observation = rtstruct.ds.RTROIObservationsSequence[-1]
            observation.RTROIInterpretedType = "GTV"
            if "ROIObservationDescription" in observation:
                del observation.ROIObservationDescription
    ds = rtstruct.ds
    _complete_rtstruct(ds, ct, manufacturer, series_description, structure_set_label)
    ds.SeriesNumber = int(series_number)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    return atomic_write(
        target, lambda tmp: ds.save_as(tmp, enforce_file_format=True), suffix=".dcm"
    )


def _complete_rtstruct(
    ds: pydicom.Dataset,
    ct: CTReference,
    manufacturer: str,
    series_description: str,
    structure_set_label: str,
) -> None:
    """Attributes rt-utils leaves out or fills with its own name (dciodvfy-clean output)."""
    first = ct.headers[0]
    if first.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    for keyword in (  # type 2 in the patient, study and frame of reference modules
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
        "StudyTime", "ReferringPhysicianName", "AccessionNumber", "StudyID",
        "PositionReferenceIndicator",
    ):  # fmt: skip
        setattr(ds, keyword, first.get(keyword, ""))
    for keyword in ("PatientAge", "PatientSize", "PatientWeight", "StudyDescription"):
        value = first.get(keyword)
        if value is not None and str(value).strip():
            setattr(ds, keyword, value)
        elif keyword in ds:
            delattr(ds, keyword)  # rt-utils writes these type 3 elements empty
    reference = ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    ds.FrameOfReferenceUID = first.get("FrameOfReferenceUID") or reference
    ds.OperatorsName = ""
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "napari-hecktor"
    ds.SoftwareVersions = _software_version()
    if "InstitutionName" in ds:
        del ds.InstitutionName
    ds.SeriesDescription = series_description
    ds.StructureSetLabel = structure_set_label[:16]
    now = dt.datetime.now()
    ds.SeriesDate = ds.StructureSetDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.StructureSetTime = ds.InstanceCreationTime = now.strftime("%H%M%S")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence rt-utils' prints and pydicom's deprecation warnings about its datasets."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def read_rtstruct(
    rtss_path: str | Path,
    ct_series: Case | DicomSeries | str | Path,
    *,
    names: Sequence[str] = LABEL_NAMES,
) -> np.ndarray:
    """An RT Structure Set as a (z, y, x) uint8 mask on the CT grid (1 GTVp, 2 GTVn).

    ``ct_series`` is the CT series the structure set was drawn on, or a folder holding it
    (the series the RTSTRUCT references is chosen, else the CT with the most slices). ROIs
    are matched to ``names`` case-insensitively; where they overlap, the first name wins.
    rt-utils loads the file and checks that its contours reference this series; the
    contours are filled by pixel centre (even-odd rule for holes), which, unlike rt-utils'
    own filling, is right for non-square images and pixels.
    """
    import pydicom

    rt_utils = _require("rt_utils", "Reading RTSTRUCT")
    rtss_path = Path(rtss_path)
    try:
        header = pydicom.dcmread(rtss_path, stop_before_pixels=True)
    except Exception as error:  # anything pydicom raises on a bad file
        raise HecktorInputError(f"cannot read {rtss_path.name}: {error}") from error
    if str(header.get("Modality", "")) != "RTSTRUCT":
        raise HecktorInputError(f"{rtss_path.name} is not an RTSTRUCT.")
    ct = resolve_ct(_referenced_series(header, ct_series))
    with _series_only_folder(ct.series) as folder, _quiet():
        try:
            rtstruct = rt_utils.RTStructBuilder.create_from(str(folder), str(rtss_path))
        except Exception as error:  # rt-utils raises bare Exceptions
            raise HecktorInputError(
                f"{rtss_path.name} does not belong to this CT series: {error}"
            ) from error
        _rt_utils_series(rtstruct.series_data, ct)
        rois = {str(r.ROIName).strip().lower(): r for r in rtstruct.ds.StructureSetROISequence}
        frame = str(ct.headers[0].get("FrameOfReferenceUID", ""))
        labels = np.zeros(ct.shape, dtype=np.uint8)
        found = False
        for value in (2, 1):  # GTVn first, so that GTVp wins where they overlap
            roi = rois.get(str(names[value - 1]).strip().lower())
            if roi is None:
                continue
            roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", ""))
            if frame and roi_frame and roi_frame != frame:
                raise HecktorInputError(
                    f"ROI {roi.ROIName} of {rtss_path.name} is in another frame of reference "
                    "than the CT; register it first."
                )
            found = True
            try:
                contours = rt_utils.ds_helper.get_contour_sequence_by_roi_number(
                    rtstruct.ds, roi.ROINumber
                )
            except Exception:  # an ROI without contours
                continue
            labels[_fill_contours(contours, ct)] = value
    if not found:
        shown = ", ".join(str(r.ROIName) for r in rtstruct.ds.StructureSetROISequence)
        raise HecktorInputError(
            f"{rtss_path.name} has no ROI named {' or '.join(names)} (found: {shown or 'none'})."
        )
    return labels


def _referenced_series(
    header: pydicom.Dataset, source: Case | DicomSeries | str | Path
) -> Case | DicomSeries | str | Path:
    """The series of a folder that the structure set references, else ``source`` itself."""
    if isinstance(source, DicomSeries) or hasattr(source, "sources"):
        return source
    uids = {
        str(series.SeriesInstanceUID)
        for frame in header.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
    }
    folder = Path(source)
    try:
        candidates = [s for s in find_series(folder) if s.series_uid in uids]
    except HecktorInputError:
        return source
    return candidates[0] if candidates else source


def _fill_contours(contours: Iterable[pydicom.Dataset], ct: CTReference) -> np.ndarray:
    """Pixels whose centres lie inside the closed contours (even-odd per slice), (z, y, x)."""
    from skimage.draw import polygon

    mask = np.zeros(ct.shape, dtype=bool)
    positions = np.array([_plane(ds)[0] for ds in ct.headers])
    _, row_dir, col_dir, dx, dy = _plane(ct.headers[0])
    normal = np.cross(row_dir, col_dir)
    along = positions @ normal
    step = float(np.median(np.diff(along))) if len(along) > 1 else 1.0
    for contour in contours:
        if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
            continue
        points = np.asarray([float(v) for v in contour.ContourData], dtype=float).reshape(-1, 3)
        if len(points) < 3:
            continue
        k = int(np.argmin(np.abs(along - float(np.mean(points @ normal)))))
        if abs(along[k] - float(np.mean(points @ normal))) > 0.5 * abs(step):
            continue  # not on any slice of this series
        relative = points - positions[k]
        columns = relative @ row_dir / dx
        rows = relative @ col_dir / dy
        rr, cc = polygon(rows, columns, shape=ct.shape[1:])
        inside = np.zeros(ct.shape[1:], dtype=bool)
        inside[rr, cc] = True
        mask[k] ^= inside
    return mask


# --------------------------------------------------------------------------- results


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data: NaN/inf -> None, numpy -> Python, paths -> text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [_plain(v) for v in sorted(value, key=str)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "as_dict"):
        return _plain(value.as_dict())
    return str(value)


def write_results_json(
    data: Mapping[str, Any],
    path: str | Path,
    *,
    protected: Case | Mapping[str, Any] | Iterable[str | Path] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` as indented UTF-8 JSON (NaN and infinities become null), atomically.

    ``protected`` (a case, its ``sources`` or paths) are never overwritten.
    """
    target = check_output_path(path, protected_paths(protected), overwrite=overwrite)
    text = json.dumps(_plain(dict(data)), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".json")


def write_results_csv(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    path: str | Path,
    *,
    protected: Case | Mapping[str, Any] | Iterable[str | Path] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one row per mapping (one dict: one row) as CSV, atomically.

    Columns are the keys in order of first appearance; missing values, None and NaN are
    left empty; lists and dicts are written as JSON text.
    """
    if isinstance(rows, Mapping):
        rows = [rows]
    rows = [dict(r) for r in rows]
    columns: list[str] = list(dict.fromkeys(str(k) for r in rows for k in r))
    target = check_output_path(path, protected_paths(protected), overwrite=overwrite)

    def cell(value: Any) -> Any:
        value = _plain(value)
        if value is None:
            return ""
        if isinstance(value, (list, dict)):
            return json.dumps(value, ensure_ascii=False)
        return value

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                plain = {str(k): v for k, v in row.items()}
                writer.writerow([cell(plain.get(c)) for c in columns])

    return atomic_write(target, write, suffix=".csv")
