"""MMPL backbone with segmentation, HPV and survival heads (seed 004: Lin et al., HECKTOR 2025).

The backbone is AdaMSS's (Meng et al., npj Precis. Oncol. 2024), as in the authors' public
code:

- PET stream (input channel 0) and CT stream (channel 1): AdaMSS residual blocks
  (conv + batch norm + ReLU units with additive shortcuts; ``convs_per_level`` units,
  2-3-3-4-4) with ``modality_filters`` 8-16-32-64-128, max pooling by 2 between levels.
- Fusion stream, ``fusion_filters`` 16-...-256: at level 0 it starts from cat(PET, CT);
  at every level ``l`` its residual block's output and a 3x3x3 conv unit of
  cat(PET_l, CT_l) are mixed by a :class:`~.blocks.FusionGate3d` (two zero-initialised
  1x1x1 convs and a softmax: 0.5/0.5 at initialisation); the mix is level ``l``'s output
  and, max-pooled, the input of level ``l+1``.
- Decoder: from the coarsest level, four (``levels - 1``) stages of nearest upsampling,
  an additive attention gate on the fusion-stream skip (:class:`~.blocks.AttentionGate3d`,
  gated by the coarser decoder output), concatenation and a residual block.

Heads (hand-written; MONAI has none of these):

- segmentation: 1x1x1 conv on the last decoder stage -> ``out_channels`` logits (sigmoid
  per channel: GTVp, GTVn);
- shared deep features: the global averages of the last conv outputs of the four finest
  decoder scales (1/8, 1/4, 1/2, full), concatenated coarse to fine (240 values in the
  paper's configuration);
- HPV: dropout -> Linear(hidden) -> ReLU -> dropout -> Linear(1) -> one logit;
- survival: the same MLP with ``K = len(survival_intervals) - 1`` outputs and a sigmoid:
  the conditional probability of surviving each interval given survival to its start
  (discrete-time model of Gensheimer & Narasimhan, as in AdaMSS).

Optional deep supervision (not in the paper; off by default): a 1x1x1 conv on each
coarser decoder stage, logits upsampled to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import (
    AttentionGate3d,
    FusionGate3d,
    ResidualConvBlock3d,
    as_int_tuple,
    check_input,
    conv_bn_relu,
    global_average_pool,
    upsample_to,
)

#: Interval breaks in days (AdaMSS / MMPL): 10 intervals from 0 to 6000 days.
DEFAULT_INTERVALS = (0, 300, 600, 900, 1100, 1300, 1500, 2100, 2700, 3500, 6000)
#: How many of the finest decoder scales feed the HPV and survival heads.
POOLED_SCALES = 4


def check_intervals(intervals: Sequence[float]) -> tuple[float, ...]:
    """Interval breaks as floats; raise ValueError unless >= 2, non-negative, increasing."""
    breaks = tuple(float(b) for b in intervals)
    if len(breaks) < 2 or breaks[0] < 0 or any(b <= a for a, b in pairwise(breaks)):
        raise ValueError(
            f"survival_intervals must be >= 2 increasing non-negative breaks, got {intervals!r}"
        )
    return breaks


def survival_curve(cond_surv: Tensor) -> Tensor:
    """Cumulative survival ``S_i = prod_{j<=i} s_j`` at the end of each interval, (B, K)."""
    return torch.cumprod(cond_surv, dim=-1)


def expected_survival_time(cond_surv: Tensor, intervals: Sequence[float] = DEFAULT_INTERVALS
                           ) -> Tensor:
    """Expected survival time (B,) in the units of ``intervals`` (days).

    ``T = sum_i S_i * (t_i - t_{i-1})`` with ``S_i = prod_{j<=i} s_j`` the probability of
    surviving to the END of interval ``i`` (seed 004, section 2.5; AdaMSS's
    ``Get_survival_time``): a right-endpoint (lower) Riemann sum of the restricted mean
    survival time up to ``t_K``, so ``0 <= T <= t_K - t_0``.
    """
    breaks = check_intervals(intervals)
    if cond_surv.shape[-1] != len(breaks) - 1:
        raise ValueError(
            f"{cond_surv.shape[-1]} conditional survival values for {len(breaks) - 1} intervals"
        )
    widths = torch.tensor(
        [b - a for a, b in pairwise(breaks)], dtype=cond_surv.dtype,
        device=cond_surv.device,
    )
    return (survival_curve(cond_surv) * widths).sum(dim=-1)


def _mlp(in_features: int, hidden: int, out_features: int, dropout: float) -> nn.Sequential:
    """AdaMSS's shallow head: dropout, dense, ReLU, dropout, dense."""
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(hidden, out_features),
    )


