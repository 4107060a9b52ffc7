"""Dense-CRF refinement: napari-hecktor (lesion boxes only) vs pydensecrf on the full ROI.

Input: phantom case ``make_case(SEED, center=0)`` resampled onto the paper's full ROI size,
the ``pet_guided_roi`` recipe's 200 x 200 x 310 mm box at 1 mm (200 x 200 x 310 voxels),
centred on the lesions' centroid (outside the phantom's CT: -1024 HU, SUV 0). The
probabilities are the bundled ``mmpl_demo`` model's (``segment``, on the CT grid),
resampled linearly onto that ROI.

Ours: ``segment.crf.refine`` (what ``pipeline.refine_case_iter`` runs): the CRF in boxes
around the lesions (10 mm margin), labels outside kept.
Peer: plain ``pydensecrf`` over the whole ROI with the same unary (tumour-first class
probabilities), the same Gaussian and bilateral kernels (``CRFParams()`` defaults, in mm
at 1 mm voxels) and 5 mean-field iterations, written out here.

Reported: seconds, peak RSS of each side's process, the ratio, and the fraction of
identical labels inside ours' boxes (and Dice of each against the phantom truth).

    python benchmarks/bench_crf.py                      # the full 200 x 200 x 310 ROI
    python benchmarks/bench_crf.py --roi-mm 144 144 144 # scaling: a smaller ROI
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SEED = 3000


def make_inputs(folder: Path, roi_mm: tuple[float, float, float], seed: int) -> dict[str, Any]:
    """Write prob (2, z, y, x), pet, ct, truth on the 1 mm ROI as .npy; return their paths."""
    import SimpleITK as sitk

    from napari_hecktor.data.phantom import make_case
    from napari_hecktor.io.case import Case
    from napari_hecktor.io.geometry import resample_to
    from napari_hecktor.models.card import load_model
    from napari_hecktor.segment.inference import segment
    from napari_hecktor.segment.preprocess import make_recipe, roi_geometry, roi_to_ct

    ph = make_case(seed, center=0)
    case = Case(case_id=ph.case_id, ct=ph.ct, pet=ph.pet, label=ph.label, sources={},
                layout="synthetic")
    seg = segment(case, [load_model("mmpl_demo")], device="cpu")
    recipe = make_recipe("pet_guided_roi", roi_mm=list(roi_mm))
    # centred on the lesions (x, y, z mm), so that every ROI size holds all of them
    zyx = np.argwhere(sitk.GetArrayViewFromImage(case.label) > 0).mean(axis=0)
    center = np.array(case.ct.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))
    roi = roi_geometry(center, recipe)
    arrays = {
        "prob": roi_to_ct(seg.probabilities, case.geometry, roi),
        "ct": sitk.GetArrayFromImage(resample_to(sitk.Cast(case.ct, sitk.sitkFloat32), roi,
                                                 default_value=-1024.0)),
        "pet": sitk.GetArrayFromImage(resample_to(sitk.Cast(case.pet, sitk.sitkFloat32), roi)),
        "truth": sitk.GetArrayFromImage(resample_to(case.label, roi, interpolator="nearest")),
    }
    paths = {}
    for name, array in arrays.items():
        paths[name] = str(folder / f"{name}.npy")
        np.save(paths[name], array)
    return {**paths, "shape": list(arrays["ct"].shape)}


def _load(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.load(spec[k]) for k in ("prob", "pet", "ct"))  # type: ignore[return-value]


def ours_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """napari-hecktor's restricted CRF."""
    from napari_hecktor.segment.crf import CRFParams, refine

    prob, pet, ct = _load(spec)
    start = time.perf_counter()
    result = refine(prob, pet, ct, (1.0, 1.0, 1.0), CRFParams())
    seconds = time.perf_counter() - start
    np.save(spec["labels_out"], result.labels)
    boxes = [[[s.start, s.stop] for s in box] for box in result.boxes]
    return {"seconds": seconds, "boxes": boxes}


