"""Analytic receptive fields against closed forms and against measured gradient support."""
import copy
from typing import Tuple

import pytest
import timm
import torch
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.models import RFPOOL_KS
from rf_bench.rf import (RF, block_receptive_fields, gradient_rf, gradient_support, layer_receptive_fields, measure_rf, receptive_field,
                         silenced_parameters)

from conftest import TINY

CLOSED_FORM = {"resnet50_rfpool": lambda k: 105 * k + 2, "vgg19_rfpool": lambda k: 178 * k + 2}


def _measure_size(model, rf):
    return max(rf.size + 2 * rf.stride + 8, 8 * rf.stride)


@pytest.mark.parametrize("family", sorted(CLOSED_FORM))
def test_closed_forms(family):
    for k in RFPOOL_KS:
        model = timm.create_model(f"{family}{k}", width_mult=TINY)
        rf = receptive_field(model, (3, 64, 64))
        assert rf.size == CLOSED_FORM[family](k)
        assert rf.stride == 8 * k


@pytest.mark.parametrize("name", [f"{f}{k}" for f in sorted(CLOSED_FORM) for k in RFPOOL_KS])
def test_gradient_rf_equals_analytic_on_rfpool_models(name):
    model = timm.create_model(name, width_mult=TINY)
    rf = receptive_field(model, (3, 64, 64))
    size = _measure_size(model, rf)
    assert gradient_rf(model, (3, size, size)) == rf.size


STOCK = [
    ("resnet18", dict(zero_init_last=False), None),
    ("resnet50", dict(zero_init_last=False), None),
    ("vgg11_bn", {}, None),
    ("densenet121", {}, "features.denseblock2"),  # concatenations; the full net's RF (2071) is too big to measure here
    ("resnet18", dict(output_stride=8, zero_init_last=False), None),  # dilated convs
    ("mobilenetv2_050", {}, None),  # depthwise convs
]


@pytest.mark.parametrize("name, kwargs, layer", STOCK, ids=[f"{n}-{l or kw}" for n, kw, l in STOCK])
def test_gradient_rf_equals_analytic_on_stock_timm_models(name, kwargs, layer):
    model = timm.create_model(name, num_classes=0, **kwargs)
    rf = receptive_field(model, (3, 64, 64), layer=layer)
    size = rf.size + 2 * rf.stride + 8
    assert gradient_rf(model, (3, size, size), layer=layer, n=2) == rf.size


