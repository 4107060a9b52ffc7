"""Segmentation and survival losses of the two papers; sigmoid outputs, multi-label targets.

Shapes: logits and targets (B, C, D, H, W) (any number of spatial dims), targets in {0, 1},
one independent sigmoid per channel (GTVp, GTVn; or GTVt alone). Sums written ``<a, b>``
run over one sample's voxels of one channel.

Written by hand (each a few lines) so that every formula is the paper's; MONAI's
``DiceLoss(sigmoid=True, smooth_nr=s, smooth_dr=s)`` computes the same Dice terms and the
tests check that they agree.

- Seed 000 (Bourigault et al.): :func:`soft_dice_loss` (eq. 1), :func:`focal_loss`
  (eq. 2, with both terms, see there), :func:`logcosh_dice_focal_loss` (eq. 3).
- Seed 004 (Lin et al.): :class:`ODALoss` (eqs. 1-3), the discrete-time survival
  likelihood :func:`discrete_survival_nll` (Gensheimer & Narasimhan 2019, as in AdaMSS).
- :func:`deep_supervision_loss`: main plus weighted auxiliary outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mmpl import DEFAULT_INTERVALS, check_intervals


def _sum(x: Tensor) -> Tensor:
    """Sum over the spatial dims: (B, C, ...) -> (B, C)."""
    return x.flatten(2).sum(dim=2)


def soft_dice_loss(probs: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Seed 000 eq. (1): ``1 - (2<y, p> + s) / (<y, 1> + <p, 1> + s)``, mean over (B, C)."""
    target = target.to(probs.dtype)
    dice = (2 * _sum(target * probs) + smooth) / (_sum(target) + _sum(probs) + smooth)
    return (1 - dice).mean()


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    from_logits: bool = True,
) -> Tensor:
    """Binary focal loss (Lin et al. 2017), mean over all voxels and channels.

    ``-[y (1-p)^g ln p + (1-y) p^g ln(1-p)]``. Seed 000's eq. (2) prints only the first
    (positive) term, which alone rewards predicting 1 everywhere; we use the standard
    two-term form that eq. (2) abbreviates. ``alpha`` (None: unweighted, as in eq. 2)
    weights the positive term by ``alpha`` and the negative by ``1 - alpha``. Pass
    probabilities with ``from_logits=False`` (clamped to [1e-7, 1 - 1e-7]).
    """
    target = target.to(logits.dtype)
    if from_logits:
        p = torch.sigmoid(logits)
        log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    else:
        p = logits.clamp(1e-7, 1 - 1e-7)
        log_p, log_q = torch.log(p), torch.log1p(-p)
    pos = target * (1 - p) ** gamma * log_p
    neg = (1 - target) * p**gamma * log_q
    if alpha is not None:
        pos, neg = alpha * pos, (1 - alpha) * neg
    return -(pos + neg).mean()


def logcosh_dice_focal_loss(logits: Tensor, target: Tensor, smooth: float = 1.0,
                            gamma: float = 2.0) -> Tensor:
    """Seed 000 eq. (3): ``log(cosh(DiceLoss)) + FocalLoss``.

    ``DiceLoss`` is :func:`soft_dice_loss` (already averaged over samples and channels,
    then log-cosh'ed); ``FocalLoss`` is :func:`focal_loss` with ``gamma``.
    """
    dice = soft_dice_loss(torch.sigmoid(logits), target, smooth)
    return torch.log(torch.cosh(dice)) + focal_loss(logits, target, gamma)


class LogCoshDiceFocalLoss(nn.Module):
    """Module form of :func:`logcosh_dice_focal_loss` (seed 000's training loss)."""

    def __init__(self, smooth: float = 1.0, gamma: float = 2.0) -> None:
        super().__init__()
        self.smooth, self.gamma = float(smooth), float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return logcosh_dice_focal_loss(logits, target, self.smooth, self.gamma)


#: Seed 004's (alpha, beta, gamma) per class: GTVp near-symmetric, GTVn recall-biased.
ODA_PARAMS: tuple[tuple[float, float, float], ...] = ((0.5, 0.5, 1.33), (0.3, 0.7, 1.5))


