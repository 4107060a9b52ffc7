#!/usr/bin/env python
"""Stages 2 and 3 of MMPL (seed 004): the HPV head, then the survival head, on a stage-1 model.

::

    python training_scripts/train_outcome_heads.py \\
        --config training_scripts/configs/mmpl_outcome_demo.yaml [--set hpv.epochs=100]

Progressive learning as in seed 004 (sections 2.1, 2.4, 2.5): the network of the stage-1
model folder (``model:``, a folder or a bundled name) is carried from stage to stage.

* Stage 2: the HPV head (``MMPLNet.hpv_head``, on the multi-scale decoder pooling of
  ``MMPLNet.features``) is trained with a class-balanced binary cross-entropy:
  ``BCEWithLogits(pos_weight = n_neg / n_pos)`` over the training cases with a known HPV
  status (:func:`balanced_pos_weight`). The paper says "class-balanced" without a
  formula; ``n_neg / n_pos`` makes the positives and the negatives weigh the same in
  total, and is what ``hpv.class_weight: balanced`` means (``none``: plain BCE).
* Stage 3: the survival head, starting from the stage-2 network (its backbone, and the
  trained HPV head kept as is), is trained with the censoring-aware discrete-time
  likelihood :func:`napari_hecktor.models.losses.discrete_survival_nll` over
  ``survival.intervals`` (null: the model's; other breaks give a new survival head).

``freeze_backbone`` (per stage; true in the demo config): only the head is trained, the
backbone (batch-norm statistics included) stays bit-identical, so the segmentation weights
and the Dice figures on the card remain valid. The pooled features of each case are then
computed ONCE (eval mode) and the head is trained on them: a few hundred epochs take
seconds on a CPU. With ``freeze_backbone: false`` (the paper's refinement) every step runs
the whole network on the cases' input windows and the backbone is fine-tuned too (no
augmentation; batch norm in training mode); the card then says that its segmentation
metrics predate the fine-tuning.

Input window (``input.window``): ``card`` (default) is exactly what
:func:`napari_hecktor.features.deep.deep_features` feeds ``features()``: a window of the
card's inference ``roi_size`` (or ``input.roi_size``) centred on the case's lesions, i.e.
the whole ROI when ``roi_size`` covers it, as MMPL's segmentation inference does for the
bundled demo; ``roi`` always takes the whole ROI (padded to the network's size multiple).
Windows come from the stage-1 ROI cache (``training_scripts/data.py``: same recipe, same
``.npz`` files, made when missing).

Cases and folds: the labelled cases of ``data.dataset`` (lesion-free cases dropped when
``data.skip_lesion_free``); HPV status and RFS/Relapse from ``data.outcomes_csv`` (default
``DATASET/clinical.csv``; HECKTOR 2025 column names, missing values skip a case for that
head only). With ``data.inherit_split`` the fold settings (fold file, split, seed, fold)
come from the stage-1 card, so the validation cases are the ones the backbone did not
train on. ``data.test_dataset``: a further held-out cohort, scored only. Training runs a
fixed number of epochs (no selection on the validation fold, whose figures are reported).

Metrics (``heads`` in the card, and ``metrics.json``): HPV AUC and survival C-index
(``sksurv.metrics.concordance_index_censored`` on minus the expected survival time), with
the number of cases, on the training cases, the validation fold, the test cohort and the
two held-out sets pooled. Output under ``output.dir``: ``config.yaml``, ``metrics.csv``
(per epoch), ``metrics.json``, ``folds.json`` (when made here) and the model folder
(``model/``: ``model.safetensors`` + ``model_card.json``, stage-1 card plus ``heads``).
One process (CPU or one GPU); no checkpoints or resume: the frozen-backbone demo takes a
minute or two.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import data as segdata  # noqa: E402  (training_scripts/data.py)
import train_segmentation as ts  # noqa: E402

HEADS = ("hpv", "survival")

_STAGE_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "freeze_backbone": True,  # false: fine-tune the backbone as well (paper)
    "epochs": 300,
    "batch_size": 32,         # cases per step
    "optimizer": "adamw",     # adam | adamw
    "lr": 1.0e-3,
    "betas": [0.9, 0.999],
    "weight_decay": 1.0e-4,
    "backbone_lr": None,      # fine-tuning only; null: lr
    "init": "auto",           # auto: fresh head unless the card has it trained | reset | keep
}

#: Every key a config may set, with its default.
DEFAULTS: dict[str, Any] = {
    "name": "outcome_heads",
    "seed": 0,
    "model": None,                # stage-1 model folder or bundled model name
    "threads": None,              # CPU threads; null: all cores
    "data": {
        "dataset": None,          # HECKTOR-layout training cohort (with labels)
        "outcomes_csv": None,     # HPV Status, Relapse, RFS; null: DATASET/clinical.csv
        "inherit_split": True,    # fold settings left null come from the stage-1 card
        "clinical_csv": None,     # centres for the folds, as in stage 1
        "fold_file": None,
        "split": None,            # kfold | leave_center_out
        "n_folds": None,
        "fold_seed": None,
        "fold": None,             # validation fold; null (and nothing inherited): no validation
        "val_dataset": None,      # a separate validation cohort (replaces the fold's)
        "test_dataset": None,     # a further held-out cohort, only scored
        "test_outcomes_csv": None,  # null: TEST_DATASET/clinical.csv
        "cache_dir": "out/cache",
        "skip_lesion_free": True,  # cases whose label is empty are no cancer patients
    },
    "input": {"window": "card", "roi_size": None},
    "hpv": {**_STAGE_DEFAULTS, "class_weight": "balanced"},  # balanced | none
    "survival": {**_STAGE_DEFAULTS, "intervals": None},       # null: the model's breaks
    "output": {"dir": None, "model_dir": None},
    "card": {"name": None, "description": ""},
}


# --------------------------------------------------------------------------- config


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML config merged over :data:`DEFAULTS`, ``--set`` overrides applied."""
    user = {}
    if path is not None:
        user = yaml.safe_load(Path(path).read_text()) or {}
    cfg = ts.deep_merge(DEFAULTS, user)
    for assignment in overrides:
        ts.apply_override(cfg, assignment)
    return check_config(cfg)


