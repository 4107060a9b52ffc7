"""Rebuild the bundled demo outcome models from a synthetic phantom cohort.

    python -m napari_hecktor.outcome.demo --cases 200 --force

1. :func:`napari_hecktor.data.phantom.write_cohort` writes ``--cases`` synthetic PET/CT
   cases (with ``clinical.csv``) to a temporary folder.
2. :func:`case_pet_metrics` measures, with the features module's
   :func:`~napari_hecktor.features.pet_metrics.pet_metrics` (the same function and column
   names as the results panel), from each case's label (the phantom's ground-truth
   GTVp/GTVn, i.e. a perfect segmentation) and its PET resampled onto the CT grid:
   ``GTVp_volume_ml``, ``GTVn_volume_ml``, ``GTVall_volume_ml`` and ``GTVp_SUVmax``
   (rounded to 0.001). These join the clinical table by ``PatientID``.
3. :func:`napari_hecktor.outcome.train.train_outcome` cross-validates and fits every
   model on all cases, writing them to ``src/napari_hecktor/resources/outcome/demo``
   (labelled "synthetic demo - not for clinical use"), with the table used
   (``demo_table.csv``) and the report.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "resources" / "outcome" / "demo"
DEMO_LABEL = "synthetic demo - not for clinical use"
DEMO_OPTIONS = {
    "rsf_trees": 50,
    "rsf_min_leaf": 15,
    "hpv_trees": 100,
    "stack_hpv_trees": 50,
    "epochs": 300,
}
#: Columns of :func:`napari_hecktor.features.pet_metrics.pet_metrics` the demo models use:
#: the results panel computes the same names from the mask on screen.
DEMO_FEATURES = ("GTVp_volume_ml", "GTVn_volume_ml", "GTVall_volume_ml", "GTVp_SUVmax")
DEMO_SPEC = {
    "name": "HECKTOR 2025 + PET metrics (synthetic demo)",
    "id": "PatientID",
    "time": {"column": "RFS", "unit": "days"},
    "event": {"column": "Relapse", "value": 1},
    "numeric": ["Age", "Tobacco Consumption", "Alcohol Consumption", "Performance Status"],
    "categorical": ["Gender", "Treatment", "M-stage"],
    "hpv": {"column": "HPV Status", "positive": 1, "negative": 0},
    "center": "CenterID",
    "features": list(DEMO_FEATURES),  # prefixes; here the exact column names
}


def case_pet_metrics(cohort: Path, case_id: str) -> dict[str, float]:
    """:data:`DEMO_FEATURES` of one phantom: the features module's PET metrics on its label."""
    from napari_hecktor.features.pet_metrics import pet_metrics
    from napari_hecktor.io.case import load_case

    case = load_case(
        cohort / "imagesTr" / f"{case_id}__CT.nii.gz",
        cohort / "imagesTr" / f"{case_id}__PT.nii.gz",
        cohort / "labelsTr" / f"{case_id}.nii.gz",
        case_id=case_id,
    )
    m = pet_metrics(
        case.pet_array(), case.ct_array(), case.label_array(), case.geometry.spacing[::-1]
    )
    return {k: round(float(m[k]), 3) for k in DEMO_FEATURES}


def build_demo_table(
    n_cases: int, work: Path, *, seed: int = 0, centers: int = 5, progress=None
) -> pd.DataFrame:
    """Synthetic cohort -> clinical table joined with PET metrics."""
    from napari_hecktor.data.phantom import write_cohort

    from .spec import join_tables

    cohort = write_cohort(work, n_cases, seed=seed, centers=centers, progress=progress)
    clinical = pd.read_csv(cohort / "clinical.csv", dtype={"PatientID": str})
    rows = []
    for cid in clinical["PatientID"]:
        rows.append({"PatientID": cid, **case_pet_metrics(cohort, cid)})
    return join_tables(clinical, pd.DataFrame(rows), "PatientID")


def build_demo(
    out: Path = DEMO_MODEL_DIR,
    *,
    n_cases: int = 200,
    seed: int = 0,
    centers: int = 5,
    force: bool = False,
    table: Path | None = None,
) -> dict:
    """Build the demo table (or reuse ``table``) and train the demo models into ``out``."""
    from napari_hecktor.errors import HecktorInputError

    from .train import BUNDLE, train_outcome

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise HecktorInputError(f"{out} is not empty; pass --force to replace the demo models.")
        if not (out / BUNDLE).exists() and not (out / "demo_table.csv").exists():
            raise HecktorInputError(
                f"{out} does not look like a demo model folder; not replacing it."
            )
        shutil.rmtree(out)
    if table is None:
        with tempfile.TemporaryDirectory(prefix="hecktor-demo-") as tmp:

            def bar(done: int, total: int) -> None:
                sys.stderr.write(f"\rphantoms {done}/{total}")
                if done == total:
                    sys.stderr.write("\n")

            df = build_demo_table(
                n_cases, Path(tmp) / "cohort", seed=seed, centers=centers, progress=bar
            )
    else:
        df = pd.read_csv(table, dtype={"PatientID": str})
    command = (
        f"python -m napari_hecktor.outcome.demo --cases {n_cases} --seed {seed} "
        f"--centers {centers} --force"
    )

    def show(p) -> None:
        sys.stderr.write(f"\r{p.message[:70]:<70}")

    res = train_outcome(
        df,
        DEMO_SPEC,
        out,
        cv="kfold",
        folds=5,
        repeats=1,
        seed=seed,
        options=DEMO_OPTIONS,
        label=DEMO_LABEL,
        command=command,
        progress=show,
    )
    sys.stderr.write("\n")
    df.to_csv(out / "demo_table.csv", index=False)
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--centers", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument(
        "--table",
        type=Path,
        default=None,
        help="reuse a demo_table.csv instead of drawing phantoms",
    )
    parser.add_argument("--force", action="store_true", help="replace existing demo models")
    args = parser.parse_args(argv)
    res = build_demo(
        args.out,
        n_cases=args.cases,
        seed=args.seed,
        centers=args.centers,
        force=args.force,
        table=args.table,
    )
    print(res["text"])
    print(f"demo models written to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
