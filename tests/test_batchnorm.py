"""BatchNorm protocols: recalibrated statistics are each layer's exact statistics over the subset."""
import copy

import pytest
import timm
import torch
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.batchnorm import batchnorms, prepare_batchnorm, recalibrate_batchnorm, training_subset
from rf_bench.data import ImageSet
from rf_bench.pruning import apply_masks, global_magnitude_masks

from conftest import TINY


def _input_moments(model: nn.Module, images: torch.Tensor):
    """Reference: every BatchNorm's input mean and unbiased variance per channel over all of ``images``, read by
    forward hooks in one train-mode pass (as BatchNorm normalises with the batch's own statistics there)."""
    model = copy.deepcopy(model).train()
    seen = []

    def hook(_module, inputs, _output):
        x = inputs[0].detach().double()
        dims = [0] + list(range(2, x.dim()))
        seen.append((x.mean(dims), x.var(dims, unbiased=True)))

    handles = [m.register_forward_hook(hook) for m in batchnorms(model)]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["vgg19_rfpool2", "resnet50_rfpool1"])
def test_recalibrated_statistics_equal_the_subsets_own_mean_and_variance(name):
    model = timm.create_model(name, width_mult=TINY).eval()
    masks = global_magnitude_masks(model, [0.9])[0.9]
    apply_masks(model, masks)  # a pruned net: the stored statistics no longer describe its activations
    images = torch.randn(96, 3, 32, 32)
    reference = _input_moments(model, images)
    recalibrated = recalibrate_batchnorm(copy.deepcopy(model), images)
    norms = batchnorms(recalibrated)
    assert len(norms) == len(reference) > 10 and not recalibrated.training
    for m, (mean, var) in zip(norms, reference):
        torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), var, rtol=1e-4, atol=1e-6)
        assert m.momentum == 0.1  # the layer's own momentum is given back
    for stored, new in zip(batchnorms(model), norms):  # weights untouched; the original model too
        assert torch.equal(stored.weight, new.weight) and torch.equal(stored.running_var, torch.ones_like(stored.running_var))


def test_the_stored_protocol_changes_nothing_and_an_unknown_one_is_named():
    model = timm.create_model("vgg19_rfpool1", width_mult=TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_batchnorm(model, "stored", torch.zeros(1))
    assert not prepared.training and all(torch.equal(before[k], v) for k, v in prepared.state_dict().items())
    with pytest.raises(ValueError, match="recalibrate, batch, stored"):
        prepare_batchnorm(model, "adaptive", torch.zeros(1))


def test_the_training_subset_is_seeded_normalised_and_a_prefix_of_a_larger_one():
    g = torch.Generator().manual_seed(3)
    data = ImageSet(images=torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g),
                    labels=torch.arange(50) % 5, classes=[str(i) for i in range(5)], mean=(0.5,) * 3, std=(0.25,) * 3)
    small, small_y = training_subset(data, 10, seed=0)
    large, large_y = training_subset(data, 30, seed=0)
    assert torch.equal(small, large[:10]) and torch.equal(small_y, large_y[:10])
    other, _ = training_subset(data, 10, seed=1)
    assert not torch.equal(small, other)
    index = int(torch.randperm(50, generator=torch.Generator().manual_seed(0))[0])
    torch.testing.assert_close(small[0], (data.images[index].float() / 255 - 0.5) / 0.25)