def check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown keys and missing essentials; fill ``output.dir``."""
    unknown = ts._unknown_keys(cfg, DEFAULTS)
    if unknown:
        raise SystemExit(f"unknown config key(s): {', '.join(unknown)}")
    if not cfg.get("model"):
        raise SystemExit("the config names no stage-1 model (model: FOLDER or bundled name)")
    if not cfg["data"]["dataset"]:
        raise SystemExit("the config names no data.dataset")
    if cfg["input"]["window"] not in ("card", "roi"):
        raise SystemExit(f"input.window must be card or roi, got {cfg['input']['window']!r}")
    if cfg["hpv"]["class_weight"] not in ("balanced", "none", None):
        raise SystemExit("hpv.class_weight must be balanced or none")
    if cfg["output"]["dir"] is None:
        cfg["output"]["dir"] = str(Path("out") / "train" / cfg["name"])
    return cfg


# --------------------------------------------------------------------------- losses, metrics


def balanced_pos_weight(labels: Sequence[float]) -> float:
    """``n_neg / n_pos`` of the known (non-NaN) 0/1 labels: both classes then weigh the same."""
    y = np.asarray(labels, dtype=float)
    y = y[~np.isnan(y)]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"class-balanced BCE needs both classes ({n_pos} positive, "
                         f"{n_neg} negative)")
    return n_neg / n_pos


def hpv_metrics(prob: Sequence[float], labels: Sequence[float]) -> dict[str, Any]:
    """AUC (NaN with one class), accuracy at 0.5 and counts, on the cases with a label."""
    from sklearn.metrics import roc_auc_score

    p, y = np.asarray(prob, float), np.asarray(labels, float)
    keep = ~np.isnan(y)
    p, y = p[keep], y[keep]
    n_pos = int((y == 1).sum())
    auc = float(roc_auc_score(y, p)) if 0 < n_pos < len(y) else float("nan")
    return {"auc": auc, "accuracy_at_0.5": float(np.mean((p >= 0.5) == (y == 1))) if len(y)
            else float("nan"), "n": int(len(y)), "n_positive": n_pos}


def survival_metrics(expected_time: Sequence[float], time_days: Sequence[float],
                     event: Sequence[float]) -> dict[str, Any]:
    """Harrell's C-index of the expected survival time (risk = minus it) and counts."""
    from sksurv.metrics import concordance_index_censored

    t, e, pred = (np.asarray(v, float) for v in (time_days, event, expected_time))
    keep = ~(np.isnan(t) | np.isnan(e))
    t, e, pred = t[keep], e[keep].astype(bool), pred[keep]
    c = (float(concordance_index_censored(e, t, -pred)[0]) if e.any() and len(t) > 1
         else float("nan"))
    return {"c_index": c, "n": int(len(t)), "n_events": int(e.sum())}


