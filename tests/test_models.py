"""Networks: shapes, heads, deep supervision, MMPL gate and survival, registry, overfitting."""

from __future__ import annotations

import time

import pytest
import torch

from napari_hecktor.errors import HecktorInputError
from napari_hecktor.models.losses import ODALoss, deep_supervision_loss, logcosh_dice_focal_loss
from napari_hecktor.models.mmpl import MMPLNet, expected_survival_time, survival_curve
from napari_hecktor.models.registry import (
    ARCHITECTURES,
    PAPER_CONFIGS,
    TINY_CONFIGS,
    build_model,
)

torch.set_num_threads(2)
NAMES = sorted(ARCHITECTURES)


def tiny(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, {**TINY_CONFIGS[name], **overrides})


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_forward_all_shapes(name):
    model = tiny(name, deep_supervision=True)
    x = torch.randn(2, 2, 16, 24, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 2, 16, 24, 32)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    out = model.forward_all(x)
    expected = {"seg", "deep_supervision", "features"}
    if name == "mmpl":
        expected |= {"hpv", "survival"}
        assert out["hpv"].shape == (2, 1)
        assert out["survival"].shape == (2, 10)
    assert set(out) == expected
    assert out["seg"].shape == (2, 2, 16, 24, 32)
    assert out["features"].shape == (2, model.feature_dim)
    n_aux = 3 if name == "normresse_unet3p" else 2  # decoder levels 1-2 (+ bottleneck)
    assert len(out["deep_supervision"]) == n_aux
    assert all(a.shape == (2, 2, 16, 24, 32) for a in out["deep_supervision"])
    model.eval()  # deep supervision is still returned in eval mode
    with torch.no_grad():
        out_eval = model.forward_all(x)
        assert len(out_eval["deep_supervision"]) == n_aux
        torch.testing.assert_close(model.features(x), out_eval["features"])
        torch.testing.assert_close(model(x), out_eval["seg"])


@pytest.mark.parametrize("name", NAMES)
def test_forward_runs_no_auxiliary_head(name):
    model = tiny(name, deep_supervision=True)
    heads = list(model.ds_heads)
    if name == "mmpl":
        heads += [model.hpv_head, model.survival_head]
    called = []
    for head in heads:
        head.register_forward_hook(lambda *args: called.append(1))
    model(torch.randn(1, 2, 16, 16, 16))
    assert called == []
    model.forward_all(torch.randn(1, 2, 16, 16, 16))
    assert len(called) == len(heads)


@pytest.mark.parametrize("name", NAMES)
def test_deep_supervision_enters_the_loss(name):
    model = tiny(name, deep_supervision=True)
    x = torch.randn(1, 2, 16, 16, 16)
    target = (torch.rand(1, 2, 16, 16, 16) > 0.8).float()
    out = model.forward_all(x)
    deep_supervision_loss(logcosh_dice_focal_loss, out, target).backward()
    for param in model.ds_heads.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0
    # main output alone: the deep-supervision heads get no gradient
    model.zero_grad(set_to_none=True)
    out = model.forward_all(x)
    weights = [1.0] + [0.0] * len(out["deep_supervision"])
    deep_supervision_loss(logcosh_dice_focal_loss, out, target, weights).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.ds_heads.parameters())


@pytest.mark.parametrize(
    "name, overrides",
    [("normresse_unet3p", {"block_style": "two_conv", "filters": [4, 8, 16],
                           "blocks_per_level": [2, 1, 1], "first_kernel": 7}),
     ("mmpl", {"norm": "instance", "deep_supervision": True, "out_channels": 1})],
    ids=["normresse-two_conv-3-levels", "mmpl-instance-norm-1-channel"],
)
def test_configuration_variants(name, overrides):
    model = tiny(name, **overrides)
    x = torch.randn(1, 2, 16, 16, 16)
    out = model.forward_all(x)
    channels = overrides.get("out_channels", 2)
    assert out["seg"].shape == (1, channels, 16, 16, 16)
    assert all(a.shape == out["seg"].shape for a in out["deep_supervision"])
    deep_supervision_loss(logcosh_dice_focal_loss, out, torch.zeros_like(out["seg"])).backward()


def test_normresse_deep_features_are_pooled_bottleneck():
    model = tiny("normresse_unet3p").eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        bottleneck = model.encode(x)[-1]
        assert model.features(x).shape == (1, 32)
        torch.testing.assert_close(model.features(x), bottleneck.mean(dim=(2, 3, 4)))


def test_mmpl_gates_start_at_one_half():
    model = tiny("mmpl")
    assert len(model.gates) == 4
    for gate, width in zip(model.gates, (8, 16, 32, 64), strict=True):
        a, b = torch.randn(1, width, 4, 4, 4), 5 * torch.randn(1, width, 4, 4, 4)
        w_a, w_b = gate.weights(a, b)
        assert torch.equal(w_a, torch.full_like(a, 0.5))
        assert torch.equal(w_b, torch.full_like(a, 0.5))
        torch.testing.assert_close(gate(a, b), (a + b) / 2)


def test_mmpl_pools_four_decoder_scales_in_paper_config():
    model = MMPLNet()  # paper widths: 128 + 64 + 32 + 16 pooled values
    assert model.pooled_levels == (3, 2, 1, 0)
    assert model.feature_dim == 240
    assert model.survival_head[1].in_features == 240
    assert model.survival_head[1].out_features == 128
    assert model.survival_head[-1].out_features == 10