class _Branchy(nn.Module):
    """Odd kernels, paddings, dilations, pools and a concat of branches with different RFs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 5, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, dilation=2)
        self.a = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.b = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(4, 4, 1))
        self.c = nn.Conv2d(4, 4, (5, 5), padding="same")
        self.head = nn.Conv2d(12, 6, 3, stride=2)

    def forward_features(self, x):
        x = torch.relu(self.pool(self.stem(x)))
        x = torch.cat([self.a(x), self.b(x), self.c(x)], dim=1)
        return self.head(x)


def _expected_rows(rf: RF, unit: int):
    centre = rf.offset + unit * rf.stride
    return centre - (rf.size - 1) / 2, centre + (rf.size - 1) / 2


def test_offset_and_size_match_gradient_support_on_a_branchy_net():
    model = _Branchy()
    rf = receptive_field(model, (1, 80, 80))
    (top, bottom), (left, right), (i, j) = gradient_support(model, (1, 80, 80))
    assert (top, bottom) == _expected_rows(rf, i)
    assert (left, right) == _expected_rows(rf, j)
    # by hand: stem 5 (jump 2, offset 1); pool k_eff 5 -> 13 (jump 4, offset 3); branches a, c -> 29,
    # b -> 21, union 29; head 3x3/2 -> 29 + 2 * 4 = 37 (jump 8, offset 3 + 1 * 4)
    assert rf == RF(size=37, stride=8, offset=7.0)


def test_residual_union_and_named_layers():
    model = timm.create_model("resnet50_rfpool2", width_mult=TINY)
    assert receptive_field(model, (3, 64, 64), layer="layer1").size == 7 * 2 + 2
    assert receptive_field(model, (3, 64, 64), layer="layer2.0.downsample").size == 7 * 2 + 2  # a 1x1 conv adds nothing
    table = {row.name: row.rf.size for row in layer_receptive_fields(model, (3, 64, 64))}
    assert table["conv1"] == 3 and table["rfpool"] == 4 and table["layer4.2.act3"] == 212


def test_errors():
    model = timm.create_model("resnet50_rfpool2", width_mult=TINY)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        receptive_field(model, (3, 32, 32), layer="nope")
    with pytest.raises(ValueError, match="reaches the border"):
        gradient_rf(model, (3, 64, 64))  # the RF is 212 px
    with pytest.raises(ValueError, match="use k <= 4"):
        receptive_field(timm.create_model("vgg19_rfpool6", width_mult=TINY), (3, 32, 32))
    with pytest.raises(ValueError, match="global pooling"):
        receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), (3, 16, 16))


# stock timm CNNs as timm builds them (zero_init_last, layer scales at 1e-6): (model, layer, global-context gates)
MODERN = [
    ("efficientnet_b0", None, True),  # squeeze-excitation, depthwise convs, SiLU
    ("mobilenetv3_large_100", None, True),  # hard-sigmoid SE gates
    ("regnety_008", None, True),  # SE gates, grouped convs, zero-initialised last BNs
    ("resnet18", None, False),  # zero-initialised last BNs
    ("convnext_tiny", "stages.1", False),  # channels-last LayerNorm and MLP (permutes), layer scales at 1e-6
    ("poolformerv2_s12", None, True),  # GroupNorm(1): statistics over the whole map
    ("efficientnet_cc_b0_4e", None, True),  # CondConv: a global summary picks each conv's weights
    ("nf_resnet26", None, False),  # a block timm keeps opaque to fx, traced into
]


@pytest.mark.parametrize("name, layer, gated", MODERN, ids=[m[0] for m in MODERN])
def test_modern_timm_cnns_analytic_rf_equals_the_gradient(name, layer, gated):
    model = timm.create_model(name, num_classes=0).eval()
    rf = receptive_field(model, (3, 224, 224), layer=layer)
    assert rf.global_context is gated
    size = rf.size + 2 * rf.stride + 8
    measured = measure_rf(model, (3, size, size), layer=layer, n=2)
    assert measured.size == rf.size and measured.local is gated


@pytest.mark.slow
def test_convnext_tiny_whole_net_analytic_rf_equals_the_gradient():
    model = timm.create_model("convnext_tiny", num_classes=0).eval()
    rf = receptive_field(model, (3, 224, 224))
    size = rf.size + 2 * rf.stride + 8
    assert measure_rf(model, (3, size, size), n=1).size == rf.size


def test_a_gated_unit_sees_the_whole_input_through_its_gates():
    model = timm.create_model("mobilenetv3_large_100", num_classes=0).eval()
    rf = receptive_field(model, (3, 224, 224), layer="blocks.1")
    size = rf.size + 40
    # eagerly, gates and all, the gradient reaches every pixel: the global context the flag reports
    (top, bottom), (left, right), _ = gradient_support(model, (3, size, size), layer="blocks.3", n=1)
    assert (top, bottom, left, right) == (0, size - 1, 0, size - 1)
    assert not receptive_field(model, (3, 224, 224), layer="blocks.1").global_context  # no SE in the first blocks
    assert receptive_field(model, (3, 224, 224), layer="blocks.3").global_context


def test_gradient_rf_never_measures_a_silenced_network():
    model = timm.create_model("resnet18", num_classes=0).eval()  # zero_init_last: every branch's last BN is 0
    silenced = silenced_parameters(model)
    assert silenced == [f"layer{s}.{b}.bn2.weight" for s in range(1, 5) for b in range(2)]
    (top, bottom), _, _ = gradient_support(model, (3, 512, 512), n=2)
    assert bottom - top + 1 < 435  # as it is, only the shortcuts carry gradient: a wrong, smaller RF
    with pytest.warns(UserWarning, match="8 zero-initialised tensor.*layer1.0.bn2.weight.*re-initialised"):
        assert gradient_rf(model, (3, 512, 512), n=2) == 435
    assert all(float(p.detach().abs().max()) == 0 for n, p in model.named_parameters() if n in silenced)  # the model untouched
    # layer scales at 1e-6 silence too: their product underflows float32 along the RF's edge
    convnext = timm.create_model("convnext_tiny", num_classes=0).eval()
    assert len(silenced_parameters(convnext)) == 18 and all("gamma" in n for n in silenced_parameters(convnext))
    (top, bottom), _, _ = gradient_support(convnext, (3, 248, 248), layer="stages.1", n=2, dtype=torch.float32)
    assert bottom - top + 1 < 224 == measure_rf(convnext, (3, 248, 248), layer="stages.1", n=2).size


def test_the_gradient_is_measured_in_float64_where_float32_underflows():
    """At the edge of a deep RF the gradient is a product of many small weights: 20 convs whose edge taps are
    1e-3 give the outermost rows 1e-60, zero in float32. The default float64 measurement sees the whole
    analytic RF; float32 would not, and the model keeps its own dtype."""
    convs = [nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(20)]
    for conv in convs:
        with torch.no_grad():
            conv.weight.fill_(1e-3)
            conv.weight[..., 1, 1] = 1.0
    model = nn.Sequential(*convs)
    analytic = receptive_field(model, (1, 64, 64), layer="19").size
    assert analytic == 41 == gradient_rf(model, (1, 64, 64), layer="19", n=1)
    (top, bottom), _, _ = gradient_support(model, (1, 64, 64), layer="19", n=1, dtype=torch.float32)
    assert bottom - top + 1 < analytic
    assert next(model.parameters()).dtype == torch.float32


class _Upsampling(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward_features(self, x):
        return self.up(self.down(x))


class _Opaque(nn.Module):
    """A block timm keeps opaque to tracing (control flow on a shape), holding a spatial conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if x.shape[-1] > 1 else x


