"""Inference, files to mask on the CT grid: napari-hecktor vs a plain MONAI pipeline.

Ours: ``load_case`` + ``segment.inference.segment`` (PET-guided ROI, Gaussian-blended
sliding window at the card's overlap, lesion post-processing) with a bundled demo model.

Peer: the same network and weights (``models.card.load_model``) in a straightforward MONAI
pipeline written here: SimpleITK reads CT and PET, PET is resampled onto the CT grid,
MONAI ``Spacingd`` resamples both to the card's spacing over the whole CT volume,
``ScaleIntensityRanged`` (CT clip to the card's HU window, to [-1, 1]) and
``NormalizeIntensityd(nonzero=True)`` (PET z-score) - the card's recipe without the
PET-guided ROI - then ``sliding_window_inference`` at MONAI's defaults (overlap 0.25,
mode constant) with the card's roi_size, ``SpatialResample`` of the probabilities back to
the CT grid, and the card's thresholds (tumour first).

Variants: one model; a 5-model ensemble (the same weights 5 times: the demo models have
one fold); flip TTA (ours ``tta=True``; the peer flips the same 4 ways by hand).

    python benchmarks/bench_inference.py                       # mmpl_demo, 3 cases
    python benchmarks/bench_inference.py --models mmpl_demo normresse_demo
    python benchmarks/bench_inference.py --variants single --ct-spacing 1 1 1   # scaling
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

VARIANTS = {"single": (1, False), "ensemble5": (5, False), "tta": (1, True)}
#: The flips of TTA on both sides: none, then each spatial axis of (B, C, z, y, x).
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))


def _truth(path: str) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"dice_gtvp": common.dice(labels == 1, truth == 1),
            "dice_gtvn": common.dice(labels == 2, truth == 2)}


# ----------------------------------------------------------------------------- ours
def ours_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """napari-hecktor: load_case + segment (the same call the CLI and widgets make)."""
    from napari_hecktor.io.case import load_case
    from napari_hecktor.models.card import load_model
    from napari_hecktor.segment.inference import segment

    model = load_model(spec["model"])
    models = [model] * spec["members"]
    out = []
    for c in spec["cases"]:
        start = time.perf_counter()
        case = load_case(c["ct"], c["pet"], case_id=c["case_id"])
        seg = segment(case, models, device="cpu", tta=spec["tta"])
        seconds = time.perf_counter() - start
        out.append({"case_id": c["case_id"], "seconds": seconds,
                    "ct_voxels": int(np.prod(seg.labels.shape)),
                    **_scores(seg.labels, _truth(c["label"]))})
    return {"cases": out}


# ----------------------------------------------------------------------------- the peer
def _zyx_affine(image: Any) -> np.ndarray:
    """4x4 affine from (z, y, x) array indices to physical mm (the array order used here)."""
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), float)
    affine = np.eye(4)
    affine[:3, :3] = (direction * spacing)[:, ::-1]  # columns x, y, z -> z, y, x
    affine[:3, 3] = image.GetOrigin()
    return affine


def plain_monai_segment(ct_path: str, pet_path: str, net: Any, card: Any, members: int,
                        tta: bool) -> np.ndarray:
    """The straightforward MONAI pipeline; returns uint8 labels on the CT grid."""
    import SimpleITK as sitk
    import torch
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        NormalizeIntensityd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialResample,
    )

    recipe, inference = card.preprocessing, card.inference
    ct = sitk.ReadImage(ct_path, sitk.sitkFloat32)
    pet = sitk.ReadImage(pet_path, sitk.sitkFloat32)
    pet = sitk.Resample(pet, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    affine = torch.as_tensor(_zyx_affine(ct))
    data = {key: MetaTensor(torch.from_numpy(sitk.GetArrayFromImage(im))[None], affine=affine)
            for key, im in (("ct", ct), ("pet", pet))}
    lo, hi = recipe["ct_clip_hu"]
    spacing = float(recipe["spacing_mm"])
    pre = Compose([
        Spacingd(keys=["pet", "ct"], pixdim=(spacing,) * 3, mode="bilinear"),
        ScaleIntensityRanged(keys="ct", a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True),
        NormalizeIntensityd(keys="pet", nonzero=True),
        ConcatItemsd(keys=["pet", "ct"], name="image"),
    ])
    image = pre(data)["image"]
    x = image.as_tensor()[None].float()
    roi = [int(v) for v in inference["roi_size"]]
    probs = []
    with torch.inference_mode():
        for _ in range(members):
            for flip in FLIPS if tta else ((),):
                xi = torch.flip(x, flip) if flip else x
                logits = sliding_window_inference(xi, roi, 1, net, overlap=0.25, mode="constant")
                p = torch.sigmoid(torch.as_tensor(logits))
                probs.append(torch.flip(p, flip) if flip else p)
    prob = torch.stack(probs).mean(0)[0]
    prob = MetaTensor(prob, affine=image.affine)
    back = SpatialResample(mode="bilinear", padding_mode="zeros")(
        prob, dst_affine=affine, spatial_size=tuple(ct.GetSize()[::-1]))
    p = np.asarray(back.as_tensor())
    tp, tn = inference.get("thresholds", (0.5, 0.5))
    labels = np.zeros(p.shape[1:], np.uint8)
    labels[p[1] > tn] = 2
    labels[p[0] > tp] = 1
    return labels


def peer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain MONAI: whole CT volume, default sliding window, no PET-guided ROI."""
    from napari_hecktor.models.card import load_model

    net, card = load_model(spec["model"])
    out = []
    for c in spec["cases"]:
        start = time.perf_counter()
        labels = plain_monai_segment(c["ct"], c["pet"], net, card, spec["members"], spec["tta"])
        seconds = time.perf_counter() - start
        out.append({"case_id": c["case_id"], "seconds": seconds,
                    "ct_voxels": int(np.prod(labels.shape)),
                    **_scores(labels, _truth(c["label"]))})
    return {"cases": out}


