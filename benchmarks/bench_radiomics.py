"""Radiomics of GTVp, GTVn and GTVall on CT and PET: napari-hecktor vs serial pyradiomics.

Ours: ``features.radiomics.radiomics_features(case)`` with its default process pool
(``default_workers()``: min(4, CPUs) spawn workers, single-threaded SimpleITK each),
feature names included (computed once per process from a small synthetic ball).

Peer: plain pyradiomics in one process, structure by structure and modality by modality:
``RadiomicsFeatureExtractor`` with the shipped ``radiomics_params.yaml`` (its pyradiomics
keys, the modality's ``modalities`` entry merged onto ``setting``), on the CT and on the
PET resampled onto the CT grid (SimpleITK, linear), GTVp = label 1, GTVn = label 2,
GTVall = labels > 0. SimpleITK keeps its default threads (all cores).

Reported: seconds per case, peak RSS of each side's process, the ratio, and the largest
absolute and relative difference over every feature value (NaNs must match).

    python benchmarks/bench_radiomics.py              # 3 phantom cases (one per centre)
    python benchmarks/bench_radiomics.py --cases 1
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

PARAMS = common.REPO / "src" / "napari_hecktor" / "features" / "radiomics_params.yaml"


def ours_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """napari-hecktor's radiomics (process pool), per case."""
    common.quiet_logs()
    from napari_hecktor.features.radiomics import default_workers, radiomics_iter
    from napari_hecktor.io.case import load_case

    out = []
    for c in spec["cases"]:
        start = time.perf_counter()
        case = load_case(c["ct"], c["pet"], c["label"], case_id=c["case_id"])
        job = radiomics_iter(case, workers=spec.get("workers"))
        # when each step was reported (s from the start): the time line of the pool
        steps = [("inputs checked", time.perf_counter() - start)]
        while True:
            try:
                progress = next(job)
            except StopIteration as stop:
                row = stop.value
                break
            steps.append((progress.message, time.perf_counter() - start))
        out.append({"case_id": c["case_id"], "seconds": time.perf_counter() - start,
                    "values": row, "steps": steps})
    return {"cases": out, "workers": spec.get("workers") or default_workers()}