def test_mmpl_survival_head_and_expected_time():
    model = tiny("mmpl").eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(3, 2, 16, 16, 16))
    s = out["survival"]
    assert s.shape == (3, 10) and bool(((s > 0) & (s < 1)).all())
    t = model.expected_survival_time(s)
    assert t.shape == (3,) and bool(((t > 0) & (t < 6000)).all())
    # by hand: widths 300, 300, 300, 200, 200, 200, 600, 600, 800, 2500
    assert expected_survival_time(torch.ones(1, 10)).item() == pytest.approx(6000)
    half = torch.tensor([[0.5] + [1.0] * 9])
    assert expected_survival_time(half).item() == pytest.approx(3000)
    first = torch.tensor([[1.0, 0.5] + [1.0] * 8])
    assert expected_survival_time(first).item() == pytest.approx(300 + 0.5 * 5700)
    torch.testing.assert_close(survival_curve(torch.tensor([[0.5, 0.5, 0.8]])),
                               torch.tensor([[0.5, 0.25, 0.2]]))
    with pytest.raises(ValueError, match="intervals"):
        expected_survival_time(torch.ones(1, 3))


def test_input_size_and_channels_checked():
    model = tiny("normresse_unet3p")
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 2, 20, 16, 16))
    with pytest.raises(ValueError, match="PET, CT"):
        model(torch.randn(1, 1, 16, 16, 16))


def test_sliding_window_inference_calls_forward():
    from monai.inferers import sliding_window_inference

    model = tiny("normresse_unet3p", deep_supervision=False).eval()
    with torch.no_grad():
        out = sliding_window_inference(torch.randn(1, 2, 24, 40, 24), (16, 32, 16), 2, model)
    assert out.shape == (1, 2, 24, 40, 24)


def test_registry_errors_are_clear():
    with pytest.raises(HecktorInputError, match="valid names: mmpl, normresse_unet3p"):
        build_model("unet", {})
    with pytest.raises(HecktorInputError, match="'filterz'.*valid keys: in_channels"):
        build_model("normresse_unet3p", {"filterz": (4, 8)})
    with pytest.raises(HecktorInputError, match="blocks_per_level needs 4 values"):
        build_model("normresse_unet3p", {"filters": (4, 8, 16, 32)})
    with pytest.raises(HecktorInputError, match="in_channels must be 2"):
        build_model("mmpl", {"in_channels": 3})
    with pytest.raises(HecktorInputError, match="survival_intervals"):
        build_model("mmpl", {"survival_intervals": [0, 300, 200]})


@pytest.mark.parametrize("name", NAMES)
def test_configs_round_trip_through_json(name):
    import json

    model = build_model(name, json.loads(json.dumps(TINY_CONFIGS[name])))
    again = build_model(name, json.loads(json.dumps(model.config)))
    assert again.state_dict().keys() == model.state_dict().keys()
    assert n_params(again) == n_params(model)


def test_parameter_counts_of_paper_and_tiny_configs():
    counts = {(name, kind): n_params(build_model(name, configs[name]))
              for name in NAMES for kind, configs in (("paper", PAPER_CONFIGS),
                                                      ("tiny", TINY_CONFIGS))}
    print("parameter counts:", counts)
    assert 15e6 < counts["normresse_unet3p", "paper"] < 25e6
    assert 15e6 < counts["mmpl", "paper"] < 25e6
    assert counts["normresse_unet3p", "tiny"] < 1e5
    assert counts["mmpl", "tiny"] < 1e6


def blob_pair(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """PET/CT with a large bright 'tumour' sphere and a smaller 'node' sphere, and masks."""
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32),) * 3,
                                      indexing="ij"))

    def ball(centre, radius):
        return ((grid - torch.tensor(centre).view(3, 1, 1, 1)) ** 2).sum(0).le(radius**2).float()

    tumour, node = ball((13.0, 12.0, 13.0), 7.0), ball((21.0, 23.0, 22.0), 4.5)
    g = torch.Generator().manual_seed(0)
    pet = 0.2 * torch.randn(n, n, n, generator=g) + 4 * tumour + 2 * node
    ct = 0.1 * torch.randn(n, n, n, generator=g) + 0.5 * tumour - 0.5 * node
    return torch.stack([pet, ct])[None], torch.stack([tumour, node])[None]


def dice_per_channel(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    pred = (logits > 0).float()
    inter = (pred * target).sum(dim=(0, 2, 3, 4))
    return (2 * inter / (pred.sum(dim=(0, 2, 3, 4)) + target.sum(dim=(0, 2, 3, 4)))).tolist()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, loss_fn",
    [("normresse_unet3p", logcosh_dice_focal_loss), ("mmpl", ODALoss())],
    ids=["normresse_unet3p-logcosh_dice_focal", "mmpl-oda"],
)
def test_tiny_model_overfits_blob_pair(name, loss_fn):
    x, y = blob_pair()
    model = tiny(name)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    start, dice, step = time.perf_counter(), [0.0, 0.0], 0
    for step in range(1, 151):
        model.train()
        loss = deep_supervision_loss(loss_fn, model.forward_all(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                dice = dice_per_channel(model(x), y)
            if min(dice) > 0.9:
                break
    elapsed = time.perf_counter() - start
    print(f"{name}: Dice GTVp {dice[0]:.3f} GTVn {dice[1]:.3f} after {step} steps, {elapsed:.1f} s")
    assert min(dice) > 0.9