# ----------------------------------------------------------------------------- driver
def _summary(side: common.SideResult) -> dict[str, float]:
    cases = side.result["cases"]
    return {
        "s_per_case": float(np.mean([c["seconds"] for c in cases])),
        "dice_gtvp": float(np.mean([c["dice_gtvp"] for c in cases])),
        "dice_gtvn": float(np.mean([c["dice_gtvn"] for c in cases])),
        "peak_rss_mb": side.peak_rss_mb,
        "ct_voxels": int(cases[0]["ct_voxels"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both sides for each model and variant; print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mmpl_demo"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3000)
    parser.add_argument("--ct-spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="resample the CT (and label) to this spacing first (scaling runs)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hecktor-bench-inf-") as tmp:
        cases = common.write_cases(Path(tmp) / "cohort", args.cases, args.seed)
        if args.ct_spacing:
            cases = [common.resample_case_files(c, Path(tmp) / "resampled", args.ct_spacing)
                     for c in cases]
        rows, payload = [], {}
        for model in args.models:
            for variant in args.variants:
                members, tta = VARIANTS[variant]
                spec = {"model": model, "members": members, "tta": tta, "cases": cases}
                ours = _summary(common.run_side(__file__, "ours", spec))
                peer = _summary(common.run_side(__file__, "peer", spec))
                key = f"{model}/{variant}"
                speedup = common.ratio(peer["s_per_case"], ours["s_per_case"])
                payload[key] = {"ours": ours, "peer": peer, "speedup": speedup,
                                "memory_ratio": common.ratio(peer["peak_rss_mb"],
                                                             ours["peak_rss_mb"])}
                for name, s in (("ours", ours), ("MONAI plain", peer)):
                    rows.append([key, name, s["s_per_case"], s["peak_rss_mb"], s["dice_gtvp"],
                                 s["dice_gtvn"]])
                rows.append([key, "peer/ours", speedup, payload[key]["memory_ratio"], "", ""])
        voxels = payload[next(iter(payload))]["ours"]["ct_voxels"]
        common.print_table(
            f"Inference, {len(cases)} phantom cases (seed {args.seed}), CT grid {voxels} voxels"
            f"{' at ' + 'x'.join(map(str, args.ct_spacing)) + ' mm' if args.ct_spacing else ''}",
            ["model/variant", "side", "s/case", "peak RSS MiB", "Dice GTVp", "Dice GTVn"], rows)
        common.print_json("inference", {"ct_spacing": args.ct_spacing, "ct_voxels": voxels,
                                        "target_speedup": 2.0, "results": payload})
    return 0


if __name__ == "__main__":
    if not common.worker_main({"ours": ours_worker, "peer": peer_worker}):
        sys.exit(main())