def peer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Serial pyradiomics, one structure x modality after the other, in this process."""
    common.quiet_logs()
    import SimpleITK as sitk
    import yaml
    from radiomics import featureextractor

    config = yaml.safe_load(PARAMS.read_text())
    per_modality = {}
    for modality in ("CT", "PET"):
        params = {k: copy.deepcopy(v) for k, v in config.items() if k != "modalities"}
        params["setting"] = {**params["setting"], **config["modalities"][modality]}
        per_modality[modality] = params
    out = []
    for c in spec["cases"]:
        start = time.perf_counter()
        ct = sitk.ReadImage(c["ct"])
        pet = sitk.Resample(sitk.Cast(sitk.ReadImage(c["pet"]), sitk.sitkFloat32), ct,
                            sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        labels = sitk.Cast(sitk.ReadImage(c["label"]), sitk.sitkUInt8)
        masks = {"GTVp": (labels, 1), "GTVn": (labels, 2),
                 "GTVall": (sitk.Cast(labels > 0, sitk.sitkUInt8), 1)}
        counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=3)
        present = {"GTVp": counts[1] > 0, "GTVn": counts[2] > 0, "GTVall": counts[1:].sum() > 0}
        row: dict[str, float] = {}
        jobs = {}
        for structure, (mask, label) in masks.items():
            for modality, image in (("CT", ct), ("PET", pet)):
                if not present[structure]:
                    continue
                t0 = time.perf_counter()
                extractor = featureextractor.RadiomicsFeatureExtractor(
                    copy.deepcopy(per_modality[modality]))
                result = extractor.execute(image, mask, label=label)
                jobs[f"{structure}_{modality}"] = time.perf_counter() - t0
                for name, value in result.items():
                    if not name.startswith("diagnostics_"):
                        row[f"{structure}_{modality}_{name}"] = float(value)
        out.append({"case_id": c["case_id"], "seconds": time.perf_counter() - start,
                    "values": row, "job_seconds": jobs})
    return {"cases": out}


def compare(ours: dict[str, float], peer: dict[str, float]) -> dict[str, Any]:
    """Largest differences over the features both computed; count of one-sided ones."""
    common_keys = [k for k in peer if k in ours]
    max_abs, max_rel, nan_mismatch = 0.0, 0.0, 0
    for k in common_keys:
        a, b = ours[k], peer[k]
        if math.isnan(a) or math.isnan(b):
            nan_mismatch += math.isnan(a) != math.isnan(b)
            continue
        diff = abs(a - b)
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(abs(b), 1e-12) if diff else 0.0)
    only_peer = [k for k in peer if k not in ours]
    only_ours = [k for k in ours if k not in peer and not math.isnan(ours[k])]
    return {"n_features": len(common_keys), "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "nan_mismatch": nan_mismatch, "only_peer": len(only_peer),
            "only_ours_not_nan": len(only_ours)}


def main(argv: list[str] | None = None) -> int:
    """Run both sides on the phantom case(s); compare values; print table and JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 3 cases (one per centre, lesions of 2-60 mL): a case mix rather than one lesion size;
    # our speed-up grows with the lesions (fixed set-up ~0.3 s per case)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=None,
                        help="ours' worker processes (default: its own default)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hecktor-bench-rad-") as tmp:
        cases = common.write_cases(Path(tmp) / "cohort", args.cases, args.seed)
        spec = {"cases": cases, "workers": args.workers}
        ours = common.run_side(__file__, "ours", spec)
        peer = common.run_side(__file__, "peer", spec)
    checks = [compare(o["values"], p["values"])
              for o, p in zip(ours.result["cases"], peer.result["cases"], strict=True)]
    o_s = float(np.mean([c["seconds"] for c in ours.result["cases"]]))
    p_s = float(np.mean([c["seconds"] for c in peer.result["cases"]]))
    worst = {k: max(c[k] for c in checks) for k in checks[0]}
    speedup = common.ratio(p_s, o_s)
    rows = [
        [f"ours ({ours.result['workers']} workers)", o_s, ours.peak_rss_mb],
        ["pyradiomics serial", p_s, peer.peak_rss_mb],
        ["peer/ours", speedup, common.ratio(peer.peak_rss_mb, ours.peak_rss_mb)],
    ]
    common.print_table(
        f"Radiomics, {len(cases)} phantom case(s): {worst['n_features']} values per case; "
        f"max |diff| {worst['max_abs_diff']:.3g}, max rel diff {worst['max_rel_diff']:.3g}, "
        f"NaN mismatches {worst['nan_mismatch']}",
        ["side", "s/case", "peak RSS MiB"], rows)
    jobs = peer.result["cases"][0]["job_seconds"]
    steps = ours.result["cases"][0]["steps"]
    print("peer seconds per structure x modality (case 1): "
          + ", ".join(f"{k} {v:.1f}" for k, v in jobs.items()))
    print("ours time line (case 1, s): "
          + "; ".join(f"{m.replace('radiomics: ', '')} {t:.1f}" for m, t in steps))
    common.print_json("radiomics", {
        "n_cases": len(cases), "workers": ours.result["workers"],
        "ours": {"s_per_case": o_s, "peak_rss_mb": ours.peak_rss_mb},
        "peer": {"s_per_case": p_s, "peak_rss_mb": peer.peak_rss_mb, "job_seconds": jobs},
        "ours_time_line": steps,
        "speedup": speedup, "values": worst, "target_speedup": 2.0,
    })
    return 0


if __name__ == "__main__":
    if not common.worker_main({"ours": ours_worker, "peer": peer_worker}):
        sys.exit(main())
