"""What timm's own model tests (and its users) rely on, checked over every registered rfpool model:
TorchScript, torch.fx then TorchScript, forward/backward at the pretrained cfg's own input size,
``pool_size`` equal to the real final map, ``features_only`` channels and reductions, gradient
checkpointing, and the too-large-k error on every path that runs the model."""
import warnings

import pytest
import timm
import torch
from torch import fx

import rf_bench  # noqa: F401
from rf_bench.models import RFPOOL_KS

from conftest import TINY

MODELS = [f"{family}{k}" for family in ("resnet50_rfpool", "vgg19_rfpool") for k in RFPOOL_KS]


@pytest.fixture(autouse=True)
def _quiet_jit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
        yield


def _tiny(name, **kwargs):
    return timm.create_model(name, width_mult=TINY, **kwargs).eval()


def _cfg_input(name, batch=2):
    return torch.randn(batch, *timm.get_pretrained_cfg(name).input_size)


@pytest.mark.parametrize("name", MODELS)
def test_cfg_input_size_is_accepted_and_pool_size_is_the_final_map(name):
    cfg = timm.get_pretrained_cfg(name)
    k = int(name.rsplit("rfpool", 1)[1])
    side = cfg.input_size[1]
    assert side == 32 or (name.startswith("vgg") and side == 8 * k)  # the CIFAR size, else the smallest valid
    model = _tiny(name).train()
    x = _cfg_input(name)
    features = model.forward_features(x)
    assert tuple(features.shape[-2:]) == tuple(cfg.pool_size)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pool_size_follows_k_as_documented():
    sizes = {name: timm.get_pretrained_cfg(name).pool_size for name in MODELS}
    for k, side in ((1, 4), (2, 2), (3, 2), (4, 1), (8, 1)):
        assert sizes[f"resnet50_rfpool{k}"] == (side, side)
    for k, side in ((1, 4), (2, 2), (3, 1), (4, 1), (8, 1)):
        assert sizes[f"vgg19_rfpool{k}"] == (side, side)


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_matches_eager(name):
    model = _tiny(name)
    x = _cfg_input(name)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_fx_then_torchscript_matches_eager(name):
    model = _tiny(name)
    x = _cfg_input(name)
    graph = fx.symbolic_trace(model)
    torch.testing.assert_close(torch.jit.script(graph)(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_features_only_channels_and_reductions(name):
    model = _tiny(name, features_only=True)
    side = 2 * model.feature_info.reduction()[-1]  # divisible by every reduction
    x = torch.randn(1, 3, side, side)
    features = model(x)
    assert [f.shape[1] for f in features] == model.feature_info.channels()
    assert [x.shape[-1] // f.shape[-1] for f in features] == model.feature_info.reduction()


@pytest.mark.parametrize("name", ["vgg19_rfpool5", "resnet50_rfpool8"])
def test_too_large_k_is_refused_on_every_path(name):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _tiny(name)
    small = torch.zeros(1, 3, 16, 16) if name.startswith("vgg") else torch.zeros(1, 3, 4, 4)
    paths = {
        "eager": model,
        "forward_intermediates": lambda x: model.forward_intermediates(x),
        "features_only": _tiny(name, features_only=True),
        "torch.fx": fx.symbolic_trace(model),
        "create_feature_extractor": create_feature_extractor(model, ["global_pool"]),  # it drops dead code
        "timm fx features": _tiny(name, features_only=True, feature_cls="fx"),
    }
    for run in paths.values():
        with pytest.raises(ValueError, match=rf"^{name}: rfpool k=\d shrinks a \d+x\d+ input"):
            run(small)
    with pytest.raises(Exception, match=rf"{name}: rfpool k=\d shrinks"):  # TorchScript re-raises as its own Error
        torch.jit.script(model)(small)


@pytest.mark.parametrize("name", ["vgg19_rfpool2", "resnet50_rfpool2"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(name, width_mult=TINY).train()
        model.set_grad_checkpointing(checkpointing)
        model(x).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)


@pytest.mark.parametrize("name", ["vgg19_rfpool2", "resnet50_rfpool3"])
def test_fx_feature_extractor_scripts_and_matches_features_only(name):
    torch.manual_seed(0)
    eager = _tiny(name, features_only=True)
    torch.manual_seed(0)  # the same weights (the two wrappers name them differently)
    fx_features = _tiny(name, features_only=True, feature_cfg={"feature_cls": "fx"})  # merges with our feature_cfg
    x = _cfg_input(name, batch=1)
    scripted = torch.jit.script(fx_features)
    for got, want in zip(scripted(x), eager(x), strict=True):
        torch.testing.assert_close(got, want)