class ODALoss(nn.Module):
    """Overlap-Detection-Aware loss (seed 004, eqs. 1-3) on logits.

    For each class ``c`` with ``(alpha_c, beta_c, gamma_c)``:
    ``Dice(y, p) + (1 - TI)^gamma_c + BCE(y, p) + Dice(1 - y, 1 - p)``, where
    ``Dice(y, p) = 1 - (2<y,p> + eps) / (<y,1> + <p,1> + eps)``,
    ``TI = (TP + eps) / (TP + alpha FP + beta FN + eps)``, ``TP = <y,p>``,
    ``FP = <1-y,p>``, ``FN = <y,1-p>`` and ``BCE`` the voxel mean of binary cross-entropy.
    The last two terms are the stabiliser L_stab. Every term is computed per sample, the
    class terms are summed (eq. 1 sums over classes) and the result is averaged over the
    batch.
    """

    def __init__(self, params: Sequence[Sequence[float]] = ODA_PARAMS, eps: float = 1e-5,
                 stabiliser: bool = True) -> None:
        super().__init__()
        rows = [tuple(float(v) for v in row) for row in params]
        if not rows or any(len(r) != 3 for r in rows):
            raise ValueError(f"ODA params must be (alpha, beta, gamma) per class, got {params!r}")
        self.params = tuple(rows)
        self.eps = float(eps)
        self.stabiliser = bool(stabiliser)

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each term per sample and class, (B, C): ``dice``, ``focal_tversky``, ``bce``,
        ``inverse_dice``."""
        n_classes = logits.shape[1]
        if n_classes != len(self.params):
            raise ValueError(
                f"ODALoss has parameters for {len(self.params)} classes but the logits have "
                f"{n_classes} channels"
            )
        y = target.to(logits.dtype)
        p = torch.sigmoid(logits)
        alpha, beta, gamma = (
            torch.tensor(col, dtype=logits.dtype, device=logits.device)
            for col in zip(*self.params, strict=True)
        )
        eps = self.eps
        tp, fp, fn = _sum(y * p), _sum((1 - y) * p), _sum(y * (1 - p))
        dice = 1 - (2 * tp + eps) / (_sum(y) + _sum(p) + eps)
        tversky = (tp + eps) / (tp + alpha * fp + beta * fn + eps)
        out = {"dice": dice, "focal_tversky": (1 - tversky).clamp(min=0) ** gamma}
        if self.stabiliser:
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            out["bce"] = bce.flatten(2).mean(dim=2)
            out["inverse_dice"] = 1 - (2 * _sum((1 - y) * (1 - p)) + eps) / (
                _sum(1 - y) + _sum(1 - p) + eps
            )
        return out

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        per_sample = sum(t.sum(dim=1) for t in self.terms(logits, target).values())
        return per_sample.mean()  # type: ignore[union-attr]


def deep_supervision_weights(n_aux: int) -> list[float]:
    """Default weights for the main output and ``n_aux`` auxiliary ones: halving, sum 1."""
    raw = [0.5**k for k in range(n_aux + 1)]
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    outputs: dict[str, Any] | Tensor,
    target: Tensor,
    weights: Sequence[float] | None = None,
) -> Tensor:
    """Weighted sum of ``loss_fn`` over ``outputs["seg"]`` and ``outputs["deep_supervision"]``.

    ``weights`` has one value per output, main first (then the auxiliary outputs in the
    network's order, finest first); they are normalised to sum to one. Default:
    1, 1/2, 1/4, ... normalised. A bare tensor is scored alone.
    """
    if isinstance(outputs, Tensor):
        return loss_fn(outputs, target)
    preds = [outputs["seg"], *outputs.get("deep_supervision", [])]
    w = list(weights) if weights is not None else deep_supervision_weights(len(preds) - 1)
    if len(w) != len(preds):
        raise ValueError(f"{len(w)} deep-supervision weights for {len(preds)} outputs "
                         f"(main + {len(preds) - 1} auxiliary)")
    total = float(sum(w))
    if total <= 0 or any(v < 0 for v in w):
        raise ValueError(f"deep-supervision weights must be >= 0 with a positive sum, got {w}")
    terms = [(v / total) * loss_fn(p, target) for v, p in zip(w, preds, strict=True)]
    return torch.stack(terms).sum()


def survival_targets(time: Tensor | Sequence[float], event: Tensor | Sequence[float],
                     breaks: Sequence[float] = DEFAULT_INTERVALS) -> Tensor:
    """Gensheimer's (N, 2K) target: [survived interval i | event in interval i].

    An event at ``t`` survives the intervals that end at or before ``t`` and fails in the
    interval containing ``t`` (none if ``t`` is past the last break). A censored time
    gets credit for the intervals whose midpoint it reached.
    """
    b = torch.tensor(check_intervals(breaks), dtype=torch.float64)
    t = torch.as_tensor(time, dtype=torch.float64).reshape(-1, 1)
    e = torch.as_tensor(event).reshape(-1, 1).bool()
    ends, mids = b[1:], (b[:-1] + b[1:]) / 2
    survived = torch.where(e, t >= ends, t >= mids)
    failed = e & (t < ends) & (t >= b[:-1])
    return torch.cat([survived, failed], dim=1).float()


def discrete_survival_nll(
    cond_surv: Tensor,
    time: Tensor | Sequence[float],
    event: Tensor | Sequence[float],
    breaks: Sequence[float] = DEFAULT_INTERVALS,
    eps: float = 1e-5,
) -> Tensor:
    """Censoring-aware discrete-time negative log-likelihood (seed 004, section 2.5).

    ``-sum_i [ln(1 + surv_i (s_i - 1)) + ln(1 - fail_i s_i)]`` per patient (probabilities
    clamped at ``eps``), averaged over patients. AdaMSS averages over the 2K terms
    instead of summing, which only rescales the loss by 1/K.
    """
    y = survival_targets(time, event, breaks).to(cond_surv)
    k = cond_surv.shape[1]
    if y.shape[1] != 2 * k:
        raise ValueError(f"{k} conditional survival values for {y.shape[1] // 2} intervals")
    surv, fail = y[:, :k], y[:, k:]
    ll = torch.log((1 + surv * (cond_surv - 1)).clamp(min=eps)) + torch.log(
        (1 - fail * cond_surv).clamp(min=eps)
    )
    return -ll.sum(dim=1).mean()