def test_ops_it_cannot_follow_are_refused_naming_the_module(monkeypatch):
    with pytest.raises(NotImplementedError, match=r"module 'up' \(Upsample\) changes the spatial size .*\(16, 16\) -> "
                                                  r"\(32, 32\)") as e:
        receptive_field(_Upsampling(), (3, 32, 32))
    assert "\n" not in str(e.value) and "%" not in str(e.value)  # one line, no fx node dump
    import rf_bench.rf as rf_module

    model = nn.Sequential(nn.Conv2d(3, 4, 1), _Opaque())
    monkeypatch.setattr(rf_module, "get_notrace_modules", lambda: [_Opaque])
    with pytest.raises(NotImplementedError, match=r"module '1' \(_Opaque\) is traced as one opaque call but holds "
                                                  r"spatial layers \(conv\)"):
        receptive_field(model, (3, 16, 16))


class _ChannelsLastStem(nn.Module):
    """A stem that ends channels-last (N, H, W, C) behind a LayerNorm over channels, as MambaOut's does."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(8)

    def forward_features(self, x):
        return self.norm(self.conv2(self.conv1(x)).permute(0, 2, 3, 1))


def test_a_channels_last_output_is_measured_at_its_height_and_width():
    """The centre unit of an N, H, W, C output is picked on H and W (found by tracing), and a LayerNorm's
    channels, whose plain sum is constant, still carry a gradient."""
    model = _ChannelsLastStem()
    analytic = receptive_field(model, (3, 32, 32))
    assert analytic.size == 7
    assert measure_rf(model, (3, 32, 32), n=1).size == 7


def test_an_asymmetric_kernel_measures_the_height_and_may_reach_the_width_border():
    """A (1, 7) kernel: the height's RF is 1 and the width's 7; only the height, which the size reports, must fit."""
    model = nn.Sequential(nn.Conv2d(1, 1, (1, 7), padding=(0, 3)), nn.Conv2d(1, 1, 3, padding=1))
    assert receptive_field(model, (1, 9, 9), layer="1").size == 3
    assert measure_rf(model, (1, 9, 9), layer="1", n=1).size == 3


def test_block_names_resolve_back_to_their_rows():
    """Every row of block_receptive_fields names a layer whose receptive_field is that row's: a stage that opens
    with a downsample lists it as `<stage>.downsample`, not under the stage's own name."""
    model = timm.create_model("test_convnext", num_classes=0).eval()
    rows = block_receptive_fields(model, (3, 64, 64))
    assert any(row.name.endswith(".downsample") for row in rows)
    for row in rows:
        assert receptive_field(model, (3, 64, 64), layer=row.name) == row.rf, row.name