# --------------------------------------------------------------------------- data


def read_outcomes(path: str | Path) -> dict[str, dict[str, float]]:
    """``{PatientID: {"hpv", "time", "event"}}`` (NaN when missing) from a clinical CSV."""
    import pandas as pd

    from napari_hecktor.data.clinical import EVENT_COLUMN, HPV_COLUMN, ID_COLUMN, TIME_COLUMN

    table = pd.read_csv(path, dtype={ID_COLUMN: str})
    if ID_COLUMN not in table.columns:
        raise SystemExit(f"{path} has no {ID_COLUMN} column")
    out: dict[str, dict[str, float]] = {}
    for _, row in table.iterrows():
        out[str(row[ID_COLUMN])] = {
            key: float(pd.to_numeric(row.get(col), errors="coerce"))
            if col in table.columns else float("nan")
            for key, col in (("hpv", HPV_COLUMN), ("time", TIME_COLUMN),
                             ("event", EVENT_COLUMN))
        }
    return out


def window_of(arrays: dict[str, np.ndarray], window: str, roi_size: Sequence[int],
              size_multiple: int) -> np.ndarray:
    """The (2, z, y, x) network input of a cached ROI, as ``features.deep`` selects it."""
    from types import SimpleNamespace

    from napari_hecktor.features.deep import select_window

    image = arrays["image"]
    if window == "roi":
        roi_size = image.shape[1:]
        center = None
    else:  # centred on the lesions (ROI label centroid, mm), as deep_features does
        idx = np.argwhere(arrays["label"][0] > 0)
        center = None
        if idx.size:
            center = np.asarray(arrays["roi_origin"]) + np.asarray(
                arrays["roi_spacing"]) * idx.mean(axis=0)[::-1]
    geometry = SimpleNamespace(origin=arrays["roi_origin"], spacing=arrays["roi_spacing"])
    net_input = SimpleNamespace(array=image, geometry=geometry)
    return select_window(net_input, tuple(int(v) for v in roi_size), center,  # type: ignore[arg-type]
                         int(size_multiple))


@dataclasses.dataclass
class CaseSet:
    """Cases of one role: IDs, cache paths and outcome labels (NaN when unknown)."""

    ids: list[str]
    paths: list[Path]
    hpv: np.ndarray
    time: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> CaseSet:
        idx = np.flatnonzero(keep)
        return CaseSet([self.ids[i] for i in idx], [self.paths[i] for i in idx],
                       self.hpv[idx], self.time[idx], self.event[idx])


def concat(sets: Sequence[CaseSet]) -> CaseSet:
    """The cases of several sets, in order."""
    return CaseSet([i for s in sets for i in s.ids], [p for s in sets for p in s.paths],
                   *(np.concatenate([getattr(s, f) for s in sets])
                     for f in ("hpv", "time", "event")))


