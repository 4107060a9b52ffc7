"""Data pipeline of the training scripts: cases, centres, folds, cached ROIs, MONAI transforms.

Written for stage 1 (segmentation) and meant to be reused by the later stages (HPV and
survival heads): every record carries the case ID and its centre, the fold files are
patient-level and independent of the task, and the cached ROI arrays are exactly what
the bundled models see at inference (``napari_hecktor.segment.preprocess``).

Pieces, in the order the training script uses them:

* :func:`list_cases` - the labelled cases of a HECKTOR-layout folder
  (:func:`napari_hecktor.io.dataset.discover`) as plain dict records
  ``{"case_id", "center", "ct", "pet", "label", "label_is_gtvt"}``.
* :func:`center_of` / :func:`read_clinical_centers` - the centre of a patient, from a
  clinical CSV (``PatientID``, ``CenterID``) when given, else from the ID prefix
  (``CHUM-001`` -> ``CHUM``).
* :func:`kfold_splits`, :func:`leave_center_out_splits`, :func:`write_fold_file`,
  :func:`read_fold_file` - patient-level folds in a JSON file.
* :func:`preprocess_cases` - ``prepare_input`` + ``label_to_roi`` once per case and
  recipe, stored as ``.npz`` (plain arrays, loaded with ``allow_pickle=False``) under a
  folder named after the recipe's hash; a changed recipe or changed input file gives a new
  entry, never a stale one.
* :func:`roi_dataset` - a ``monai.data.CacheDataset`` over the cached ROIs (kept in memory
  for the run) followed by MONAI's random crops (``RandCropByLabelClassesd``: background,
  GTVp and GTVn centred crops in configurable ratios, so that small nodes are not
  outnumbered by the large primaries; optionally a fourth class, physiological uptake, for
  hard-negative crops: :class:`HotSpotLabeld`), ``RandFlipd``, ``RandRotate90d``, ``RandRotated``
  and an intensity jitter; the label ends as two binary channels (GTVp, GTVn).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FOLD_FORMAT = 1
CACHE_FORMAT = 1
#: A centre from an ID prefix: letters/digits before the first '-' or '_' (CHUM-001 -> CHUM).
_CENTER_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9]*?)[-_]")


# --------------------------------------------------------------------------- cases


def center_of(case_id: str, clinical: dict[str, str] | None = None) -> str:
    """The centre of ``case_id``: the clinical table's CenterID if known, else the ID prefix."""
    if clinical and case_id in clinical and clinical[case_id] not in ("", None):
        return str(clinical[case_id])
    m = _CENTER_PREFIX.match(case_id)
    return m.group(1) if m else "unknown"


def read_clinical_centers(path: str | Path, id_column: str = "PatientID",
                          center_column: str = "CenterID") -> dict[str, str]:
    """``{PatientID: CenterID}`` from a clinical CSV (HECKTOR 2025 columns by default)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (id_column, center_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column(s) {', '.join(missing)}; "
                             f"columns: {', '.join(reader.fieldnames or [])}")
        return {row[id_column]: str(row[center_column]).strip() for row in reader}


def list_cases(dataset: str | Path, clinical_csv: str | Path | None = None,
               require_label: bool = True) -> list[dict[str, Any]]:
    """Records of the cases of a HECKTOR-layout folder (sorted by ID, one per patient ID).

    Cases without PET are skipped (the networks need both); cases without a label are
    skipped when ``require_label``. A patient ID found twice (e.g. in imagesTr and
    imagesTs) is an error: folds must be patient-level.
    """
    from napari_hecktor.io.dataset import discover

    clinical = read_clinical_centers(clinical_csv) if clinical_csv else None
    records, seen = [], set()
    for files in discover(dataset):
        if files.case_id in seen:
            raise ValueError(f"patient {files.case_id} appears twice in {dataset}")
        seen.add(files.case_id)
        if files.pet is None or files.layout == "dicom":
            continue
        if require_label and files.label is None:
            continue
        records.append({
            "case_id": files.case_id,
            "center": center_of(files.case_id, clinical),
            "ct": str(files.ct),
            "pet": str(files.pet),
            "label": str(files.label) if files.label else "",
            "label_is_gtvt": bool(files.label_is_gtvt),
            "layout": files.layout,
        })
    if not records:
        raise ValueError(f"no labelled PET/CT case found in {dataset}")
    return records


def ids_hash(ids: Iterable[str]) -> str:
    """SHA-256 of the sorted IDs (one per line): names a training set without listing it."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


