"""Live taps and weights that never see the image (rf_bench.rf.live_weights and LayerRF's live fields), checked
against independent references: the model's own outputs, and a brute-force unfold of an indicator image."""
import random

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

import rf_bench  # noqa: F401  (registers the rfpool models)
from rf_bench.pruning import dead_kept, global_magnitude_masks, live_sparsity, prunable_parameters
from rf_bench.rf import border_layer, dead_weight_share, layer_receptive_fields, live_weights

TINY = dict(width_mult=0.0625, in_chans=1)


def _double_eval(model: nn.Module) -> nn.Module:
    return model.double().eval()


def _stock_timm(name: str) -> nn.Module:
    return timm.create_model(name, num_classes=10)


MODELS = {
    "vgg19_rfpool3": lambda: timm.create_model("vgg19_rfpool3", **TINY),
    "resnet50_rfpool4": lambda: timm.create_model("resnet50_rfpool4", **TINY),
    "resnet18": lambda: _stock_timm("resnet18"),
    "efficientnet_b0": lambda: _stock_timm("efficientnet_b0"),
}


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine terms (a fresh net's are 0/1 and would hide a bias path)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=m.weight.dtype) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))


@pytest.mark.parametrize("name", list(MODELS))
def test_zeroing_every_dead_weight_changes_no_output(name):
    model = _double_eval(MODELS[name]())
    _randomise_norms(model)
    size = (next(model.parameters()).shape[1], 32, 32)
    live = live_weights(model, size)
    dead = sum(int((~m).sum()) for m in live.values())
    assert dead > 0, "each of these nets has weights that never see a 32x32 image"
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        params = dict(model.named_parameters())
        for pname, mask in live.items():
            params[pname].mul_(mask.to(params[pname].dtype))
        after = model(x)
    assert torch.allclose(before, after, rtol=1e-9, atol=1e-9), (before - after).abs().max()


def _output_change(model: nn.Module, weight: torch.Tensor, tap, x) -> float:
    """How much the output moves when one tap of ``weight`` (every channel) is perturbed."""
    with torch.no_grad():
        before = model(x)
        saved = weight[..., tap[0], tap[1]].clone()
        weight[..., tap[0], tap[1]] += 1.0
        after = model(x)
        weight[..., tap[0], tap[1]] = saved
    return float((before - after).abs().max())


@pytest.mark.parametrize("name, layer", [("vgg19_rfpool3", "features.31"), ("resnet50_rfpool4", "layer4.0.conv2"),
                                         ("vgg19_rfpool4", "features.46")])
def test_each_live_tap_of_a_layer_moves_the_output_and_no_dead_one_does(name, layer):
    model = _double_eval(timm.create_model(name, **TINY))
    live = live_weights(model, (1, 32, 32))[f"{layer}.weight"]
    taps = live[0, 0]
    assert taps.any() and not taps.all(), "the layer is chosen to have both kinds of taps"
    weight = dict(model.named_parameters())[f"{layer}.weight"]
    x = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i in range(taps.shape[0]):
        for j in range(taps.shape[1]):
            moved = _output_change(model, weight, (i, j), x)
            assert (moved > 1e-6) == bool(taps[i, j]), ((i, j), moved)


@pytest.mark.parametrize("k, dead32", [(1, 0.0), (2, 0.0), (3, 0.785), (4, 0.785)])
def test_vgg19_dead_share_at_32_and_64_px(k, dead32):
    model = timm.create_model(f"vgg19_rfpool{k}", **TINY)
    assert dead_weight_share(model, (1, 32, 32)) == pytest.approx(dead32, abs=5e-4)
    assert dead_weight_share(model, (1, 64, 64)) == 0.0


def test_resnet50_rfpool4_dead_share_at_32_px():
    model = timm.create_model("resnet50_rfpool4", **TINY)
    assert dead_weight_share(model, (1, 32, 32)) == pytest.approx(0.235, abs=5e-4)
    assert dead_weight_share(timm.create_model("resnet50_rfpool3", **TINY), (1, 32, 32)) == 0.0


def _brute_force_taps(in_hw, kernel, stride, padding, dilation, pre_pad=(0, 0, 0, 0)):
    """Live mask and padding exposure of one conv by unfolding an indicator image (1 on pixels, 0 on padding)."""
    ones = torch.ones(1, 1, *in_hw, dtype=torch.float64)
    ones = F.pad(ones, pre_pad)  # an explicit zero pad before the conv is padding too
    cols = F.unfold(ones, kernel, dilation=dilation, padding=padding, stride=stride)[0]  # (kh*kw, L)
    return (cols > 0).any(dim=1).view(kernel), 1.0 - float(cols.mean())


def test_live_taps_equal_a_brute_force_unfold_on_random_geometries():
    rng = random.Random(0)
    for _ in range(40):
        in_hw = (rng.randint(1, 9), rng.randint(1, 9))
        kernel = (rng.randint(1, 5), rng.randint(1, 5))
        dilation = (rng.randint(1, 2), rng.randint(1, 2))
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        padding = tuple(rng.randint(0, dilation[a] * (kernel[a] - 1)) for a in range(2))
        pre_pad = tuple(rng.randint(0, 2) for _ in range(4))
        padded = (in_hw[0] + pre_pad[2] + pre_pad[3], in_hw[1] + pre_pad[0] + pre_pad[1])
        if any(padded[a] + 2 * padding[a] < dilation[a] * (kernel[a] - 1) + 1 for a in range(2)):
            continue  # no output position
        model = nn.Sequential(nn.ZeroPad2d(pre_pad), nn.Conv2d(1, 2, kernel, stride, padding, dilation))
        rows = [r for r in layer_receptive_fields(model, (1, *in_hw)) if r.op == "Conv2d"]
        expected_mask, expected_exposure = _brute_force_taps(in_hw, kernel, stride, padding, dilation, pre_pad)
        (row,) = rows
        geometry = (in_hw, kernel, stride, padding, dilation, pre_pad)
        assert torch.equal(torch.tensor(row.live_mask), expected_mask), geometry
        assert row.padding_exposure == pytest.approx(expected_exposure, abs=1e-12), geometry
        assert row.live_share == pytest.approx(float(expected_mask.double().mean())), geometry
        assert row.in_shape == padded and row.weight == "1.weight"


def test_padding_that_copies_pixels_keeps_every_tap_live():
    reflect = nn.Conv2d(1, 1, 3, stride=2, padding=1, padding_mode="reflect")
    zeros = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert live_weights(reflect, (1, 2, 2))["weight"].all()
    assert int(live_weights(zeros, (1, 2, 2))["weight"].sum()) == 4  # the top row and left column read padding only
    assert live_weights(nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(1, 1, 3, stride=2)), (1, 2, 2))["1.weight"].all()


