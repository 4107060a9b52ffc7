#!/usr/bin/env python
"""Write patient-level fold files (JSON) for a HECKTOR-layout dataset.

    python training_scripts/make_folds.py DATASET -o folds.json                      # 5-fold
    python training_scripts/make_folds.py DATASET -o lco.json --kind leave_center_out
    python training_scripts/make_folds.py DATASET -o lco5.json --kind leave_center_out \\
        --folds 5 --clinical DATASET/clinical.csv

k-fold: every patient is in exactly one validation fold, folds stratified by centre.
Leave-centre-out: each fold holds whole centres out (one per fold, or centres grouped into
``--folds`` balanced groups). The centre is the clinical CSV's CenterID when given, else
the ID prefix (``CHUM-001`` -> ``CHUM``). Point a training config at the file with
``data.fold_file`` and pick the fold with ``data.fold`` (index or name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import data as segdata  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="HECKTOR-layout folder")
    parser.add_argument("-o", "--out", type=Path, required=True, help="fold file to write")
    parser.add_argument("--kind", choices=("kfold", "leave_center_out"), default="kfold")
    parser.add_argument("--folds", type=int, default=None,
                        help="k (default 5), or centre groups for leave_center_out "
                             "(default: one fold per centre)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (k-fold)")
    parser.add_argument("--clinical", type=Path, help="clinical CSV with PatientID, CenterID")
    parser.add_argument("--all-cases", action="store_true",
                        help="include cases without a label (for later stages' tasks)")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; choose another name (fold files are not overwritten)")
    records = segdata.list_cases(args.dataset, args.clinical, require_label=not args.all_cases)
    content = segdata.make_folds(records, args.kind, args.folds, args.seed)
    segdata.write_fold_file(args.out, content, args.dataset.resolve())
    print(f"{args.out}: {content['kind']}, {content['n_folds']} folds over "
          f"{content['n_cases']} patients")
    for fold in content["folds"]:
        print(f"  fold {fold['fold']} ({fold['name']}): {len(fold['train'])} train, "
              f"{len(fold['val'])} validation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