class ModalityEncoder(nn.Module):
    """One single-modality stream: residual blocks with max pooling between levels."""

    def __init__(self, in_channels: int, filters: Sequence[int], convs: Sequence[int],
                 norm: str) -> None:
        super().__init__()
        widths = [in_channels, *filters]
        self.levels = nn.ModuleList(
            ResidualConvBlock3d(widths[i], widths[i + 1], convs[i], norm)
            for i in range(len(filters))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for level, block in enumerate(self.levels):
            if level:
                x = F.max_pool3d(x, kernel_size=2, stride=2)
            x = block(x)
            feats.append(x)
        return feats


class MMPLNet(nn.Module):
    """MMPL network: (B, 2, D, H, W) PET/CT -> segmentation logits; heads via ``forward_all``."""

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        modality_filters: Sequence[int] = (8, 16, 32, 64, 128),
        fusion_filters: Sequence[int] = (16, 32, 64, 128, 256),
        convs_per_level: Sequence[int] = (2, 3, 3, 4, 4),
        survival_intervals: Sequence[float] = DEFAULT_INTERVALS,
        hidden: int = 128,
        dropout: float = 0.5,
        norm: str = "batch",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if int(in_channels) != 2:
            raise ValueError(f"MMPL has one PET and one CT stream: in_channels must be 2, "
                             f"got {in_channels}")
        mod = as_int_tuple(modality_filters, "modality_filters")
        n = len(mod)
        if n < 2:
            raise ValueError("modality_filters needs at least 2 levels")
        fus = as_int_tuple(fusion_filters, "fusion_filters", n)
        convs = as_int_tuple(convs_per_level, "convs_per_level", n)
        breaks = check_intervals(survival_intervals)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if str(norm).lower() not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        norm = str(norm).lower()
        self.config: dict[str, Any] = {
            "in_channels": 2, "out_channels": int(out_channels), "modality_filters": mod,
            "fusion_filters": fus, "convs_per_level": convs, "survival_intervals": breaks,
            "hidden": int(hidden), "dropout": float(dropout), "norm": norm,
            "deep_supervision": bool(deep_supervision),
        }
        self.in_channels = 2
        self.n_levels = n
        self.size_multiple = 2 ** (n - 1)
        self.survival_intervals = breaks
        self.deep_supervision = bool(deep_supervision)

        self.pet_encoder = ModalityEncoder(1, mod, convs, norm)
        self.ct_encoder = ModalityEncoder(1, mod, convs, norm)
        self.cross = nn.ModuleList(
            conv_bn_relu(2 * m, f, 3, norm) for m, f in zip(mod, fus, strict=True)
        )
        widths = [2, *fus]
        self.fusion = nn.ModuleList(
            ResidualConvBlock3d(widths[i], widths[i + 1], convs[i], norm) for i in range(n)
        )
        self.gates = nn.ModuleList(FusionGate3d(f) for f in fus)

        # attention[l] / up_blocks[l] build decoder level l (l = 0 .. n-2) from level l+1
        self.attention = nn.ModuleList(
            AttentionGate3d(fus[i], fus[i + 1], norm) for i in range(n - 1)
        )
        self.up_blocks = nn.ModuleList(
            ResidualConvBlock3d(fus[i] + fus[i + 1], fus[i], convs[i], norm)
            for i in range(n - 1)
        )
        self.head = nn.Conv3d(fus[0], out_channels, kernel_size=1)
        self.pooled_levels = tuple(range(min(POOLED_SCALES, n - 1) - 1, -1, -1))
        self.feature_dim = sum(fus[i] for i in self.pooled_levels)
        self.hpv_head = _mlp(self.feature_dim, hidden, 1, dropout)
        self.survival_head = _mlp(self.feature_dim, hidden, len(breaks) - 1, dropout)
        if self.deep_supervision:
            self.ds_heads = nn.ModuleList(
                nn.Conv3d(fus[i], out_channels, kernel_size=1) for i in range(1, n - 1)
            )

    def encode(self, x: Tensor) -> list[Tensor]:
        """Fusion-stream features per level, finest first (the last is the bottleneck)."""
        check_input(x, self.in_channels, self.size_multiple)
        pet = self.pet_encoder(x[:, 0:1])
        ct = self.ct_encoder(x[:, 1:2])
        feats = []
        h = x
        for level in range(self.n_levels):
            if level:
                h = F.max_pool3d(h, kernel_size=2, stride=2)
            h = self.fusion[level](h)
            cross = self.cross[level](torch.cat([pet[level], ct[level]], dim=1))
            h = self.gates[level](h, cross)
            feats.append(h)
        return feats

    def decode(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Decoder outputs for levels 0 .. n-1 (level n-1 = the bottleneck)."""
        n = self.n_levels
        dec: list[Tensor] = [feats[-1]]
        for level in range(n - 2, -1, -1):
            coarse = dec[0]
            gated = self.attention[level](feats[level], coarse)
            up = F.interpolate(coarse, scale_factor=2, mode="nearest")
            dec.insert(0, self.up_blocks[level](torch.cat([gated, up], dim=1)))
        return dec

    def pool(self, dec: Sequence[Tensor]) -> Tensor:
        """Shared deep features (B, feature_dim): pooled finest decoder scales, coarse first."""
        return torch.cat([global_average_pool(dec[i]) for i in self.pooled_levels], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Segmentation logits (B, out_channels, D, H, W); the MLP heads do not run."""
        return self.head(self.decode(self.encode(x))[0])

    def forward_all(self, x: Tensor) -> dict[str, Any]:
        """``seg``, ``deep_supervision``, ``features``, ``hpv`` (B, 1), ``survival`` (B, K)."""
        dec = self.decode(self.encode(x))
        feats = self.pool(dec)
        aux: list[Tensor] = []
        if self.deep_supervision:
            for head, level in zip(self.ds_heads, dec[1:-1], strict=True):
                aux.append(upsample_to(head(level), x.shape[2:]))
        return {
            "seg": self.head(dec[0]),
            "deep_supervision": aux,
            "features": feats,
            "hpv": self.hpv_head(feats),
            "survival": torch.sigmoid(self.survival_head(feats)),
        }

    def features(self, x: Tensor) -> Tensor:
        """Deep features (B, feature_dim) shared by the HPV and survival heads."""
        return self.pool(self.decode(self.encode(x)))

    def survival_curve(self, cond_surv: Tensor) -> Tensor:
        """Cumulative survival at the end of each of this model's intervals (B, K)."""
        return survival_curve(cond_surv)

    def expected_survival_time(self, cond_surv: Tensor) -> Tensor:
        """Expected survival time (B,) in days over this model's intervals."""
        return expected_survival_time(cond_surv, self.survival_intervals)
