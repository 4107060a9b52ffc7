"""Losses against values worked out by hand on 2x2 volumes."""

from __future__ import annotations

import math

import pytest
import torch

from napari_hecktor.models.losses import (
    ODALoss,
    deep_supervision_loss,
    deep_supervision_weights,
    discrete_survival_nll,
    focal_loss,
    logcosh_dice_focal_loss,
    soft_dice_loss,
    survival_targets,
)

torch.set_num_threads(2)


def vol(*rows: list[float]) -> torch.Tensor:
    """(1, C, 1, 2, 2) from one flat list of 4 values per channel."""
    return torch.tensor(rows, dtype=torch.float64).reshape(1, len(rows), 1, 2, 2)


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


P = vol([0.9, 0.2, 0.6, 0.1])
Y = vol([1, 0, 1, 0])


def test_soft_dice_by_hand():
    # <y,p> = 0.9 + 0.6 = 1.5; sum y = 2; sum p = 1.8
    expected = 1 - (2 * 1.5 + 1) / (2 + 1.8 + 1)
    assert soft_dice_loss(P, Y).item() == pytest.approx(expected)
    assert soft_dice_loss(P, Y, smooth=0.0).item() == pytest.approx(1 - 3.0 / 3.8)


def test_soft_dice_per_channel_mean_and_empty_channel():
    # channel 1: empty target, empty prediction -> 1 - (0 + 1) / (0 + 0 + 1) = 0
    probs = torch.cat([P, torch.zeros_like(P)], dim=1)
    target = torch.cat([Y, torch.zeros_like(Y)], dim=1)
    assert soft_dice_loss(probs, target).item() == pytest.approx((1 - 4 / 4.8 + 0) / 2)


def test_soft_dice_perfect_is_zero_and_matches_monai():
    from monai.losses import DiceLoss

    assert soft_dice_loss(Y, Y).item() == pytest.approx(0.0, abs=1e-12)
    logits = logit(P)
    monai = DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)(logits, Y)
    assert soft_dice_loss(torch.sigmoid(logits), Y).item() == pytest.approx(monai.item())


def test_focal_by_hand_both_terms():
    # -[y (1-p)^2 ln p + (1-y) p^2 ln(1-p)], voxel mean
    terms = [
        -(0.1**2) * math.log(0.9),  # y=1, p=0.9
        -(0.2**2) * math.log(0.8),  # y=0, p=0.2
        -(0.4**2) * math.log(0.6),  # y=1, p=0.6
        -(0.1**2) * math.log(0.9),  # y=0, p=0.1
    ]
    expected = sum(terms) / 4
    assert focal_loss(P, Y, from_logits=False).item() == pytest.approx(expected)
    assert focal_loss(logit(P), Y).item() == pytest.approx(expected)
    alpha = (0.25 * (terms[0] + terms[2]) + 0.75 * (terms[1] + terms[3])) / 4
    assert focal_loss(logit(P), Y, alpha=0.25).item() == pytest.approx(alpha)


def test_focal_matches_monai_sigmoid_focal():
    from monai.losses import FocalLoss

    logits = logit(P)
    monai = FocalLoss(gamma=2.0, use_softmax=False)(logits, Y)
    assert focal_loss(logits, Y).item() == pytest.approx(monai.item())


def test_logcosh_dice_focal_by_hand():
    dice = 1 - 4 / 4.8
    focal = (
        -(0.1**2) * math.log(0.9) - 0.2**2 * math.log(0.8)
        - 0.4**2 * math.log(0.6) - 0.1**2 * math.log(0.9)
    ) / 4
    expected = math.log(math.cosh(dice)) + focal
    assert logcosh_dice_focal_loss(logit(P), Y).item() == pytest.approx(expected)


def test_logcosh_dice_focal_perfect_is_near_zero():
    logits = 30.0 * (2 * Y - 1)
    assert logcosh_dice_focal_loss(logits, Y).item() == pytest.approx(0.0, abs=1e-9)


# ODA: class 0 (GTVp, alpha=beta=0.5, gamma=1.33), class 1 (GTVn, 0.3/0.7, gamma=1.5)
ODA_P = vol([0.9, 0.6, 0.2, 0.1], [0.3, 0.4, 0.2, 0.1])
ODA_Y = vol([1, 1, 0, 0], [0, 1, 0, 0])


def oda_by_hand(eps: float = 1e-5) -> dict[str, list[float]]:
    # class 0: TP = .9+.6 = 1.5, FP = .2+.1 = .3, FN = .1+.4 = .5, sum y = 2, sum p = 1.8
    dice0 = 1 - (2 * 1.5 + eps) / (2 + 1.8 + eps)
    ti0 = (1.5 + eps) / (1.5 + 0.5 * 0.3 + 0.5 * 0.5 + eps)
    bce0 = -(math.log(0.9) + math.log(0.6) + math.log(0.8) + math.log(0.9)) / 4
    # 1-y = [0,0,1,1], 1-p = [.1,.4,.8,.9]: <1-y,1-p> = 1.7, sum = 2 and 2.2
    inv0 = 1 - (2 * 1.7 + eps) / (2 + 2.2 + eps)
    # class 1: TP = .4, FP = .3+.2+.1 = .6, FN = .6, sum y = 1, sum p = 1.0
    dice1 = 1 - (2 * 0.4 + eps) / (1 + 1.0 + eps)
    ti1 = (0.4 + eps) / (0.4 + 0.3 * 0.6 + 0.7 * 0.6 + eps)
    bce1 = -(math.log(0.7) + math.log(0.4) + math.log(0.8) + math.log(0.9)) / 4
    # 1-y = [1,0,1,1], 1-p = [.7,.6,.8,.9]: <1-y,1-p> = 2.4, sums 3 and 3.0
    inv1 = 1 - (2 * 2.4 + eps) / (3 + 3.0 + eps)
    return {
        "dice": [dice0, dice1],
        "focal_tversky": [(1 - ti0) ** 1.33, (1 - ti1) ** 1.5],
        "bce": [bce0, bce1],
        "inverse_dice": [inv0, inv1],
    }


