"""Training iterations per second: napari-hecktor's training script vs a plain MONAI loop.

Both train the same network (``mmpl``, the ``mmpl_demo`` config: tiny preset, pinned
channels) with the same crops (2 crops of 40^3 voxels per case at 2 mm, batch 1 case),
the same loss (ODA), optimiser (AdamW, lr 3e-3, weight decay 1e-4) and augmentations
(crop centres background/GTVp/GTVn 1:1:1, left-right flip 0.5, in-plane rotation 15 deg
0.3, intensity scale/shift 0.1 at 0.3), on a phantom cohort written to a temp folder.

Ours: ``training_scripts/train_segmentation.py``'s ``train_iter`` with
``configs/mmpl_demo.yaml`` (cached PET-guided ROIs, MONAI ``CacheDataset``, per-epoch
checkpoint), no validation, stopped after the asked number of steps.
Peer: a plain MONAI loop written here: SimpleITK loads each case (PET resampled onto the
CT), ``Spacingd`` to 2 mm over the whole volume, ``ScaleIntensityRanged`` /
``NormalizeIntensityd``, everything deterministic cached by ``CacheDataset``, then the
same random transforms, ``DataLoader(batch_size=1)``, forward, loss, backward, step.

Iterations/s are timed over the steps after ``--warmup`` (data caching excluded on both
sides; ours' epoch boundaries, with their checkpoint writes, included). With a CUDA GPU
both sides use it (ours: bf16 autocast and channels-last, as its config says).

    python benchmarks/bench_training.py --iters 24
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CONFIG = common.REPO / "training_scripts" / "configs" / "mmpl_demo.yaml"


def _rate(stamps: list[float], warmup: int) -> float:
    """Steps per second between the end of step ``warmup`` and the last step."""
    timed = stamps[warmup - 1:] if warmup else stamps
    return (len(timed) - 1) / (timed[-1] - timed[0])


def ours_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """train_segmentation.train_iter on the cohort; time between step progress reports."""
    common.quiet_logs()
    sys.path.insert(0, str(common.REPO / "training_scripts"))
    import train_segmentation as ts

    tmp = Path(spec["tmp"])
    cfg = ts.load_config(CONFIG, [
        f"data.dataset={spec['dataset']}", f"data.cache_dir={tmp / 'cache'}",
        f"output.dir={tmp / 'ours'}", "data.fold=null", "validate.every=0",
        "output.tensorboard=false", "train.epochs=1000",
    ])
    job = ts.train_iter(cfg, log=lambda _msg: None)
    stamps: list[float] = []
    start = time.perf_counter()
    setup = None
    for progress in job:
        if progress.message.startswith("epoch"):
            if setup is None:
                setup = time.perf_counter() - start
            stamps.append(time.perf_counter())
            if len(stamps) >= spec["iters"]:
                break
    job.close()
    return {"it_per_s": _rate(stamps, spec["warmup"]), "steps": len(stamps),
            "setup_seconds": setup}


def _network(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Architecture and constructor config of the demo config (preset + pinned values)."""
    sys.path.insert(0, str(common.REPO / "training_scripts"))
    import train_segmentation as ts

    return ts.model_config(ts.load_config(CONFIG, [f"data.dataset={spec['dataset']}"]))


