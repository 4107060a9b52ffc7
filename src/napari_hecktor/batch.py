"""Cohort runner: the full pipeline per case (segment, CRF, features, outcome) over a dataset.

``hecktor run`` is a thin shell over this module. The pieces:

* :func:`process_case`: one case, start to finish, in the calling process. It writes
  ``OUT_DIR/cases/<ID>/``: ``<ID>.nii.gz`` (mask on the CT grid), ``features.csv``,
  ``outcome.json`` (when predicted) and, last and atomically, ``done.json`` (the cohort
  row and the seconds per step). A case that raises gets ``error.txt`` instead and a
  "failed" row; it never raises itself. Models are loaded once per process.
* :func:`plan_cohort`: checks the paths, discovers the cases and finds the finished ones
  (a valid ``done.json``): those are skipped, everything else is (re)done.
* :func:`run_cohort_iter`: the dask-free core, a progress generator over the pending
  cases; a *runner* decides where :func:`process_case` runs (:func:`serial_runner` here,
  :class:`DaskRunner` on a dask.distributed cluster). ``cohort.csv`` is written at the end.
* :func:`run_cohort`: plan, start a ``LocalCluster`` (or connect to a scheduler), run.

Nothing is ever written inside the dataset folder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .data.clinical import clinical_row
from .errors import HecktorInputError
from .io.dataset import CaseFiles, discover
from .progress import Progress, run_to_end

CASES_DIR = "cases"
DONE_NAME = "done.json"
ERROR_NAME = "error.txt"
COHORT_NAME = "cohort.csv"
DONE_FORMAT = "napari-hecktor-case/1"

#: Settings that change a case's outputs: a run resumes only cases finished with these.
RESUME_KEYS = ("models", "tta", "crf", "features", "clinical", "outcome_model")

#: Columns of ``cohort.csv``, in order (an ``expected_rfs_<unit>`` column may follow).
COHORT_COLUMNS = (
    "PatientID", "status", "seconds", "resumed", "lesions", "flagged",
    "GTVp_volume_ml", "GTVn_volume_ml", "GTVp_SUVmax", "GTVp_SUVpeak", "GTVn_SUVmax",
    "GTVall_MTV_ml", "GTVall_TLG", "hpv_probability", "hpv_call", "risk_score", "risk_group",
    "message",
)


@dataclass(frozen=True)
class RunSettings:
    """What each case goes through. Plain values only: it travels to the workers."""

    models: tuple[str, ...] = ()  #: bundled names or absolute model folders; () = default
    device: str = "auto"
    tta: bool = False
    crf: bool = True
    features: bool = True  #: radiomics; the PET metrics are always computed
    clinical: str | None = None  #: clinical CSV (PatientID rows) for the outcome models
    outcome_model: str | None = None  #: outcome model folder; None = the bundled demo
    torch_threads: int | None = None  #: per process; 1 on a cluster (no oversubscription)

    def resume_key(self) -> dict[str, Any]:
        """The settings a finished case must share with this run to be skipped."""
        data = asdict(self)
        return {k: list(data[k]) if k == "models" else data[k] for k in RESUME_KEYS}


@dataclass
class CohortPlan:
    """The cases of a run: all of them (dataset order), the finished ones and the rest."""

    dataset: Path
    out_dir: Path
    cases: list[CaseFiles]
    finished: dict[str, dict[str, Any]]  #: case ID -> its row from ``done.json``
    pending: list[CaseFiles]


@dataclass
class CohortResult:
    """What a run did: one row per case (dataset order) and the table written."""

    rows: list[dict[str, Any]]
    table: Path
    failed: list[str] = field(default_factory=list)

    def count(self, status: str, resumed: bool | None = None) -> int:
        return sum(r["status"] == status and (resumed is None or bool(r.get("resumed")) ==
                                              resumed) for r in self.rows)


# ----------------------------------------------------------------------------- one case


def case_dir(out_dir: str | Path, case_id: str) -> Path:
    """Where a case's outputs go."""
    return Path(out_dir) / CASES_DIR / case_id