def test_border_layer_is_the_first_window_whose_rf_exceeds_the_input():
    model = timm.create_model("vgg19_rfpool3", **TINY)
    rows = layer_receptive_fields(model, (1, 32, 32))
    name = border_layer(rows, (1, 32, 32))
    windows = [r for r in rows if r.in_shape is not None]
    index = [r.name for r in windows].index(name)
    assert windows[index].rf.size > 32 and all(r.rf.size <= 32 for r in windows[:index])
    assert border_layer(rows, (1, 10_000, 10_000)) is None


def test_live_basis_removes_its_count_of_live_weights_and_every_dead_one():
    model = timm.create_model("vgg19_rfpool3", **TINY)
    torch.manual_seed(0)
    for p in model.parameters():  # distinct magnitudes: no ties, so the counts are exact
        p.data = torch.randn_like(p)
    live = {n: m for n, m in live_weights(model, (1, 32, 32)).items() if n in dict(prunable_parameters(model))}
    n_live = sum(int(m.sum()) for m in live.values())
    n_all = sum(m.numel() for m in live.values())
    for rate, masks in global_magnitude_masks(model, [0.5, 0.9], live).items():
        removed_live = sum(int((~masks[n] & live[n]).sum()) for n in live)
        assert removed_live == round(rate * n_live)
        assert all(not (masks[n] & ~live[n]).any() for n in live)  # every dead weight removed
        assert live_sparsity(masks, live) == pytest.approx(round(rate * n_live) / n_live)
        assert dead_kept(masks, live) == 0.0
        # the smallest live weights go first: every kept live weight is at least as large as every removed one
        params = dict(model.named_parameters())
        kept = torch.cat([params[n].detach().abs()[masks[n]] for n in live])
        gone = torch.cat([params[n].detach().abs()[~masks[n] & live[n]] for n in live])
        assert kept.min() >= gone.max()
    paper = global_magnitude_masks(model, [0.9])[0.9]  # the paper's basis: live and dead weights ranked together
    removed = live_sparsity(paper, live) * n_live + (1 - dead_kept(paper, live)) * (n_all - n_live)
    assert removed == pytest.approx(round(0.9 * n_all))
