"""The ``hecktor`` command line. Each verb is a thin shell over a core function.

Bad input ends with one line ``hecktor: error: ...`` on stderr, exit status 2, no
traceback, and nothing written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import HecktorInputError


def _text_progress(label: str) -> Callable[[int, int], None]:
    """A one-line text progress bar on stderr, the CLI's twin of the widgets' progress bars."""

    def update(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
        sys.stderr.flush()

    return update


def cmd_phantom(args: argparse.Namespace) -> int:
    """Write a synthetic multi-centre cohort in the HECKTOR 2022 layout."""
    from .data.phantom import write_cohort

    out = write_cohort(
        args.out,
        args.cases,
        seed=args.seed,
        centers=args.centers,
        n_empty=args.empty,
        progress=_text_progress("phantom"),
    )
    print(f"wrote {args.cases + args.empty} synthetic cases to {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """List the cases found under a path, with their grids."""
    from .io.case import load_case_files
    from .io.dataset import discover

    cases = discover(args.path)
    print(f"{len(cases)} case(s) in {args.path} (layout: {cases[0].layout})")
    for files in cases[: args.limit]:
        line = f"  {files.case_id}: CT {files.ct.name}"
        line += f", PET {files.pet.name}" if files.pet else ", no PET"
        line += f", label {files.label.name}" if files.label else ", no label"
        if args.load:
            case = load_case_files(files)
            line += f"\n    CT grid: {case.geometry.describe()}"
        print(line)
    return 0


def _print_progress(label: str) -> Callable:
    bar = _text_progress(label)
    return lambda p: bar(p.done, p.total)


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one case (--ct/--pet) or every case of a HECKTOR-layout folder."""
    from .io.case import load_case, load_case_files
    from .io.dataset import discover
    from .pipeline import (
        check_output_paths,
        load_models,
        refine_case_iter,
        save_segmentation,
        segment_case_iter,
    )
    from .progress import run_to_end
    from .segment.inference import resolve_device

    if args.dataset is None and (args.ct is None or args.pet is None):
        raise HecktorInputError("give --ct and --pet, or a dataset folder")
    device = str(resolve_device(args.device))
    models = load_models(args.model, device=device)
    settings = {"device": device, "tta": args.tta}
    if args.thresholds:
        settings["thresholds"] = args.thresholds
    if args.dataset is not None:
        cases = discover(args.dataset)
        jobs = [(files, Path(args.out) / f"{files.case_id}.nii.gz") for files in cases]
    else:
        jobs = [(None, Path(args.out))]
    print(f"models: {', '.join(card.label for _, card in models)}; device: {device}")
    for files, out in jobs:
        case = load_case_files(files) if files else load_case(args.ct, args.pet)
        check_output_paths([out, args.prob, args.uncertainty], case)
        seg = run_to_end(segment_case_iter(case, models, **settings),
                         _print_progress(case.case_id))
        labels = seg.labels
        if args.crf:
            crf = run_to_end(refine_case_iter(case, seg.probabilities, seg.labels),
                             _print_progress("CRF"))
            labels = crf.labels
        save_segmentation(seg, case, out, probabilities=args.prob,
                          uncertainty=args.uncertainty, labels=labels)
        flagged = sum(c.likely_false_positive for c in seg.components)
        print(f"{case.case_id}: {len(seg.components)} lesion(s), {flagged} flagged as likely "
              f"false positive; {seg.seconds:.1f} s -> {out}")
    return 0


