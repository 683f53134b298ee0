"""Analytic receptive fields against closed forms and against measured gradient support."""
import pytest
import timm
import torch
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.models import RFPOOL_KS
from rf_bench.rf import RF, gradient_rf, gradient_support, layer_receptive_fields, receptive_field

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
        receptive_field(timm.create_model("efficientnet_b0"), (3, 64, 64))  # squeeze-excite sees everything
