"""HECKTOR segmentation metrics against brute-force references, plastimatch and hand counts."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import cdist

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.metrics import (
    DiceCounts,
    LesionMatch,
    aggregate_dice,
    dice,
    dsc_agg,
    evaluate_case,
    f1_agg,
    hd95,
    mask_status,
    match_lesions,
    surface_distances,
)
from napari_hecktor.segment.evaluate import (
    COLUMNS,
    evaluate_command,
    evaluate_folders,
    format_aggregate,
)

SPACING_ZYX = (3.0, 0.98, 0.98)
SHAPE = (18, 44, 44)


# --------------------------------------------------------------------------- references


def brute_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice by set arithmetic on voxel index tuples."""
    p = {tuple(v) for v in np.argwhere(pred)}
    t = {tuple(v) for v in np.argwhere(truth)}
    if not p and not t:
        return math.nan
    return 2 * len(p & t) / (len(p) + len(t))


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one of their 6 face neighbours outside (or off-grid)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones(mask.shape, dtype=bool)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def brute_directed(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-surface-voxel nearest distances in mm, both directions, by a full distance matrix."""
    sp = np.asarray(SPACING_ZYX)
    a = np.argwhere(brute_surface(pred)) * sp
    b = np.argwhere(brute_surface(truth)) * sp
    d = cdist(a, b)
    return d.min(axis=1), d.min(axis=0)


def brute_hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    d_ab, d_ba = brute_directed(pred, truth)
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def random_blob(rng: np.random.Generator) -> np.ndarray:
    """Union of 1-3 random ellipsoids (radii in mm) on the anisotropic test grid."""
    zz, yy, xx = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(SHAPE, SPACING_ZYX, strict=True)], indexing="ij"
    )
    mask = np.zeros(SHAPE, dtype=bool)
    extent = np.asarray(SHAPE) * np.asarray(SPACING_ZYX)
    for _ in range(rng.integers(1, 4)):
        centre = rng.uniform(0.2 * extent, 0.8 * extent)
        radii = rng.uniform([4.0, 3.0, 3.0], [14.0, 11.0, 11.0])
        mask |= (
            ((zz - centre[0]) / radii[0]) ** 2
            + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2
        ) <= 1
    return mask


def random_pairs(n: int = 12, seed: int = 7) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random (pred, truth) pairs: independent blobs, and perturbed copies (high overlap)."""
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < n:
        truth = random_blob(rng)
        if len(pairs) % 2:
            pred = np.roll(truth, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
            pred &= rng.random(SHAPE) > 0.05  # a few holes
        else:
            pred = random_blob(rng)
        if pred.any() and truth.any():
            pairs.append((pred, truth))
    return pairs


PAIRS = random_pairs()


# --------------------------------------------------------------------------- Dice, HD95


@pytest.mark.parametrize("index", range(len(PAIRS)))
def test_dice_and_hd95_match_brute_force(index: int) -> None:
    pred, truth = PAIRS[index]
    assert dice(pred, truth) == pytest.approx(brute_dice(pred, truth), abs=1e-6)
    assert hd95(pred, truth, SPACING_ZYX) == pytest.approx(brute_hd95(pred, truth), abs=0.05)


def test_hd95_respects_anisotropic_spacing() -> None:
    truth = np.zeros((12, 12, 12), dtype=bool)
    truth[4:8, 4:8, 4:8] = True
    shifted_z = np.roll(truth, 2, axis=0)
    shifted_x = np.roll(truth, 2, axis=2)
    assert hd95(shifted_z, truth, (3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(shifted_x, truth, (3.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95(truth, truth, (3.0, 1.0, 1.0)) == 0.0


def test_surface_includes_image_border_and_is_symmetric() -> None:
    full = np.ones((5, 6, 7), dtype=bool)
    half = full.copy()
    half[:, :, 4:] = False
    assert hd95(full, half, (1, 1, 1)) == pytest.approx(brute_hd95_unit(full, half))
    assert hd95(full, half, (1, 1, 1)) == hd95(half, full, (1, 1, 1))


def brute_hd95_unit(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.argwhere(brute_surface(a)), np.argwhere(brute_surface(b))
    d = cdist(pa.astype(float), pb.astype(float))
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


# --------------------------------------------------------------------------- plastimatch

PLASTIMATCH = shutil.which("plastimatch")


def _plastimatch(tmp_path: Path, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    files = []
    for name, mask in (("truth", truth), ("pred", pred)):
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.SetSpacing(SPACING_ZYX[::-1])
        image.SetOrigin((-20.0, 13.0, -400.0))
        files.append(str(tmp_path / f"{name}.nii.gz"))
        sitk.WriteImage(image, files[-1])
    out = subprocess.run(
        [PLASTIMATCH, "dice", "--all", *files], capture_output=True, text=True, check=True
    ).stdout

    def number(label: str) -> float:
        return float(re.search(rf"^{re.escape(label)}\s*=?\s*([-\d.eE+]+)", out, re.M).group(1))

    return {
        "dice": number("DICE:"),
        "hd_boundary": number("Hausdorff distance (boundary)"),
        "hd95_boundary": number("Percent (0.95) Hausdorff distance (boundary)"),
    }


def test_against_plastimatch(tmp_path: Path) -> None:
    """plastimatch measures the same surface-to-surface distances but summarises them differently.

    Its "Percent (0.95) Hausdorff distance (boundary)" is the *mean* of the two directions'
    order statistic number floor(0.95 n - 1) (0-based, no interpolation); HECKTOR's HD95 (ours)
    is the *max* of the two interpolated 95th percentiles. So we check: Dice equal, the
    boundary Hausdorff distance (max) equal, and plastimatch's HD95 recomputed from our
    distances with its own rule equal to what it prints. plastimatch's default distance map
    is a (native) Danielsson transform, which is not exact: a single voxel can be off by a
    few hundredths of a mm, which the max (one voxel) shows and the percentiles do not.
    """
    if PLASTIMATCH is None:
        pytest.fail("plastimatch is missing: `bash scripts/setup.sh test` installs it (Debian)")
    for pred, truth in PAIRS[:10]:
        ref = _plastimatch(tmp_path, pred, truth)
        assert dice(pred, truth) == pytest.approx(ref["dice"], abs=1e-5)
        d_pred, d_truth = surface_distances(pred, truth, SPACING_ZYX)
        assert max(d_pred.max(), d_truth.max()) == pytest.approx(ref["hd_boundary"], abs=0.1)

        def order_stat(d: np.ndarray) -> float:
            k = min(math.floor(0.95 * d.size - 1), d.size - 1)
            return float(np.sort(d)[k])

        emulated = 0.5 * (order_stat(d_pred) + order_stat(d_truth))
        assert emulated == pytest.approx(ref["hd95_boundary"], abs=0.05)
        assert hd95(pred, truth, SPACING_ZYX) >= emulated - 1e-6  # max >= mean of directions


# --------------------------------------------------------------------------- empty masks


def test_empty_conventions() -> None:
    empty = np.zeros((6, 6, 6), dtype=bool)
    cube = empty.copy()
    cube[2:4, 2:4, 2:4] = True
    assert math.isnan(dice(empty, empty))
    assert dice(cube, empty) == 0.0
    assert dice(empty, cube) == 0.0
    assert math.isnan(hd95(empty, empty, (1, 1, 1)))
    assert math.isnan(hd95(cube, empty, (1, 1, 1)))
    assert math.isnan(hd95(empty, cube, (1, 1, 1)))
    assert mask_status(empty, empty) == "both_empty"
    assert mask_status(empty, cube) == "pred_empty"
    assert mask_status(cube, empty) == "truth_empty"
    assert mask_status(cube, cube) == "ok"
    assert math.isnan(dsc_agg([DiceCounts(0, 0, 0), DiceCounts(0, 0, 0)]))
    assert math.isnan(f1_agg([LesionMatch(0, 0, 0)]))
    assert match_lesions(empty, cube) == LesionMatch(tp=0, fp=0, fn=1)
    assert match_lesions(cube, empty) == LesionMatch(tp=0, fp=1, fn=0)
    with pytest.raises(HecktorInputError):
        dice(cube, np.zeros((6, 6, 5), dtype=bool))
    with pytest.raises(HecktorInputError):
        hd95(cube, cube, (1.0, 0.0, 1.0))


# --------------------------------------------------------------------------- DSCagg


def test_dsc_agg_hand_counts() -> None:
    counts = [DiceCounts(10, 12, 14), DiceCounts(0, 5, 0), DiceCounts(0, 0, 0), DiceCounts(3, 4, 6)]
    assert dsc_agg(counts) == pytest.approx(2 * 13 / (26 + 5 + 0 + 10))
    assert math.isnan(counts[2].dice)
    assert counts[1].dice == 0.0


def test_aggregate_dice_from_masks() -> None:
    a = np.zeros((4, 5, 5), dtype=bool)
    b = a.copy()
    a[0, :2, :2] = True  # 4 voxels
    b[0, :2, :1] = True  # 2 voxels, both inside a
    c = np.zeros_like(a)
    d = c.copy()
    d[3, 3, 3] = True  # a miss: 0 TP, 1 truth voxel
    # sum TP = 2, sum |P| + |G| = 4 + 2 + 0 + 1
    assert aggregate_dice([(a, b), (c, d)]) == pytest.approx(4 / 7)
    assert DiceCounts.from_masks(a, b) == DiceCounts(2, 4, 2)


# --------------------------------------------------------------------------- lesions


def _line(length: int, start: int, shape=(3, 3, 30)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[1, 1, start : start + length] = True
    return mask


def test_one_big_prediction_over_two_nodes_is_one_tp_one_fn() -> None:
    truth = np.zeros((5, 5, 9), dtype=bool)
    truth[1:4, 1:4, 0:3] = True  # 27 voxels
    truth[1:4, 1:4, 4:7] = True  # 27 voxels, one empty slice apart
    pred = np.zeros_like(truth)
    pred[1:4, 1:4, 0:7] = True  # 63 voxels: IoU 27/63 with each node
    m = match_lesions(pred, truth)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    assert len(m.pairs) == 1 and m.pairs[0][2] == pytest.approx(27 / 63)


def test_iou_threshold_is_strict() -> None:
    truth = _line(10, 0)
    at = match_lesions(_line(3, 0), truth)  # IoU exactly 3/10 = 0.3
    below = match_lesions(_line(2, 0), truth)  # 0.2
    above = match_lesions(_line(4, 0), truth)  # 0.4
    assert (at.tp, at.fp, at.fn) == (0, 1, 1)
    assert (below.tp, below.fp, below.fn) == (0, 1, 1)
    assert (above.tp, above.fp, above.fn) == (1, 0, 0)


def test_false_positive_and_26_connectivity() -> None:
    truth = np.zeros((8, 8, 8), dtype=bool)
    truth[1:3, 1:3, 1:3] = True
    pred = truth.copy()
    pred[6, 6, 6] = True  # far away: a false positive
    pred[3, 3, 3] = True  # touches the cube by a corner only: same lesion (26-connected)
    m = match_lesions(pred, truth)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.pairs[0][2] == pytest.approx(8 / 9)


def test_two_nodes_two_matches() -> None:
    truth = _line(6, 0) | _line(6, 10)
    pred = _line(5, 0) | _line(6, 11)
    m = match_lesions(pred, truth)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.pairs == ((1, 1, pytest.approx(5 / 6)), (2, 2, pytest.approx(5 / 7)))


def test_hungarian_maximises_total_iou_not_greedy() -> None:
    # G1 = [0..19], G2 = [21..27]; P2 = [0..6], P1 = [8..27] (covers the gap voxel 20).
    # IoU(P1, G1) = 12/28 = 0.43 is the best single pair (greedy would take it: 1 TP),
    # but IoU(P1, G2) = 7/20 = 0.35 and IoU(P2, G1) = 7/20 = 0.35 sum to 0.70: 2 TP.
    truth = _line(20, 0) | _line(7, 21)
    pred = _line(7, 0) | _line(20, 8)
    m = match_lesions(pred, truth)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.pairs == ((1, 1, pytest.approx(0.35)), (2, 2, pytest.approx(0.35)))


def test_f1_agg_accumulates_over_cases() -> None:
    matches = [LesionMatch(1, 1, 0), LesionMatch(0, 0, 2), LesionMatch(2, 0, 1)]
    # TP 3, FP 1, FN 3 -> 6 / (6 + 1 + 3); not the mean of per-case F1s
    assert f1_agg(matches) == pytest.approx(0.6)
    assert np.mean([m.f1 for m in matches]) == pytest.approx((2 / 3 + 0 + 0.8) / 3)


# --------------------------------------------------------------------------- evaluate_case


def test_evaluate_case_keys_and_values() -> None:
    truth = np.zeros((6, 10, 10), dtype=np.uint8)
    truth[1:4, 1:4, 1:4] = 1
    truth[1:3, 6:8, 6:8] = 2
    pred = truth.copy()
    pred[pred == 2] = 0
    pred[5, 9, 9] = 2  # a GTVn false positive, the node missed
    result = evaluate_case(pred, truth, (2.0, 1.0, 1.0))
    assert result["Dice_GTVp"] == 1.0 and result["HD95_GTVp"] == 0.0
    assert result["Dice_GTVn"] == 0.0
    assert result["HD95_GTVn"] > 0
    assert (result["TP_GTVn"], result["FP_GTVn"], result["FN_GTVn"]) == (0, 1, 1)
    assert result["counts_GTVp"] == DiceCounts(27, 27, 27)
    assert result["counts_GTVn"] == DiceCounts(0, 1, 8)
    assert result["status_GTVp"] == "ok"
    bad = pred.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(HecktorInputError, match="outside 0"):
        evaluate_case(bad, truth, (2.0, 1.0, 1.0))


# --------------------------------------------------------------------------- folders

GRID = {"spacing": (1.0, 1.0, 2.5), "origin": (-30.0, 12.0, -200.0)}


def _write(path: Path, array: np.ndarray, **grid) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(grid.get("spacing", GRID["spacing"]))
    image.SetOrigin(grid.get("origin", GRID["origin"]))
    sitk.WriteImage(image, str(path))


def _cases() -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """ID -> (prediction or None, ground truth) with known overlaps."""
    shape = (8, 16, 16)
    a = np.zeros(shape, dtype=np.uint8)
    a[2:5, 2:6, 2:6] = 1  # 48 voxels
    a[2:4, 10:12, 10:12] = 2  # 8 voxels
    b_truth = np.zeros(shape, dtype=np.uint8)
    b_truth[3:6, 4:8, 4:8] = 1  # 48
    b_truth[1:3, 12:14, 2:4] = 2  # 8, node 1
    b_truth[5:7, 12:14, 12:14] = 2  # 8, node 2
    b_pred = np.zeros(shape, dtype=np.uint8)
    b_pred[3:6, 4:8, 4:6] = 1  # 24, all inside
    b_pred[1:3, 12:14, 2:4] = 2  # node 1 exact
    b_pred[6, 1, 1] = 2  # a false positive
    c_truth = np.zeros(shape, dtype=np.uint8)
    c_truth[2:4, 2:4, 2:4] = 1  # 8; no prediction file
    return {"CASE-A": (a.copy(), a), "CASE-B": (b_pred, b_truth), "CASE-C": (None, c_truth)}


def _write_predictions(folder: Path) -> None:
    for case_id, (pred, _) in _cases().items():
        if pred is not None:
            _write(folder / f"{case_id}.nii.gz", pred)
    _write(folder / "EXTRA-9.nii.gz", np.zeros((8, 16, 16)))  # no ground truth


def _write_gt(root: Path, layout: str) -> None:
    for i, (case_id, (_, truth)) in enumerate(_cases().items()):
        ct = np.zeros(truth.shape)
        if layout == "2022":
            split = "Ts" if i == 2 else "Tr"
            _write(root / f"labels{split}" / f"{case_id}.nii.gz", truth)
            _write(root / f"images{split}" / f"{case_id}__CT.nii.gz", ct)
        elif layout == "2025":
            _write(root / case_id / f"{case_id}.nii.gz", truth)
            _write(root / case_id / f"{case_id}__CT.nii.gz", ct)
        else:  # the labels folder itself
            _write(root / f"{case_id}.nii.gz", truth)


def _tree_hash(*folders: Path) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            h.update(str(path.relative_to(folder)).encode())
            if path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("layout", ["2022", "2025", "flat"])
def test_evaluate_folders_layouts(tmp_path: Path, layout: str) -> None:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    _write_predictions(pred_dir)
    _write_gt(gt_dir, layout)
    before = _tree_hash(pred_dir, gt_dir)
    table, agg = evaluate_folders(pred_dir, gt_dir)
    assert _tree_hash(pred_dir, gt_dir) == before

    assert list(table.columns) == COLUMNS
    assert table["PatientID"].tolist() == ["CASE-A", "CASE-B", "CASE-C"]
    rows = table.set_index("PatientID")
    assert rows.loc["CASE-A", "Dice_GTVp"] == 1.0 and rows.loc["CASE-A", "HD95_GTVn"] == 0.0
    assert rows.loc["CASE-B", "Dice_GTVp"] == pytest.approx(2 * 24 / (24 + 48))
    assert rows.loc["CASE-B", "Dice_GTVn"] == pytest.approx(2 * 8 / (9 + 16))
    assert tuple(rows.loc["CASE-B", ["TP_GTVn", "FP_GTVn", "FN_GTVn"]]) == (1, 1, 1)
    # the missing prediction is scored as empty: Dice 0, HD95 undefined, GTVn both empty
    assert rows.loc["CASE-C", "Dice_GTVp"] == 0.0
    assert math.isnan(rows.loc["CASE-C", "HD95_GTVp"])
    assert math.isnan(rows.loc["CASE-C", "Dice_GTVn"])

    assert agg["n_cases"] == 3
    assert agg["missing_predictions"] == ["CASE-C"]
    assert agg["unmatched_predictions"] == ["EXTRA-9"]
    assert agg["HD95_undefined_GTVp"] == ["CASE-C"]
    assert agg["DSCagg_GTVp"] == pytest.approx(2 * (48 + 24) / ((48 + 48) + (24 + 48) + 8))
    assert agg["DSCagg_GTVn"] == pytest.approx(2 * (8 + 8) / (16 + 25))
    # TP 1 + 1, FP 0 + 1, FN 0 + 1
    assert agg["F1agg_GTVn"] == pytest.approx(4 / (4 + 1 + 1))
    text = format_aggregate(agg)
    assert "DSCagg_GTVp" in text and "CASE-C" in text and "EXTRA-9" in text


def test_evaluate_command_csv_and_refusals(tmp_path: Path) -> None:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    _write_predictions(pred_dir)
    _write_gt(gt_dir, "2022")
    before = _tree_hash(pred_dir, gt_dir)
    for inside in (pred_dir / "metrics.csv", gt_dir / "labelsTr" / "CASE-A.nii.gz"):
        with pytest.raises(HecktorInputError, match="refusing"):
            evaluate_command(pred_dir, gt_dir, inside)
    out = tmp_path / "out" / "metrics.csv"
    result = evaluate_command(pred_dir, gt_dir, out)
    assert _tree_hash(pred_dir, gt_dir) == before
    assert result["csv"] == str(out.resolve())
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert table["PatientID"].tolist() == ["CASE-A", "CASE-B", "CASE-C"]
    assert math.isnan(table.loc[2, "Dice_GTVn"])
    assert result["F1agg_GTVn"] == pytest.approx(4 / 6)


def test_grid_mismatch_and_bad_labels(tmp_path: Path) -> None:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    _write_predictions(pred_dir)
    _write_gt(gt_dir, "2025")
    _write(pred_dir / "CASE-B.nii.gz", _cases()["CASE-B"][0], spacing=(1.0, 1.0, 3.0))
    with pytest.raises(HecktorInputError) as err:
        evaluate_folders(pred_dir, gt_dir)
    message = str(err.value)
    assert "CASE-B" in message and "1x1x3" in message and "1x1x2.5" in message

    bad = _cases()["CASE-B"][0].copy()
    bad[0, 0, 0] = 4
    _write(pred_dir / "CASE-B.nii.gz", bad)
    with pytest.raises(HecktorInputError, match="CASE-B.*outside 0"):
        evaluate_folders(pred_dir, gt_dir)


def test_no_ground_truth_found(tmp_path: Path) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(HecktorInputError, match="no ground-truth labels"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")
