"""Physical-space geometry: napari world coordinates equal SimpleITK physical points."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROTATED_DIRECTION, make_image
from napari.layers import Image

from napari_hecktor.display import geometry_from_layer
from napari_hecktor.io.geometry import Geometry, overlap_fraction, resample_to


@pytest.mark.parametrize("direction", [None, ROTATED_DIRECTION], ids=["axis-aligned", "rotated"])
def test_napari_world_equals_physical_point(direction):
    kwargs = {} if direction is None else {"direction": direction}
    image = make_image(np.zeros((7, 9, 11), np.float32), spacing=(0.8, 1.1, 3.3), **kwargs)
    geometry = Geometry.of(image)
    transform = geometry.napari_transform()
    assert ("affine" in transform) == (direction is not None)
    layer = Image(np.zeros(geometry.shape, np.float32), **transform)
    assert tuple(str(u) for u in layer.units) == ("millimeter",) * 3
    for index_xyz in [(0, 0, 0), (10, 8, 6), (3, 5, 2)]:
        physical = image.TransformIndexToPhysicalPoint(index_xyz)
        world = layer.data_to_world(index_xyz[::-1])
        np.testing.assert_allclose(world, physical[::-1], atol=1e-6)


@pytest.mark.parametrize("direction", [None, ROTATED_DIRECTION], ids=["axis-aligned", "rotated"])
def test_geometry_recovered_from_layer_transform(direction):
    kwargs = {} if direction is None else {"direction": direction}
    geometry = Geometry.of(make_image(np.zeros((5, 6, 7), np.uint8), spacing=(0.9, 1.2, 3.0),
                                      **kwargs))
    layer = Image(np.zeros(geometry.shape, np.uint8), **geometry.napari_transform())
    attributes = {"scale": layer.scale, "translate": layer.translate,
                  "affine": layer.affine.affine_matrix, "metadata": {}}
    assert geometry_from_layer(geometry.shape, attributes).matches(geometry, tol_mm=1e-6)


def test_resampling_uses_physical_coordinates_not_indices():
    # PET on a coarse grid with its own origin; one hot voxel at a known physical point.
    pet = np.zeros((10, 12, 12), np.float32)
    pet[4, 6, 3] = 100.0
    pet_image = make_image(pet, spacing=(4.0, 4.0, 3.0), origin=(-30.0, -20.0, -100.0))
    hot_xyz = np.array(pet_image.TransformIndexToPhysicalPoint((3, 6, 4)))
    ct_image = make_image(np.zeros((30, 60, 60), np.int16), spacing=(1.0, 1.0, 1.0),
                          origin=(-31.5, -22.5, -101.0))
    on_ct = sitk.GetArrayFromImage(resample_to(pet_image, ct_image))
    peak = np.unravel_index(np.argmax(on_ct), on_ct.shape)
    peak_xyz = np.array(ct_image.TransformIndexToPhysicalPoint([int(i) for i in peak[::-1]]))
    np.testing.assert_allclose(peak_xyz, hot_xyz, atol=0.5 + 1e-6)


def _cube_at(x0: float) -> Geometry:
    image = make_image(np.zeros((10, 10, 10), np.uint8), spacing=(1, 1, 1), origin=(x0, 0, 0))
    return Geometry.of(image)


def test_overlap_fraction():
    a, half, far = _cube_at(0.0), _cube_at(4.5), _cube_at(500.0)
    assert overlap_fraction(a, a) == pytest.approx(1.0)
    assert overlap_fraction(a, half) == pytest.approx(0.5)
    assert overlap_fraction(a, far) == 0.0
