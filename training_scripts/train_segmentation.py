#!/usr/bin/env python
"""Train a GTVp/GTVn segmentation network (stage 1 of MMPL; NormResSE-UNet3+) from a YAML config.

One process (CPU or one GPU)::

    python training_scripts/train_segmentation.py --config training_scripts/configs/mmpl_demo.yaml

Several processes (DistributedDataParallel; gloo on CPU, nccl on GPUs)::

    torchrun --nproc_per_node 2 training_scripts/train_segmentation.py --config CONFIG

Continue a stopped run where it stopped (same epoch, optimizer, scheduler, RNG)::

    python training_scripts/train_segmentation.py --config CONFIG --resume

Any config value can be overridden: ``--set train.epochs=400 --set data.fold=2``.

What it writes under ``output.dir``: ``config.yaml`` (the resolved config),
``folds.json`` (when the config names no fold file), ``checkpoints/last.pt`` and
``checkpoints/best.pt`` (plain dicts of tensors and numbers, read back with
``torch.load(..., weights_only=True)``), ``metrics.csv``, ``tensorboard/`` and, when the
last epoch is done, the model folder ``model/`` (``model.safetensors`` +
``model_card.json``) that ``hecktor segment --model`` loads. See docs/training.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import data as segdata  # noqa: E402  (training_scripts/data.py)

from napari_hecktor.progress import Progress  # noqa: E402

CHECKPOINT_FORMAT = 1

#: Every key a config may set, with its default. A config file overrides some of them.
DEFAULTS: dict[str, Any] = {
    "name": "segmentation",
    "seed": 0,
    "deterministic": True,
    "data": {
        "dataset": None,          # HECKTOR-layout folder (imagesTr/labelsTr, per-patient, 2021)
        "clinical_csv": None,     # CSV with PatientID, CenterID (else centre = ID prefix)
        "fold_file": None,        # an existing fold file; else one is made in output.dir
        "split": "kfold",         # kfold | leave_center_out (when the fold file is made here)
        "n_folds": None,          # k (null: 5), or centre groups (null: one per centre)
        "fold_seed": 0,
        "fold": 0,                # validation fold (index or name); null: train on every case
        "val_dataset": None,      # a separate validation cohort (replaces the fold's val set)
        "cache_dir": "out/cache",  # preprocessed ROIs (.npz), shared by runs and ranks
        "cache_workers": 1,       # threads that load the cache into memory
        "num_workers": 0,         # DataLoader worker processes for the random transforms
    },
    "model": {
        "architecture": "mmpl",   # mmpl | normresse_unet3p
        "preset": "tiny",         # tiny | paper | null (config only)
        "config": {},             # overrides of the preset's constructor arguments
    },
    "preprocessing": {"name": "pet_guided_roi"},  # + recipe parameters (see preprocess.py)
    "augment": {
        "crop_size": [128, 128, 128],   # z, y, x voxels
        "crops_per_case": 1,
        "crop_ratios": [1, 1, 1],       # background, GTVp, GTVn [, hot spot] crop centres
        "hot_spot_pet_z": 2.0,          # 4th ratio: non-lesion PET above this z-score
        "flip_axes": [0, 1, 2],         # array axes (0 z, 1 y, 2 x)
        "flip_prob": 0.5,
        "rotate90_axes": [1, 2],
        "rotate90_prob": 0.0,
        "rotate_deg": [15, 0, 0],       # about z, y, x
        "rotate_prob": 0.2,
        "intensity_scale": 0.1,
        "intensity_shift": 0.1,
        "intensity_prob": 0.2,
    },
    "train": {
        "epochs": 1000,
        "batch_size": 2,          # cases per step per process (x crops_per_case crops)
        "case_repeats": 1,        # passes over the training cases that make one epoch
        "optimizer": "adam",      # adam | adamw
        "lr": 1.0e-2,
        "betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "scheduler": {"name": "cosine_warm_restarts", "T_0": 25, "T_mult": 1,
                      "eta_min": 1.0e-6},
        "loss": "oda",            # oda | logcosh_dice_focal | dice
        "deep_supervision": None,  # null: on when the network has deep-supervision heads
        "ds_weights": None,
        "grad_clip_norm": None,
        "bf16": True,             # autocast bf16 (GPU only)
        "channels_last": True,    # channels-last 3D memory format (GPU only)
        "threads": None,          # CPU threads per process; null: cores / processes
        "sync_batchnorm": False,
    },
    "validate": {
        "every": 5,               # epochs; the last epoch is always validated
        "roi_size": None,         # sliding-window size (z, y, x); null: inference.roi_size
        "overlap": 0.5,
        "thresholds": [0.5, 0.5],
        "min_component_voxels": 10,   # on the ROI grid
        "select": "score",        # score (mean of the three) | dice_gtvp | dscagg_gtvn | f1agg_gtvn
        "tune": None,             # {thresholds_gtvp: [...], thresholds_gtvn: [...],
                                  #  min_component_ml: [...], fp_penalty: 0.1}: after training,
                                  #  pick the card's inference settings on the validation cases
    },
    "inference": {                # written into the model card (CT-grid settings)
        "roi_size": None,         # null: augment.crop_size
        "overlap": 0.5,
        "thresholds": [0.5, 0.5],
        "min_component_voxels": 50,
    },
    "output": {
        "dir": None,              # null: out/train/<name>
        "model_dir": None,        # null: <dir>/model
        "tensorboard": True,
    },
    "card": {"name": None, "demo": False, "description": ""},
}

#: Config sections that may change when resuming; anything else must match the checkpoint.
RESUMABLE_CHANGES = ("train.epochs", "output", "data.num_workers", "data.cache_workers",
                     "data.cache_dir", "train.threads", "validate.every", "validate.tune",
                     "inference", "card")

METRIC_COLUMNS = [
    "epoch", "global_step", "lr", "train_loss", "epoch_seconds", "cpu_seconds", "val_dice_gtvp",
    "val_dscagg_gtvp", "val_dscagg_gtvn", "val_f1agg_gtvn", "val_fp_per_empty_case",
    "val_score", "best",
]


# --------------------------------------------------------------------------- config


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "config":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(cfg: dict[str, Any], assignment: str) -> None:
    """``a.b.c=value`` (value parsed as YAML) into ``cfg``."""
    if "=" not in assignment:
        raise SystemExit(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    node = cfg
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML config merged over :data:`DEFAULTS`, ``--set`` overrides applied."""
    user = {}
    if path is not None:
        user = yaml.safe_load(Path(path).read_text()) or {}
    cfg = deep_merge(DEFAULTS, user)
    for assignment in overrides:
        apply_override(cfg, assignment)
    unknown = _unknown_keys(cfg, DEFAULTS)
    if unknown:
        raise SystemExit(f"unknown config key(s): {', '.join(unknown)}")
    if not cfg["data"]["dataset"]:
        raise SystemExit("the config names no data.dataset")
    if cfg["output"]["dir"] is None:
        cfg["output"]["dir"] = str(Path("out") / "train" / cfg["name"])
    return cfg


