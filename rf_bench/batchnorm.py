"""BatchNorm protocols: which running statistics a probed network is evaluated with.

A measurement of a changed network (pruned weights, a Hessian at initialisation) depends on the BatchNorm
statistics it runs with, so every probe names its protocol and uses this one machinery:

- ``stored``: the statistics the weights file holds (the dense, trained net's; at initialisation mean 0, variance 1).
- ``recalibrate``: every BatchNorm's running mean and variance estimated again on a fixed, seeded, unaugmented
  subset of the training split, no weight changed (adaptive BN: EagleEye, ECCV 2020).
- ``batch``: each batch's own statistics (train-mode BatchNorm), the loss SGD minimises (Hessian only).

Probes sit above this module; it depends on nothing of rf-bench's but the data's normalisation.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

__all__ = ["BN_MODES", "batchnorms", "recalibrate_batchnorm", "prepare_batchnorm", "training_subset"]

BN_MODES = ("recalibrate", "batch", "stored")


def batchnorms(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and (unbiased) variance on ``images``, in place; eval mode after.

    One no-grad train-mode pass over all of ``images`` as one batch with a cumulative average (``momentum=None``,
    as ``torch.optim.swa_utils.update_bn``): the statistics are each layer's exact mean and variance over the
    subset, not a running estimate, and the net in eval mode then computes what that train-mode pass computed.
    """
    norms = batchnorms(model)
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(images)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def prepare_batchnorm(model: nn.Module, mode: str, images: torch.Tensor) -> nn.Module:
    """``model`` set up under one BatchNorm protocol (``BN_MODES``); the model itself is changed: pass a copy.

    ``recalibrate`` re-estimates the statistics on ``images`` (`recalibrate_batchnorm`) and leaves eval mode;
    ``batch`` puts every BatchNorm in train mode with momentum 0 (batch statistics, running ones untouched) and the
    rest in eval mode (no dropout); ``stored`` is eval mode with the statistics the weights hold.
    """
    if mode not in BN_MODES:
        raise ValueError(f"BatchNorm protocol {mode!r} is not one of {', '.join(BN_MODES)}")
    model.eval()
    if mode == "recalibrate":
        recalibrate_batchnorm(model, images)
    elif mode == "batch":
        for m in batchnorms(model):
            m.train()
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: untouched
    return model


def training_subset(train, n_images: int, seed: int, device: torch.device | str = "cpu"
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded subset of a training ``ImageSet``, normalised and not augmented: ``(images, labels)``.

    The first ``n_images`` of a seeded permutation, so a smaller count is a prefix of a larger one.
    """
    from rf_bench.data import normalize

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:n_images]
    return normalize(train.images[idx], train.mean, train.std).to(device), train.labels[idx].to(device)