def peer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain pydensecrf on the whole ROI, same unary, kernels and iterations."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import (
        create_pairwise_bilateral,
        create_pairwise_gaussian,
        unary_from_softmax,
    )

    from napari_hecktor.segment.crf import UNARY_CLIP, CRFParams

    p = CRFParams()
    prob, pet, ct = _load(spec)
    start = time.perf_counter()
    shape = ct.shape
    pp, pn = np.clip(prob[0], 0, 1), np.clip(prob[1], 0, 1)
    classes = np.stack([(1 - pp) * (1 - pn), pp, (1 - pp) * pn]).astype(np.float32)
    crf = dcrf.DenseCRF(int(np.prod(shape)), 3)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(classes, clip=UNARY_CLIP)))
    gauss = create_pairwise_gaussian(sdims=(p.smooth_sigma_mm,) * 3, shape=shape)
    crf.addPairwiseEnergy(np.ascontiguousarray(gauss, dtype=np.float32), compat=p.smooth_weight)
    del gauss
    image = np.stack([pet, ct], axis=-1)
    bilat = create_pairwise_bilateral(sdims=(p.bilateral_sigma_mm,) * 3,
                                      schan=(p.pet_sigma_suv, p.ct_sigma_hu), img=image, chdim=3)
    crf.addPairwiseEnergy(np.ascontiguousarray(bilat, dtype=np.float32),
                          compat=p.bilateral_weight)
    del bilat
    q = crf.inference(p.iterations)
    labels = np.argmax(np.array(q), axis=0).reshape(shape).astype(np.uint8)
    seconds = time.perf_counter() - start
    np.save(spec["labels_out"], labels)
    return {"seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    """Prepare the ROI, run both sides, compare, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roi-mm", type=float, nargs=3, default=(200.0, 200.0, 310.0),
                        metavar=("X", "Y", "Z"), help="ROI size in mm (= voxels at 1 mm)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hecktor-bench-crf-") as tmp:
        folder = Path(tmp)
        inputs = make_inputs(folder, tuple(args.roi_mm), args.seed)
        ours = common.run_side(__file__, "ours", {**inputs,
                                                  "labels_out": str(folder / "ours.npy")})
        peer = common.run_side(__file__, "peer", {**inputs,
                                                  "labels_out": str(folder / "peer.npy")})
        a, b = np.load(folder / "ours.npy"), np.load(folder / "peer.npy")
        truth = np.load(inputs["truth"])
        inside = np.zeros(a.shape, bool)
        for box in ours.result["boxes"]:
            inside[tuple(slice(lo, hi) for lo, hi in box)] = True
    agree_in = float((a[inside] == b[inside]).mean()) if inside.any() else float("nan")
    agree_all = float((a == b).mean())
    speedup = common.ratio(peer.result["seconds"], ours.result["seconds"])
    mem = common.ratio(peer.peak_rss_mb, ours.peak_rss_mb)
    dice = {side: {f"dice_{n}": common.dice(lab == k, truth == k)
                   for k, n in ((1, "gtvp"), (2, "gtvn"))} for side, lab in (("ours", a),
                                                                            ("peer", b))}
    shape = "x".join(map(str, inputs["shape"][::-1]))
    rows = [
        ["ours (lesion boxes)", ours.result["seconds"], ours.peak_rss_mb,
         dice["ours"]["dice_gtvp"], dice["ours"]["dice_gtvn"]],
        ["pydensecrf (full ROI)", peer.result["seconds"], peer.peak_rss_mb,
         dice["peer"]["dice_gtvp"], dice["peer"]["dice_gtvn"]],
        ["peer/ours", speedup, mem, "", ""],
    ]
    common.print_table(
        f"Dense CRF on a {shape} (x*y*z) ROI at 1 mm; boxes cover {inside.mean():.2%}; "
        f"identical labels in the boxes {agree_in:.4%}, everywhere {agree_all:.4%}",
        ["side", "seconds", "peak RSS MiB", "Dice GTVp", "Dice GTVn"], rows)
    common.print_json("crf", {
        "roi_voxels_xyz": inputs["shape"][::-1], "box_fraction": float(inside.mean()),
        "n_boxes": len(ours.result["boxes"]),
        "ours": {"seconds": ours.result["seconds"], "peak_rss_mb": ours.peak_rss_mb,
                 **dice["ours"]},
        "peer": {"seconds": peer.result["seconds"], "peak_rss_mb": peer.peak_rss_mb,
                 **dice["peer"]},
        "speedup": speedup, "memory_ratio": mem, "agreement_in_boxes": agree_in,
        "agreement_everywhere": agree_all, "target_speedup": 10.0,
    })
    return 0


if __name__ == "__main__":
    if not common.worker_main({"ours": ours_worker, "peer": peer_worker}):
        sys.exit(main())
