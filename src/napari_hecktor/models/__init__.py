"""Segmentation networks (NormResSE-UNet3+, MMPL), their losses, registry and model files.

Importing this package is cheap: torch and MONAI load on first use of a name below
(PEP 562 lazy attributes), so reading a model card does not pull in torch.

Every network takes (B, 2, D, H, W) input (channel 0 PET z-scored, channel 1 CT in
[-1, 1]; D, H, W divisible by ``model.size_multiple``) and ``forward`` returns
segmentation logits (B, C, D, H, W) for independent sigmoids. ``forward_all`` adds the
deep-supervision logits, deep features and, for MMPL, the HPV logit and the conditional
survival probabilities.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "NormResSEUNet3Plus": "normresse_unet3p",
    "MMPLNet": "mmpl",
    "DEFAULT_INTERVALS": "mmpl",
    "expected_survival_time": "mmpl",
    "survival_curve": "mmpl",
    "ARCHITECTURES": "registry",
    "PAPER_CONFIGS": "registry",
    "TINY_CONFIGS": "registry",
    "build_model": "registry",
    "ODALoss": "losses",
    "soft_dice_loss": "losses",
    "focal_loss": "losses",
    "logcosh_dice_focal_loss": "losses",
    "deep_supervision_loss": "losses",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