def cmd_crf(args: argparse.Namespace) -> int:
    """Refine probability maps with the 3D dense CRF."""
    import numpy as np
    import SimpleITK as sitk

    from .io.case import load_case
    from .io.geometry import Geometry
    from .io.volumes import read_image, write_image
    from .pipeline import check_output_paths, refine_case_iter
    from .progress import run_to_end

    case = load_case(args.ct, args.pet)
    check_output_paths([args.out], case)
    prob_image = read_image(args.prob, what="probability map", components=2)
    if not Geometry.of(prob_image).matches(case.geometry):
        raise HecktorInputError(f"probability map {args.prob} is not on the CT grid")
    prob = np.moveaxis(sitk.GetArrayFromImage(prob_image), -1, 0).astype(np.float32)
    result = run_to_end(refine_case_iter(case, prob), _print_progress("CRF"))
    write_image(case.geometry.image_from_array(result.labels), args.out,
                protected=case.sources.values())
    print(f"CRF: added {result.added}, removed {result.removed} voxels per label -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score predicted masks against ground truth the HECKTOR way."""
    from .segment.evaluate import evaluate_command, format_aggregate

    aggregate = evaluate_command(args.pred_dir, args.gt_dir, args.output)
    print(format_aggregate(aggregate))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """Radiomics, PET metrics (and deep features with --model) of one case's mask."""
    from .features.table import case_features_iter, write_features_csv
    from .io.case import load_case
    from .progress import run_to_end

    case = load_case(args.ct, args.pet, args.mask, case_id=args.id)
    protected = [args.ct, args.pet, args.mask]
    if args.output.suffix.lower() != ".csv":
        raise HecktorInputError(f"output {args.output} must be a .csv file")
    job = case_features_iter(case, case.label, params=args.params, model=args.model,
                             workers=args.workers)
    row = run_to_end(job, _print_progress(f"features {case.case_id}"))
    write_features_csv([row], args.output, protected=protected)
    print(f"{case.case_id}: {len(row) - 1} features -> {args.output}")
    return 0


def cmd_train_outcome(args: argparse.Namespace) -> int:
    """Cross-validate and fit the HPV and survival models on a table."""
    from .outcome.train import train_outcome

    extra = {"models": tuple(args.models.split(","))} if args.models else {}
    result = train_outcome(
        args.table, args.spec, args.output, cv=args.cv, target=args.target,
        folds=args.folds, repeats=args.repeats, seed=args.seed, command=" ".join(sys.argv),
        progress=_print_progress("train-outcome"), **extra,
    )
    print(result["text"])
    print(f"models and report -> {result['out_dir']}")
    return 0


def cmd_predict_outcome(args: argparse.Namespace) -> int:
    """HPV probability, risk score and group, expected RFS per row of a table."""
    from .outcome.train import predict_outcome

    if Path(args.output).resolve() == Path(args.table).resolve():
        raise HecktorInputError(f"refusing to overwrite the input table {args.table}")
    table = predict_outcome(args.table, args.model, args.output)
    print(f"{len(table)} prediction(s) -> {args.output} ({table.attrs.get('label', '')})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The full pipeline per case over a cohort, on dask.distributed; resumable."""
    from .batch import RunSettings, check_models, run_cohort, settings_summary

    if args.scheduler and args.workers is not None:
        raise HecktorInputError("give --workers (a local cluster) or --scheduler, not both")
    device = args.device
    if device not in ("auto", "cpu", "mps") and not device.startswith("cuda"):
        raise HecktorInputError(f"unknown device {device!r}: use auto, cpu, cuda or mps")
    clinical = args.clinical
    if clinical is None and args.dataset.is_dir() and (args.dataset / "clinical.csv").is_file():
        clinical = args.dataset / "clinical.csv"  # a HECKTOR/phantom cohort's own table
    settings = RunSettings(
        models=check_models(args.model), device=device, tta=args.tta, crf=not args.no_crf,
        features=not args.no_features,
        clinical=str(clinical.resolve()) if clinical else None,
        outcome_model=str(args.outcome_model.resolve()) if args.outcome_model else None,
    )
    print(settings_summary(settings))
    print(f"clinical table: {settings.clinical}" if settings.clinical else
          "no clinical table (--clinical): outcome predictions skipped")
    result = run_cohort(
        args.dataset, args.out, settings, workers=args.workers or 1,
        scheduler=args.scheduler,
        progress=lambda p: print(f"[{p.done}/{p.total}] {p.message}", flush=True),
        log=lambda text: print(text, flush=True),
    )
    ok_now, ok_before = result.count("ok", resumed=False), result.count("ok", resumed=True)
    line = (f"{len(result.rows)} case(s): {ok_now} done now, {ok_before} finished earlier, "
            f"{len(result.failed)} failed")
    if result.failed:
        line += f" ({', '.join(result.failed)}; see cases/<ID>/error.txt)"
    print(f"{line} -> {result.table}")
    not_run = [r["PatientID"] for r in result.rows if r["status"] == "not run"]
    if not_run:
        print(f"not run: {', '.join(not_run)}", file=sys.stderr)
    return 1 if result.failed or not_run else 0


def cmd_view(args: argparse.Namespace) -> int:
    """Open napari with a case (or the synthetic sample case)."""
    import napari

    from ._reader import read_case
    from ._sample_data import sample_case

    layers = read_case(str(args.path)) if args.path else sample_case()
    viewer = napari.Viewer(title="napari-hecktor")
    for data, kwargs, layer_type in layers:
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    viewer.window.add_plugin_dock_widget("napari-hecktor", "PET/CT display")
    if args.screenshot:
        viewer.screenshot(str(args.screenshot), canvas_only=False)
        viewer.close()
        return 0
    napari.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hecktor`` and its verbs."""
    parser = argparse.ArgumentParser(
        prog="hecktor",
        description="Head-and-neck FDG-PET/CT: view, segment, measure, predict (napari-hecktor).",
    )
    parser.add_argument("--version", action="version", version=f"napari-hecktor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("view", help="open napari with a case, a dataset or the sample case")
    p.add_argument("path", nargs="?", type=Path, help="case file/folder, dataset or DICOM folder")
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the window and exit")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("segment", help="segment GTVp/GTVn of a case or a dataset")
    p.add_argument("dataset", nargs="?", type=Path, help="HECKTOR-layout folder (else --ct/--pet)")
    p.add_argument("--ct", type=Path, help="CT file (HU)")
    p.add_argument("--pet", type=Path, help="PET file (SUV)")
    p.add_argument("-o", "--out", required=True, type=Path,
                   help="output mask (.nii.gz), or a folder with a dataset")
    p.add_argument("--model", nargs="+", help="bundled model name(s) or model folder(s)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu or cuda")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--crf", action="store_true", help="refine with the 3D dense CRF")
    p.add_argument("--thresholds", nargs=2, type=float, metavar=("GTVP", "GTVN"))
    p.add_argument("--prob", type=Path, help="also write probabilities (2 components)")
    p.add_argument("--uncertainty", type=Path, help="also write the uncertainty map")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("crf", help="refine probability maps with the 3D dense CRF")
    p.add_argument("--ct", type=Path, required=True)
    p.add_argument("--pet", type=Path, required=True)
    p.add_argument("--prob", type=Path, required=True, help="probabilities from segment --prob")
    p.add_argument("-o", "--out", type=Path, required=True, help="output mask (.nii.gz)")
    p.set_defaults(func=cmd_crf)

    p = sub.add_parser("evaluate", help="HECKTOR metrics of predicted masks vs ground truth")
    p.add_argument("pred_dir", type=Path, help="folder of <ID>.nii.gz predictions")
    p.add_argument("gt_dir", type=Path, help="ground truth (HECKTOR 2022 or 2025 layout)")
    p.add_argument("-o", "--output", type=Path, help="write per-case metrics CSV")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("features", help="radiomics, PET metrics and deep features of a mask")
    p.add_argument("--ct", type=Path, required=True)
    p.add_argument("--pet", type=Path, required=True)
    p.add_argument("--mask", type=Path, required=True, help="GTVp/GTVn mask on the CT grid")
    p.add_argument("-o", "--output", type=Path, required=True, help="features CSV (one row)")
    p.add_argument("--params", type=Path, help="pyradiomics parameter YAML (default: shipped)")
    p.add_argument("--model", help="also deep features from this model (name or folder)")
    p.add_argument("--id", help="PatientID for the row (default: from the CT file name)")
    p.add_argument("--workers", type=int, help="parallel processes (default: up to 4)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("train-outcome", help="cross-validate and fit HPV/survival models")
    p.add_argument("table", type=Path, help="clinical table (optionally joined with features)")
    p.add_argument("--spec", type=Path, help="column spec YAML (default: HECKTOR 2025 columns)")
    p.add_argument("-o", "--output", type=Path, required=True, help="new model folder")
    p.add_argument("--cv", choices=["kfold", "center"], default="kfold")
    p.add_argument("--models", help="comma list of cox_clinical,cox,rsf,deepsurv,discrete")
    p.add_argument("--target", choices=["survival", "hpv", "both"], default="both")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_outcome)

    p = sub.add_parser("run", help="full pipeline per case over a cohort (dask, resumable)")
    p.add_argument("dataset", type=Path, help="HECKTOR-layout folder (read only)")
    p.add_argument("-o", "--out", required=True, type=Path,
                   help="output folder (outside the dataset): cases/<ID>/..., cohort.csv")
    p.add_argument("--workers", type=int, help="local worker processes (default 1)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use an existing dask cluster (e.g. tcp://host:8786) instead")
    p.add_argument("--model", nargs="+", help="bundled model name(s) or model folder(s)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu or cuda")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--no-crf", action="store_true", help="skip the dense-CRF refinement")
    p.add_argument("--no-features", action="store_true",
                   help="skip radiomics (PET metrics are still computed)")
    p.add_argument("--clinical", type=Path,
                   help="clinical CSV for outcome predictions (default: DATASET/clinical.csv "
                   "if there is one)")
    p.add_argument("--outcome-model", type=Path,
                   help="outcome model folder (default: the bundled synthetic demo)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("predict-outcome", help="HPV probability, risk group, expected RFS")
    p.add_argument("table", type=Path)
    p.add_argument("--model", type=Path, required=True, help="folder from train-outcome")
    p.add_argument("-o", "--output", type=Path, required=True, help="predictions CSV")
    p.set_defaults(func=cmd_predict_outcome)

    p = sub.add_parser("phantom", help="write a synthetic HECKTOR-layout cohort")
    p.add_argument("out", type=Path, help="output folder (new or empty)")
    p.add_argument("--cases", type=int, default=10, help="cases with lesions (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--centers", type=int, default=3, help="number of centres (default 3)")
    p.add_argument("--empty", type=int, default=0, help="extra lesion-free cases (default 0)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("info", help="list the cases found in a folder")
    p.add_argument("path", type=Path)
    p.add_argument("--load", action="store_true", help="also read each case and show its grid")
    p.add_argument("--limit", type=int, default=50, help="show at most this many cases")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hecktor`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HecktorInputError as exc:
        parser.exit(2, f"hecktor: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "hecktor: interrupted\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
