#!/usr/bin/env python
"""Train, test and install the bundled demo models with one command (fixed seeds, CPU).

    python training_scripts/build_demo_models.py --install

1. writes the synthetic training cohort (``hecktor phantom WORKDIR/train --cases 64
   --seed 0 --empty 16``), unless it is already there, and for a config that names
   ``data.val_dataset`` (``mmpl_demo``) a validation cohort (``--cases 24 --seed 500
   --empty 12``);
2. trains ``configs/mmpl_demo.yaml`` then ``configs/normresse_demo.yaml`` with
   ``train_segmentation.py`` (a run that was stopped is resumed);
3. writes a fresh test cohort whose seeds training never saw (``hecktor phantom
   WORKDIR/test --cases 20 --seed 1000 --empty 5``), segments it with ``hecktor segment``
   and scores it with ``hecktor evaluate``; the figures (mean per-case Dice GTVp, DSCagg,
   F1agg GTVn, false-positive components in the lesion-free cases) go into each model
   card under ``metrics.synthetic_test``;
4. MMPL stages 2 and 3 (``train_outcome_heads.py --config configs/mmpl_outcome_demo.yaml``):
   the HPV head, then the survival head, on the frozen ``mmpl_demo`` backbone (same
   segmentation weights), scored on the validation fold and the test cohort; the card
   gets ``heads`` (``--no-heads`` skips this step);
5. with ``--install``, copies the model folders into the package
   (``src/napari_hecktor/resources/models/<name>``).

Each model trains with ``torchrun --nproc_per_node 2`` (one single-threaded process per
core: on a 2-core CPU that is faster than one process with two threads, and much faster
when other programs compete for the cores); ``--nproc 1`` trains in one process (the
result then differs, deterministically, from the two-process run).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The bundled models (trained by default).
BUNDLED = ("mmpl_demo", "normresse_demo")
CONFIGS = {"mmpl_demo": HERE / "configs" / "mmpl_demo.yaml",
           "normresse_demo": HERE / "configs" / "normresse_demo.yaml",
           # experiment, only with --models (docs/training.md): hard-negative crops
           "mmpl_demo_hardneg": HERE / "configs" / "mmpl_demo_hardneg.yaml"}
#: Stages 2-3 (HPV and survival heads) on the stage-1 model of that name.
HEAD_CONFIGS = {"mmpl_demo": HERE / "configs" / "mmpl_outcome_demo.yaml"}
TRAIN_COHORT = {"n_cases": 64, "seed": 0, "n_empty": 16, "centers": 3}
TEST_COHORT = {"n_cases": 20, "seed": 1000, "n_empty": 5, "centers": 3}
#: Validation cohort of the configs that name ``data.val_dataset`` (mmpl_demo): epoch
#: selection and inference settings, on seeds neither training nor the test cohort use.
VAL_COHORT = {"n_cases": 24, "seed": 500, "n_empty": 12, "centers": 3}


def _bin(name: str) -> str:
    """A console script next to this Python (the virtual environment's), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run(cmd: list[str], log: Path | None = None) -> None:
    print("$ " + " ".join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True, cwd=REPO)
        return
    with open(log, "a") as fh:
        subprocess.run(cmd, check=True, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)


def ensure_cohort(folder: Path, spec: dict[str, int]) -> None:
    """Write a phantom cohort, or check that the one there was made with ``spec``."""
    meta = folder / "phantom.json"
    if meta.exists():
        have = json.loads(meta.read_text())
        want = {"seed": spec["seed"], "n_cases": spec["n_cases"], "n_empty": spec["n_empty"],
                "centers": spec["centers"]}
        got = {k: have.get(k) for k in want}
        if got != want:
            raise SystemExit(f"{folder} holds another cohort ({got}); expected {want}")
        print(f"cohort {folder} already there ({spec})")
        return
    run([_bin("hecktor"), "phantom", str(folder), "--cases", str(spec["n_cases"]),
         "--seed", str(spec["seed"]), "--empty", str(spec["n_empty"]),
         "--centers", str(spec["centers"])])


def train(name: str, workdir: Path, nproc: int) -> Path:
    out = workdir / name
    overrides = [f"data.dataset={workdir / 'train'}", f"data.cache_dir={workdir / 'cache'}",
                 f"output.dir={out}"]
    if (yaml.safe_load(CONFIGS[name].read_text()).get("data") or {}).get("val_dataset"):
        ensure_cohort(workdir / "val", VAL_COHORT)
        overrides.append(f"data.val_dataset={workdir / 'val'}")
    model = out / "model" / "model_card.json"
    if model.exists():
        print(f"{name}: already trained ({model.parent})")
        return model.parent
    launcher = ([_bin("torchrun"), "--nproc_per_node", str(nproc), "--standalone"]
                if nproc > 1 else [sys.executable])
    cmd = [*launcher, str(HERE / "train_segmentation.py"), "--config", str(CONFIGS[name]),
           "--progress", "text"]
    for o in overrides:
        cmd += ["--set", o]
    if (out / "checkpoints" / "last.pt").exists():
        cmd.append("--resume")
    out.mkdir(parents=True, exist_ok=True)
    run(cmd, out / "train.log")
    return out / "model"


def train_heads(name: str, model_dir: Path, workdir: Path) -> Path:
    """MMPL stages 2-3 on the stage-1 folder ``model_dir``: a new folder with the heads.

    Always rerun (a minute or two: the backbone is frozen), so the heads follow the
    stage-1 folder and its card as they are now.
    """
    out = workdir / f"{name}_heads"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, str(HERE / "train_outcome_heads.py"), "--config",
           str(HEAD_CONFIGS[name])]
    for o in (f"model={model_dir}", f"data.dataset={workdir / 'train'}",
              f"data.test_dataset={workdir / 'test'}", f"data.cache_dir={workdir / 'cache'}",
              f"output.dir={out}"):
        cmd += ["--set", o]
    run(cmd, out / "train.log")
    return out / "model"