def test_oda_terms_by_hand():
    loss = ODALoss()
    terms = loss.terms(logit(ODA_P), ODA_Y)
    expected = oda_by_hand()
    assert set(terms) == set(expected)
    for key, values in expected.items():
        assert terms[key][0].tolist() == pytest.approx(values, rel=1e-9), key
    total = sum(sum(v) for v in expected.values())
    assert loss(logit(ODA_P), ODA_Y).item() == pytest.approx(total)


def test_oda_tversky_parameters_are_per_class():
    # swapping the classes' parameters changes only the focal Tversky terms
    swapped = ODALoss(params=((0.3, 0.7, 1.5), (0.5, 0.5, 1.33)))
    terms = swapped.terms(logit(ODA_P), ODA_Y)
    ti0 = 1.5 / (1.5 + 0.3 * 0.3 + 0.7 * 0.5)
    ti1 = 0.4 / (0.4 + 0.5 * 0.6 + 0.5 * 0.6)
    assert terms["focal_tversky"][0].tolist() == pytest.approx(
        [(1 - ti0) ** 1.5, (1 - ti1) ** 1.33], rel=1e-4
    )
    assert terms["dice"][0].tolist() == pytest.approx(oda_by_hand()["dice"])


def test_oda_without_stabiliser_and_batch_mean():
    plain = ODALoss(stabiliser=False)
    expected = oda_by_hand()
    value = sum(expected["dice"]) + sum(expected["focal_tversky"])
    assert plain(logit(ODA_P), ODA_Y).item() == pytest.approx(value)
    # per-sample losses averaged over the batch
    other_p, other_y = ODA_P.flip(-1), ODA_Y.roll(1, dims=-1)
    batch = ODALoss()(logit(torch.cat([ODA_P, other_p])), torch.cat([ODA_Y, other_y]))
    single = (ODALoss()(logit(ODA_P), ODA_Y) + ODALoss()(logit(other_p), other_y)) / 2
    assert batch.item() == pytest.approx(single.item())


def test_oda_perfect_prediction_is_near_zero():
    logits = 30.0 * (2 * ODA_Y - 1)
    assert ODALoss()(logits, ODA_Y).item() == pytest.approx(0.0, abs=1e-6)


def test_oda_checks_class_count():
    with pytest.raises(ValueError, match="2 classes"):
        ODALoss()(logit(P), Y)
    assert ODALoss(params=((0.5, 0.5, 1.33),))(logit(P), Y).item() > 0


def test_deep_supervision_weighting():
    def loss_fn(pred, target):
        return pred.mean()  # the loss of an output is its value

    outputs = {"seg": torch.full((1, 1, 2, 2, 2), 1.0),
               "deep_supervision": [torch.full((1, 1, 2, 2, 2), 2.0),
                                    torch.full((1, 1, 2, 2, 2), 4.0)]}
    target = torch.zeros(1, 1, 2, 2, 2)
    # default weights 1, 1/2, 1/4 normalised by 1.75
    assert deep_supervision_weights(2) == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75])
    expected = (1 * 1.0 + 0.5 * 2.0 + 0.25 * 4.0) / 1.75
    assert deep_supervision_loss(loss_fn, outputs, target).item() == pytest.approx(expected)
    custom = (2 * 1.0 + 1 * 2.0 + 1 * 4.0) / 4
    assert deep_supervision_loss(loss_fn, outputs, target, [2, 1, 1]).item() == pytest.approx(
        custom
    )
    assert deep_supervision_loss(loss_fn, outputs["seg"], target).item() == pytest.approx(1.0)
    assert deep_supervision_loss(loss_fn, {"seg": outputs["seg"], "deep_supervision": []},
                                 target).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 outputs"):
        deep_supervision_loss(loss_fn, outputs, target, [1, 1])


def test_survival_targets_and_nll_by_hand():
    breaks = (0, 10, 20, 30)
    # event at 15: survived interval [0,10), fails in [10,20)
    # censored at 16: credited with the intervals whose midpoint (5, 15, 25) it reached
    y = survival_targets([15, 16], [1, 0], breaks)
    assert y.tolist() == [[1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 0]]
    s = torch.tensor([[0.9, 0.8, 0.7], [0.9, 0.6, 0.5]])
    expected = -((math.log(0.9) + math.log(1 - 0.8)) + (math.log(0.9) + math.log(0.6))) / 2
    assert discrete_survival_nll(s, [15, 16], [1, 0], breaks).item() == pytest.approx(
        expected, rel=1e-6
    )