def _peer_loader() -> Any:
    from monai.transforms import MapTransform

    class LoadCaseSitkd(MapTransform):
        """CT, PET (resampled onto the CT grid) and label as (1, z, y, x) MetaTensors."""

        def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
            import SimpleITK as sitk
            import torch
            from monai.data import MetaTensor

            ct = sitk.ReadImage(data["ct"], sitk.sitkFloat32)
            pet = sitk.Resample(sitk.ReadImage(data["pet"], sitk.sitkFloat32), ct,
                                sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            label = sitk.ReadImage(data["label"], sitk.sitkFloat32)
            direction = np.asarray(ct.GetDirection()).reshape(3, 3)
            affine = np.eye(4)
            affine[:3, :3] = (direction * np.asarray(ct.GetSpacing()))[:, ::-1]
            affine[:3, 3] = ct.GetOrigin()
            out = dict(data)
            for key, image in (("ct", ct), ("pet", pet), ("label", label)):
                out[key] = MetaTensor(torch.from_numpy(sitk.GetArrayFromImage(image))[None],
                                      affine=torch.as_tensor(affine))
            return out

    return LoadCaseSitkd(keys=["ct", "pet", "label"])


def peer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """A plain MONAI training loop of the same network, crops, loss and optimiser."""
    common.quiet_logs()
    import torch
    import yaml
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.transforms import (
        AsDiscreted,
        Compose,
        ConcatItemsd,
        DeleteItemsd,
        EnsureTyped,
        Lambdad,
        NormalizeIntensityd,
        RandCropByLabelClassesd,
        RandFlipd,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
        ScaleIntensityRanged,
        Spacingd,
    )

    from napari_hecktor.models.losses import ODALoss
    from napari_hecktor.models.registry import build_model

    cfg = yaml.safe_load(CONFIG.read_text())
    aug, train = cfg["augment"], cfg["train"]
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spacing = float(cfg["preprocessing"]["spacing_mm"])
    deterministic = [
        _peer_loader(),
        Spacingd(keys=["ct", "pet", "label"], pixdim=(spacing,) * 3,
                 mode=("bilinear", "bilinear", "nearest")),
        ScaleIntensityRanged(keys="ct", a_min=-1024, a_max=1024, b_min=-1, b_max=1, clip=True),
        NormalizeIntensityd(keys="pet", nonzero=True),
        ConcatItemsd(keys=["pet", "ct"], name="image"),
        DeleteItemsd(keys=["ct", "pet"]),
        EnsureTyped(keys=["image", "label"], track_meta=False),
    ]
    rand = [
        RandCropByLabelClassesd(keys=["image", "label"], label_key="label",
                                spatial_size=aug["crop_size"], ratios=aug["crop_ratios"],
                                num_classes=3, num_samples=aug["crops_per_case"],
                                allow_smaller=True, warn=False),
        RandFlipd(keys=["image", "label"], prob=aug["flip_prob"], spatial_axis=2),
        RandRotated(keys=["image", "label"], range_x=math.radians(aug["rotate_deg"][0]),
                    prob=aug["rotate_prob"], mode=("bilinear", "nearest"),
                    padding_mode=("border", "zeros"), keep_size=True),
        RandScaleIntensityd(keys="image", factors=aug["intensity_scale"],
                            prob=aug["intensity_prob"], channel_wise=True),
        RandShiftIntensityd(keys="image", offsets=aug["intensity_shift"],
                            prob=aug["intensity_prob"], channel_wise=True),
        AsDiscreted(keys="label", to_onehot=3),
        Lambdad(keys="label", func=lambda y: y[1:]),  # GTVp, GTVn channels
    ]
    files = [{"ct": c["ct"], "pet": c["pet"], "label": c["label"]} for c in spec["cases"]]
    t0 = time.perf_counter()
    dataset = CacheDataset(files, Compose(deterministic + rand), cache_rate=1.0,
                           num_workers=0, progress=False)
    loader = DataLoader(dataset, batch_size=int(train["batch_size"]), shuffle=True,
                        num_workers=0, collate_fn=list_data_collate)
    net = build_model(*_network(spec)).to(device).train()
    loss_fn = ODALoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=float(train["lr"]),
                                  weight_decay=float(train["weight_decay"]))
    setup = time.perf_counter() - t0
    stamps: list[float] = []
    while len(stamps) < spec["iters"]:
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stamps.append(time.perf_counter())
            if len(stamps) >= spec["iters"]:
                break
    return {"it_per_s": _rate(stamps, spec["warmup"]), "steps": len(stamps),
            "setup_seconds": setup}


def main(argv: list[str] | None = None) -> int:
    """Write the cohort, run both loops, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hecktor-bench-train-") as tmp:
        cases = common.write_cases(Path(tmp) / "cohort", args.cases, args.seed)
        spec = {"cases": cases, "dataset": str(Path(tmp) / "cohort"), "tmp": tmp,
                "iters": args.iters, "warmup": args.warmup}
        ours = common.run_side(__file__, "ours", spec)
        peer = common.run_side(__file__, "peer", spec)
    speedup = common.ratio(ours.result["it_per_s"], peer.result["it_per_s"])
    rows = [
        ["ours (train_segmentation.py)", ours.result["it_per_s"], ours.result["setup_seconds"],
         ours.peak_rss_mb],
        ["plain MONAI loop", peer.result["it_per_s"], peer.result["setup_seconds"],
         peer.peak_rss_mb],
        ["ours/peer (it/s), peer/ours (MiB)", speedup, "",
         common.ratio(peer.peak_rss_mb, ours.peak_rss_mb)],
    ]
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    common.print_table(
        f"Training, mmpl tiny, 2 x 40^3 crops per step, {args.iters} steps "
        f"({args.warmup} warm-up), {args.cases} phantom cases, {device}",
        ["side", "it/s", "setup s", "peak RSS MiB"], rows)
    common.print_json("training", {
        "device": device, "iters": args.iters, "warmup": args.warmup,
        "ours": {"it_per_s": ours.result["it_per_s"], "peak_rss_mb": ours.peak_rss_mb,
                 "setup_seconds": ours.result["setup_seconds"]},
        "peer": {"it_per_s": peer.result["it_per_s"], "peak_rss_mb": peer.peak_rss_mb,
                 "setup_seconds": peer.result["setup_seconds"]},
        "speedup": speedup,
    })
    return 0


if __name__ == "__main__":
    if not common.worker_main({"ours": ours_worker, "peer": peer_worker}):
        sys.exit(main())