def count_components(path: Path) -> int:
    import SimpleITK as sitk
    from scipy import ndimage

    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return sum(ndimage.label(labels == v, structure=np.ones((3, 3, 3)))[1] for v in (1, 2))


def test_model(name: str, model_dir: Path, workdir: Path) -> dict:
    """``hecktor segment`` + ``hecktor evaluate`` on the test cohort; the card's figures."""
    test = workdir / "test"
    pred = workdir / f"pred_{name}"
    if pred.exists():
        shutil.rmtree(pred)
    t0 = time.perf_counter()
    run([_bin("hecktor"), "segment", str(test), "-o", str(pred), "--model", str(model_dir),
         "--device", "cpu"], workdir / f"segment_{name}.log")
    seconds = time.perf_counter() - t0
    table = workdir / f"evaluate_{name}.csv"
    out = subprocess.run([_bin("hecktor"), "evaluate", str(pred), str(test), "-o", str(table)],
                         check=True, cwd=REPO, capture_output=True, text=True).stdout
    print(out)
    meta = json.loads((test / "phantom.json").read_text())
    empty_ids = {c["id"] for c in meta["cases"] if c["empty"]}
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    dice_p = [float(r["Dice_GTVp"]) for r in rows if r["PatientID"] not in empty_ids]
    dice_n = [float(r["Dice_GTVn"]) for r in rows if r["PatientID"] not in empty_ids]
    fp_empty = {i: count_components(pred / f"{i}.nii.gz") for i in sorted(empty_ids)}
    agg = {}
    for line in out.splitlines():  # "DSCagg GTVp: 0.8785" (or DSCagg_GTVp)
        if ":" not in line:
            continue
        key, value = line.split(":", 1)
        key = " ".join(key.replace("_", " ").split())
        if key in ("DSCagg GTVp", "DSCagg GTVn", "F1agg GTVn") and value.split():
            word = value.split()[0]
            agg[key] = None if word == "n/a" else float(word)
    return {
        "cohort": (f"hecktor phantom TEST --cases {TEST_COHORT['n_cases']} --seed "
                   f"{TEST_COHORT['seed']} --empty {TEST_COHORT['n_empty']}"),
        "grid": "CT",
        "measured_with": "hecktor segment TEST -o PRED --model MODEL; hecktor evaluate PRED TEST",
        "n_cases": len(rows),
        "dice_gtvp_mean": float(np.nanmean(dice_p)),
        "dice_gtvn_mean": float(np.nanmean(dice_n)) if not all(map(math.isnan, dice_n)) else None,
        "dscagg_gtvp": agg.get("DSCagg GTVp"),
        "dscagg_gtvn": agg.get("DSCagg GTVn"),
        "f1agg_gtvn": agg.get("F1agg GTVn"),
        "empty_cases": len(empty_ids),
        "fp_components_in_empty_cases": int(sum(fp_empty.values())),
        "fp_components_per_5_empty_cases": 5.0 * sum(fp_empty.values()) / max(1, len(empty_ids)),
        "segment_seconds_per_case": round(seconds / max(1, len(rows)), 2),
    }


