"""The one intervention rf-bench studies: a max-pool of kernel ``k`` right after the first conv."""
from __future__ import annotations

import torch
from timm.layers import register_notrace_function
from torch import nn

__all__ = ["create_rfpool", "check_rfpool_input", "largest_valid_k"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def create_rfpool(k: int) -> nn.Module:
    """``MaxPool2d(k, stride=k)``; ``k = 1`` is the identity, so it gets no module work at all."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"rfpool kernel size must be a positive int, got {k!r}")
    return nn.Identity() if k == 1 else nn.MaxPool2d(kernel_size=k, stride=k)


def largest_valid_k(size: int, min_size_after_pool: int) -> int:
    """Largest ``k`` with ``floor(size / k) >= min_size_after_pool`` (0 if none)."""
    return size // min_size_after_pool


@register_notrace_function  # shape checks are invisible to torch.fx traces (timm's own convention)
def check_rfpool_input(x: torch.Tensor, k: int, min_size_after_pool: int, name: str) -> None:
    """Refuse a ``k`` whose pooled map would be too small for the rest of the net, before any layer fails."""
    h, w = x.shape[-2:]
    if min(h // k, w // k) >= min_size_after_pool:
        return
    side = min(h, w)
    best = largest_valid_k(side, min_size_after_pool)
    fix = f"use k <= {best}" if best >= 1 else "use a larger input"
    raise ValueError(
        f"{name}: rfpool k={k} shrinks a {h}x{w} input to {h // k}x{w // k}, but the rest of the net needs "
        f">= {min_size_after_pool}x{min_size_after_pool}; {fix} or an input of at least "
        f"{k * min_size_after_pool}x{k * min_size_after_pool}"
    )