def _unknown_keys(cfg: dict[str, Any], ref: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if key not in ref:
            out.append(name)
        elif isinstance(value, dict) and isinstance(ref[key], dict) and ref[key] \
                and key not in ("config", "scheduler", "preprocessing"):
            out += _unknown_keys(value, ref[key], name + ".")
    return out


def _strip(cfg: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for path in paths:
        node = out
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return out


def model_config(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from napari_hecktor.models.registry import PAPER_CONFIGS, TINY_CONFIGS

    arch = cfg["model"]["architecture"]
    preset = cfg["model"].get("preset")
    presets = {"tiny": TINY_CONFIGS, "paper": PAPER_CONFIGS}
    if preset not in (None, *presets):
        raise SystemExit(f"model.preset must be tiny, paper or null, got {preset!r}")
    base = dict(presets[preset].get(arch, {})) if preset else {}
    base.update(cfg["model"].get("config") or {})
    return arch, base


def jsonable(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python numbers (for JSON and YAML)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        )

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        return float(np.mean(self.all_gather(value)))


def init_distributed(dist: Dist) -> Any:
    """Process group (gloo on CPU, nccl on CUDA) and this process's device."""
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if dist.enabled:
        import torch.distributed as td

        if not td.is_initialized():
            td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


# --------------------------------------------------------------------------- seeding


def derived_seed(*parts: int) -> int:
    """A 32-bit seed from integers (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - the global RNG others may use
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/numbers (loadable with weights_only)."""
    import torch

    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((  # noqa: NPY002
        "MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
        n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochSampler:
    """Shuffled case indices for one epoch, ``repeats`` passes, sharded over ranks.

    The order depends only on (seed, epoch); every rank gets the same number of indices
    (the list is padded by wrapping, as ``DistributedSampler`` does).
    """

    def __init__(self, n: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 repeats: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.repeats = max(1, int(repeats))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        rng = np.random.default_rng(derived_seed(self.seed, self.epoch, 7))
        order = np.concatenate([rng.permutation(self.n) for _ in range(self.repeats)]).tolist()
        per_rank = math.ceil(len(order) / self.world)
        order += order[: per_rank * self.world - len(order)]
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return math.ceil(self.n * self.repeats / self.world)


# --------------------------------------------------------------------------- model


class SegmentationTrainNet:
    """Builds the ``torch.nn.Module`` that DDP wraps: forward -> [main, *deep supervision]."""

    @staticmethod
    def build(net: Any, deep_supervision: bool) -> Any:
        from torch import nn

        class _Wrapper(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net
                self.ds = deep_supervision

            def forward(self, x):
                if self.ds:
                    out = self.net.forward_all(x)
                    return [out["seg"], *out["deep_supervision"]]
                return [self.net(x)]

        return _Wrapper()


def freeze_unused(wrapper: Any, size_multiple: int) -> list[str]:
    """Freeze the parameters the segmentation loss never reaches (HPV/survival heads).

    Found by one forward/backward of a copy on a small zero input, so it works for any
    architecture; DDP then needs no ``find_unused_parameters``. Returns their names.
    """
    import torch

    probe = copy.deepcopy(wrapper)
    s = max(2 * size_multiple, 16)
    outs = probe(torch.zeros(1, 2, s, s, s))
    sum(o.float().mean() for o in outs).backward()
    unused = [n for n, p in probe.named_parameters() if p.requires_grad and p.grad is None]
    params = dict(wrapper.named_parameters())
    for name in unused:
        params[name].requires_grad_(False)
    return unused


def make_loss(cfg: dict[str, Any]) -> Callable[[Any, Any], Any]:
    from napari_hecktor.models import losses

    name = cfg["train"]["loss"]
    if name == "oda":
        return losses.ODALoss()
    if name == "logcosh_dice_focal":
        return losses.logcosh_dice_focal_loss
    if name == "dice":
        import torch

        return lambda logits, y: losses.soft_dice_loss(torch.sigmoid(logits), y)
    raise SystemExit(f"unknown train.loss {name!r}: use oda, logcosh_dice_focal or dice")


def make_optimizer(params: list[Any], tcfg: dict[str, Any]) -> Any:
    import torch

    kind = tcfg["optimizer"].lower()
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(kind)
    if cls is None:
        raise SystemExit(f"unknown train.optimizer {kind!r}: use adam or adamw")
    return cls(params, lr=float(tcfg["lr"]), betas=tuple(tcfg["betas"]),
               weight_decay=float(tcfg["weight_decay"]))


def make_scheduler(optimizer: Any, tcfg: dict[str, Any]) -> Any:
    import torch

    scfg = tcfg.get("scheduler") or {"name": "constant"}
    name = scfg.get("name", "constant")
    if name == "cosine_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=int(scfg.get("T_0", 25)), T_mult=int(scfg.get("T_mult", 1)),
            eta_min=float(scfg.get("eta_min", 0.0)))
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _e: 1.0)
    raise SystemExit(f"unknown scheduler {name!r}: use cosine_warm_restarts or constant")


# --------------------------------------------------------------------------- validation


def _pad_to(image: Any, multiple: int, minimum: Sequence[int]) -> Any:
    import torch.nn.functional as F

    spatial = image.shape[2:]
    target = [max(int(m), s) for s, m in zip(spatial, minimum, strict=True)]
    target = [int(math.ceil(t / multiple) * multiple) for t in target]
    pad = []
    for s, t in reversed(list(zip(spatial, target, strict=True))):
        pad += [0, t - s]
    if not any(pad):
        return image
    channel_min = image.amin(dim=(2, 3, 4), keepdim=True)
    padded = F.pad(image - channel_min, pad, value=0.0)  # pad with each channel's minimum
    return padded + channel_min


def predict_roi(net: Any, item: dict[str, Any], vcfg: dict[str, Any], roi_size: Sequence[int],
                device: Any) -> np.ndarray:
    """Sliding-window sigmoid probabilities (2, z, y, x) of one whole cached ROI."""
    from napari_hecktor.progress import run_to_end
    from napari_hecktor.segment.inference import auto_batch_size, sliding_window_iter

    image = item["image"][None].float()
    spatial = tuple(image.shape[2:])
    padded = _pad_to(image, net.size_multiple, roi_size).to(device)
    batch = auto_batch_size(padded.device, roi_size)  # as the plugin's inference batches
    prob = run_to_end(sliding_window_iter(net, padded, roi_size, overlap=float(vcfg["overlap"]),
                                          batch_size=batch))
    return prob[(slice(None), *(slice(0, s) for s in spatial))].float().cpu().numpy()


def score_case(case_id: str, prob: np.ndarray, truth: np.ndarray, thresholds: Sequence[float],
               min_voxels: int) -> dict[str, Any]:
    """The plugin's post-processing on ``prob``, then the counts of every metric."""
    from scipy import ndimage

    from napari_hecktor.metrics import DiceCounts, match_lesions
    from napari_hecktor.segment.components import CONNECTIVITY_26, postprocess

    labels = postprocess(prob, tuple(float(t) for t in thresholds), int(min_voxels))
    p, n = labels == 1, labels == 2
    cp, cn = DiceCounts.from_masks(p, truth[0]), DiceCounts.from_masks(n, truth[1])
    lesions = match_lesions(n, truth[1])
    n_components = sum(ndimage.label(labels == v, structure=CONNECTIVITY_26)[1] for v in (1, 2))
    return {
        "case_id": case_id,
        "gtvp": (cp.tp, cp.n_pred, cp.n_truth),
        "gtvn": (cn.tp, cn.n_pred, cn.n_truth),
        "lesions": (lesions.tp, lesions.fp, lesions.fn),
        "components": int(n_components),
        "empty": bool(not truth.any()),
    }


def scoring_box(prob: np.ndarray, truth: np.ndarray, lowest_threshold: float) -> tuple[slice, ...]:
    """The part of the ROI that :func:`score_case` needs at thresholds >= ``lowest_threshold``.

    The bounding box of every voxel such a threshold can mark and every true lesion voxel,
    grown by one voxel of background (within the array). Holes, components and lesion
    matches all lie inside it, so scoring the box gives exactly the whole-ROI figures: the
    background that reaches past the box reaches the array's border too. Scoring 125
    settings per case (tuning) on the box instead of the whole ROI is many times faster.
    """
    region = (prob.max(axis=0) > lowest_threshold) | truth.any(axis=0)
    if not region.any():
        return tuple(slice(0, 1) for _ in region.shape)
    box = []
    for axis, size in enumerate(region.shape):
        hit = np.flatnonzero(region.any(axis=tuple(a for a in range(region.ndim) if a != axis)))
        box.append(slice(max(0, int(hit[0]) - 1), min(size, int(hit[-1]) + 2)))
    return tuple(box)


def validate_case(net: Any, item: dict[str, Any], vcfg: dict[str, Any], roi_size: Sequence[int],
                  device: Any) -> dict[str, Any]:
    """Whole-ROI prediction of one validation case and its counts (on the ROI grid)."""
    prob = predict_roi(net, item, vcfg, roi_size, device)
    truth = item["label"].numpy() > 0.5
    return score_case(item["case_id"], prob, truth, vcfg["thresholds"],
                      int(vcfg["min_component_voxels"]))


def tune_inference_iter(net: Any, val_ds: Any, cfg: dict[str, Any], roi_size: Sequence[int],
                        device: Any, dist: Dist) -> Generator[Progress, None, dict[str, Any]]:
    """Pick the card's thresholds and minimum lesion size on the validation cases.

    Each process predicts its share of the validation cases once and scores every
    combination of ``validate.tune`` (GTVp thresholds x GTVn thresholds x minimum component
    volumes in mL); the combination with the highest ``score - fp_penalty x (false-positive
    components per lesion-free case)`` wins (ties: the first, i.e. the lowest values).
    """
    tune = cfg["validate"].get("tune") or {}
    spacing = float(cfg["preprocessing"].get("spacing_mm", 1.0))
    roi_voxel_ml = spacing**3 / 1000.0
    combos = [(tp, tn, ml) for tp in tune["thresholds_gtvp"] for tn in tune["thresholds_gtvn"]
              for ml in tune["min_component_ml"]]
    results: list[list[dict[str, Any]]] = [[] for _ in combos]
    lowest = min(min(tune["thresholds_gtvp"]), min(tune["thresholds_gtvn"]))
    n_items = len(val_ds) if val_ds is not None else 0
    for k in range(n_items):
        item = val_ds[k]
        prob = predict_roi(net, item, cfg["validate"], roi_size, device)
        truth = item["label"].numpy() > 0.5
        box = (slice(None), *scoring_box(prob, truth, lowest))
        prob, truth = prob[box], truth[box]
        for i, (tp, tn, ml) in enumerate(combos):
            results[i].append(score_case(item["case_id"], prob, truth, (tp, tn),
                                         max(1, round(ml / roi_voxel_ml))))
        yield Progress(k + 1, n_items, f"tuning inference settings {k + 1}/{n_items}")
    gathered = dist.all_gather(results)
    penalty = float(tune.get("fp_penalty", 0.1))
    best = None
    table = []
    for i, combo in enumerate(combos):
        merged = [r for part in gathered for r in part[i]]
        summary = summarise_validation(merged)
        fp = summary["fp_per_empty_case"]
        objective = summary["score"] - penalty * (0.0 if math.isnan(fp) else fp)
        table.append({"thresholds": [combo[0], combo[1]], "min_component_ml": combo[2],
                      "objective": round(objective, 4), "score": round(summary["score"], 4),
                      "fp_per_empty_case": fp})
        if best is None or objective > best["objective"] + 1e-12:
            best = {"thresholds": [float(combo[0]), float(combo[1])],
                    "min_component_ml": float(combo[2]), "objective": float(objective),
                    "metrics": summary}
    assert best is not None
    best["fp_penalty"] = penalty
    best["grid"] = table
    return best


def ct_voxel_ml(records: Sequence[dict[str, Any]]) -> float:
    """Median CT voxel volume (mL) of the cases, read from the file headers only."""
    import SimpleITK as sitk

    volumes = []
    for r in records[:50]:
        reader = sitk.ImageFileReader()
        reader.SetFileName(r["ct"])
        reader.ReadImageInformation()
        volumes.append(float(np.prod(reader.GetSpacing())) / 1000.0)
    return float(np.median(volumes))


def summarise_validation(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Dice GTVp (mean per case with a GTVp), DSCagg GTVp/GTVn, F1agg GTVn, FP per empty case."""
    from napari_hecktor.metrics import DiceCounts, LesionMatch, dsc_agg, f1_agg

    cp = [DiceCounts(*r["gtvp"]) for r in results]
    cn = [DiceCounts(*r["gtvn"]) for r in results]
    dice_p = [c.dice for c in cp if c.n_truth > 0]
    empty = [r for r in results if r["empty"]]
    out = {
        "dice_gtvp": float(np.mean(dice_p)) if dice_p else float("nan"),
        "dscagg_gtvp": dsc_agg(cp),
        "dscagg_gtvn": dsc_agg(cn),
        "f1agg_gtvn": f1_agg(LesionMatch(*r["lesions"]) for r in results),
        "fp_per_empty_case": (float(np.mean([r["components"] for r in empty]))
                              if empty else float("nan")),
        "n_cases": len(results),
        "n_empty": len(empty),
    }
    parts = [out["dice_gtvp"], out["dscagg_gtvn"], out["f1agg_gtvn"]]
    out["score"] = float(np.mean([0.0 if math.isnan(v) else v for v in parts]))
    return out


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def code_version() -> dict[str, Any]:
    import napari_hecktor

    info: dict[str, Any] = {"napari_hecktor": napari_hecktor.__version__}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=HERE, capture_output=True, text=True, timeout=10)
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


class MetricsLog:
    """``metrics.csv`` (rewritten on resume up to the checkpoint's epoch) and TensorBoard."""

    def __init__(self, out: Path, start_epoch: int, global_step: int, tensorboard: bool) -> None:
        self.path = out / "metrics.csv"
        rows = []
        if self.path.exists() and start_epoch > 0:
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= start_epoch]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"),
                                            purge_step=global_step if start_epoch else None)
            except ImportError:  # tensorboard not installed: CSV only
                self.writer = None

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, METRIC_COLUMNS).writerow(
                {k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
        if self.writer is not None:
            for key, value in row.items():
                if key.startswith("val_") and value is not None and not (
                        isinstance(value, float) and math.isnan(value)):
                    self.writer.add_scalar(f"val/{key[4:]}", value, row["global_step"])
            self.writer.add_scalar("train/epoch_loss", row["train_loss"], row["global_step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------- data split


def split_cases(cfg: dict[str, Any], out: Path, dist: Dist
                ) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Training and validation records, and a description of the split for the card."""
    dcfg = cfg["data"]
    records = segdata.list_cases(dcfg["dataset"], dcfg.get("clinical_csv"))
    by_id = {r["case_id"]: r for r in records}
    info: dict[str, Any] = {"dataset": str(Path(dcfg["dataset"]).resolve()),
                            "n_cases_found": len(records)}
    fold = dcfg.get("fold")
    if fold is None:
        train, val = records, []
        info["fold"] = None
    else:
        fold_file = dcfg.get("fold_file")
        if fold_file:
            content = segdata.read_fold_file(fold_file)
        else:
            content = segdata.make_folds(records, dcfg["split"], dcfg["n_folds"],
                                         dcfg["fold_seed"])
            fold_file = out / "folds.json"
            if dist.main:
                segdata.write_fold_file(fold_file, content, dcfg["dataset"])
        missing = sorted(set(content["centers"]) - set(by_id))
        if missing:
            raise SystemExit(f"fold file names cases not in the dataset: {missing[:5]}")
        chosen = segdata.select_fold(content, fold)
        train = [by_id[i] for i in chosen["train"]]
        val = [by_id[i] for i in chosen["val"]]
        info.update({"fold": chosen["fold"], "fold_name": chosen["name"],
                     "split": content["kind"], "n_folds": content["n_folds"],
                     "fold_file": str(Path(fold_file).resolve())})
    if dcfg.get("val_dataset"):
        val = segdata.list_cases(dcfg["val_dataset"], None)
        info["val_dataset"] = str(Path(dcfg["val_dataset"]).resolve())
    info.update({
        "n_train": len(train), "n_val": len(val),
        "train_ids_sha256": segdata.ids_hash(r["case_id"] for r in train),
        "val_ids_sha256": segdata.ids_hash(r["case_id"] for r in val) if val else None,
        "train_centers": sorted({r["center"] for r in train}),
        "val_centers": sorted({r["center"] for r in val}),
    })
    return train, val, info


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path | None
    epochs_done: int
    best_epoch: int | None
    best_metrics: dict[str, Any]
    finished: bool


def train_iter(cfg: dict[str, Any], *, resume: bool = False, stop_after: int | None = None,
               log: Callable[[str], None] = print, command: str = "",
               ) -> Generator[Progress, None, TrainResult]:
    """Train as configured; yields :class:`Progress` per step; returns a :class:`TrainResult`.

    Every process of a torchrun job runs this; rank 0 alone writes files and logs.
    ``stop_after`` ends the run after that many epochs (as if interrupted at an epoch
    boundary), without writing the model folder. Closing the generator stops between two
    steps; ``--resume`` then continues from the last completed epoch.
    """
    import torch
    from monai.data import get_track_meta, set_track_meta

    previous, threads = get_track_meta(), torch.get_num_threads()
    set_track_meta(False)  # plain tensors through the transforms: faster, and no metadata
    try:
        return (yield from _train(cfg, resume=resume, stop_after=stop_after, log=log,
                                  command=command))
    finally:  # leave the caller's process as it was (tests, a GUI)
        set_track_meta(previous)
        torch.set_num_threads(threads)


def _train(cfg: dict[str, Any], *, resume: bool, stop_after: int | None,
           log: Callable[[str], None], command: str) -> Generator[Progress, None, TrainResult]:
    import torch
    from monai.data import list_data_collate
    from torch.utils.data import DataLoader

    from napari_hecktor.models.registry import build_model
    from napari_hecktor.segment.preprocess import check_recipe, make_recipe

    dist = Dist.from_env()
    device = init_distributed(dist)
    on_gpu = device.type == "cuda"
    tcfg, vcfg, acfg = cfg["train"], cfg["validate"], cfg["augment"]
    threads = tcfg.get("threads") or max(1, (os.cpu_count() or 1) // dist.local_world_size)
    if not on_gpu:
        torch.set_num_threads(int(threads))
    seed = int(cfg["seed"])
    seed_everything(derived_seed(seed, dist.rank))
    if cfg.get("deterministic", True):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    say = log if dist.main else (lambda _msg: None)

    out = Path(cfg["output"]["dir"])
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    if not resume and dist.main and last_path.exists():
        raise SystemExit(f"{out} already holds a run (checkpoints/last.pt): pass --resume to "
                         f"continue it, or choose another output.dir")
    dist.barrier()

    # ---- data
    recipe_params = {k: v for k, v in cfg["preprocessing"].items() if k != "name"}
    recipe = check_recipe(make_recipe(cfg["preprocessing"]["name"], **recipe_params))
    train_recs, val_recs, split_info = split_cases(cfg, out, dist)
    say(f"{split_info['n_train']} training and {split_info['n_val']} validation cases "
        f"({split_info.get('split', 'all')} fold {split_info.get('fold')}); "
        f"{dist.world_size} process(es) on {device}")
    t0 = time.perf_counter()
    cache_dir = Path(cfg["data"]["cache_dir"])
    all_recs = train_recs + [r for r in val_recs if r not in train_recs]
    yield Progress(0, 1, "preprocessing")
    segdata.preprocess_cases(all_recs, recipe, cache_dir, rank=dist.rank,
                             world_size=dist.world_size)
    dist.barrier()
    paths = {r["case_id"] + r["ct"]: segdata.cache_path(r, recipe, cache_dir) for r in all_recs}
    say(f"preprocessed ROIs ready in {time.perf_counter() - t0:.0f} s ({cache_dir})")
    workers = int(cfg["data"]["cache_workers"])
    train_ds = segdata.roi_dataset([paths[r["case_id"] + r["ct"]] for r in train_recs],
                                   train_recs, acfg, cache_workers=workers)
    my_val = val_recs[dist.rank :: dist.world_size]
    val_ds = (segdata.roi_dataset([paths[r["case_id"] + r["ct"]] for r in my_val], my_val, None,
                                  cache_workers=workers) if my_val else None)

    # ---- model
    arch, net_cfg = model_config(cfg)
    net = build_model(arch, net_cfg)
    ds = tcfg.get("deep_supervision")
    ds = bool(getattr(net, "deep_supervision", False)) if ds is None else bool(ds)
    if ds and not getattr(net, "deep_supervision", False):
        raise SystemExit("train.deep_supervision is on but the network has no deep-supervision "
                         "heads: set model.config.deep_supervision: true")
    wrapper = SegmentationTrainNet.build(net, ds)
    frozen = freeze_unused(wrapper, net.size_multiple)
    if frozen:
        say(f"not trained in this stage (unused by the segmentation loss): "
            f"{len(frozen)} tensors, e.g. {frozen[0]}")
    if dist.enabled and tcfg.get("sync_batchnorm"):
        wrapper = torch.nn.SyncBatchNorm.convert_sync_batchnorm(wrapper)
    wrapper.to(device)
    channels_last = on_gpu and bool(tcfg.get("channels_last", True))
    if channels_last:
        wrapper.to(memory_format=torch.channels_last_3d)
    amp = on_gpu and bool(tcfg.get("bf16", True))
    model = wrapper
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(wrapper, device_ids=[device.index] if on_gpu else None)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, tcfg)
    scheduler = make_scheduler(optimizer, tcfg)
    loss_fn = make_loss(cfg)
    from napari_hecktor.models.losses import deep_supervision_loss

    # ---- state
    start_epoch, global_step, best_score, best_epoch = 0, 0, -math.inf, None
    best_metrics: dict[str, Any] = {}
    commands = [command]
    train_seconds = 0.0
    cpu_seconds: float | None = 0.0  # rank 0's CPU time in the epochs (None: not recorded)
    cfg_json = json.dumps(jsonable(cfg), sort_keys=True)
    if resume:
        if not last_path.exists():
            raise SystemExit(f"--resume: no checkpoint at {last_path}")
        ckpt = load_checkpoint(last_path)
        old = json.loads(ckpt["config_json"])
        a, b = _strip(old, RESUMABLE_CHANGES), _strip(jsonable(cfg), RESUMABLE_CHANGES)
        if a != b:
            diff = sorted(_diff_keys(a, b))
            raise SystemExit(f"--resume: the config differs from the checkpoint's in "
                             f"{', '.join(diff[:8])}; only {', '.join(RESUMABLE_CHANGES)} "
                             f"may change")
        if ckpt["world_size"] != dist.world_size:
            say(f"note: resuming a {ckpt['world_size']}-process run with "
                f"{dist.world_size} process(es); the data order per rank changes")
        wrapper.net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        best_score = float(ckpt["best_score"])
        best_epoch = ckpt["best_epoch"] if ckpt["best_epoch"] >= 0 else None
        best_metrics = dict(ckpt["best_metrics"])
        commands = list(ckpt["commands"]) + [command]
        train_seconds = float(ckpt["train_seconds"])
        cpu_seconds = float(ckpt["cpu_seconds"]) if "cpu_seconds" in ckpt else None
        say(f"resumed from {last_path} after epoch {start_epoch} (step {global_step})")
        del ckpt
    if dist.main:
        (out / "config.yaml").write_text(yaml.safe_dump(jsonable(cfg), sort_keys=False))
    metrics_log = MetricsLog(out, start_epoch, global_step,
                             bool(cfg["output"]["tensorboard"])) if dist.main else None

    # ---- loop
    epochs = int(tcfg["epochs"])
    sampler = EpochSampler(len(train_ds), seed=seed, rank=dist.rank,
                           world_size=dist.world_size, repeats=int(tcfg["case_repeats"]))
    batch_size = int(tcfg["batch_size"])
    iters = math.ceil(len(sampler) / batch_size)
    total = max(1, (epochs - start_epoch) * iters)
    roi_val = [int(v) for v in (vcfg.get("roi_size") or cfg["inference"]["roi_size"]
                                or acfg["crop_size"])]
    stop_at = epochs if stop_after is None else min(epochs, int(stop_after))
    done_steps = 0
    epochs_done = start_epoch
    for epoch in range(start_epoch, stop_at):
        t_epoch = time.perf_counter()
        c_epoch = time.process_time()
        epoch_seed = derived_seed(seed, epoch, dist.rank)
        seed_everything(epoch_seed)
        segdata.seed_transforms(train_ds, epoch_seed)
        sampler.set_epoch(epoch)
        nw = int(cfg["data"]["num_workers"])
        loader = DataLoader(
            train_ds, batch_size=batch_size, sampler=sampler.indices(), num_workers=nw,
            collate_fn=list_data_collate, persistent_workers=False,
            worker_init_fn=(lambda wid, s=epoch_seed: segdata.seed_transforms(
                train_ds, derived_seed(s, wid))) if nw else None,
        )
        model.train()
        losses = []
        for i, batch in enumerate(loader):
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                outs = model(x)
            outs = [o.float() for o in outs]
            loss = deep_supervision_loss(loss_fn, {"seg": outs[0], "deep_supervision": outs[1:]},
                                         y, tcfg.get("ds_weights"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.get("grad_clip_norm"):
                torch.nn.utils.clip_grad_norm_(params, float(tcfg["grad_clip_norm"]))
            optimizer.step()
            scheduler.step(epoch + (i + 1) / iters)
            global_step += 1
            done_steps += 1
            value = float(loss.detach())
            losses.append(value)
            if metrics_log is not None:
                metrics_log.step(global_step, value, optimizer.param_groups[0]["lr"])
            yield Progress(done_steps, total,
                           f"epoch {epoch + 1}/{epochs} step {i + 1}/{iters} loss {value:.4f}")
        del loader
        train_loss = dist.mean(float(np.mean(losses)) if losses else float("nan"))
        train_seconds += time.perf_counter() - t_epoch

        # ---- validation (each rank scores its share of the cases; rank 0 keeps the best)
        metrics = None
        every = int(vcfg.get("every") or 0)
        is_last = epoch + 1 == epochs
        if val_recs and every > 0 and ((epoch + 1) % every == 0 or is_last):
            wrapper.eval()
            results = []
            for k in range(len(val_ds) if val_ds is not None else 0):
                results.append(validate_case(wrapper.net, val_ds[k], vcfg, roi_val, device))
                yield Progress(done_steps, total, f"validating {k + 1}/{len(val_ds)}")
            wrapper.train()
            gathered = [r for part in dist.all_gather(results) for r in part]
            metrics = summarise_validation(gathered)
        improved = False
        if metrics is not None:
            score = metrics[vcfg.get("select", "score")]
            score = -math.inf if math.isnan(score) else float(score)
            if score > best_score:
                improved = True
                best_score, best_epoch, best_metrics = score, epoch + 1, dict(metrics)
        elif not val_recs:
            best_epoch, best_metrics = epoch + 1, {}
            improved = True

        lr = optimizer.param_groups[0]["lr"]
        if dist.main:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch + 1,
                "global_step": global_step,
                "model": wrapper.net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "best_score": float(best_score),
                "best_epoch": -1 if best_epoch is None else int(best_epoch),
                "best_metrics": {k: float(v) for k, v in best_metrics.items()},
                "config_json": cfg_json,
                "commands": commands,
                "world_size": dist.world_size,
                "train_seconds": float(train_seconds),
                **({"cpu_seconds": float(cpu_seconds + time.process_time() - c_epoch)}
                   if cpu_seconds is not None else {}),
            }
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", {
                    "format": CHECKPOINT_FORMAT, "epoch": epoch + 1,
                    "model": wrapper.net.state_dict(),
                    "metrics": {k: float(v) for k, v in best_metrics.items()},
                    "config_json": cfg_json})
            save_checkpoint(last_path, payload)
            row = {"epoch": epoch + 1, "global_step": global_step, "lr": f"{lr:.6g}",
                   "train_loss": round(train_loss, 6),
                   "epoch_seconds": round(time.perf_counter() - t_epoch, 2),
                   "cpu_seconds": round(time.process_time() - c_epoch, 1),  # rank 0
                   "best": int(improved and metrics is not None)}
            if metrics is not None:
                row.update({f"val_{k}": round(float(metrics[k]), 6) for k in (
                    "dice_gtvp", "dscagg_gtvp", "dscagg_gtvn", "f1agg_gtvn",
                    "fp_per_empty_case", "score")})
            metrics_log.epoch(row)
            msg = (f"epoch {epoch + 1}/{epochs}: loss {train_loss:.4f}, lr {lr:.2e}, "
                   f"{row['epoch_seconds']:.0f} s")
            if metrics is not None:
                msg += (f"; val Dice GTVp {metrics['dice_gtvp']:.3f}, DSCagg GTVn "
                        f"{metrics['dscagg_gtvn']:.3f}, F1agg GTVn {metrics['f1agg_gtvn']:.3f}, "
                        f"FP/empty {metrics['fp_per_empty_case']:.2f}"
                        + (" (best)" if improved else ""))
            say(msg)
        epochs_done = epoch + 1
        if cpu_seconds is not None:
            cpu_seconds += time.process_time() - c_epoch
        dist.barrier()

    finished = epochs_done >= epochs
    model_dir = None
    tuned = None
    if finished and val_recs and vcfg.get("tune"):
        best_path = ckpt_dir / "best.pt"
        tune_net = copy.deepcopy(wrapper.net)
        if best_path.exists():
            tune_net.load_state_dict(load_checkpoint(best_path)["model"])
        tune_net.eval()
        tuned = yield from tune_inference_iter(tune_net, val_ds, cfg, roi_val, device, dist)
        tuned["ct_voxel_ml"] = ct_voxel_ml(train_recs)
        if dist.main:
            (out / "tuning.json").write_text(json.dumps(jsonable(tuned), indent=1) + "\n")
        m = tuned["metrics"]
        say(f"inference settings chosen on the validation cases: thresholds "
            f"{tuned['thresholds']}, minimum lesion {tuned['min_component_ml']} mL (score "
            f"{m['score']:.3f}, FP/empty {m['fp_per_empty_case']:.2f})")
        del tune_net
    if finished and dist.main:
        model_dir = write_model_folder(cfg, out, recipe, arch, net, split_info, best_epoch,
                                       best_metrics, commands, dist, device,
                                       (train_seconds, cpu_seconds), roi_val, tuned)
        say(f"model folder: {model_dir}")
    if metrics_log is not None:
        metrics_log.close()
    dist.barrier()
    return TrainResult(out, model_dir, epochs_done, best_epoch, best_metrics, finished)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def write_model_folder(cfg: dict[str, Any], out: Path, recipe: dict[str, Any], arch: str,
                       net: Any, split_info: dict[str, Any], best_epoch: int | None,
                       best_metrics: dict[str, Any], commands: list[str], dist: Dist,
                       device: Any, seconds: tuple[float, float | None], roi_val: Sequence[int],
                       tuned: dict[str, Any] | None = None) -> Path:
    """The model folder (best checkpoint's weights + card) that ``hecktor segment`` loads.

    With ``tuned`` (from :func:`tune_inference_iter`) the card's thresholds and minimum
    component size are the ones chosen on the validation cases (the size converted to CT
    voxels with the training cases' median CT voxel volume).
    """
    from napari_hecktor.models.card import DEMO_WARNING, ModelCard, save_model

    best_path = out / "checkpoints" / "best.pt"
    source = best_path if best_path.exists() else out / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(source)
    net = copy.deepcopy(net).cpu()
    net.load_state_dict(ckpt["model"])
    icfg = dict(cfg["inference"])
    tcfg = cfg["train"]
    if tuned is not None:
        icfg["thresholds"] = tuned["thresholds"]
        icfg["min_component_voxels"] = max(1, round(tuned["min_component_ml"]
                                                     / tuned["ct_voxel_ml"]))
    card_cfg = cfg.get("card") or {}
    demo = bool(card_cfg.get("demo"))
    card = ModelCard(
        name=card_cfg.get("name") or cfg["name"],
        architecture=arch,
        config=jsonable(net.config),
        preprocessing=jsonable(recipe),
        inference={
            "roi_size": [int(v) for v in (icfg.get("roi_size") or cfg["augment"]["crop_size"])],
            "overlap": float(icfg["overlap"]),
            "thresholds": [float(v) for v in icfg["thresholds"]],
            "min_component_voxels": int(icfg["min_component_voxels"]),
        },
        training={
            "description": card_cfg.get("description", ""),
            "data": split_info,
            "seed": int(cfg["seed"]),
            "epochs": int(tcfg["epochs"]),
            "selected_epoch": best_epoch,
            "selected_checkpoint": source.name,
            "optimizer": {k: tcfg[k] for k in ("optimizer", "lr", "betas", "weight_decay")},
            "scheduler": tcfg.get("scheduler"),
            "loss": tcfg["loss"],
            "deep_supervision": tcfg.get("deep_supervision"),
            "batch_size": int(tcfg["batch_size"]),
            "augment": cfg["augment"],
            "world_size": dist.world_size,
            "device": str(device),
            "train_seconds": round(seconds[0], 1),
            "train_cpu_seconds_rank0": None if seconds[1] is None else round(seconds[1], 1),
            "code_version": code_version(),
            "commands": commands,
            "config": jsonable(cfg),
        },
        metrics={
            "validation": ({**{k: float(v) for k, v in best_metrics.items()},
                            "epoch": best_epoch, "grid": "ROI",
                            "roi_size": list(roi_val),
                            "note": "measured during training on the validation fold, on the "
                                    "preprocessed ROI grid (not the CT grid)"}
                           if best_metrics else {}),
            **({"validation_tuned": {
                **{k: float(v) for k, v in tuned["metrics"].items()},
                "thresholds": tuned["thresholds"],
                "min_component_ml": tuned["min_component_ml"],
                "fp_penalty": tuned["fp_penalty"],
                "objective": tuned["objective"],
                "grid": "ROI",
                "note": "inference thresholds and minimum lesion size chosen on the validation "
                        "fold: highest score - fp_penalty x false-positive components per "
                        "lesion-free case"}} if tuned is not None else {}),
        },
        demo=demo,
        warning=DEMO_WARNING if demo else "",
    )
    folder = Path(cfg["output"]["model_dir"] or out / "model")
    save_model(folder, net, card)
    for f in folder.iterdir():  # safetensors writes 0600: let others read the model
        os.chmod(f, 0o644)
    return folder


# --------------------------------------------------------------------------- CLI


class Reporter:
    """Progress on rank 0: a tqdm bar if installed (and asked for), else text lines."""

    def __init__(self, mode: str, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.mode = mode
        self.last_text = 0.0
        if enabled and mode in ("auto", "tqdm"):
            try:
                from tqdm import tqdm  # noqa: F401

                self.mode = "tqdm"
            except ImportError:
                self.mode = "text"

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def update(self, p: Progress) -> None:
        if not self.enabled or self.mode == "none":
            return
        if self.mode == "tqdm":
            from tqdm import tqdm

            if self.bar is None or self.bar.total != p.total:
                if self.bar is not None:
                    self.bar.close()
                self.bar = tqdm(total=p.total, unit="step", dynamic_ncols=True,
                                mininterval=1.0 if sys.stderr.isatty() else 30.0)
            self.bar.n = p.done
            self.bar.set_description(p.message.split(" loss")[0], refresh=False)
            self.bar.refresh() if p.done == p.total else self.bar.update(0)
            return
        now = time.monotonic()
        if now - self.last_text > 30 or p.done == p.total:
            self.last_text = now
            print(f"[{p.done}/{p.total}] {p.message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a GTVp/GTVn segmentation network from a YAML config "
                    "(torchrun for several processes).")
    parser.add_argument("--config", type=Path, required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value (YAML), repeatable")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output.dir from checkpoints/last.pt")
    parser.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                        help="stop after this many epochs (resume later with --resume)")
    parser.add_argument("--progress", choices=("auto", "tqdm", "text", "none"), default="auto",
                        help="progress display (auto: tqdm when installed, else text)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    dist = Dist.from_env()
    launcher = (f"torchrun --nproc_per_node {dist.local_world_size} "
                if dist.enabled else "python ")
    command = launcher + " ".join(shlex.quote(a) for a in [sys.argv[0], *(
        sys.argv[1:] if argv is None else argv)])
    reporter = Reporter(args.progress, dist.main)
    job = train_iter(cfg, resume=args.resume, stop_after=args.stop_after, log=reporter.log,
                     command=command)
    try:
        while True:
            try:
                progress = next(job)
            except StopIteration as stop:
                result: TrainResult = stop.value
                break
            reporter.update(progress)
    finally:
        reporter.close()
        if dist.enabled:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
    if dist.main:
        state = "finished" if result.finished else f"stopped after epoch {result.epochs_done}"
        print(f"training {state}; best epoch {result.best_epoch}; output {result.out_dir}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