def make_caseset(records: Sequence[dict[str, Any]], recipe: dict[str, Any], cache_dir: Path,
                 outcomes: dict[str, dict[str, float]], skip_lesion_free: bool) -> CaseSet:
    """Preprocess (cache) the records' ROIs and attach their outcomes."""
    paths = segdata.preprocess_cases(records, recipe, cache_dir)
    ids, kept, hpv, t, e = [], [], [], [], []
    nan = float("nan")
    for rec, path in zip(records, paths, strict=True):
        if skip_lesion_free:
            with np.load(path, allow_pickle=False) as z:
                if int(z["label_voxels_full"].sum()) == 0:
                    continue
        o = outcomes.get(rec["case_id"], {})
        ids.append(rec["case_id"])
        kept.append(path)
        hpv.append(o.get("hpv", nan))
        t.append(o.get("time", nan))
        e.append(o.get("event", nan))
    return CaseSet(ids, kept, np.asarray(hpv, float), np.asarray(t, float),
                   np.asarray(e, float))


def resolve_split(cfg: dict[str, Any], card: Any) -> dict[str, Any]:
    """``data`` with the stage-1 card's fold settings filling the null keys (inherit_split)."""
    dcfg = dict(cfg["data"])
    inherited: list[str] = []
    if dcfg.get("inherit_split"):
        old = ((card.training or {}).get("config") or {}).get("data") or {}
        info = (card.training or {}).get("data") or {}
        same = bool(info.get("dataset")) and (
            Path(info["dataset"]).resolve() == Path(dcfg["dataset"]).resolve())
        for key in ("clinical_csv", "split", "n_folds", "fold_seed", "fold", "val_dataset"):
            if dcfg.get(key) is None and old.get(key) is not None:
                dcfg[key] = old[key]
                inherited.append(key)
        if (dcfg.get("fold_file") is None and same and info.get("fold_file")
                and Path(info["fold_file"]).exists()):
            dcfg["fold_file"] = info["fold_file"]
            inherited.append("fold_file")
    dcfg["split"] = dcfg.get("split") or "kfold"
    dcfg["fold_seed"] = 0 if dcfg.get("fold_seed") is None else dcfg["fold_seed"]
    dcfg["inherited_from_stage1"] = inherited
    return dcfg


# --------------------------------------------------------------------------- training


def _features(net: Any, cases: CaseSet, window: str, roi_size: Sequence[int], device: Any,
              memo: dict[str, Any] | None = None) -> Any:
    """Pooled deep features (N, feature_dim) of every case, eval mode, no gradients.

    ``memo``: cache file -> features of the current backbone, filled and reused (stage 3
    reuses stage 2's when the backbone was frozen).
    """
    import torch

    memo = {} if memo is None else memo
    was = net.training
    net.eval()
    with torch.no_grad():
        for path in cases.paths:
            if str(path) not in memo:
                x = window_of(segdata.load_cached(path), window, roi_size, net.size_multiple)
                f = net.features(torch.from_numpy(x)[None].to(device))
                memo[str(path)] = f[0].float().cpu()
    net.train(was)
    if not len(cases):
        return torch.zeros(0, net.feature_dim)
    return torch.stack([memo[str(p)] for p in cases.paths])


def _head_output(net: Any, head: str, feats: Any, norm: tuple[Any, Any] | None = None) -> Any:
    """HPV logits (B,) or conditional survival (B, K) from pooled features.

    ``norm`` (mean, sd): standardise the features first (while a head is being trained,
    its first layer is in standardised coordinates; see :func:`standardise_first_layer`).
    """
    import torch

    if norm is not None:
        feats = (feats - norm[0].to(feats)) / norm[1].to(feats)
    if head == "hpv":
        return net.hpv_head(feats)[:, 0]
    return torch.sigmoid(net.survival_head(feats))


def predict(net: Any, head: str, cases: CaseSet, feats: Any | None, window: str,
            roi_size: Sequence[int], device: Any, norm: tuple[Any, Any] | None = None
            ) -> np.ndarray:
    """HPV probability, or expected survival time (days), per case (eval mode)."""
    import torch

    if feats is None:
        feats = _features(net, cases, window, roi_size, device)
    was = net.training
    net.eval()
    with torch.inference_mode():
        out = _head_output(net, head, feats.to(device), norm)
        value = torch.sigmoid(out) if head == "hpv" else net.expected_survival_time(out)
    net.train(was)
    return value.double().cpu().numpy()


