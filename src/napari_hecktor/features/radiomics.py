"""Mask-guided radiomics with pyradiomics: per structure (GTVp, GTVn, GTVall) and modality.

What is computed
    For every structure x modality pair, ``RadiomicsFeatureExtractor(p).execute(image,
    mask, label=l)`` of pyradiomics with ``p`` = the parameter file's pyradiomics part
    with that modality's ``modalities`` entry merged onto ``setting`` (see
    :func:`pyradiomics_params` and the shipped ``radiomics_params.yaml``). The values are
    exactly pyradiomics' (diagnostics dropped); names get the prefix
    ``{structure}_{modality}_``, e.g. ``GTVp_PET_original_firstorder_Maximum``.

Images and masks (see :func:`structure_mask`)
    * CT: HU on its own grid.
    * PET: SUV resampled onto the CT grid (trilinear, by physical coordinates:
      :attr:`Case.pet_on_ct`). The mask is never resampled onto the PET grid: masks are
      drawn on the CT grid (HECKTOR), both modalities then see the same voxels, and a
      nearest-neighbour mask on 4 mm PET voxels would distort or drop small nodes.
      Any further resampling (``resampledPixelSpacing``) is pyradiomics' own.
    * GTVp and GTVn: the label map itself with ``label=1`` / ``label=2``; GTVall: the
      binary mask ``labels > 0`` with ``label=1``.

Empty and refused structures
    A structure with no voxel (or a modality that the case lacks) is not sent to
    pyradiomics: its columns are NaN. A structure that pyradiomics refuses (one voxel,
    or flat along two axes: pyradiomics raises ``ValueError``) gets NaN columns too, and a
    warning in the log. The column set is the same for every case: pyradiomics' names
    for the parameters when no filter is skipped (:func:`feature_names`). They are taken
    from the case's own results when one structure got every filtered image the
    parameters ask for (the image names come from running the filters alone on a small
    synthetic ball, :func:`_image_names`); only otherwise is the full pyradiomics run on
    that ball made (:func:`feature_names`, cached per process). Filter outputs that
    pyradiomics skips for a tiny lesion (a LoG sigma too large for its box) are NaN.

Work saved, values unchanged
    Shape features depend on the mask alone, and CT and PET share mask and grid (PET is
    on the CT grid; pyradiomics resamples both from the mask's geometry, the mask
    nearest-neighbour): they are computed on CT only and copied to PET's columns.
    pyradiomics discretises each (filtered) image once per feature class, six times the
    same (``RadiomicsFeaturesBase._applyBinning``: same image, mask and bin settings):
    our extractor bins it once and hands the later classes a copy (:func:`_bin_once`).

Parallelism and cancel
    The jobs run in ``workers`` processes of one module-level ``ProcessPoolExecutor``
    that is kept between calls (ended at exit, :func:`shutdown_pool`; made anew after a
    Cancel, a dead worker or another ``workers``). Its processes are forked when the
    calling process has one thread (no start-up cost: the imports are inherited), else
    started by a ``forkserver`` (a clean single-threaded server: safe from a GUI
    thread); each runs SimpleITK single-threaded at niceness +10. A large structure x
    modality runs as two jobs, its image types cut in two contiguous halves (pyradiomics
    derives every image from the same resampled crop and computes each apart: the
    halves joined are the full extraction, to the bit), and the jobs are submitted
    largest first, so that the workers finish together. The arrays are written once as
    ``.npy`` files in a temporary folder that the workers memory-map and wrap back into
    SimpleITK images with the CT geometry. ``workers=1`` runs in this process on the
    original images, one job per structure x modality. :func:`radiomics_iter` submits
    the jobs before its first report and yields after every finished job; closing it
    (Cancel) cancels the pending jobs, terminates the workers and removes the temporary
    folder. As with spawned processes, a script that calls this with ``workers > 1``
    from a thread other than the main one needs the ``if __name__ == "__main__":``
    guard.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import math
import multiprocessing
import os
import tempfile
import threading
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from ..errors import HecktorInputError
from ..io.geometry import Geometry, resample_to
from ..progress import Progress, run_to_end

log = logging.getLogger(__name__)

#: The shipped default parameters.
DEFAULT_PARAMS = Path(__file__).resolve().with_name("radiomics_params.yaml")
#: Structures: name -> label value (None: any lesion, as a binary mask).
STRUCTURES: dict[str, int | None] = {"GTVp": 1, "GTVn": 2, "GTVall": None}
#: Modalities, in column order.
MODALITIES = ("CT", "PET")
#: Top-level keys a parameter file may have: pyradiomics' own plus ``modalities``.
PYRADIOMICS_KEYS = ("setting", "imageType", "featureClass", "voxelSetting")
PARAM_KEYS = (*PYRADIOMICS_KEYS, "modalities")
#: Most worker processes by default.
MAX_DEFAULT_WORKERS = 4

_NAMES_CACHE: dict[str, list[str]] = {}


# ----------------------------------------------------------------------------- parameters
#: Checked parameter files: (path, mtime, size) -> config (checking costs ~0.1 s).
_PARAMS_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}
#: One check at a time: pykwalify's YAML parser (ruamel) is not thread-safe, and a widget's
#: warm-up thread and its first job may both check the parameters at once.
_PARAMS_LOCK = threading.Lock()


def load_params(params: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and check a parameter file (``None``: the shipped defaults); return it as a dict.

    Raises :class:`HecktorInputError` naming the file for a missing file, invalid YAML, an
    unknown top-level key, a bad ``modalities`` entry, or settings pyradiomics refuses.
    A file already checked, unchanged since, is not checked again.
    """
    if params is None:
        params = DEFAULT_PARAMS
    with _PARAMS_LOCK:
        if isinstance(params, Mapping):
            return _check_params(params)
        try:
            stat = Path(params).stat()
            key = (str(Path(params).resolve()), stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = None  # missing or unreadable: _check_params says so
        if key is not None and key in _PARAMS_CACHE:
            return copy.deepcopy(_PARAMS_CACHE[key])
        config = _check_params(params)
        if key is not None:
            _PARAMS_CACHE[key] = copy.deepcopy(config)
        return config


def _check_params(params: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(params, Mapping):
        source = "the radiomics parameters"
        config = copy.deepcopy(dict(params))
    else:
        path = Path(params)
        source = f"radiomics parameter file {path}"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise HecktorInputError(f"{source} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise HecktorInputError(f"cannot read {source}: {exc}") from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise HecktorInputError(f"{source} is not valid YAML{line}: {problem}") from None
        if config is None:
            raise HecktorInputError(f"{source} is empty")
    if not isinstance(config, dict):
        raise HecktorInputError(f"{source} must be a mapping of {', '.join(PARAM_KEYS)}")
    unknown = sorted(str(k) for k in config if k not in PARAM_KEYS)
    if unknown:
        raise HecktorInputError(
            f"{source} has unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(PARAM_KEYS)}"
        )
    modalities = config.get("modalities") or {}
    if not isinstance(modalities, dict):
        raise HecktorInputError(f"{source}: 'modalities' must map CT/PET to settings")
    for name, settings in modalities.items():
        if name not in MODALITIES:
            raise HecktorInputError(
                f"{source}: unknown modality {name!r} under 'modalities'; "
                f"known: {', '.join(MODALITIES)}"
            )
        if not isinstance(settings, dict):
            raise HecktorInputError(
                f"{source}: 'modalities: {name}' must be a mapping of pyradiomics settings"
            )
    config["modalities"] = modalities
    for modality in MODALITIES:
        _validate_with_pyradiomics(pyradiomics_params(config, modality), source, modality)
    return config


def pyradiomics_params(config: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """The plain pyradiomics parameters for ``modality``: ``setting`` + ``modalities[modality]``.

    Pass the result to ``RadiomicsFeatureExtractor`` to reproduce this module's values.
    """
    out = {k: copy.deepcopy(config[k]) for k in PYRADIOMICS_KEYS if config.get(k) is not None}
    overrides = (config.get("modalities") or {}).get(modality) or {}
    if overrides:
        out["setting"] = {**(out.get("setting") or {}), **copy.deepcopy(overrides)}
    return out


def _validate_with_pyradiomics(params: dict[str, Any], source: str, modality: str) -> None:
    from pykwalify.errors import PyKwalifyException

    quiet = logging.getLogger("pykwalify")  # it logs the errors it raises: say them once
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        _extractor(params)
    except PyKwalifyException as exc:
        detail = " ".join(str(getattr(exc, "msg", exc) or exc).split())
        detail = detail.replace("Schema validation failed:", "").strip(" -.")
        raise HecktorInputError(
            f"{source} is not valid pyradiomics parameters for {modality}: {detail}"
        ) from None
    finally:
        quiet.setLevel(level)


class _DropSumAverageNote(logging.Filter):
    """pyradiomics warns 'GLCM is symmetrical...' for every GLCM it computes: noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "GLCM is symmetrical" not in str(record.msg)


def _extractor(params: dict[str, Any]) -> Any:
    glcm_log = logging.getLogger("radiomics.glcm")
    if not any(isinstance(f, _DropSumAverageNote) for f in glcm_log.filters):
        glcm_log.addFilter(_DropSumAverageNote())
    # pyradiomics may normalise the dict it is given: hand it a copy
    return _extractor_class()(copy.deepcopy(params))


# One image's discretisation, shared by the feature classes of one ``computeFeatures`` call:
# the thread's list of (image, mask, bin settings, binned image, grey levels, Ng), or None
# outside such a call (then pyradiomics bins as usual).
_BINNED = threading.local()
_EXTRACTOR_CLASS: type | None = None


def _bin_settings(settings: Mapping[str, Any]) -> tuple[Any, Any]:
    # pyradiomics' getBinEdges reads these two settings only
    return settings.get("binWidth", 25), settings.get("binCount")


def _bin_once(original: Any) -> Any:
    """``RadiomicsFeaturesBase._applyBinning`` that reuses an identical earlier binning.

    Reused only inside our extractor's ``computeFeatures`` and only when image, mask and
    bin settings are equal (compared, not assumed), so the values are pyradiomics' own.
    """

    def apply_binning(self: Any, matrix: np.ndarray) -> np.ndarray:
        entries = getattr(_BINNED, "entries", None)
        if entries is None:
            return original(self, matrix)
        key = _bin_settings(self.settings)
        for image, mask, bins, binned, grey_levels, ng in entries:
            if (bins == key and np.array_equal(image, matrix)
                    and np.array_equal(mask, self.maskArray)):
                self.coefficients["grayLevels"] = grey_levels.copy()
                self.coefficients["Ng"] = ng
                return binned.copy()
        image = matrix.copy()  # some classes bin a copy, others their own array
        binned = original(self, matrix)
        entries.append((image, self.maskArray.copy(), key, binned.copy(),
                        self.coefficients["grayLevels"].copy(), self.coefficients["Ng"]))
        return binned

    apply_binning.__wrapped__ = original  # type: ignore[attr-defined]
    return apply_binning


def _extractor_class() -> type:
    """pyradiomics' extractor, binning each derived image once (see :func:`_bin_once`)."""
    global _EXTRACTOR_CLASS
    if _EXTRACTOR_CLASS is None:
        from radiomics import base, featureextractor

        if not hasattr(base.RadiomicsFeaturesBase._applyBinning, "__wrapped__"):
            base.RadiomicsFeaturesBase._applyBinning = _bin_once(
                base.RadiomicsFeaturesBase._applyBinning)

        class BinOnceExtractor(featureextractor.RadiomicsFeatureExtractor):
            def computeFeatures(self, image, mask, imageTypeName, **kwargs):
                _BINNED.entries = []
                try:
                    return super().computeFeatures(image, mask, imageTypeName, **kwargs)
                finally:
                    _BINNED.entries = None

        _EXTRACTOR_CLASS = BinOnceExtractor
    return _EXTRACTOR_CLASS


# ----------------------------------------------------------------------------- inputs
def structure_mask(labels: sitk.Image, structure: str) -> tuple[sitk.Image, int]:
    """The mask image and label value that pyradiomics gets for ``structure``."""
    value = STRUCTURES[structure]
    if value is None:
        return sitk.Cast(labels > 0, sitk.sitkUInt8), 1
    return labels, value


def check_mask(labels: sitk.Image | np.ndarray | None, ct: sitk.Image) -> sitk.Image:
    """A GTVp/GTVn mask (image or (z, y, x) array) checked against the CT grid, as uint8."""
    geometry = Geometry.of(ct)
    if labels is None:
        raise HecktorInputError("no mask given: radiomics needs a GTVp/GTVn label on the CT grid")
    if isinstance(labels, np.ndarray):
        if tuple(labels.shape) != geometry.shape:
            raise HecktorInputError(
                f"the mask is not on the CT grid: mask array shape {tuple(labels.shape)}, "
                f"CT array shape {geometry.shape}"
            )
        labels = geometry.image_from_array(np.asarray(labels))
    mask_geometry = Geometry.of(labels)
    if not mask_geometry.matches(geometry):
        raise HecktorInputError(
            f"the mask is not on the CT grid: mask is {mask_geometry.describe()}, "
            f"CT is {geometry.describe()}"
        )
    array = sitk.GetArrayViewFromImage(labels)
    if array.dtype == np.uint8:  # the usual case: a bincount is much faster than unique
        values = np.nonzero(np.bincount(array.ravel(), minlength=3))[0]
    else:
        values = np.unique(array)
    extra = [v for v in values.tolist() if v not in (0, 1, 2)]
    if extra:
        shown = ", ".join(f"{v:g}" for v in extra[:5])
        raise HecktorInputError(
            f"the mask has values outside 0 (background), 1 (GTVp), 2 (GTVn): {shown}"
        )
    if labels.GetPixelID() != sitk.sitkUInt8:
        labels = sitk.Cast(labels, sitk.sitkUInt8)
    if mask_geometry != geometry:  # within 1 um: take the CT's exact geometry, on a copy
        labels = sitk.Image(labels)
        geometry.apply_to(labels)
    return labels


def _modality_images(images: Any) -> dict[str, sitk.Image | None]:
    """CT and PET (SUV, on the CT grid) from a Case or a mapping {"CT": ..., "PET": ...}."""
    from ..io.case import Case

    if isinstance(images, Case):
        return {"CT": images.ct, "PET": images.pet_on_ct}
    if not isinstance(images, Mapping) or images.get("CT") is None:
        raise HecktorInputError("radiomics needs a case, or images as {'CT': ..., 'PET': ...}")
    unknown = sorted(set(images) - set(MODALITIES))
    if unknown:
        raise HecktorInputError(
            f"unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}"
        )
    ct = images["CT"]
    out: dict[str, sitk.Image | None] = {"CT": ct, "PET": None}
    pet = images.get("PET")
    if pet is not None:
        out["PET"] = resample_to(sitk.Cast(pet, sitk.sitkFloat32), ct, interpolator="linear")
    return out


def default_workers() -> int:
    """min(4, CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


# ----------------------------------------------------------------------------- names
def _cache_key(params: Mapping[str, Any]) -> str:
    # key order matters: pyradiomics names features in its imageType/featureClass order
    return json.dumps(params, default=str)


def _dummy_names(params: dict[str, Any]) -> list[str]:
    """Feature names pyradiomics gives with ``params``, from a run on a small textured ball.

    The ball (radius 6 voxels in a 20^3 image) is made at the resampled spacing, so that
    resampling leaves it as large: every usual filter (LoG up to sigma ~ 10 voxels) runs.
    """
    image, mask = _dummy_ball(params)
    result = _extractor(params).execute(image, mask, label=1)
    return [k for k in result if not k.startswith("diagnostics_")]


def _dummy_ball(params: dict[str, Any]) -> tuple[sitk.Image, sitk.Image]:
    """A textured ball (radius 6 voxels in a 20^3 image) at the resampled spacing."""
    size, radius = 20, 6.0
    setting = params.get("setting") or {}
    scale = float(setting.get("binWidth") or 1.0)
    spacing = float(max(setting.get("resampledPixelSpacing") or [1.0]) or 1.0)
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((rng.integers(0, 32, (size,) * 3) * scale).astype(np.float32))
    zz, yy, xx = np.indices((size,) * 3) - (size - 1) / 2
    mask = sitk.GetImageFromArray(((zz**2 + yy**2 + xx**2) <= radius**2).astype(np.uint8))
    for im in (image, mask):
        im.SetSpacing((spacing,) * 3)
    return image, mask


def feature_names(params: Mapping[str, Any]) -> list[str]:
    """Unprefixed feature names for plain pyradiomics ``params`` (cached per process)."""
    key = _cache_key(params)
    if key not in _NAMES_CACHE:
        _NAMES_CACHE[key] = _dummy_names(dict(params))
    return list(_NAMES_CACHE[key])


# ----------------------------------------------------------------------------- worker side
#: Niceness added to radiomics worker processes: on a busy machine the viewer (and any
#: other interactive process) gets the CPU first, so the GUI does not stutter.
WORKER_NICENESS = 10


def _init_worker() -> None:
    """Pool initializer: single-threaded ITK (parallelism comes from processes), low priority."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        os.nice(WORKER_NICENESS)
    except (AttributeError, OSError):  # no nice() (Windows) or not permitted: run as is
        pass


def _load(obj: Any, geometry: dict[str, Any] | None) -> sitk.Image:
    if isinstance(obj, sitk.Image):
        return obj
    array = np.load(obj, mmap_mode="r")
    return Geometry.from_dict(geometry).image_from_array(np.asarray(array))


#: Feature classes computed from the mask alone (pyradiomics names them ``original_...``).
SHAPE_CLASSES = ("shape", "shape2D")
_SHAPE_PREFIXES = tuple(f"original_{c}_" for c in SHAPE_CLASSES)


#: Rough relative cost of one image of a type (per voxel), to balance and order the jobs.
_UNIT_COST = {"Wavelet": 8.0, "Original": 1.5}


def _units(params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The images pyradiomics derives with ``params``, in its order: one per image type,
    one per LoG sigma, as (image type, its settings) pairs."""
    units: list[tuple[str, dict[str, Any]]] = []
    for image_type, custom in _base_extractor(params).enabledImagetypes.items():
        custom = copy.deepcopy(dict(custom or {}))
        sigmas = custom.get("sigma")
        if image_type == "LoG" and isinstance(sigmas, list) and len(sigmas) > 1:
            units.extend((image_type, {**custom, "sigma": [s]}) for s in sigmas)
        else:
            units.append((image_type, custom))
    return units


def _split(units: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[str, dict[str, Any]]]]:
    """``units`` cut once, where the two contiguous halves' costs are closest.

    pyradiomics derives every image from the same resampled crop and computes each one
    apart, so the halves' results, joined in this order, are one full extraction's (to
    the bit: checked by the tests). Contiguous halves keep pyradiomics' feature order.
    """
    if len(units) < 2:
        return [units]
    costs = [_UNIT_COST.get(t, 1.0) for t, _ in units]
    cut = min(range(1, len(units)), key=lambda i: abs(sum(costs[:i]) - sum(costs[i:])))
    return [units[:cut], units[cut:]]


def _image_types(units: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Units back into a pyradiomics ``imageType`` mapping (LoG sigmas merged)."""
    out: dict[str, Any] = {}
    for image_type, custom in units:
        if image_type in out and image_type == "LoG":
            out[image_type]["sigma"] = [*out[image_type]["sigma"], *custom["sigma"]]
        else:
            out[image_type] = copy.deepcopy(custom)
    return out


_EXTRACTORS: dict[str, Any] = {}


def _base_extractor(params: dict[str, Any]) -> Any:
    """The extractor for ``params``, made once per process (pyradiomics checks the
    parameters: ~30 ms); never changed: copy it (its state is four plain containers)."""
    key = _cache_key(params)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = _extractor(params)
    return _EXTRACTORS[key]


def _task_extractor(spec: dict[str, Any]) -> Any:
    """The extractor for a spec's parameters and parts, made once per process."""
    key = json.dumps([_cache_key(spec["params"]), spec.get("image_types"),
                      spec.get("shape", True)], default=str)
    if key not in _EXTRACTORS:
        extractor = copy.deepcopy(_base_extractor(spec["params"]))
        if spec.get("image_types") is not None:
            extractor.disableAllImageTypes()
            for name, custom in spec["image_types"].items():
                extractor.enableImageTypeByName(name, customArgs=copy.deepcopy(custom))
        if not spec.get("shape", True):
            features = {k: v for k, v in extractor.enabledFeatures.items()
                        if k not in SHAPE_CLASSES}
            extractor.disableAllFeatures()
            extractor.enableFeaturesByName(**features)
        _EXTRACTORS[key] = extractor
    return _EXTRACTORS[key]


def _run_task(spec: dict[str, Any]) -> tuple[str, Any]:
    """One extraction (structure x modality, or one part of it), in a worker or in this process.

    ``spec["image_types"]``: only these image types (default all of the parameters');
    ``spec["shape"]``: False leaves out the shape classes. Returns ``("ok", {name: value})``,
    or ``("refused", message)`` when pyradiomics rejects the mask (its checks raise
    ``ValueError``: one voxel, too few dimensions).
    """
    extractor = _task_extractor(spec)
    image = _load(spec["image"], spec.get("geometry"))
    mask = _load(spec["mask"], spec.get("geometry"))
    try:
        result = extractor.execute(image, mask, label=spec["label"])
    except ValueError as exc:
        return "refused", str(exc)
    return "ok", {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


# ----------------------------------------------------------------------------- the job
def radiomics_iter(
    images: Any,
    labels: sitk.Image | np.ndarray | None = None,
    *,
    params: str | Path | Mapping[str, Any] | None = None,
    workers: int | None = None,
    structures: Sequence[str] = tuple(STRUCTURES),
) -> Generator[Progress, None, dict[str, float]]:
    """Radiomics of every structure x modality, as a progress generator returning a flat dict.

    ``images``: a :class:`~napari_hecktor.io.case.Case` (CT, and PET resampled onto the
    CT grid), or ``{"CT": image, "PET": image}`` (PET on any grid: it is resampled onto
    the CT grid, linear). ``labels``: uint8 0/1/2 on the CT grid (image or (z, y, x)
    array); default the case's label. ``params``: parameter file or dict (default the
    shipped ``radiomics_params.yaml``). ``workers``: processes (default
    :func:`default_workers`; 1 runs here). The inputs are checked before this returns.
    """
    config = load_params(params)
    modality_images = _modality_images(images)
    if labels is None:
        labels = getattr(images, "label", None)
    ct = modality_images["CT"]
    label_image = check_mask(labels, ct)
    bad = [s for s in structures if s not in STRUCTURES]
    if bad:
        raise HecktorInputError(
            f"unknown structure {bad[0]!r}; known: {', '.join(STRUCTURES)}"
        )
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise HecktorInputError(f"workers must be at least 1, got {workers}")
    return _radiomics_job(modality_images, label_image, config, workers, tuple(structures))


def radiomics_features(images: Any, labels: Any = None, **kwargs: Any) -> dict[str, float]:
    """:func:`radiomics_iter` run to the end."""
    return run_to_end(radiomics_iter(images, labels, **kwargs))


def _radiomics_job(
    images: dict[str, sitk.Image | None],
    labels: sitk.Image,
    config: dict[str, Any],
    workers: int,
    structures: tuple[str, ...],
) -> Generator[Progress, None, dict[str, float]]:
    label_array = sitk.GetArrayViewFromImage(labels)
    counts = np.bincount(label_array.ravel(), minlength=3)
    voxels = {s: int(counts[v]) if v is not None else int(counts[1] + counts[2])
              for s, v in STRUCTURES.items()}
    modality_params = {m: pyradiomics_params(config, m) for m in MODALITIES}
    pairs = [(s, m) for s in structures for m in MODALITIES
             if voxels[s] > 0 and images[m] is not None]
    units = {m: _units(modality_params[m]) for m in MODALITIES}
    # shape depends on the mask alone, and CT and PET share mask and grid: shape once, on CT
    share_shape = images["CT"] is not None
    costs = {(s, m): voxels[s] * _scale(m) * sum(_UNIT_COST.get(t, 1.0) for t, _ in units[m])
             for s, m in pairs}
    # in a pool, a large structure x modality runs as two jobs (image types cut in two)
    # so that the workers stay busy to the end; a small one as one job (each job pays
    # pyradiomics' loading and resampling)
    big = sum(costs.values()) * 0.12
    parts = {}
    jobs: list[tuple[tuple[str, str, int], dict[str, Any]]] = []
    for s, m in pairs:
        split = _split(units[m]) if workers > 1 and costs[(s, m)] > big else [units[m]]
        parts[(s, m)] = split
        for index, part in enumerate(split):
            part_cost = sum(_UNIT_COST.get(t, 1.0) for t, _ in part)
            jobs.append(((s, m, index),
                         {"image_types": _image_types(part) if len(split) > 1 else None,
                          "shape": m == "CT" or not share_shape,
                          "cost": voxels[s] * _scale(m) * part_cost}))
    jobs.sort(key=lambda job: -job[1]["cost"])  # largest first: no long job left for the end
    workers = max(1, min(workers, len(jobs)))
    total = len(jobs)
    runner = _Runner(workers)
    results: dict[tuple[str, str, int], tuple[str, Any]] = {}
    try:
        # submitted before the first report: a caller's own work between the first and the
        # next step (the PET metrics of case_features_iter) runs while the workers do
        runner.start([(key, _job_spec(key[:2], images, labels, modality_params, runner, extra))
                      for key, extra in jobs])
        yield Progress(0, total, f"radiomics: {len(pairs)} structure x modality job(s) in "
                                 f"{total} part(s), {workers} worker(s)")
        for m in MODALITIES:  # needed at the end (column names): here, while workers run
            _image_names(modality_params[m])
        done = 0
        for key, outcome in runner.results():
            results[key] = outcome
            done += 1
            s, m, index = key
            what = f"{s} {m}" if len(parts[(s, m)]) == 1 else f"{s} {m} part {index + 1}/2"
            yield Progress(done, total, f"radiomics: {what} done")
    finally:
        runner.stop()
    return _assemble(results, structures, parts, modality_params, share_shape)


def _scale(modality: str) -> float:
    return 2.0 if modality == "CT" else 1.0  # CT's bins span more grey levels


def _assemble(
    results: dict[tuple[str, str, int], tuple[str, Any]],
    structures: tuple[str, ...],
    parts: dict[tuple[str, str], list[Any]],
    modality_params: dict[str, dict[str, Any]],
    share_shape: bool,
) -> dict[str, float]:
    """The flat row: each structure x modality's parts joined, NaN where absent or refused."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    refused: set[tuple[str, str]] = set()
    for (s, m, _index), (kind, value) in sorted(results.items(), key=lambda kv: kv[0]):
        if kind == "refused":
            if (s, m) not in refused:
                log.warning("pyradiomics refused %s on %s (its features are NaN): %s",
                            s, m, value)
            refused.add((s, m))
            continue
        values.setdefault((s, m), {}).update(value)  # parts in order: pyradiomics' order
    for key in refused:
        values.pop(key, None)
    if share_shape:  # PET's shape values are CT's (same mask, same grid)
        for s in structures:
            if (s, "PET") in values:
                ct = values.get((s, "CT"))
                if ct is None:  # cannot happen (same mask checks); be safe: no shape
                    continue
                shape = {n: x for n, x in ct.items() if n.startswith(_SHAPE_PREFIXES)}
                values[(s, "PET")] = {**shape, **values[(s, "PET")]}
    row: dict[str, float] = {}
    names = {m: _modality_names(m, values, structures, share_shape, modality_params[m])
             for m in MODALITIES}
    for s in structures:
        for m in MODALITIES:
            v = values.get((s, m), {})
            prefix = f"{s}_{m}_"
            for name in names[m]:
                row[prefix + name] = v.get(name, math.nan)
            for name, x in v.items():  # anything the reference names do not have
                row.setdefault(prefix + name, x)
    return row


def _modality_names(
    modality: str,
    values: dict[tuple[str, str], dict[str, float]],
    structures: tuple[str, ...],
    share_shape: bool,
    params: dict[str, Any],
) -> list[str]:
    """The modality's column names, as :func:`feature_names` gives them.

    Taken from this case's own results where one structure got every filtered image
    that ``params`` asks for (pyradiomics names the same features on every image); else
    (a filter skipped for every structure, or no structure) from :func:`feature_names`.
    """
    expected = _image_names(params)
    for s in structures:
        v = values.get((s, modality))
        if not v or (modality == "PET" and share_shape and (s, "CT") not in values):
            continue
        got = {n.split("_", 1)[0] for n in v}
        if all(name in got for name in expected):
            return list(v)
    return feature_names(params)


_IMAGE_NAMES_CACHE: dict[str, list[str]] = {}


def _image_names(params: dict[str, Any]) -> list[str]:
    """Names of the images pyradiomics derives with ``params`` when no filter is skipped
    (``original``, ``log-sigma-1-0-mm-3D``, ``wavelet-LLH``, ...): the filters alone, run on
    :func:`_dummy_names`' ball, without the features."""
    from radiomics import imageoperations

    key = _cache_key(params)
    if key not in _IMAGE_NAMES_CACHE:
        extractor = _extractor(params)
        image, mask = _dummy_ball(params)
        settings = {**extractor.settings, "label": 1}
        image, mask = extractor.loadImage(image, mask, None, **settings)
        names = []
        for image_type, custom in extractor.enabledImagetypes.items():
            generate = getattr(imageoperations, f"get{image_type}Image")
            names.extend(name for _, name, _ in generate(image, mask,
                                                         **{**settings, **(custom or {})}))
        _IMAGE_NAMES_CACHE[key] = names
    return list(_IMAGE_NAMES_CACHE[key])


def _job_spec(
    job: tuple[str, str],
    images: dict[str, sitk.Image | None],
    labels: sitk.Image,
    modality_params: dict[str, dict[str, Any]],
    runner: _Runner,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What one extraction needs: images here, or .npy files + geometry for a worker."""
    structure, modality = job
    value = STRUCTURES[structure]
    spec: dict[str, Any] = {"label": 1 if value is None else value,
                            "params": modality_params[modality], **(extra or {})}
    if runner.folder is None:  # in this process: the images themselves
        spec["image"] = images[modality]
        spec["mask"] = structure_mask(labels, structure)[0]
        return spec
    label_array = sitk.GetArrayViewFromImage(labels)
    mask_name = "GTVall" if value is None else "labels"
    spec["image"] = runner.save(modality, lambda: sitk.GetArrayViewFromImage(images[modality]))
    spec["mask"] = runner.save(
        mask_name, lambda: (label_array > 0).astype(np.uint8) if value is None else label_array
    )
    spec["geometry"] = Geometry.of(labels).as_dict()
    return spec


# ----------------------------------------------------------------------------- the pool
_POOL_LOCK = threading.Lock()
_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0
_ATEXIT_REGISTERED = False


def _start_method() -> str:
    """``fork`` from a single-threaded process (no start-up cost: the imports are there),
    else ``forkserver`` (a clean server process, safe from a GUI thread), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if ("fork" in methods and threading.active_count() == 1
            and threading.current_thread() is threading.main_thread()):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _pool(workers: int) -> ProcessPoolExecutor:
    """The module's worker pool with ``workers`` processes: kept between calls, made anew
    when the number changes, after a Cancel, or when broken."""
    global _POOL, _POOL_WORKERS, _ATEXIT_REGISTERED
    with _POOL_LOCK:
        if _POOL is not None and (_POOL_WORKERS != workers or getattr(_POOL, "_broken", False)):
            _POOL.shutdown(wait=True, cancel_futures=True)
            _POOL = None
        if _POOL is None:
            method = _start_method()
            context = multiprocessing.get_context(method)
            if method == "forkserver":
                context.set_forkserver_preload(["__main__", __name__])
            _POOL = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                        initializer=_init_worker)
            _POOL_WORKERS = workers
            if not _ATEXIT_REGISTERED:
                atexit.register(shutdown_pool)
                _ATEXIT_REGISTERED = True
        return _POOL


def _drop_pool(pool: ProcessPoolExecutor, futures: list[Future]) -> None:
    """Forget ``pool`` (a Cancel or a dead worker) and end its processes now."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is pool:
            _POOL = None
    _terminate(pool, futures)


def _pause(seconds: float) -> int:
    import time

    time.sleep(seconds)
    return os.getpid()


def warm_pool(workers: int | None = None) -> None:
    """Start the kept worker processes now (e.g. when a widget opens) so the first
    extraction does not wait for them; returns when they are up."""
    workers = workers or default_workers()
    if workers <= 1:
        return
    pool = _pool(workers)
    for future in [pool.submit(_pause, 0.2) for _ in range(workers)]:
        future.result()


def warm_up(params: str | Path | Mapping[str, Any] | None = None,
            workers: int | None = None) -> None:
    """What a first extraction would do once per session, done now (e.g. in a thread when a
    widget opens): the parameters checked, the derived image names found, the workers
    started. Errors are left for the real extraction to report."""
    try:
        config = load_params(params)
        for modality in MODALITIES:
            _image_names(pyradiomics_params(config, modality))
    except HecktorInputError:
        return
    warm_pool(workers)


def shutdown_pool() -> None:
    """End the kept worker processes (at exit; or to free their memory now)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


class _Runner:
    """Runs extraction specs here (one worker) or in the module's pool; Cancel-safe."""

    def __init__(self, workers: int):
        self.workers = workers
        self._tmp = (tempfile.TemporaryDirectory(prefix="hecktor-radiomics-")
                     if workers > 1 else None)
        self.folder = Path(self._tmp.name) if self._tmp is not None else None
        self._files: dict[str, str] = {}
        self._tasks: list[tuple[Any, dict[str, Any]]] = []
        self._executor: ProcessPoolExecutor | None = None
        self._futures: dict[Future, Any] = {}
        self._finished = False

    def save(self, name: str, array: Any) -> str:
        """Write an array once as ``name.npy`` (workers memory-map it); return its path."""
        if name not in self._files:
            path = self.folder / f"{name}.npy"
            np.save(path, array())
            self._files[name] = str(path)
        return self._files[name]

    def start(self, tasks: list[tuple[Any, dict[str, Any]]]) -> None:
        self._tasks = tasks
        if self.workers <= 1 or not tasks:
            return
        for attempt in (0, 1):
            self._executor = _pool(self.workers)
            try:
                self._futures = {self._executor.submit(_run_task, spec): key
                                 for key, spec in tasks}
                return
            except (BrokenProcessPool, RuntimeError):  # a dead pool: make a new one once
                _drop_pool(self._executor, list(self._futures))
                self._futures = {}
                if attempt:
                    raise

    def results(self) -> Generator[tuple[Any, tuple[str, Any]], None, None]:
        """(key, outcome) of every task, in the order they finish."""
        if self._executor is None:
            for key, spec in self._tasks:
                yield key, _run_task(spec)
            self._finished = True
            return
        pending = set(self._futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:
                    raise RuntimeError(
                        "a radiomics worker process died (out of memory, or a script without "
                        "an `if __name__ == '__main__':` guard); retry with workers=1"
                    ) from exc
                yield self._futures[future], outcome
        self._finished = True

    def stop(self) -> None:
        """Keep the pool if all went well; else (Cancel, error) end its workers now.
        Remove the files."""
        try:
            if self._executor is not None and not self._finished:
                _drop_pool(self._executor, list(self._futures))
            self._executor = None
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


def _terminate(executor: ProcessPoolExecutor, futures: list[Future]) -> None:
    """Cancel pending jobs and end the workers now (Cancel must not wait for a running job)."""
    for future in futures:
        future.cancel()
    if hasattr(executor, "terminate_workers"):  # Python >= 3.14
        executor.terminate_workers()
        return
    # Python < 3.14 has no public way to stop a running worker: take the processes first,
    # since shutdown() forgets them.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
    executor.shutdown(wait=True)