def update_card(model_dir: Path, figures: dict) -> None:
    path = model_dir / "model_card.json"
    card = json.loads(path.read_text())
    card.setdefault("metrics", {})["synthetic_test"] = figures
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def install(name: str, model_dir: Path) -> Path:
    from napari_hecktor.models.card import BUNDLED_DIR, load_model

    target = BUNDLED_DIR / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for f in ("model.safetensors", "model_card.json"):
        shutil.copyfile(model_dir / f, target / f)
        os.chmod(target / f, 0o644)
    load_model(target)  # refuses a broken folder
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "demo",
                        help="cohorts, cache, runs and predictions (default out/demo)")
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=list(BUNDLED),
                        help="default: the bundled models (mmpl_demo normresse_demo)")
    parser.add_argument("--nproc", type=int, default=2,
                        help="torchrun processes per model (default 2: one per core)")
    parser.add_argument("--no-heads", action="store_true",
                        help="skip MMPL stages 2-3 (HPV and survival heads)")
    parser.add_argument("--install", action="store_true",
                        help="copy the model folders into src/napari_hecktor/resources/models")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ensure_cohort(workdir / "train", TRAIN_COHORT)
    trained = {}
    for name in args.models:
        t = time.perf_counter()
        trained[name] = train(name, workdir, args.nproc)
        print(f"{name}: trained in {(time.perf_counter() - t) / 60:.1f} min", flush=True)
    t_train = time.perf_counter() - t0
    ensure_cohort(workdir / "test", TEST_COHORT)
    summary = {}
    for name, model_dir in trained.items():
        figures = test_model(name, model_dir, workdir)
        update_card(model_dir, figures)
        summary[name] = figures
        if name in HEAD_CONFIGS and not args.no_heads:
            t = time.perf_counter()
            model_dir = train_heads(name, model_dir, workdir)
            heads = json.loads((model_dir / "model_card.json").read_text())["heads"]
            summary[name]["heads"] = {h: v["metrics"] for h, v in heads.items()}
            print(f"{name}: stages 2-3 in {(time.perf_counter() - t) / 60:.1f} min", flush=True)
        if args.install and name in BUNDLED:
            print(f"installed {install(name, model_dir)}")
    total = (time.perf_counter() - t0) / 60
    print(f"\ncohort + training: {t_train / 60:.1f} min; total {total:.1f} min")
    for name, f in summary.items():
        print(f"{name}: Dice GTVp {f['dice_gtvp_mean']:.3f} (mean per case), DSCagg GTVn "
              f"{f['dscagg_gtvn']:.3f}, F1agg GTVn {f['f1agg_gtvn']:.3f}, FP components in "
              f"{f['empty_cases']} lesion-free cases: {f['fp_components_in_empty_cases']}")
        for head, key in (("hpv", "auc"), ("survival", "c_index")):
            m = f.get("heads", {}).get(head, {})
            print(f"  {head} head: " + ", ".join(f"{k} {key} {v[key]:.3f} (n={v['n']})"
                                                 for k, v in m.items() if k != "train"))
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
