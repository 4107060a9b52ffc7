"""Shared helpers of the benchmarks: subprocess sides, peak memory, tables, JSON lines, cases.

Each benchmark runs "ours" and "the peer" side by side in one command. A side runs in its
own Python process (``python bench_x.py --worker NAME --spec SPEC.json``): its peak
resident memory is that process's own high-water mark (``VmHWM``), so one side's memory
never hides the other's, and both pay the same interpreter and import cost.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Prefix of the one machine-readable line each benchmark prints.
JSON_PREFIX = "BENCH_JSON "


@dataclass
class SideResult:
    """What one side's process returned, plus its peak RSS (MiB) and wall time (s)."""

    result: dict[str, Any]
    peak_rss_mb: float
    wall_s: float


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def machine() -> dict[str, Any]:
    """CPU count, load average, GPU presence and library versions, for the record."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "load_average": load_average(),
        "cuda": bool(torch.cuda.is_available()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def run_side(script: str | Path, worker: str, spec: dict[str, Any],
             timeout_s: float = 900.0) -> SideResult:
    """Run ``script --worker worker`` in a fresh process; return its JSON, peak RSS, wall."""
    with tempfile.TemporaryDirectory(prefix="hecktor-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(script), "--worker", worker, "--spec", str(spec_path)],
            cwd=str(REPO),
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"{worker} ran over {timeout_s:.0f} s") from None
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"side {worker!r} failed with exit code {proc.returncode}")
        result = json.loads(out_path.read_text())
    return SideResult(result, float(result.pop("peak_rss_mb")), wall)


def worker_main(workers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """If this process was started by :func:`run_side`, run the named worker and return True."""
    if "--worker" not in sys.argv:
        return False
    name = sys.argv[sys.argv.index("--worker") + 1]
    spec = json.loads(Path(sys.argv[sys.argv.index("--spec") + 1]).read_text())
    result = workers[name](spec)
    result["peak_rss_mb"] = own_peak_rss_mb()
    Path(spec["out"]).write_text(json.dumps(result))
    return True


def own_peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``), in MiB.

    Not ``ru_maxrss``: on Linux that survives ``exec`` and so would include the RSS of the
    (large) parent at the moment it forked this process.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain, aligned text table."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}  (load average {load_average()})")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def print_json(benchmark: str, payload: dict[str, Any]) -> None:
    """The one machine-readable line: ``BENCH_JSON {"benchmark": ..., ...}``."""
    line = {"benchmark": benchmark, **payload, "machine": machine()}
    print(JSON_PREFIX + json.dumps(line, sort_keys=False, default=_jsonable), flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def ratio(peer: float, ours: float) -> float:
    """peer / ours (how many times ours is faster or smaller)."""
    return float(peer) / float(ours) if ours else float("nan")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


def write_cases(folder: str | Path, n_cases: int = 3, seed: int = 3000) -> list[dict[str, str]]:
    """Write ``hecktor phantom FOLDER --cases N --seed SEED``; return each case's files."""
    from napari_hecktor.data.phantom import write_cohort

    out = write_cohort(folder, n_cases, seed=seed)
    cases = []
    for ct in sorted((out / "imagesTr").glob("*__CT.nii.gz")):
        cid = ct.name[: -len("__CT.nii.gz")]
        cases.append({"case_id": cid, "ct": str(ct),
                      "pet": str(out / "imagesTr" / f"{cid}__PT.nii.gz"),
                      "label": str(out / "labelsTr" / f"{cid}.nii.gz")})
    return cases


def resample_case_files(case: dict[str, str], folder: str | Path,
                        spacing_xyz: Sequence[float]) -> dict[str, str]:
    """The case with its CT (linear) and label (nearest) resampled to ``spacing_xyz`` mm over
    the same extent, written into ``folder`` (the PET file is kept: it has its own grid)."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ct = sitk.ReadImage(case["ct"])
    spacing = tuple(float(s) for s in spacing_xyz)
    size = [int(round(n * s / t)) for n, s, t in
            zip(ct.GetSize(), ct.GetSpacing(), spacing, strict=True)]
    origin = [o - s / 2 + t / 2 for o, s, t in zip(ct.GetOrigin(), ct.GetSpacing(), spacing,
                                                   strict=True)]
    out = dict(case)
    for key, interp in (("ct", sitk.sitkLinear), ("label", sitk.sitkNearestNeighbor)):
        image = sitk.ReadImage(case[key])
        default = -1024.0 if key == "ct" else 0.0
        resampled = sitk.Resample(image, size, sitk.Transform(), interp, origin, spacing,
                                  image.GetDirection(), default, image.GetPixelID())
        path = folder / Path(case[key]).name
        sitk.WriteImage(resampled, str(path), useCompression=True)
        out[key] = str(path)
    return out


def quiet_logs() -> None:
    """Silence the chatty INFO/WARNING logs of pyradiomics and MONAI in a side process."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    try:
        import radiomics  # sets its own logger level on import: override it afterwards

        radiomics.setVerbosity(logging.ERROR)
    except ImportError:
        pass
    logging.getLogger("radiomics").setLevel(logging.ERROR)
