"""Building blocks shared by the segmentation networks (3D, channels-first).

Hand-written here because MONAI has no equivalent:

- :class:`SENorm3d`, squeeze-and-excitation normalisation (Iantsen et al., HECKTOR 2020,
  used by seed 000): ``InstanceNorm(x) * sigmoid(SE_gamma(x)) + tanh(SE_beta(x))``.
- :class:`SENormConv3d` and :class:`ResSENormBlock3d`, the conv unit and residual unit
  built on it.
- :class:`ResidualConvBlock3d`, :class:`FusionGate3d` and :class:`AttentionGate3d`, the
  AdaMSS blocks (Meng et al., npj Precis. Oncol. 2024) that the MMPL backbone (seed 004)
  is made of. MONAI's ``AttentionBlock`` works at the skip's resolution after upsampling
  the gating signal; the AdaMSS/Oktay gate works at the coarse resolution and upsamples
  the mask, so it is written out here.

Conv + batch norm + ReLU units come from :class:`monai.networks.blocks.Convolution`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import Tensor, nn

#: Residual-unit styles of the SE-norm encoder (see :class:`ResSENormBlock3d`).
BLOCK_STYLES = ("iantsen", "two_conv")


class SqueezeExcitation3d(nn.Module):
    """Global average pool -> 1x1x1 conv (C -> C/r) -> ReLU -> 1x1x1 conv (C/r -> C)."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv3d(channels, hidden, kernel_size=1)
        self.expand = nn.Conv3d(hidden, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """One value per sample and channel, shape (B, C, 1, 1, 1), before any squashing."""
        pooled = x.mean(dim=(2, 3, 4), keepdim=True)
        return self.expand(F.relu(self.reduce(pooled)))


class SENorm3d(nn.Module):
    """SE normalisation: ``IN(x) * sigmoid(SE_gamma(x)) + tanh(SE_beta(x))``.

    Instance norm without affine parameters; the scale and shift are predicted per
    sample and channel from the un-normalised input by two squeeze-excitation branches.
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(channels, affine=False)
        self.gamma = SqueezeExcitation3d(channels, reduction)
        self.beta = SqueezeExcitation3d(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        gamma = torch.sigmoid(self.gamma(x))
        beta = torch.tanh(self.beta(x))
        return self.norm(x) * gamma + beta


class SENormConv3d(nn.Module):
    """Conv (bias) followed by ReLU and SE norm.

    ``norm_first=False`` (Iantsen's order, also seed 000's code): conv -> ReLU -> SE norm.
    ``norm_first=True``: conv -> SE norm -> ReLU. ``act=False`` drops the ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        reduction: int = 2,
        norm_first: bool = False,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = SENorm3d(out_channels, reduction)
        self.norm_first = norm_first
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_first:
            x = self.norm(x)
            return F.relu(x) if self.act else x
        return self.norm(F.relu(x) if self.act else x)


class ResSENormBlock3d(nn.Module):
    """Residual SE-norm unit.

    ``style="iantsen"`` (default; the unit of Iantsen et al.'s public code, which seed 000's
    code reuses): ``y = SENormConv(x) + shortcut(x)``, one conv -> ReLU -> SE norm, shortcut
    identity or (1x1x1 conv -> ReLU -> SE norm) when the channel count changes, no
    activation after the sum.

    ``style="two_conv"`` (ResNet-style): ``y = ReLU(SEN(conv(ReLU(SEN(conv(x))))) + s(x))``
    with ``s`` identity or (1x1x1 conv -> SE norm).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        reduction: int = 2,
        style: str = "iantsen",
    ) -> None:
        super().__init__()
        if style not in BLOCK_STYLES:
            raise ValueError(f"block style must be one of {BLOCK_STYLES}, not {style!r}")
        self.style = style
        if style == "iantsen":
            self.body: nn.Module = SENormConv3d(in_channels, out_channels, kernel_size, reduction)
            projection = SENormConv3d(in_channels, out_channels, 1, reduction)
        else:
            self.body = nn.Sequential(
                SENormConv3d(in_channels, out_channels, kernel_size, reduction, norm_first=True),
                SENormConv3d(out_channels, out_channels, 3, reduction, norm_first=True,
                             act=False),
            )
            projection = SENormConv3d(in_channels, out_channels, 1, reduction, norm_first=True,
                                      act=False)
        self.shortcut: nn.Module = (
            projection if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x) + self.shortcut(x)
        return F.relu(y) if self.style == "two_conv" else y


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3,
                 norm: str = "batch") -> Convolution:
    """MONAI conv -> norm -> ReLU ('same' padding), the AdaMSS ``Conv_block``."""
    return Convolution(3, in_channels, out_channels, kernel_size=kernel_size, act="relu",
                       norm=norm, adn_ordering="NDA")


class ResidualConvBlock3d(nn.Module):
    """AdaMSS residual block: ``n_convs`` conv-norm-ReLU units with additive shortcuts.

    ``y0 = unit(x) + unit_1x1(x)``; then ``y_k = unit_k(y_{k-1}) + y_{k-1}``.
    """

    def __init__(self, in_channels: int, out_channels: int, n_convs: int = 2,
                 norm: str = "batch") -> None:
        super().__init__()
        if n_convs < 1:
            raise ValueError(f"a residual block needs at least one conv, got {n_convs}")
        self.shortcut = conv_bn_relu(in_channels, out_channels, 1, norm)
        self.first = conv_bn_relu(in_channels, out_channels, 3, norm)
        self.rest = nn.ModuleList(
            conv_bn_relu(out_channels, out_channels, 3, norm) for _ in range(n_convs - 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.first(x) + self.shortcut(x)
        for unit in self.rest:
            y = unit(y) + y
        return y


class FusionGate3d(nn.Module):
    """Learned voxel- and channel-wise softmax mix of two feature maps of equal shape.

    ``w_a, w_b = softmax(conv_a(cat(a, b)), conv_b(cat(a, b)))``; output ``a*w_a + b*w_b``.
    Both 1x1x1 convs start at zero (weights and biases), so the mix starts at exactly
    0.5/0.5.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.to_a = nn.Conv3d(2 * channels, channels, kernel_size=1)
        self.to_b = nn.Conv3d(2 * channels, channels, kernel_size=1)
        for conv in (self.to_a, self.to_b):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def weights(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """The two mixing maps (each the shape of ``a``; they sum to one)."""
        both = torch.cat([a, b], dim=1)
        w = torch.softmax(torch.stack([self.to_a(both), self.to_b(both)]), dim=0)
        return w[0], w[1]

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        w_a, w_b = self.weights(a, b)
        return a * w_a + b * w_b


class AttentionGate3d(nn.Module):
    """Additive attention gate (Oktay et al. 2018, in AdaMSS's form) on a skip connection.

    The gating signal ``g`` has half the skip's resolution. Both are projected by
    1x1x1 conv + norm to the skip's channel count (the skip then average-pooled by 2),
    summed, ReLU, 1x1x1 conv + norm to one map, sigmoid, trilinear upsampling by 2;
    the skip is multiplied by that mask.
    """

    def __init__(self, skip_channels: int, gate_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.gate = Convolution(3, gate_channels, skip_channels, kernel_size=1, act=None,
                                norm=norm)
        self.skip = Convolution(3, skip_channels, skip_channels, kernel_size=1, act=None,
                                norm=norm)
        self.psi = Convolution(3, skip_channels, 1, kernel_size=1, act=None, norm=norm)

    def mask(self, skip: Tensor, g: Tensor) -> Tensor:
        """Attention coefficients in (0, 1) at the skip's resolution, shape (B, 1, ...)."""
        coarse = F.avg_pool3d(self.skip(skip), kernel_size=2)
        alpha = torch.sigmoid(self.psi(F.relu(coarse + self.gate(g))))
        return F.interpolate(alpha, size=skip.shape[2:], mode="trilinear", align_corners=True)

    def forward(self, skip: Tensor, g: Tensor) -> Tensor:
        return skip * self.mask(skip, g)


def upsample_to(x: Tensor, size: torch.Size | tuple[int, ...]) -> Tensor:
    """Trilinear resize of a (B, C, D, H, W) tensor to spatial ``size``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


def global_average_pool(x: Tensor) -> Tensor:
    """(B, C, D, H, W) -> (B, C)."""
    return x.mean(dim=(2, 3, 4))


def check_input(x: Tensor, in_channels: int, size_multiple: int) -> None:
    """Raise ValueError unless ``x`` is (B, in_channels, D, H, W) with sizes divisible."""
    if x.ndim != 5 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected a (B, {in_channels}, D, H, W) tensor (PET, CT), got {tuple(x.shape)}"
        )
    if any(s % size_multiple for s in x.shape[2:]):
        raise ValueError(
            f"spatial size {tuple(x.shape[2:])} must be divisible by {size_multiple} "
            f"(2 ** (levels - 1)); pad or crop the input"
        )


def as_int_tuple(values: Sequence[int] | int, name: str, length: int | None = None
                 ) -> tuple[int, ...]:
    """Config sequence (tuple, list from JSON) as a tuple of positive ints."""
    if isinstance(values, int):
        values = (values,)
    out = tuple(int(v) for v in values)
    if not out or any(v < 1 for v in out):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} needs {length} values (one per level), got {len(out)}")
    return out