# --------------------------------------------------------------------------- folds


def kfold_splits(ids: Sequence[str], centers: dict[str, str], n_folds: int = 5,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Patient-level k folds, stratified by centre (each centre dealt round-robin).

    Each ID is in exactly one validation fold; fold ``k`` trains on the others.
    """
    ids = sorted(set(ids))
    if not 2 <= n_folds <= len(ids):
        raise ValueError(f"n_folds must be between 2 and the number of cases ({len(ids)})")
    rng = np.random.default_rng(seed)
    by_center: dict[str, list[str]] = {}
    for i in ids:
        by_center.setdefault(centers.get(i, "unknown"), []).append(i)
    val: list[list[str]] = [[] for _ in range(n_folds)]
    offset = 0
    for center in sorted(by_center):
        members = list(by_center[center])
        rng.shuffle(members)
        for j, case_id in enumerate(members):
            val[(offset + j) % n_folds].append(case_id)
        offset += len(members)
    return [
        {"fold": k, "name": f"fold{k}", "val": sorted(v),
         "train": sorted(i for i in ids if i not in set(v))}
        for k, v in enumerate(val)
    ]


def leave_center_out_splits(ids: Sequence[str], centers: dict[str, str],
                            n_folds: int | None = None) -> list[dict[str, Any]]:
    """One fold per centre (or centres grouped into ``n_folds`` balanced groups).

    The grouping (seed 004: "holding out one large center or a pair of smaller centers")
    assigns centres, largest first, to the group with the fewest patients so far.
    """
    ids = sorted(set(ids))
    by_center: dict[str, list[str]] = {}
    for i in ids:
        by_center.setdefault(centers.get(i, "unknown"), []).append(i)
    names = sorted(by_center, key=lambda c: (-len(by_center[c]), c))
    if len(names) < 2:
        raise ValueError("leave-centre-out needs at least two centres")
    k = len(names) if n_folds is None else int(n_folds)
    if not 2 <= k <= len(names):
        raise ValueError(f"n_folds must be between 2 and the number of centres ({len(names)})")
    groups: list[list[str]] = [[] for _ in range(k)]
    for c in names:
        target = min(range(k), key=lambda g: (sum(len(by_center[x]) for x in groups[g]), g))
        groups[target].append(c)
    folds = []
    for f, group in enumerate(groups):
        held = sorted(group)
        val = sorted(i for c in held for i in by_center[c])
        folds.append({"fold": f, "name": "+".join(held), "held_out_centers": held,
                      "val": val, "train": sorted(i for i in ids if i not in set(val))})
    return folds


def make_folds(records: Sequence[dict[str, Any]], kind: str = "kfold",
               n_folds: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The content of a fold file for ``records`` (see :func:`write_fold_file`).

    ``n_folds`` None: 5 for k-fold, one fold per centre for leave-centre-out.
    """
    ids = [r["case_id"] for r in records]
    centers = {r["case_id"]: r["center"] for r in records}
    if kind == "kfold":
        folds = kfold_splits(ids, centers, int(n_folds or 5), seed)
    elif kind in ("leave_center_out", "lco", "center_out"):
        kind = "leave_center_out"
        folds = leave_center_out_splits(ids, centers, n_folds)
    else:
        raise ValueError(f"unknown split kind {kind!r}: use kfold or leave_center_out")
    return {
        "format": FOLD_FORMAT,
        "kind": kind,
        "seed": int(seed),
        "n_folds": len(folds),
        "n_cases": len(ids),
        "ids_sha256": ids_hash(ids),
        "centers": dict(sorted(centers.items())),
        "folds": folds,
    }


def check_folds(content: dict[str, Any]) -> None:
    """Raise ValueError unless every fold is a partition of the same patient set."""
    all_ids = set(content["centers"])
    for fold in content["folds"]:
        train, val = set(fold["train"]), set(fold["val"])
        if train & val:
            raise ValueError(f"fold {fold['fold']}: {sorted(train & val)[:3]} in train and val")
        if train | val != all_ids:
            raise ValueError(f"fold {fold['fold']} does not cover the case list")
    if content["kind"] == "kfold":
        vals = [i for f in content["folds"] for i in f["val"]]
        if len(vals) != len(set(vals)) or set(vals) != all_ids:
            raise ValueError("k-fold validation sets must partition the patients")


def write_fold_file(path: str | Path, content: dict[str, Any], dataset: str | Path = "") -> Path:
    """Write a fold file (JSON); ``dataset`` is recorded for provenance."""
    check_folds(content)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**content, "dataset": str(dataset)} if dataset else content
    _atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def read_fold_file(path: str | Path) -> dict[str, Any]:
    """Read and check a fold file."""
    content = json.loads(Path(path).read_text())
    if content.get("format", FOLD_FORMAT) > FOLD_FORMAT:
        raise ValueError(f"{path}: fold file format {content['format']} is newer than this code")
    check_folds(content)
    return content


