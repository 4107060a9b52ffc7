"""Reading and writing single volumes (NIfTI, NRRD, MHA, DICOM folders) with clear errors."""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError
from .geometry import Geometry

#: File endings SimpleITK reads as volumes (lower case). ``.nii.gz`` first: longest match wins.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_VALUES = (0, 1, 2)


def volume_suffix(path: str | Path) -> str | None:
    """The volume ending of ``path`` (``.nii.gz``...), or None if it is not a volume file."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def strip_suffix(path: str | Path) -> str:
    """File name without its volume ending (``CHUM-001__CT.nii.gz`` -> ``CHUM-001__CT``)."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


def read_image(path: str | Path, *, what: str = "image", components: int = 1) -> sitk.Image:
    """Read a 3D volume file or a DICOM series folder; raise :class:`HecktorInputError` if unusable.

    ``what`` names the role ("CT", "PET", "label") in messages; ``components`` is the number
    of values per voxel expected (2 for a GTVp/GTVn probability map).
    """
    path = Path(path)
    if not path.exists():
        raise HecktorInputError(f"{what} file not found: {path}")
    if path.is_dir():
        from .dicom import find_series, read_series

        series = find_series(path)
        image = read_series(max(series, key=lambda s: len(s.files)))
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
            raise HecktorInputError(
                f"cannot read {what} file {path.name}: it is corrupt, truncated or not an image "
                f"({reason[:120]})"
            ) from None
        check_nifti_file(path, image, what=what)
    check_volume(image, what=what, source=path.name, components=components)
    return image


def check_nifti_file(path: Path, image: sitk.Image, *, what: str = "image") -> None:
    """Checks ITK skips on NIfTI: truncation (it fills missing voxels) and NaNs (it reads 0).

    The expected byte count comes from the header (``vox_offset`` + voxel data); a ``.nii``
    must be at least that long and a ``.nii.gz`` must record that size in its gzip trailer
    (ISIZE, modulo 2**32), which a cut-off stream does not have. Float data are scanned
    for NaN/inf in the raw bytes.
    """
    suffix = volume_suffix(path)
    if suffix not in (".nii", ".nii.gz"):
        return
    opener = gzip.open if suffix == ".nii.gz" else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(176)
    except (OSError, EOFError):
        header = b""
    info = _nifti_layout(header)
    n_bytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
    n_bytes *= image.GetNumberOfComponentsPerPixel()
    if info is None:
        complete = False
    elif suffix == ".nii":
        complete = path.stat().st_size >= info[0] + n_bytes
    else:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", fh.read(4))
        complete = isize == (info[0] + n_bytes) % 2**32
    if not complete:
        raise HecktorInputError(
            f"cannot read {what} file {path.name}: it is corrupt, truncated or not an image "
            "(the file is shorter than its header says)"
        )
    vox_offset, dtype = info
    if dtype is not None:
        with opener(path, "rb") as fh:
            fh.seek(vox_offset)
            raw = np.frombuffer(fh.read(n_bytes), dtype=dtype)
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        if bad:
            raise HecktorInputError(f"{what} {path.name} contains {bad} NaN or infinite voxels")


def _nifti_layout(header: bytes) -> tuple[int, np.dtype | None] | None:
    """(voxel data offset, float dtype or None) from a NIfTI-1/2 header; None if not NIfTI."""
    floats = {16: "f4", 64: "f8"}
    for endian in "<>":
        if len(header) >= 112 and struct.unpack(endian + "i", header[:4])[0] == 348:
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            code = struct.unpack(endian + "h", header[70:72])[0]
        elif len(header) >= 176 and struct.unpack(endian + "i", header[:4])[0] == 540:
            offset = int(struct.unpack(endian + "q", header[168:176])[0])
            code = struct.unpack(endian + "h", header[12:14])[0]
        else:
            continue
        dtype = np.dtype(endian + floats[code]) if code in floats else None
        return offset, dtype
    return None


def check_volume(image: sitk.Image, *, what: str, source: str, components: int = 1) -> None:
    """Reject images that are not 3D volumes of ``components`` finite values per voxel."""
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        size = "x".join(map(str, image.GetSize()))
        raise HecktorInputError(f"{what} {source} is not a 3D volume (size {size})")
    if image.GetNumberOfComponentsPerPixel() != components:
        raise HecktorInputError(
            f"{what} {source} has {image.GetNumberOfComponentsPerPixel()} value(s) per voxel; "
            f"expected {components}"
        )
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise HecktorInputError(f"{what} {source} contains {bad} NaN or infinite voxels")


def check_label(label: sitk.Image, reference: Geometry, *, source: str) -> sitk.Image:
    """Validate a GTVp/GTVn mask against the CT grid and return it as uint8."""
    geometry = Geometry.of(label)
    if not geometry.matches(reference):
        raise HecktorInputError(
            f"label {source} is not on the CT grid: label is {geometry.describe()}, "
            f"CT is {reference.describe()}"
        )
    array = sitk.GetArrayViewFromImage(label)
    values = np.unique(array)
    extra = [v for v in values.tolist() if v not in LABEL_VALUES]
    if extra:
        shown = ", ".join(f"{v:g}" for v in extra[:5])
        raise HecktorInputError(
            f"label {source} has values outside 0 (background), 1 (GTVp), 2 (GTVn): {shown}"
        )
    if label.GetPixelID() != sitk.sitkUInt8:
        label = sitk.Cast(label, sitk.sitkUInt8)
    return label


def write_image(
    image: sitk.Image, path: str | Path, *, protected: Iterable[str | Path] = ()
) -> Path:
    """Write ``image`` atomically; refuse to overwrite any file in ``protected`` (the inputs).

    Writing goes to a temporary file in the same folder, then a rename, so a crash never
    leaves a half-written mask behind.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise HecktorInputError(
            f"cannot write {path.name}: use one of {', '.join(VOLUME_SUFFIXES)}"
        )
    target = path.resolve()
    for p in protected:
        if p and Path(p).exists() and Path(p).resolve() == target:
            raise HecktorInputError(
                f"refusing to overwrite the input file {path}; choose another file name"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".hecktor-", suffix=suffix, dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; a mask is a normal file
    try:
        sitk.WriteImage(image, tmp, useCompression=suffix.endswith(".gz"))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