def score(net: Any, head: str, cases: CaseSet, feats: Any | None, window: str,
          roi_size: Sequence[int], device: Any, norm: tuple[Any, Any] | None = None
          ) -> dict[str, Any]:
    pred = predict(net, head, cases, feats, window, roi_size, device, norm)
    if head == "hpv":
        return hpv_metrics(pred, cases.hpv)
    return survival_metrics(pred, cases.time, cases.event)


def standardise_first_layer(layer: Any, mean: Any, sd: Any, *, inverse: bool = False) -> None:
    """Rewrite a Linear layer in place so that it gives the same output on standardised input.

    Forward: ``W' = W * sd``, ``b' = b + W @ mean``, so ``W'(x - mean) / sd + b' = W x + b``;
    ``inverse`` folds the standardisation back into the weights (``W = W' / sd``,
    ``b = b' - W @ mean``): the saved head takes the raw pooled features, as
    ``MMPLNet.forward_all`` feeds them.
    """
    import torch

    mean, sd = mean.to(layer.weight), sd.to(layer.weight)
    with torch.no_grad():
        if inverse:
            layer.weight.div_(sd)
            layer.bias.sub_(layer.weight @ mean)
        else:
            layer.bias.add_(layer.weight @ mean)
            layer.weight.mul_(sd)


def labelled(cases: CaseSet, head: str) -> np.ndarray:
    """Which cases have the head's target."""
    if head == "hpv":
        return ~np.isnan(cases.hpv)
    return ~(np.isnan(cases.time) | np.isnan(cases.event))


