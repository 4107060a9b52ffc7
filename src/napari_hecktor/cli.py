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