def read_done(folder: Path) -> dict[str, Any] | None:
    """A case folder's ``done.json`` if it is complete and valid, else None (redo the case)."""
    try:
        done = json.loads((folder / DONE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("format") != DONE_FORMAT:
        return None
    row, case_id = done.get("row"), done.get("case_id")
    if done.get("status") != "ok" or not isinstance(row, dict) or not case_id:
        return None
    if not (folder / f"{case_id}.nii.gz").is_file():
        return None
    return done


def _models_for(settings: RunSettings) -> tuple[list, str]:
    """The segmentation models and device (``load_models`` keeps them per process)."""
    from .pipeline import load_models
    from .segment.inference import resolve_device

    device = str(resolve_device(settings.device))
    return load_models(list(settings.models) or None, device=device), device


def _limit_threads(threads: int | None) -> None:
    """Cap torch's and SimpleITK's thread pools (N workers on N cores: one thread each)."""
    if not threads:
        return
    import SimpleITK as sitk
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def one_line(exc: BaseException) -> str:
    """An exception as one line: the message of an input error, else type and message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, HecktorInputError):
        return text or "invalid input"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _write_text(path: Path, text: str) -> None:
    from .io.export import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".txt")


def failed_row(case_id: str, message: str, seconds: float | None = None) -> dict[str, Any]:
    """The cohort row of a case that failed."""
    return {"PatientID": case_id, "status": "failed", "seconds": seconds, "resumed": False,
            "message": message}


def record_failure(out_dir: str | Path, case_id: str, exc: BaseException,
                   seconds: float | None = None, detail: str = "") -> dict[str, Any]:
    """Write the case's ``error.txt`` and return its failed row."""
    message = one_line(exc)
    folder = case_dir(out_dir, case_id)
    text = f"{case_id}: {message}\n"
    if detail:
        text += f"\n{detail}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_text(folder / ERROR_NAME, text)
    except OSError:
        pass  # the row still says what happened
    return failed_row(case_id, message, None if seconds is None else round(seconds, 2))


def process_case(
    files: CaseFiles | str | Path,
    out_dir: str | Path,
    settings: RunSettings | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline on one case and return its cohort row (never raises).

    ``files``: a discovered case, or a path that :func:`~.io.dataset.discover` turns into
    exactly one case. Works in any process: the models are cached per process.
    """
    settings = settings or RunSettings()
    start = time.perf_counter()
    if not isinstance(files, CaseFiles):
        try:
            found = discover(files)
            if len(found) != 1:
                raise HecktorInputError(f"{files} holds {len(found)} cases, not one")
        except Exception as exc:
            return record_failure(out_dir, Path(files).name, exc, time.perf_counter() - start,
                                  traceback.format_exc())
        files = found[0]
    folder = case_dir(out_dir, files.case_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_NAME).unlink(missing_ok=True)
        return _process(files, folder, settings, start)
    except Exception as exc:
        return record_failure(out_dir, files.case_id, exc, time.perf_counter() - start,
                              traceback.format_exc())


def _process(files: CaseFiles, folder: Path, settings: RunSettings,
             start: float) -> dict[str, Any]:
    from .features.pet_metrics import pet_metrics
    from .features.table import case_features_iter, write_features_csv
    from .io.case import load_case_files
    from .io.export import write_results_json
    from .pipeline import refine_case_iter, save_segmentation, segment_case_iter

    timings: dict[str, float] = {}
    clock = [time.perf_counter()]
    cpu_start = time.process_time()  # all threads of this process: > seconds = oversubscribed

    def lap(step: str) -> None:
        now = time.perf_counter()
        timings[step] = round(now - clock[0], 3)
        clock[0] = now

    _limit_threads(settings.torch_threads)
    models, device = _models_for(settings)
    lap("models")
    case = load_case_files(files)
    protected = list(case.sources.values())
    lap("load")
    seg = run_to_end(segment_case_iter(case, models, device=device, tta=settings.tta))
    labels = seg.labels
    lap("segment")
    if settings.crf:
        labels = run_to_end(refine_case_iter(case, seg.probabilities, seg.labels)).labels
        lap("crf")
    save_segmentation(seg, case, folder / f"{case.case_id}.nii.gz", labels=labels)
    lap("write_mask")
    if settings.features:
        features = run_to_end(case_features_iter(case, labels, workers=1))
    else:
        features = {"PatientID": case.case_id, **pet_metrics(
            case.pet_array(), case.ct_array(), labels, case.geometry.spacing[::-1])}
    write_features_csv([features], folder / "features.csv", protected=protected)
    lap("features")
    prediction, note = _predict(case.case_id, features, settings)
    outcome = folder / "outcome.json"
    if prediction:
        write_results_json(prediction, outcome, protected=protected, overwrite=True)
    else:
        outcome.unlink(missing_ok=True)  # a stale one from an earlier run
    lap("outcome")
    seconds = round(time.perf_counter() - start, 2)
    row: dict[str, Any] = {
        "PatientID": case.case_id, "status": "ok", "seconds": seconds, "resumed": False,
        "lesions": len(seg.components),
        "flagged": sum(bool(c.likely_false_positive) for c in seg.components),
    }
    row.update({k: features.get(k) for k in COHORT_COLUMNS if k in features})
    row.update({k: v for k, v in prediction.items()
                if k in COHORT_COLUMNS or k.startswith("expected_rfs")})
    row["message"] = note
    done = {
        "format": DONE_FORMAT,
        "case_id": case.case_id,
        "status": "ok",
        "seconds": seconds,
        "cpu_seconds": round(time.process_time() - cpu_start, 2),
        "timings": timings,
        "settings": settings.resume_key(),
        "device": device,
        "models": list(seg.models),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "row": row,
    }
    write_results_json(done, folder / DONE_NAME, protected=protected, overwrite=True)
    return row


def _predict(case_id: str, features: Mapping[str, Any],
             settings: RunSettings) -> tuple[dict[str, Any], str]:
    """Outcome predictions (or none, with the reason) from clinical row + features."""
    from .outcome.train import predict_case

    if not settings.clinical:
        return {}, "outcome not predicted: no clinical table"
    clinical = clinical_row(settings.clinical, case_id)
    if not clinical:
        return {}, "outcome not predicted: no row for this PatientID in the clinical table"
    from .outcome.demo import DEMO_MODEL_DIR

    model_dir = settings.outcome_model or str(DEMO_MODEL_DIR)
    return predict_case({**clinical, **features}, model_dir), ""


# ----------------------------------------------------------------------------- the cohort


def check_out_dir(dataset: Path, out_dir: Path) -> None:
    """Refuse an output folder that is the dataset folder, inside it, or a file."""
    root = dataset.resolve()
    if root.is_file():
        root = root.parent
    out = out_dir.resolve()
    if out == root or out.is_relative_to(root):
        raise HecktorInputError(
            f"the output folder {out_dir} is inside the dataset folder {dataset}: nothing is "
            "ever written there; choose a folder outside it"
        )
    if out.exists() and not out.is_dir():
        raise HecktorInputError(f"{out_dir} is a file; give an output folder")


def plan_cohort(dataset_dir: str | Path, out_dir: str | Path,
                settings: RunSettings) -> CohortPlan:
    """Check the paths, discover the cases, sort out the finished ones. Writes nothing."""
    dataset, out = Path(dataset_dir).expanduser(), Path(out_dir).expanduser()
    if not dataset.exists():
        raise HecktorInputError(f"not found: {dataset_dir}")
    check_out_dir(dataset, out)
    if settings.clinical and not Path(settings.clinical).is_file():
        raise HecktorInputError(f"clinical table not found: {settings.clinical}")
    if settings.outcome_model and not Path(settings.outcome_model).is_dir():
        raise HecktorInputError(f"outcome model folder not found: {settings.outcome_model}")
    cases = discover(dataset.resolve())
    finished: dict[str, dict[str, Any]] = {}
    other: list[str] = []
    for files in cases:
        done = read_done(case_dir(out, files.case_id))
        if done is None:
            continue
        if done.get("settings") != settings.resume_key():
            other.append(files.case_id)
            continue
        finished[files.case_id] = done["row"]
    if other:
        raise HecktorInputError(
            f"{out_dir} holds {len(other)} case(s) finished with other settings (e.g. "
            f"{other[0]}: {_settings_diff(case_dir(out, other[0]), settings)}); rerun with the "
            "same options to resume, or choose a new output folder"
        )
    pending = [f for f in cases if f.case_id not in finished]
    return CohortPlan(dataset, out.resolve(), cases, finished, pending)


def _settings_diff(folder: Path, settings: RunSettings) -> str:
    old = (read_done(folder) or {}).get("settings", {})
    new = settings.resume_key()
    return ", ".join(f"{k} {old.get(k)!r} then, {new[k]!r} now" for k in new
                     if old.get(k) != new[k]) or "unknown"


Runner = Callable[[Sequence[CaseFiles], Path, RunSettings], Iterator[tuple[CaseFiles, dict]]]


def serial_runner(cases: Sequence[CaseFiles], out_dir: Path,
                  settings: RunSettings) -> Iterator[tuple[CaseFiles, dict]]:
    """Run the cases one after the other in this process."""
    for files in cases:
        yield files, process_case(files, out_dir, settings)


def describe(row: Mapping[str, Any]) -> str:
    """One progress line for a finished case: ``ID ok 12.3 s`` or ``ID failed: why``."""
    if row.get("status") == "ok":
        return f"{row['PatientID']} ok {row.get('seconds') or 0:.1f} s"
    return f"{row['PatientID']} failed: {row.get('message', '')}"


def run_cohort_iter(
    plan: CohortPlan,
    settings: RunSettings,
    runner: Runner = serial_runner,
) -> Generator[Progress, None, CohortResult]:
    """Run the pending cases of ``plan``; one :class:`Progress` per finished case.

    The skipped cases come first (one Progress for all). ``cohort.csv`` is written at the
    end, and also when the run is stopped (cases not reached say "not run").
    """
    n = len(plan.cases)
    rows: dict[str, dict[str, Any]] = {
        cid: {**row, "resumed": True} for cid, row in plan.finished.items()
    }
    done = len(rows)
    if done:
        yield Progress(done, n, f"skipped {done} case(s) finished earlier")
    result = None
    try:
        for files, row in runner(plan.pending, plan.out_dir, settings):
            rows[files.case_id] = row
            done += 1
            yield Progress(done, n, describe(row))
    finally:
        ordered = [rows.get(f.case_id) or {"PatientID": f.case_id, "status": "not run"}
                   for f in plan.cases]
        table = write_cohort_table(ordered, plan.out_dir / COHORT_NAME)
        result = CohortResult(ordered, table,
                              [r["PatientID"] for r in ordered if r["status"] == "failed"])
    return result


def write_cohort_table(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``cohort.csv``: one row per case, the columns of :data:`COHORT_COLUMNS`, atomically."""
    from .io.export import write_results_csv

    extra = sorted({k for r in rows for k in r if k not in COHORT_COLUMNS})
    columns = [*COHORT_COLUMNS[:-1], *extra, COHORT_COLUMNS[-1]]
    table = [{c: _round(r.get(c)) for c in columns} for r in rows]
    return write_results_csv(table, path, overwrite=True)


def _round(value: Any) -> Any:
    """Floats to 6 significant digits in the table (the case's files keep full precision)."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


# ----------------------------------------------------------------------------- dask


class DaskRunner:
    """Run :func:`process_case` as one dask task per case on a ``distributed.Client``.

    Tasks have ``retries=0``; a task whose worker dies is rescheduled by dask until the
    scheduler's ``allowed-failures``, then it is a failed case (``KilledWorker``) like any
    other. Rows come back in completion order.
    """

    def __init__(self, client: Any):
        self.client = client

    def __call__(self, cases: Sequence[CaseFiles], out_dir: Path,
                 settings: RunSettings) -> Iterator[tuple[CaseFiles, dict]]:
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = {}
        for files in cases:
            future = self.client.submit(process_case, files, str(out_dir), settings,
                                        key=f"hecktor-case-{files.case_id}-{token}",
                                        retries=0)
            futures[future] = (files, time.perf_counter())
        try:
            for future in as_completed(list(futures)):
                files, submitted = futures.pop(future)
                try:
                    row = future.result()
                except Exception as exc:  # KilledWorker, a lost scheduler, ...
                    row = record_failure(out_dir, files.case_id, exc, None,
                                         "".join(traceback.format_exception(exc)))
                future.release()
                yield files, row
        finally:
            for future in futures:  # stopped early: drop what has not run
                future.cancel()


def start_client(workers: int = 1, scheduler: str | None = None) -> tuple[Any, Any]:
    """A ``distributed.Client`` and the ``LocalCluster`` it owns (None with ``scheduler``)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise HecktorInputError(f"cannot reach the dask scheduler at {scheduler}: {exc}")\
                from None
    if workers < 1:
        raise HecktorInputError(f"--workers must be at least 1, got {workers}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster


def run_cohort(
    dataset_dir: str | Path,
    out_dir: str | Path,
    settings: RunSettings | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> CohortResult:
    """Plan, then run the pending cases on a local cluster (or the cluster at ``scheduler``)."""
    settings = settings or RunSettings()
    if settings.torch_threads is None:
        settings = replace(settings, torch_threads=1)
    plan = plan_cohort(dataset_dir, out_dir, settings)
    say = log or (lambda _text: None)
    where = f"the dask scheduler at {scheduler}" if scheduler else \
        f"a local cluster of {workers} worker process(es)"
    say(f"{len(plan.cases)} case(s) in {plan.dataset}: {len(plan.finished)} finished earlier, "
        f"{len(plan.pending)} to run on {where} -> {plan.out_dir}")
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    if not plan.pending:
        return run_to_end(run_cohort_iter(plan, settings), progress)
    client, cluster = start_client(workers, scheduler)
    try:
        return run_to_end(run_cohort_iter(plan, settings, DaskRunner(client)), progress)
    finally:
        # a busy machine can take a few seconds to end a worker: that is not news
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
        client.close()
        if cluster is not None:
            cluster.close()


def check_models(names: Sequence[str | Path] | None) -> tuple[str, ...]:
    """Model names as workers elsewhere can use them: bundled names, absolute folders.

    Each is checked here (its card read), so that a typo fails before any worker starts.
    """
    from .models.card import bundled_models, read_card, resolve_model_path

    out = []
    for name in names or ():
        folder = resolve_model_path(name)
        read_card(folder)
        out.append(str(name) if str(name) in bundled_models() and not Path(name).is_dir()
                   else str(folder.resolve()))
    return tuple(out)


def settings_summary(settings: RunSettings) -> str:
    """One line: what each case goes through."""
    steps = ["segment" + (" (TTA)" if settings.tta else "")]
    if settings.crf:
        steps.append("CRF")
    steps.append("radiomics + PET metrics" if settings.features else "PET metrics")
    if settings.clinical:
        steps.append("outcome")
    models = ", ".join(settings.models) if settings.models else "default model"
    return f"per case: {', '.join(steps)}; {models}; device {settings.device}"