def select_fold(content: dict[str, Any], fold: int | str) -> dict[str, Any]:
    """A fold by index or by name (a centre name for leave-centre-out files)."""
    for f in content["folds"]:
        if str(f["fold"]) == str(fold) or f["name"] == str(fold):
            return f
    raise ValueError(f"no fold {fold!r}; folds: {[f['name'] for f in content['folds']]}")


# --------------------------------------------------------------------------- ROI cache


def recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _source_key(record: dict[str, Any]) -> str:
    parts = []
    for key in ("ct", "pet", "label"):
        p = record.get(key) or ""
        if p:
            st = os.stat(p)
            parts.append(f"{os.path.abspath(p)}:{st.st_size}:{int(st.st_mtime)}")
    parts.append(str(record.get("label_is_gtvt", False)))
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def cache_path(record: dict[str, Any], recipe: dict[str, Any], cache_dir: str | Path) -> Path:
    """Where the preprocessed ROI of ``record`` under ``recipe`` is stored."""
    return (Path(cache_dir) / f"recipe-{recipe_hash(recipe)}"
            / f"{record['case_id']}-{_source_key(record)}.npz")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
    os.replace(tmp, path)


def prepare_case(record: dict[str, Any], recipe: dict[str, Any]) -> dict[str, np.ndarray]:
    """ROI arrays of one case: ``image`` (2, z, y, x) float32 and ``label`` (1, z, y, x) uint8."""
    from napari_hecktor.io.case import load_case
    from napari_hecktor.segment.preprocess import label_to_roi, prepare_input

    case = load_case(record["ct"], record["pet"], record.get("label") or None,
                     case_id=record["case_id"], label_is_gtvt=record.get("label_is_gtvt", False))
    net_input = prepare_input(case.ct, case.pet, recipe)
    if case.label is not None:
        label = label_to_roi(case.label, net_input.geometry)
    else:
        label = np.zeros(net_input.array.shape[1:], np.uint8)
    g = net_input.geometry
    return {
        "image": net_input.array.astype(np.float32),
        "label": label[None].astype(np.uint8),
        "roi_size": np.asarray(g.size, np.int64),
        "roi_spacing": np.asarray(g.spacing, np.float64),
        "roi_origin": np.asarray(g.origin, np.float64),
        "roi_direction": np.asarray(g.direction, np.float64),
        "center_mm": np.asarray(net_input.center_mm, np.float64),
        "label_voxels_full": np.asarray(
            [0 if case.label is None else int((case.label_array() == v).sum()) for v in (1, 2)],
            np.int64),
    }