def train_stage(net: Any, head: str, scfg: dict[str, Any], train: CaseSet,
                evals: dict[str, CaseSet], *, window: str, roi_size: Sequence[int],
                seed: int, device: Any, log: Callable[[str], None],
                csv_rows: list[dict[str, Any]], memo: dict[str, Any] | None = None,
                reset: bool = True) -> dict[str, Any]:
    """Train one head (stage 2: ``hpv``, stage 3: ``survival``) in place; its summary.

    ``memo``: features of the current backbone by cache file (see :func:`_features`); cleared
    when this stage fine-tunes the backbone. ``reset``: start the head from a fresh
    (seeded) initialisation instead of its current weights.

    The head trains on standardised features (the training cases' mean and standard
    deviation at the start of the stage): the pooled features vary by a few per cent
    around their means, too little for the head's default initialisation. The head's
    first layer works in standardised coordinates while it trains and the standardisation
    is folded back into it afterwards (exact), so the saved network is unchanged in form.
    """
    import torch
    import torch.nn.functional as F

    from napari_hecktor.models.losses import discrete_survival_nll

    stage = 2 if head == "hpv" else 3
    frozen = bool(scfg["freeze_backbone"])
    train = train.subset(labelled(train, head))
    if len(train) < 2:
        raise SystemExit(f"stage {stage} ({head}): {len(train)} training case(s) with a target")
    evals = {k: v.subset(labelled(v, head)) for k, v in evals.items()}
    head_module = net.hpv_head if head == "hpv" else net.survival_head
    head_names = {f"{head}_head.{n}" for n, _ in head_module.named_parameters()}
    backbone = [p for n, p in net.named_parameters()
                if not n.startswith(("hpv_head.", "survival_head."))]
    for name, p in net.named_parameters():
        p.requires_grad_(name in head_names or (not frozen and not name.startswith(
            ("hpv_head.", "survival_head."))))
    groups = [{"params": list(head_module.parameters())}]
    if not frozen:
        groups.append({"params": backbone, "lr": float(scfg.get("backbone_lr") or scfg["lr"])})
    optimizer = ts.make_optimizer(groups, scfg)

    summary: dict[str, Any] = {"stage": stage, "freeze_backbone": frozen,
                               "n_train": len(train)}
    if head == "hpv":
        weight = (balanced_pos_weight(train.hpv) if scfg.get("class_weight") == "balanced"
                  else 1.0)
        summary.update({"loss": "BCEWithLogits(pos_weight = n_neg / n_pos)"
                        if scfg.get("class_weight") == "balanced" else "BCEWithLogits",
                        "pos_weight": weight, "n_train_positive": int((train.hpv == 1).sum())})
        pos_weight = torch.tensor(weight, device=device)
        y_all = torch.as_tensor(train.hpv, dtype=torch.float32)

        def loss_fn(out: Any, idx: np.ndarray) -> Any:
            return F.binary_cross_entropy_with_logits(out, y_all[idx].to(device),
                                                      pos_weight=pos_weight)
    else:
        breaks = net.survival_intervals
        summary.update({"loss": "discrete_survival_nll (censoring-aware discrete time)",
                        "intervals": list(breaks),
                        "n_train_events": int(train.event.sum())})

        def loss_fn(out: Any, idx: np.ndarray) -> Any:
            return discrete_survival_nll(out, torch.as_tensor(train.time[idx]),
                                         torch.as_tensor(train.event[idx]), breaks)

    memo = {} if memo is None else memo
    if frozen:
        feats = _features(net, train, window, roi_size, device, memo).to(device)
        eval_feats = {k: _features(net, v, window, roi_size, device, memo)
                      for k, v in evals.items()}
        raw = feats
    else:
        memo.clear()
        raw = _features(net, train, window, roi_size, device)
        feats, eval_feats = None, {k: None for k in evals}
    norm = (raw.mean(0).detach().cpu(), raw.std(0).clamp_min(1e-6).detach().cpu())
    first = head_module[1]
    ts.seed_everything(ts.derived_seed(seed, stage))
    if reset:  # fresh weights, in standardised coordinates
        for layer in head_module:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    else:
        standardise_first_layer(first, *norm)
    summary["init"] = "reset" if reset else "previous weights"
    summary["input_standardisation"] = ("training-case mean/sd of the pooled features, "
                                        "folded into the first linear layer after training")
    epochs, batch = int(scfg["epochs"]), max(1, int(scfg["batch_size"]))
    t0 = time.perf_counter()
    report_every = max(1, epochs // 10)
    for epoch in range(epochs):
        rng = np.random.default_rng(ts.derived_seed(seed, stage, epoch))
        order = rng.permutation(len(train))
        net.eval()  # frozen: batch-norm statistics and dropout of the backbone stay fixed
        if not frozen:
            net.train()
        head_module.train()
        losses = []
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            if frozen:
                f = feats[idx]
            else:
                x = np.stack([window_of(segdata.load_cached(train.paths[i]), window, roi_size,
                                        net.size_multiple) for i in idx])
                f = net.features(torch.from_numpy(x).to(device))
            loss = loss_fn(_head_output(net, head, f, norm), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        row: dict[str, Any] = {"stage": stage, "head": head, "epoch": epoch + 1,
                               "train_loss": round(float(np.mean(losses)), 6)}
        if (epoch + 1) % report_every == 0 or epoch + 1 == epochs:
            key = "auc" if head == "hpv" else "c_index"
            for name, cases in evals.items():
                if len(cases):
                    row[f"{name}_{key}"] = round(score(
                        net, head, cases, eval_feats[name], window, roi_size, device,
                        norm)[key], 4)
            log(f"stage {stage} ({head}) epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}"
                + "".join(f", {k} {v}" for k, v in row.items() if k.endswith(key)))
        csv_rows.append(row)
    summary["train_seconds"] = round(time.perf_counter() - t0, 1)
    standardise_first_layer(first, *norm, inverse=True)
    if not frozen:  # the features changed: recompute them for the final scores
        feats, eval_feats = None, {k: None for k in evals}
    metrics = {"train": score(net, head, train, feats, window, roi_size, device)}
    for name, cases in evals.items():
        if len(cases):
            metrics[name] = score(net, head, cases, eval_feats[name], window, roi_size, device)
    held = [k for k in ("validation", "test") if k in evals and len(evals[k])]
    if len(held) == 2:  # the two held-out sets pooled
        pooled = concat([evals[k] for k in held])
        pf = None if eval_feats[held[0]] is None else torch.cat([eval_feats[k] for k in held])
        metrics["held_out"] = score(net, head, pooled, pf, window, roi_size, device)
    for p in net.parameters():
        p.requires_grad_(True)
    net.eval()
    summary["metrics"] = metrics
    return summary


def _set_intervals(net: Any, arch: str, intervals: Sequence[float] | None) -> Any:
    """The same network with other survival interval breaks (a fresh survival head)."""
    from napari_hecktor.models.mmpl import check_intervals
    from napari_hecktor.models.registry import build_model

    if intervals is None or check_intervals(intervals) == tuple(net.survival_intervals):
        return net
    new = build_model(arch, {**net.config, "survival_intervals": list(intervals)})
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("survival_head.")}
    missing, _ = new.load_state_dict(state, strict=False)
    assert all(k.startswith("survival_head.") for k in missing), missing
    return new


def _say(message: str) -> None:
    print(message, flush=True)


def run(cfg: dict[str, Any], *, command: str = "", log: Callable[[str], None] = _say
        ) -> Path:
    """Stages 2 and 3 as configured; returns the model folder written."""
    import torch

    from napari_hecktor.models.card import DEMO_WARNING, load_model, save_model
    from napari_hecktor.segment.preprocess import check_recipe

    t_start = time.perf_counter()
    threads = cfg.get("threads") or os.cpu_count() or 1
    previous_threads = torch.get_num_threads()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(threads))
    try:
        seed = int(cfg["seed"])
        ts.seed_everything(seed)
        out = Path(cfg["output"]["dir"])
        out.mkdir(parents=True, exist_ok=True)
        net, card = load_model(cfg["model"], device="cpu")
        if not hasattr(net, "hpv_head") or not hasattr(net, "survival_head"):
            raise SystemExit(f"the {card.architecture} network has no HPV and survival heads "
                             f"(stages 2-3 are MMPL's)")
        stage1 = {k: v.clone() for k, v in net.state_dict().items()}
        net = _set_intervals(net, card.architecture, cfg["survival"].get("intervals"))
        net.to(device)

        # ---- cases
        recipe = check_recipe(card.preprocessing)
        dcfg = resolve_split(cfg, card)
        split_cfg = {**cfg, "data": dcfg}
        train_recs, val_recs, split_info = ts.split_cases(split_cfg, out, ts.Dist())
        split_info["inherited_from_stage1"] = dcfg["inherited_from_stage1"]
        s1 = (card.training or {}).get("data") or {}
        if s1.get("val_ids_sha256") and val_recs and not dcfg.get("val_dataset"):
            split_info["validation_is_stage1_validation"] = (
                segdata.ids_hash(r["case_id"] for r in val_recs) == s1["val_ids_sha256"])
        cache = Path(dcfg["cache_dir"])
        outcomes = read_outcomes(dcfg.get("outcomes_csv")
                                 or Path(dcfg["dataset"]) / "clinical.csv")
        if dcfg.get("val_dataset"):
            outcomes.update(read_outcomes(Path(dcfg["val_dataset"]) / "clinical.csv"))
        skip = bool(dcfg.get("skip_lesion_free"))
        log(f"{len(train_recs)} training and {len(val_recs)} validation cases; preparing "
            f"the ROIs ({cache})")
        train = make_caseset(train_recs, recipe, cache, outcomes, skip)
        evals = {}
        if val_recs:
            evals["validation"] = make_caseset(val_recs, recipe, cache, outcomes, skip)
        if dcfg.get("test_dataset"):
            test_recs = segdata.list_cases(dcfg["test_dataset"])
            test_out = read_outcomes(dcfg.get("test_outcomes_csv")
                                     or Path(dcfg["test_dataset"]) / "clinical.csv")
            evals["test"] = make_caseset(test_recs, recipe, cache, test_out, skip)
            split_info["test_dataset"] = str(Path(dcfg["test_dataset"]).resolve())
            split_info["test_ids_sha256"] = segdata.ids_hash(evals["test"].ids)
        split_info["skip_lesion_free"] = skip
        split_info.update({f"n_{k}_used": len(v) for k, v in
                           {"train": train, **evals}.items()})
        log(f"with lesions: {len(train)} training, "
            + ", ".join(f"{len(v)} {k}" for k, v in evals.items()) + " cases")

        window = cfg["input"]["window"]
        roi_size = [int(v) for v in (cfg["input"].get("roi_size")
                                     or card.inference.get("roi_size"))]

        # ---- stages 2 and 3 (the network carries over)
        rows: list[dict[str, Any]] = []
        heads: dict[str, Any] = {}
        memo: dict[str, Any] = {}
        for head in HEADS:
            scfg = cfg[head]
            if not scfg.get("enabled", True):
                continue
            init = scfg.get("init", "auto")
            if init not in ("auto", "reset", "keep"):
                raise SystemExit(f"{head}.init must be auto, reset or keep, got {init!r}")
            reset = init == "reset" or (init == "auto" and head not in (card.heads or {}))
            summary = train_stage(net, head, scfg, train, evals, window=window,
                                  roi_size=roi_size, seed=seed, device=device, log=log,
                                  csv_rows=rows, memo=memo, reset=reset)
            summary["optimizer"] = {k: scfg[k] for k in (
                "optimizer", "lr", "betas", "weight_decay", "backbone_lr")}
            summary.update({"epochs": int(scfg["epochs"]), "batch_size": int(scfg["batch_size"])})
            if card.demo:
                summary["warning"] = DEMO_WARNING
            heads[head] = ts.jsonable(summary)
            m = summary["metrics"]
            key = "auc" if head == "hpv" else "c_index"
            log(f"stage {summary['stage']} ({head}) done in {summary['train_seconds']} s: "
                + ", ".join(f"{k} {v[key]:.3f} (n={v['n']})" for k, v in m.items()))

        # ---- outputs
        net = net.cpu().eval()
        state = net.state_dict()
        backbone_same = all(torch.equal(v, state[k]) for k, v in stage1.items()
                            if not k.startswith(("hpv_head.", "survival_head.")))
        with open(out / "metrics.csv", "w", newline="") as fh:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            writer = csv.DictWriter(fh, cols)
            writer.writeheader()
            writer.writerows(rows)
        (out / "config.yaml").write_text(yaml.safe_dump(ts.jsonable(cfg), sort_keys=False))
        seconds = round(time.perf_counter() - t_start, 1)
        card_cfg = cfg.get("card") or {}
        training = dict(card.training or {})
        training["heads"] = ts.jsonable({
            "description": card_cfg.get("description", ""),
            "stage1_model": str(cfg["model"]),
            "backbone_unchanged": backbone_same,
            "data": split_info,
            "window": window, "roi_size": roi_size,
            "seed": seed, "device": str(device), "seconds": seconds,
            "code_version": ts.code_version(),
            "commands": [command] if command else [],
            "config": cfg,
        })
        metrics = dict(card.metrics or {})
        if not backbone_same:
            metrics["note"] = ("the backbone was fine-tuned in stages 2-3 after the "
                               "segmentation metrics above were measured: measure them again")
        new_card = dataclasses.replace(
            card, name=card_cfg.get("name") or card.name, config=ts.jsonable(net.config),
            training=training, metrics=metrics, heads={**(card.heads or {}), **heads})
        folder = Path(cfg["output"]["model_dir"] or out / "model")
        save_model(folder, net, new_card)
        load_model(folder)  # refuses a broken folder
        (out / "metrics.json").write_text(json.dumps(ts.jsonable(
            {h: heads[h]["metrics"] for h in heads}), indent=1) + "\n")
        log(f"model folder: {folder} ({seconds} s; backbone "
            f"{'unchanged' if backbone_same else 'fine-tuned'})")
        return folder
    finally:
        torch.set_num_threads(previous_threads)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="MMPL stages 2 and 3: HPV and survival heads on a stage-1 model.")
    parser.add_argument("--config", type=Path, required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value (YAML), repeatable")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(
        sys.argv[1:] if argv is None else argv)])
    run(copy.deepcopy(cfg), command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