def test_block_rows_are_blocks_not_layers():
    """ResNet18's summary has one row per residual block (and one for a shortcut's downsample), not one per conv, BN
    and ReLU; DenseNet's dense layers (named, not indexed) are blocks too."""
    rows = [row.name for row in block_receptive_fields(timm.create_model("resnet18", num_classes=0).eval(),
                                                        (3, 64, 64))]
    blocks = [name for name in rows if name.startswith("layer") and ".downsample" not in name]
    assert blocks == [f"layer{stage}.{block}" for stage in range(1, 5) for block in (0, 1)], rows
    assert sum(".downsample" in name for name in rows) <= 3, rows  # stages 2-4, not each conv and BN
    dense = block_receptive_fields(timm.create_model("densenet121", num_classes=0).eval(), (3, 64, 64))
    assert any(row.name == "features.denseblock1.denselayer3" for row in dense)


def test_a_gated_revived_net_is_traced_once_and_copied_once(monkeypatch):
    """measure_rf finds the output's axes and the local paths from one trace, and revives the silenced tensors on a
    copy already in float64, which the gradient then uses as it is; the RF it measures is the analytic one."""
    import rf_bench.rf as rf_module
    calls = {"trace": 0, "deepcopy": 0}
    trace, deepcopy = rf_module._trace, rf_module.copy.deepcopy

    def counting_trace(*args, **kwargs):
        calls["trace"] += 1
        return trace(*args, **kwargs)

    def counting_deepcopy(obj, *args, **kwargs):
        calls["deepcopy"] += isinstance(obj, nn.Module) and not isinstance(obj, torch.fx.GraphModule)
        return deepcopy(obj, *args, **kwargs)

    model = timm.create_model("seresnet18", num_classes=0).eval()  # zero_init_last and squeeze-excitation gates
    analytic = receptive_field(model, (3, 160, 160), layer="layer2").size
    monkeypatch.setattr(rf_module, "_trace", counting_trace)
    monkeypatch.setattr(rf_module.copy, "deepcopy", counting_deepcopy)
    measured = measure_rf(model, (3, 160, 160), layer="layer2", n=1)
    assert measured.revived and measured.local and measured.size == analytic
    assert calls["trace"] == 1
    assert calls["deepcopy"] == 1  # the float64 revived copy; the trace's own meta copy is of its GraphModule


def _independent_extent(model: nn.Module, size: int, gates: Tuple[type, ...]) -> int:
    """A gradient extent that shares no code with measure_rf: every weight made positive (and zero ones 1) on a
    positive input, so no ReLU and no sign cancels a path; max-pools as average pools, so every tap carries
    gradient; the attention weights (the outputs of ``gates``) detached, so only their global summary is cut."""
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.abs() if bool(p.abs().max() > 0) else torch.ones_like(p))
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(m, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    for m in model.modules():
        if isinstance(m, gates):
            m.register_forward_hook(lambda module, inputs, output: output.detach())
    x = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = model.forward_features(x)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum((0, 2)) > 0).flatten()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [("skresnet18", 619), ("resnest14d", 135)])
def test_attention_weighted_branch_sums_have_the_union_of_their_branches_rfs(name, expected):
    from timm.layers.selective_kernel import SelectiveKernelAttn
    from timm.layers.split_attn import RadixSoftmax

    model = timm.create_model(name, num_classes=0).eval()
    rf = receptive_field(model, (3, 224, 224))
    assert rf.size == expected and rf.global_context and rf.size > rf.stride  # an RF under its jump cannot be
    size = rf.size + 2 * rf.stride + 8
    measured = measure_rf(model, (3, size, size), n=1)
    assert measured.size == expected and measured.local
    assert _independent_extent(model, size, (SelectiveKernelAttn, RadixSoftmax)) == expected