def preprocess_cases(records: Sequence[dict[str, Any]], recipe: dict[str, Any],
                     cache_dir: str | Path, *, rank: int = 0, world_size: int = 1,
                     progress: Callable[[int, int, str], None] | None = None) -> list[Path]:
    """Make the cached ROI of every record that lacks one; this rank does every world_size-th.

    Returns the cache paths of all records (the caller waits at a barrier before reading
    the other ranks' share). Files are written atomically, so concurrent runs are safe.
    """
    from napari_hecktor.segment.preprocess import check_recipe

    recipe = check_recipe(recipe)
    paths = [cache_path(r, recipe, cache_dir) for r in records]
    todo = [(r, p) for i, (r, p) in enumerate(zip(records, paths, strict=True))
            if i % world_size == rank and not p.exists()]
    for n, (record, path) in enumerate(todo):
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = prepare_case(record, recipe)
        arrays["recipe_json"] = np.asarray(json.dumps(recipe, sort_keys=True))
        arrays["cache_format"] = np.asarray(CACHE_FORMAT)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        os.close(fd)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        if progress is not None:
            progress(n + 1, len(todo), record["case_id"])
    return paths


def load_cached(path: str | Path) -> dict[str, Any]:
    """A cached ROI as arrays (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _transform_base() -> type:
    # CacheDataset keeps the output of the leading transforms only while they are MONAI
    # ``Transform``s (and not random): ours subclass it so that the ROIs stay in memory.
    from monai.transforms import Transform

    return Transform


class LoadCachedROId(_transform_base()):
    """Dict transform: ``{"cache": path, ...}`` -> adds ``image`` and ``label`` (cached ROI)."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        arrays = load_cached(data["cache"])
        out = dict(data)
        out["image"] = arrays["image"]
        out["label"] = arrays["label"]
        out["roi_spacing"] = arrays["roi_spacing"]
        return out


class LabelToChannelsd(_transform_base()):
    """``label`` (1, z, y, x) with 0/1/2 -> float32 (2, z, y, x) binary GTVp, GTVn."""

    def __init__(self, key: str = "label") -> None:
        self.key = key

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        import torch

        out = dict(data)
        lab = torch.as_tensor(data[self.key])[0].round().to(torch.uint8)
        out[self.key] = torch.stack([lab == 1, lab == 2]).to(torch.float32)
        return out


class HotSpotLabeld(_transform_base()):
    """Adds ``crop_label``: ``label`` plus class 3 at hot spots outside the lesions.

    A hot spot is a connected region of normalised PET above ``pet_z`` (z-score over the
    body, channel 0 of ``image``) that is not lesion: brain, tonsils, salivary glands, the
    physiological uptake behind most false positives. ``RandCropByLabelClassesd`` picks a
    crop centre uniformly among a class's voxels, so each region marks the same number of
    voxels (``per_region``, its hottest ones): a small tonsil is drawn as often as the
    brain. Deterministic, so ``CacheDataset`` computes it once per case.
    """

    def __init__(self, pet_z: float = 2.0, per_region: int = 64, min_voxels: int = 8) -> None:
        self.pet_z, self.per_region = float(pet_z), int(per_region)
        self.min_voxels = int(min_voxels)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from scipy import ndimage

        label = np.asarray(data["label"])[0]
        pet = np.asarray(data["image"])[0]
        regions, n = ndimage.label((pet > self.pet_z) & (label == 0))
        crop_label = label.astype(np.uint8).copy()
        for index, region in enumerate(ndimage.find_objects(regions), start=1):
            inside = regions[region] == index
            if inside.sum() < self.min_voxels:
                continue
            values = np.where(inside, pet[region], -np.inf).ravel()
            hottest = np.argsort(values)[::-1][: min(self.per_region, int(inside.sum()))]
            crop_label[region][np.unravel_index(hottest, inside.shape)] = 3  # a view
        out = dict(data)
        out["crop_label"] = crop_label[None]
        return out


