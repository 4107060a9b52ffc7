"""NormResSE-UNet3+ (seed 000: Bourigault et al., HECKTOR 2021).

Encoder: residual SE-normalisation units (Iantsen et al., HECKTOR 2020), the first with a
``first_kernel`` (7) kernel, ``blocks_per_level`` (2, 3, 3, 3, 3) units per level, filters
24-48-96-192-384, max pooling by 2 between levels.

Decoder: UNet3+ full-scale skips (Huang et al., ICASSP 2020), written by hand (MONAI has
none). Decoder level ``d`` (0 = full resolution, ``n-1`` = the bottleneck, which also counts
as the coarsest decoder level) concatenates ``n`` inputs: encoder levels ``0..d``
(max-pooled down to level ``d``) and decoder levels ``d+1..n-1`` (trilinear up), each
projected by a 3x3x3 SE-norm conv unit to ``skip_channels``; the ``skip_channels * n``
channels are fused by one more 3x3x3 SE-norm conv unit. This follows the paper; the
authors' public code sizes the decoder-to-decoder projections for 6 inputs while feeding
5, and so does not run.

Heads: a 1x1x1 conv on decoder level 0 gives the logits. Deep supervision (UNet3+): a
3x3x3 conv on every coarser decoder level and on the bottleneck, its logits upsampled
(trilinear) to the input size. Deep features (seed 000, for the survival models): the
global average of the bottleneck (5th encoder level), ``filters[-1]`` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import (
    BLOCK_STYLES,
    ResSENormBlock3d,
    SENormConv3d,
    as_int_tuple,
    check_input,
    global_average_pool,
    upsample_to,
)


class UNet3PlusStage(nn.Module):
    """One UNet3+ decoder level: resample n inputs, project each, concatenate, fuse."""

    def __init__(self, level: int, source_channels: Sequence[int], skip_channels: int,
                 reduction: int, norm_first: bool) -> None:
        super().__init__()
        self.level = level
        self.project = nn.ModuleList(
            SENormConv3d(c, skip_channels, 3, reduction, norm_first=norm_first)
            for c in source_channels
        )
        width = skip_channels * len(source_channels)
        self.fuse = SENormConv3d(width, width, 3, reduction, norm_first=norm_first)

    def forward(self, sources: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """``sources[s]`` is the level-``s`` input; ``size`` is this level's spatial size."""
        parts = []
        for s, (x, proj) in enumerate(zip(sources, self.project, strict=True)):
            if s < self.level:
                factor = 2 ** (self.level - s)
                x = F.max_pool3d(x, kernel_size=factor, stride=factor)
            elif s > self.level:
                x = upsample_to(x, tuple(size))
            parts.append(proj(x))
        return self.fuse(torch.cat(parts, dim=1))


class NormResSEUNet3Plus(nn.Module):
    """NormResSE-UNet3+ segmentation network: (B, 2, D, H, W) -> logits (B, C, D, H, W).

    ``block_style`` picks the residual unit (see :class:`ResSENormBlock3d`); the decoder's
    conv units use the same conv/ReLU/SE-norm order.
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        filters: Sequence[int] = (24, 48, 96, 192, 384),
        blocks_per_level: Sequence[int] = (2, 3, 3, 3, 3),
        first_kernel: int = 7,
        se_reduction: int = 2,
        skip_channels: int = 24,
        deep_supervision: bool = True,
        block_style: str = "iantsen",
    ) -> None:
        super().__init__()
        filters = as_int_tuple(filters, "filters")
        n = len(filters)
        if n < 2:
            raise ValueError("filters needs at least 2 levels")
        blocks_per_level = as_int_tuple(blocks_per_level, "blocks_per_level", n)
        if first_kernel < 1 or first_kernel % 2 == 0:
            raise ValueError(f"first_kernel must be odd and positive, got {first_kernel}")
        if block_style not in BLOCK_STYLES:
            raise ValueError(f"block_style must be one of {BLOCK_STYLES}, got {block_style!r}")
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels), "out_channels": int(out_channels),
            "filters": filters, "blocks_per_level": blocks_per_level,
            "first_kernel": int(first_kernel), "se_reduction": int(se_reduction),
            "skip_channels": int(skip_channels), "deep_supervision": bool(deep_supervision),
            "block_style": block_style,
        }
        self.in_channels = int(in_channels)
        self.n_levels = n
        self.size_multiple = 2 ** (n - 1)
        self.deep_supervision = bool(deep_supervision)
        self.feature_dim = filters[-1]

        self.encoder = nn.ModuleList()
        previous = self.in_channels
        for level, (width, count) in enumerate(zip(filters, blocks_per_level, strict=True)):
            units = []
            for i in range(count):
                kernel = first_kernel if (level == 0 and i == 0) else 3
                units.append(ResSENormBlock3d(previous, width, kernel, se_reduction, block_style))
                previous = width
            self.encoder.append(nn.Sequential(*units))

        up_width = skip_channels * n
        norm_first = block_style == "two_conv"
        # decoder[d] builds decoder level d (d = 0 .. n-2); level n-1 is the bottleneck.
        self.decoder = nn.ModuleList()
        for d in range(n - 1):
            sources = [
                filters[s] if (s <= d or s == n - 1) else up_width for s in range(n)
            ]
            self.decoder.append(
                UNet3PlusStage(d, sources, skip_channels, se_reduction, norm_first)
            )
        self.head = nn.Conv3d(up_width, out_channels, kernel_size=1)
        if self.deep_supervision:
            # levels 1 .. n-2 (decoder) then the bottleneck, finest first
            widths = [up_width] * (n - 2) + [filters[-1]]
            self.ds_heads = nn.ModuleList(
                nn.Conv3d(w, out_channels, kernel_size=3, padding=1) for w in widths
            )

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder feature maps, finest first (the last is the bottleneck)."""
        check_input(x, self.in_channels, self.size_multiple)
        feats = []
        for level, stage in enumerate(self.encoder):
            if level:
                x = F.max_pool3d(x, kernel_size=2, stride=2)
            x = stage(x)
            feats.append(x)
        return feats

    def decode(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Decoder feature maps for levels 0 .. n-1 (level n-1 = the bottleneck)."""
        n = self.n_levels
        dec: list[Tensor | None] = [None] * (n - 1) + [feats[-1]]
        for d in range(n - 2, -1, -1):
            sources = [feats[s] if (s <= d or s == n - 1) else dec[s] for s in range(n)]
            dec[d] = self.decoder[d](sources, feats[d].shape[2:])
        return dec  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        """Segmentation logits (B, out_channels, D, H, W); no auxiliary heads run."""
        return self.head(self.decode(self.encode(x))[0])

    def forward_all(self, x: Tensor) -> dict[str, Any]:
        """``seg`` logits, ``deep_supervision`` logits (finest first, input size), ``features``."""
        feats = self.encode(x)
        dec = self.decode(feats)
        aux: list[Tensor] = []
        if self.deep_supervision:
            for head, level in zip(self.ds_heads, dec[1:], strict=True):
                aux.append(upsample_to(head(level), x.shape[2:]))
        return {
            "seg": self.head(dec[0]),
            "deep_supervision": aux,
            "features": global_average_pool(feats[-1]),
        }

    def features(self, x: Tensor) -> Tensor:
        """Deep features (B, filters[-1]): global average of the deepest encoder level."""
        return global_average_pool(self.encode(x)[-1])
