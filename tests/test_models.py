"""The rfpool models behave like timm's own models."""
import pytest
import timm
import torch
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.models import RFPOOL_KS

from conftest import TINY

FAMILIES = ("resnet50_rfpool", "vgg19_rfpool")


def test_registered_in_timm():
    names = set(timm.list_models("*rfpool*"))
    assert names == {f"{f}{k}" for f in FAMILIES for k in RFPOOL_KS}
    for name in names:
        assert timm.is_model(name)
        cfg = timm.get_pretrained_cfg(name)
        assert cfg.num_classes == 10  # the input size per k: tests/test_timm_contracts.py
        assert cfg.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_default_forward_shape():
    model = timm.create_model("resnet50_rfpool3")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("family, expected_millions", [("resnet50_rfpool", 23.52), ("vgg19_rfpool", 20.04)])
def test_every_k_has_identical_parameters(family, expected_millions):
    shapes = []
    for k in RFPOOL_KS:
        model = timm.create_model(f"{family}{k}")
        shapes.append({n: tuple(t.shape) for n, t in model.state_dict().items()})
    assert all(s == shapes[0] for s in shapes[1:])
    count = sum(p.numel() for p in timm.create_model(f"{family}1").parameters())
    assert count / 1e6 == pytest.approx(expected_millions, abs=0.005)


def _pools(model):
    return [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]


def test_resnet_layout():
    model = timm.create_model("resnet50_rfpool3")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    # v1.5: the stride sits on the 3x3 conv, not the 1x1
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    (pool,) = _pools(model)
    assert pool.kernel_size == 3 and pool.stride == 3
    identity = timm.create_model("resnet50_rfpool1").rfpool  # k = 1: no pooling work, only the input check
    x = torch.zeros(1, 64, 32, 32)
    assert isinstance(identity, nn.Identity) and identity(x) is x


def test_vgg_layout():
    model = timm.create_model("vgg19_rfpool2")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 16 and len(bns) == 16
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    pools = _pools(model)
    assert [p.kernel_size for p in pools] == [2, 2, 2, 2]  # rfpool + three 2x2: none after blocks 4, 5
    assert model.features[3] is pools[0]  # right after the first conv+BN+ReLU
    # 32 / k / 8 = 2 for k = 2: blocks 4 and 5 keep the 2x2 map
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 2, 2)


@pytest.mark.parametrize("name", ["resnet50_rfpool2", "vgg19_rfpool2"])
def test_timm_api(name):
    model = timm.create_model(name, width_mult=TINY, num_classes=7, in_chans=1).eval()
    x = torch.randn(3, 1, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (3, model.num_features)
    assert model(x).shape == (3, 7)
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 7
    model.reset_classifier(4)
    assert model(x).shape == (3, 4)
    model.reset_classifier(0)
    assert model(x).shape == (3, model.num_features)


@pytest.mark.parametrize("name", ["resnet50_rfpool2", "vgg19_rfpool2"])
def test_features_only_matches_forward_intermediates(name):
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    model = timm.create_model(name, width_mult=TINY).eval()
    torch.manual_seed(1)  # same init: the feature wrapper renames modules, so no state_dict round trip
    feat_model = timm.create_model(name, width_mult=TINY, features_only=True).eval()
    feats = feat_model(x)
    inter = model.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == len(inter) == len(feat_model.feature_info)
    for f, i, red, chs in zip(feats, inter, feat_model.feature_info.reduction(), feat_model.feature_info.channels()):
        torch.testing.assert_close(f, i)
        assert f.shape[1] == chs and f.shape[-1] == 32 // red
    final, _ = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))


def test_out_indices():
    model = timm.create_model("resnet50_rfpool4", width_mult=TINY, features_only=True, out_indices=(2, 4))
    shapes = [f.shape[-1] for f in model(torch.zeros(1, 3, 64, 64))]
    assert shapes == [64 // 8, 64 // 32]


@pytest.mark.parametrize("name, size, best", [("vgg19_rfpool5", 32, 4), ("vgg19_rfpool8", 32, 4),
                                               ("resnet50_rfpool8", 4, 4), ("vgg19_rfpool3", 16, 2)])
def test_too_large_k_is_refused_with_the_largest_valid_k(name, size, best):
    model = timm.create_model(name, width_mult=TINY)
    with pytest.raises(ValueError, match=rf"{name}: .*use k <= {best}\b"):
        model(torch.zeros(1, 3, size, size))


def test_large_k_works_on_a_large_enough_input():
    model = timm.create_model("vgg19_rfpool8", width_mult=TINY, num_classes=200)
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 200)




def test_every_public_name_is_one_explicit_register_model_function_as_in_timm():
    import ast
    from pathlib import Path

    import timm

    from rf_bench.models import RFPOOL_KS

    for family, module in (("resnet50_rfpool", "resnet.py"), ("vgg19_rfpool", "vgg.py")):
        tree = ast.parse((Path(rf_bench.__file__).parent / "models" / module).read_text())
        registered = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                      and any(getattr(d, "id", None) == "register_model" for d in node.decorator_list)]
        assert registered == [f"{family}{k}" for k in RFPOOL_KS]  # greppable, as every timm model is
        for k in RFPOOL_KS:
            assert timm.is_model(f"{family}{k}")
            assert timm.create_model(f"{family}{k}", width_mult=0.0625).rf_pool == k