class DropKeysd(_transform_base()):
    """Keep only ``keys`` (collation then sees tensors and strings only)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        return {k: data[k] for k in self.keys if k in data}


def train_transforms(aug: dict[str, Any]) -> list[Any]:
    """The random part of the training pipeline (configured by the ``augment`` section).

    Spatial axes are numbered in array order (0 = z, 1 = y, 2 = x). Keys of ``aug``:
    ``crop_size`` [z, y, x]; ``crops_per_case``; ``crop_ratios`` [background, GTVp, GTVn]
    or [background, GTVp, GTVn, hot spot] (then ``hot_spot_pet_z`` sets the PET z-score of
    a hot spot, see :class:`HotSpotLabeld`, which must run before these transforms);
    ``flip_axes`` and ``flip_prob``; ``rotate90_axes`` (one plane, e.g. [1, 2]) and
    ``rotate90_prob``; ``rotate_deg`` [about z, y, x] and ``rotate_prob``;
    ``intensity_scale``, ``intensity_shift`` and ``intensity_prob``.
    """
    from monai.transforms import (
        RandCropByLabelClassesd,
        RandFlipd,
        RandRotate90d,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    ratios = list(aug.get("crop_ratios", [1, 1, 1]))
    if len(ratios) not in (3, 4):
        raise ValueError(f"augment.crop_ratios needs 3 or 4 values, got {ratios}")
    out: list[Any] = [
        RandCropByLabelClassesd(
            keys=keys, label_key="label" if len(ratios) == 3 else "crop_label",
            spatial_size=list(aug["crop_size"]), ratios=ratios, num_classes=len(ratios),
            num_samples=int(aug.get("crops_per_case", 1)), allow_smaller=True, warn=False,
        )
    ]
    flip_prob = float(aug.get("flip_prob", 0.0))
    for axis in aug.get("flip_axes", []) if flip_prob > 0 else []:
        out.append(RandFlipd(keys=keys, prob=flip_prob, spatial_axis=int(axis)))
    rot90_prob = float(aug.get("rotate90_prob", 0.0))
    if rot90_prob > 0:
        out.append(RandRotate90d(keys=keys, prob=rot90_prob, max_k=3,
                                 spatial_axes=tuple(aug.get("rotate90_axes", [1, 2]))))
    rot_prob = float(aug.get("rotate_prob", 0.0))
    deg = [float(v) for v in aug.get("rotate_deg", [0, 0, 0])]
    if rot_prob > 0 and any(deg):
        # MONAI's range_x/y/z rotate about the first/second/third spatial axis (z, y, x here)
        rad = [np.deg2rad(d) for d in deg]
        out.append(RandRotated(keys=keys, range_x=rad[0], range_y=rad[1], range_z=rad[2],
                               prob=rot_prob, mode=("bilinear", "nearest"),
                               padding_mode=("border", "zeros"), keep_size=True))
    iprob = float(aug.get("intensity_prob", 0.0))
    if iprob > 0 and aug.get("intensity_scale", 0):
        out.append(RandScaleIntensityd(keys="image", factors=float(aug["intensity_scale"]),
                                       prob=iprob, channel_wise=True))
    if iprob > 0 and aug.get("intensity_shift", 0):
        out.append(RandShiftIntensityd(keys="image", offsets=float(aug["intensity_shift"]),
                                       prob=iprob, channel_wise=True))
    return out


def roi_dataset(cache_paths: Sequence[Path], records: Sequence[dict[str, Any]],
                aug: dict[str, Any] | None, *, cache_workers: int = 1) -> Any:
    """A ``monai.data.CacheDataset`` of the cached ROIs; random crops etc. when ``aug``.

    Items: ``image`` (2, z, y, x) float32 tensor, ``label`` (2, z, y, x) float32 binary
    (GTVp, GTVn), ``case_id``. With ``aug`` each item is a list of ``crops_per_case``
    crops (MONAI's ``list_data_collate`` flattens them into the batch).
    """
    from monai.data import CacheDataset
    from monai.transforms import Compose, EnsureTyped

    items = [{"cache": str(p), "case_id": r["case_id"]}
             for p, r in zip(cache_paths, records, strict=True)]
    chain: list[Any] = [LoadCachedROId()]
    if aug is not None:
        if len(aug.get("crop_ratios", [1, 1, 1])) == 4:
            chain.append(HotSpotLabeld(pet_z=float(aug.get("hot_spot_pet_z", 2.0))))
        chain += train_transforms(aug)
    chain += [EnsureTyped(keys=["image", "label"], track_meta=False), LabelToChannelsd(),
              DropKeysd(["image", "label", "case_id"])]
    return CacheDataset(items, Compose(chain), num_workers=cache_workers, progress=False)


def seed_transforms(dataset: Any, seed: int) -> None:
    """Seed every random transform of a (Cache)Dataset's pipeline."""
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=int(seed) % (2**32))
