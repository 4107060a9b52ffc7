"""Dense-CRF refinement on a synthetic PET/CT case with known truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.progress import Cancelled, Progress, run_to_end
from napari_hecktor.segment import crf

SPACING = (3.0, 1.0, 1.0)  # z, y, x mm


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * np.logical_and(a, b).sum() / total if total else 1.0


def make_case(
    spacing: tuple[float, float, float] = SPACING,
    extent_mm: tuple[float, float, float] = (120.0, 96.0, 96.0),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Neck-like CT (HU), PET (SUV) with an irregular GTVp and a separate GTVn, the truth,
    and a "network output": each truth mask blurred (4 mm), biased outwards (the 0.5 level
    lies outside the lesion, as on a PET partial-volume halo), with logit noise, plus a
    spurious weak node-channel blob (peak 0.65) where there is no uptake."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing, strict=True))
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")

    def ellipsoid(c, r):
        return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1

    body = ((y - 48) / 40) ** 2 + ((x - 48) / 44) ** 2 <= 1
    fat = body & ~(((y - 48) / 36) ** 2 + ((x - 48) / 40) ** 2 <= 1)
    airway = ((y - 40) / 6) ** 2 + ((x - 48) / 8) ** 2 <= 1
    spine = ((y - 70) / 8) ** 2 + ((x - 48) / 8) ** 2 <= 1
    ct = np.full(shape, -1000.0)
    ct[body], ct[fat], ct[airway], ct[spine] = 40.0, -100.0, -950.0, 700.0
    ct += rng.normal(0, 12, shape)

    gtvp = (
        ellipsoid((60, 38, 62), (18, 9, 7))
        | ellipsoid((52, 32, 68), (10, 6, 8))
        | ellipsoid((68, 44, 58), (9, 7, 5))
    ) & ~airway
    gtvn = ellipsoid((50, 52, 22), (9, 7, 7))
    truth = np.zeros(shape, np.uint8)
    truth[gtvn] = 2
    truth[gtvp] = 1

    pet = np.zeros(shape)
    pet[body], pet[fat], pet[airway | spine] = 1.3, 0.5, 0.3
    pet[ellipsoid((90, 30, 30), (8, 6, 6))] = 3.5  # physiological uptake (a gland)
    pet[gtvp] = 9.0 + 3.0 * np.sin(x[gtvp] / 4.0) * np.cos(y[gtvp] / 5.0)
    pet[gtvn] = 5.0
    pet = ndimage.gaussian_filter(pet, [2.5 / s for s in spacing])  # scanner PSF
    pet += rng.normal(0, 1, shape) * (0.05 + 0.08 * np.sqrt(np.maximum(pet, 0)))
    pet = np.maximum(pet, 0)

    blur = [4.0 / s for s in spacing]

    def network(mask):
        b = ndimage.gaussian_filter(mask.astype(float), blur)
        return 1 / (1 + np.exp(-(12.0 * (b - 0.3) + rng.normal(0, 0.3, shape))))

    pp, pn = network(gtvp), network(gtvn)
    spurious = ellipsoid((30, 60, 70), (6, 5, 5))
    s = ndimage.gaussian_filter(spurious.astype(float), blur)
    pn = np.maximum(pn, 0.65 * s / s.max())
    return {
        "prob": np.stack([pp, pn]).astype(np.float32),
        "pet": pet.astype(np.float32),
        "ct": ct.astype(np.float32),
        "truth": truth,
        "spurious": spurious,
    }


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    return make_case()


@pytest.fixture(scope="module")
def refined(case) -> crf.CRFResult:
    return crf.refine(case["prob"], case["pet"], case["ct"], SPACING)


def box_mask(shape, boxes) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for box in boxes:
        mask[box] = True
    return mask


def test_class_probabilities_and_labelling():
    pp = np.array([0.9, 0.2, 0.45, 0.1, 0.0])
    pn = np.array([0.9, 0.8, 0.55, 0.1, 1.0])
    classes = crf.probabilities_to_classes(np.stack([pp, pn]))
    assert classes.shape == (3, 5)
    np.testing.assert_allclose(classes.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(classes[1], pp, atol=1e-6)
    np.testing.assert_allclose(classes[2], (1 - pp) * pn, atol=1e-6)
    labels = crf.labels_from_probabilities(np.stack([pp, pn]))
    assert labels.tolist() == [1, 2, 2, 0, 2]  # tumour first
    strict = crf.labels_from_probabilities(np.stack([pp, pn]), (0.95, 0.85))
    assert strict.tolist() == [2, 0, 0, 0, 2]


def test_crf_improves_gtvp_and_keeps_gtvn(case, refined):
    truth = case["truth"]
    before = crf.labels_from_probabilities(case["prob"])
    d_before = {k: dice(before == k, truth == k) for k in (1, 2)}
    d_after = {k: dice(refined.labels == k, truth == k) for k in (1, 2)}
    print(f"Dice before {d_before}, after {d_after}, {refined.seconds:.2f} s")
    assert d_after[1] > d_before[1] + 0.01
    assert d_after[2] > d_before[2] - 0.03
    assert refined.labels.dtype == np.uint8 and refined.labels.shape == truth.shape


def test_spurious_blob_without_uptake_is_removed(case, refined):
    before = crf.labels_from_probabilities(case["prob"])
    assert (before[case["spurious"]] == 2).sum() > 20
    assert (refined.labels[case["spurious"]] == 2).sum() == 0


def test_added_removed_match_direct_comparison(case, refined):
    before = crf.labels_from_probabilities(case["prob"])
    after = refined.labels
    for k in (1, 2):
        assert refined.added[k] == np.count_nonzero((after == k) & (before != k))
        assert refined.removed[k] == np.count_nonzero((before == k) & (after != k))
    assert sum(refined.removed.values()) > 0


def test_outside_boxes_never_change(case):
    labels = crf.labels_from_probabilities(case["prob"])
    labels[35:40, 2:8, 2:8] = 2  # hand-painted, far from every lesion
    labels[0, 90:, 90:] = 1
    result = crf.refine(case["prob"], case["pet"], case["ct"], SPACING, labels=labels)
    outside = ~box_mask(labels.shape, result.boxes)
    assert outside.sum() > 0.5 * labels.size
    np.testing.assert_array_equal(result.labels[outside], labels[outside])
    assert (result.labels[35:40, 2:8, 2:8] == 2).all()
    assert labels[35:40, 2:8, 2:8].all()  # input untouched


def test_boxes_margin_in_mm_and_merging():
    prob = np.zeros((2, 30, 60, 60), np.float32)
    prob[0, 10:12, 20:22, 20:22] = 0.9
    prob[1, 10:12, 20:22, 34:36] = 0.9  # 12 voxels away in x: boxes overlap with 10 mm margin
    prob[1, 25:27, 50:52, 50:52] = 0.9  # far away
    boxes = crf.lesion_boxes(prob, (3.0, 1.0, 1.0), margin_mm=10.0)
    assert len(boxes) == 2
    # 10 mm = 4 slices at 3 mm (ceil), 10 voxels at 1 mm
    assert boxes[0] == (slice(6, 16), slice(10, 32), slice(10, 46))
    assert boxes[1] == (slice(21, 30), slice(40, 60), slice(40, 60))
    assert crf.lesion_boxes(prob, (3.0, 1.0, 1.0), margin_mm=5.0) != boxes
    assert len(crf.lesion_boxes(prob, (3.0, 1.0, 1.0), margin_mm=5.0)) == 3


def test_restricted_matches_full(case, refined):
    full = crf.refine_full(case["prob"], case["pet"], case["ct"], SPACING)
    inside = box_mask(full.labels.shape, refined.boxes)
    agreement = float((full.labels[inside] == refined.labels[inside]).mean())
    ratio = full.seconds / refined.seconds
    fraction = inside.mean()
    print(
        f"restricted {refined.seconds:.2f} s on {fraction:.1%} of the volume, "
        f"full {full.seconds:.2f} s (x{ratio:.1f}); agreement in boxes {agreement:.4%}"
    )
    assert agreement >= 0.99
    assert full.boxes == [(slice(0, 40), slice(0, 96), slice(0, 96))]
    assert refined.seconds < full.seconds


def test_cancel_after_first_step(case):
    seen: list[Progress] = []
    job = crf.refine_iter(case["prob"], case["pet"], case["ct"], SPACING)
    with pytest.raises(Cancelled):
        run_to_end(job, callback=seen.append, should_stop=lambda: True)
    assert len(seen) == 1


def test_progress_per_region_and_iteration(case):
    params = crf.CRFParams(iterations=3)
    seen: list[Progress] = []
    result = run_to_end(
        crf.refine_iter(case["prob"], case["pet"], case["ct"], SPACING, params), seen.append
    )
    assert seen[-1].done == seen[-1].total == len(result.boxes) * (1 + 3)
    assert [p.done for p in seen] == list(range(len(seen)))


def test_kernel_widths_are_converted_from_mm(case, monkeypatch):
    import pydensecrf.utils as utils

    calls: dict[str, list] = {"gauss": [], "bilateral": []}
    gauss, bilateral = utils.create_pairwise_gaussian, utils.create_pairwise_bilateral

    def spy_gauss(sdims, shape):
        calls["gauss"].append((tuple(sdims), tuple(shape)))
        return gauss(sdims, shape)

    def spy_bilateral(sdims, schan, img, chdim=-1):
        out = bilateral(sdims, schan, img, chdim)
        calls["bilateral"].append((tuple(sdims), tuple(schan), img, out))
        return out

    monkeypatch.setattr(utils, "create_pairwise_gaussian", spy_gauss)
    monkeypatch.setattr(utils, "create_pairwise_bilateral", spy_bilateral)
    params = crf.CRFParams(iterations=1, smooth_sigma_mm=3.0, bilateral_sigma_mm=6.0)
    result = crf.refine(case["prob"], case["pet"], case["ct"], SPACING, params)
    assert crf.kernel_sdims(6.0, SPACING) == (2.0, 6.0, 6.0)
    assert [c[0] for c in calls["gauss"]] == [(1.0, 3.0, 3.0)] * len(result.boxes)
    sdims, schan, img, feats = calls["bilateral"][0]
    assert sdims == (2.0, 6.0, 6.0)
    assert schan == (params.pet_sigma_suv, params.ct_sigma_hu)
    box = result.boxes[0]
    n = img.shape[0] * img.shape[1] * img.shape[2]
    assert feats.shape == (5, n)  # z, y, x, SUV, HU for each voxel of the box
    feats = feats.reshape(5, *img.shape[:3])
    np.testing.assert_allclose(feats[0][:, 0, 0], np.arange(img.shape[0]) / 2.0)
    np.testing.assert_allclose(feats[3], case["pet"][box] / params.pet_sigma_suv, rtol=1e-5)
    np.testing.assert_allclose(feats[4], case["ct"][box] / params.ct_sigma_hu, rtol=1e-5)


def _ellipsoid_case(spacing):
    """A smooth ellipsoidal probability (radii 14, 8, 8 mm) on a uniform PET/CT."""
    shape = tuple(int(round(e / s)) for e, s in zip((60.0, 48.0, 48.0), spacing, strict=True))
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt(((z - 30) / 14) ** 2 + ((y - 24) / 8) ** 2 + ((x - 24) / 8) ** 2)
    pp = 1 / (1 + np.exp(-(1 - r) * 8 / 1.5))
    prob = np.stack([pp, np.zeros_like(pp)]).astype(np.float32)
    return prob, np.ones(shape, np.float32), np.full(shape, 40.0, np.float32)


def test_anisotropic_spacing_gives_the_same_physical_result():
    # a strong smoothness kernel shrinks the uncertain rim of a convex object by an amount
    # set by its width in mm: the same object at 3 mm and 1 mm slices must shrink alike
    params = crf.CRFParams(smooth_sigma_mm=4.0, smooth_weight=2.0, bilateral_weight=0.0)

    def volume_ml(spacing, declared):
        prob, pet, ct = _ellipsoid_case(spacing)
        result = crf.refine(prob, pet, ct, declared, params)
        before = (prob[0] > 0.5).sum() * np.prod(spacing) / 1000
        return before, (result.labels == 1).sum() * np.prod(spacing) / 1000

    before3, thick = volume_ml((3.0, 1.0, 1.0), (3.0, 1.0, 1.0))
    before1, thin = volume_ml((1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    _, wrong = volume_ml((3.0, 1.0, 1.0), (1.0, 1.0, 1.0))  # spacing ignored
    assert abs(before3 - before1) / before1 < 0.03
    assert thin < 0.9 * before1  # the kernel does act
    assert abs(thick - thin) / thin < 0.05
    assert abs(wrong - thin) / thin > 0.15


def test_empty_input_returns_unchanged():
    prob = np.full((2, 20, 30, 30), 0.1, np.float32)
    pet = np.ones((20, 30, 30), np.float32)
    ct = np.zeros((20, 30, 30), np.float32)
    labels = np.zeros((20, 30, 30), np.uint8)
    labels[5:8, 5:8, 5:8] = 1  # painted by hand; no lesion in the probabilities
    seen: list[Progress] = []
    result = run_to_end(crf.refine_iter(prob, pet, ct, SPACING, labels=labels), seen.append)
    np.testing.assert_array_equal(result.labels, labels)
    assert result.labels is not labels
    assert result.added == {1: 0, 2: 0} and result.removed == {1: 0, 2: 0}
    assert result.boxes == [] and seen == []
    assert result.seconds < 0.5
    empty = crf.refine(prob, pet, ct, SPACING)
    assert not empty.labels.any()


def test_bad_inputs_are_reported():
    prob = np.zeros((2, 4, 5, 6), np.float32)
    good = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(HecktorInputError):
        crf.refine(prob[0], good, good, SPACING)
    with pytest.raises(HecktorInputError):
        crf.refine(prob, good[:3], good, SPACING)
    with pytest.raises(HecktorInputError):
        crf.refine(prob, good, good, (0.0, 1.0, 1.0))
    with pytest.raises(HecktorInputError):
        crf.refine(prob, good, good, SPACING, labels=np.zeros((4, 5, 7), np.uint8))
