"""Architectures by name, and their paper and CPU-sized configurations.

A model card stores ``architecture`` (a key of :data:`ARCHITECTURES`) and ``config`` (the
constructor's keyword arguments, JSON lists allowed for tuples); :func:`build_model`
turns them back into a network and says clearly what is wrong with a bad card.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import HecktorInputError
from .mmpl import DEFAULT_INTERVALS, MMPLNet
from .normresse_unet3p import NormResSEUNet3Plus

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "normresse_unet3p": NormResSEUNet3Plus,
    "mmpl": MMPLNet,
}

#: The papers' widths and depths (seed 000: 1 output channel, GTVt, in 2021; here 2).
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "normresse_unet3p": {
        "in_channels": 2, "out_channels": 2, "filters": (24, 48, 96, 192, 384),
        "blocks_per_level": (2, 3, 3, 3, 3), "first_kernel": 7, "se_reduction": 2,
        "skip_channels": 24, "deep_supervision": True, "block_style": "iantsen",
    },
    "mmpl": {
        "in_channels": 2, "out_channels": 2, "modality_filters": (8, 16, 32, 64, 128),
        "fusion_filters": (16, 32, 64, 128, 256), "convs_per_level": (2, 3, 3, 4, 4),
        "survival_intervals": DEFAULT_INTERVALS, "hidden": 128, "dropout": 0.5,
        "norm": "batch", "deep_supervision": False,
    },
}

#: Small variants that train on a 2-core CPU (inputs divisible by 8). The UNet3+ decoder
#: runs ``skip_channels * levels`` channels at full resolution and dominates the cost, so
#: the tiny NormResSE-UNet3+ has 2 channels per skip and a 3x3x3 first kernel.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "normresse_unet3p": {
        "in_channels": 2, "out_channels": 2, "filters": (4, 8, 16, 32),
        "blocks_per_level": (1, 1, 1, 1), "first_kernel": 3, "se_reduction": 2,
        "skip_channels": 2, "deep_supervision": True, "block_style": "iantsen",
    },
    "mmpl": {
        "in_channels": 2, "out_channels": 2, "modality_filters": (4, 8, 16, 32),
        "fusion_filters": (8, 16, 32, 64), "convs_per_level": (1, 1, 1, 1),
        "survival_intervals": DEFAULT_INTERVALS, "hidden": 16, "dropout": 0.5,
        "norm": "batch", "deep_supervision": False,
    },
}


def config_keys(name: str) -> list[str]:
    """The keyword arguments architecture ``name`` accepts."""
    return [p for p in inspect.signature(ARCHITECTURES[name]).parameters if p != "self"]


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Build architecture ``name`` from ``config``; raise :class:`HecktorInputError` if bad."""
    if name not in ARCHITECTURES:
        raise HecktorInputError(
            f"unknown architecture {name!r}; valid names: {', '.join(sorted(ARCHITECTURES))}"
        )
    config = dict(config or {})
    valid = config_keys(name)
    unknown = sorted(k for k in config if k not in valid)
    if unknown:
        raise HecktorInputError(
            f"unknown config key(s) {', '.join(map(repr, unknown))} for architecture {name!r}; "
            f"valid keys: {', '.join(valid)}"
        )
    try:
        return ARCHITECTURES[name](**config)
    except (TypeError, ValueError) as exc:
        raise HecktorInputError(f"bad config for architecture {name!r}: {exc}") from None
