"""Image geometry in physical space (LPS mm) and its napari equivalent.

SimpleITK arrays are indexed (z, y, x). Every napari layer of a case shares one
world frame: physical LPS millimetres in (z, y, x) order. A voxel index ``(k, j, i)``
maps to world ``A @ (k, j, i, 1)`` where the 3x3 block of ``A`` is
``(D * spacing)[::-1, ::-1]`` (``D`` the direction matrix) and its translation is
``origin[::-1]``. With an identity direction this is ``scale=spacing[::-1]``,
``translate=origin[::-1]``, which napari renders fastest, so we use it then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import HecktorInputError

#: Interpolators by name: images use linear, masks nearest neighbour.
INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


@dataclass(frozen=True)
class Geometry:
    """The grid of a 3D image: size, spacing and origin in (x, y, z), direction row-major."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        """The geometry of a SimpleITK image."""
        return cls(
            size=tuple(int(v) for v in image.GetSize()),
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`as_dict` (layer metadata stores geometry as plain lists)."""
        return cls(
            size=tuple(int(v) for v in d["size"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
        )

    def as_dict(self) -> dict[str, list]:
        """JSON-serialisable form."""
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x) of an image on this grid."""
        return self.size[::-1]

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def is_axis_aligned(self) -> bool:
        """True when the direction cosines are the identity."""
        return bool(np.allclose(self.direction_matrix, np.eye(3), atol=1e-6))

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_world_zyx(self) -> np.ndarray:
        """4x4 affine from array index (z, y, x) to physical LPS mm in (z, y, x) order."""
        linear = (self.direction_matrix * np.asarray(self.spacing)[None, :])[::-1, ::-1]
        affine = np.eye(4)
        affine[:3, :3] = linear
        affine[:3, 3] = np.asarray(self.origin)[::-1]
        return affine

    def napari_transform(self) -> dict[str, Any]:
        """Layer keyword arguments that place an array on this grid in the world frame (mm)."""
        units = ("mm", "mm", "mm")
        if self.is_axis_aligned:
            return {
                "scale": tuple(self.spacing[::-1]),
                "translate": tuple(self.origin[::-1]),
                "units": units,
            }
        return {"affine": self.index_to_world_zyx(), "units": units}

    def world_corners(self) -> np.ndarray:
        """Physical (x, y, z) coordinates of the 8 outer voxel-centre corners."""
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in self.size], indexing="ij"))
        idx = corners.reshape(3, -1).T
        d = self.direction_matrix * np.asarray(self.spacing)[None, :]
        return np.asarray(self.origin)[None, :] + idx @ d.T

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned physical bounding box (x, y, z) of the voxel centres, mm."""
        c = self.world_corners()
        return c.min(axis=0), c.max(axis=0)

    def matches(self, other: Geometry, *, tol_mm: float = 1e-3) -> bool:
        """Same grid: equal size, and spacing/origin/direction within tolerance."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol_mm)
            and np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-5)
        )

    def describe(self) -> str:
        """One-line human description, used in error messages."""
        sp = "x".join(f"{v:.3g}" for v in self.spacing)
        org = ", ".join(f"{v:.1f}" for v in self.origin)
        return f"{'x'.join(map(str, self.size))} voxels of {sp} mm at ({org}) mm"

    def image_from_array(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array as a SimpleITK image on this grid."""
        if tuple(array.shape) != self.shape:
            raise HecktorInputError(
                f"array of shape {tuple(array.shape)} does not fit a grid of shape {self.shape}"
            )
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> None:
        """Give ``image`` this grid's spacing, origin and direction (in place)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)


def overlap_fraction(a: Geometry, b: Geometry) -> float:
    """Fraction of ``a``'s physical bounding box that ``b``'s bounding box covers (0..1)."""
    a_lo, a_hi = a.bounds()
    b_lo, b_hi = b.bounds()
    extent = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None)
    a_extent = np.maximum(a_hi - a_lo, 1e-6)
    return float(np.prod(np.minimum(extent / a_extent, 1.0)))


def resample_to(
    image: sitk.Image,
    reference: sitk.Image | Geometry,
    *,
    interpolator: str = "linear",
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid by physical coordinates (never by index)."""
    geometry = reference if isinstance(reference, Geometry) else Geometry.of(reference)
    if Geometry.of(image).matches(geometry, tol_mm=1e-6):
        return image
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(geometry.size)
    resampler.SetOutputSpacing(geometry.spacing)
    resampler.SetOutputOrigin(geometry.origin)
    resampler.SetOutputDirection(geometry.direction)
    resampler.SetTransform(sitk.Transform())
    resampler.SetInterpolator(INTERPOLATORS[interpolator])
    resampler.SetDefaultPixelValue(default_value)
    resampler.SetOutputPixelType(image.GetPixelID())
    return resampler.Execute(image)
