"""The one intervention rf-bench studies: a max-pool of kernel ``k`` right after the first conv.

The pool checks its own input, so a ``k`` too large for the input is refused with the fix in one line on
every path that runs it: ``forward``, ``forward_intermediates``, ``features_only`` wrappers, torch.fx
graphs (the check returns its input, so dead-code elimination cannot drop it) and TorchScript.
No ``from __future__ import annotations`` here or in the model files: TorchScript reads the annotations.
"""
import torch
from timm.layers import register_notrace_function
from torch import nn
from torch.nn import functional as F

__all__ = ["RfPool", "RfPoolCheck", "create_rfpool", "check_rfpool_input", "largest_valid_k", "rfpool_output_size"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def largest_valid_k(size: int, min_size_after_pool: int) -> int:
    """Largest ``k`` with ``floor(size / k) >= min_size_after_pool`` (0 if none)."""
    return size // min_size_after_pool


class RFPoolSizeError(ValueError):
    """An input too small for the rfpool ``k``: the pooled map would be smaller than the rest of the net needs.

    ``largest_k`` is the largest k this input allows (0: none), ``min_input`` the input side this k needs."""

    def __init__(self, message: str, k: int, input_hw: tuple, largest_k: int, min_input: int) -> None:
        super().__init__(message)
        self.k, self.input_hw, self.largest_k, self.min_input = k, input_hw, largest_k, min_input


@register_notrace_function  # a leaf call in timm's fx graphs, not control flow on a proxy
def check_rfpool_input(x: torch.Tensor, k: int, min_size_after_pool: int, name: str) -> torch.Tensor:
    """``x`` itself, if the pooled map keeps ``min_size_after_pool`` px a side; else a one-line ValueError."""
    h, w = x.shape[-2], x.shape[-1]
    if min(h // k, w // k) >= min_size_after_pool:
        return x
    best = largest_valid_k(min(h, w), min_size_after_pool)
    fix = "use k <= " + str(best) if best >= 1 else "use a larger input"
    need = k * min_size_after_pool
    raise RFPoolSizeError(
        f"{name}: rfpool k={k} shrinks a {h}x{w} input to {h // k}x{w // k}, but the rest of the net needs "
        f">= {min_size_after_pool}x{min_size_after_pool}; {fix} or an input of at least {need}x{need}",
        k=k, input_hw=(h, w), largest_k=best, min_input=need)


torch.fx.wrap("check_rfpool_input")  # plain torch.fx.symbolic_trace keeps it as one call too


class RfPool(nn.MaxPool2d):
    """``MaxPool2d(k, stride=k)`` that refuses an input the rest of the net cannot take."""

    def __init__(self, k: int, min_size_after_pool: int = 1, name: str = "rfpool") -> None:
        super().__init__(kernel_size=k, stride=k)
        self.min_size_after_pool = min_size_after_pool
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input is large enough for ``k``, then pool."""
        x = check_rfpool_input(x, self.kernel_size, self.min_size_after_pool, self.name)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class RfPoolCheck(nn.Identity):
    """``k = 1``: no pooling work at all, only the input check."""

    def __init__(self, min_size_after_pool: int = 1, name: str = "rfpool") -> None:
        super().__init__()
        self.min_size_after_pool = min_size_after_pool
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input itself, once checked (the pool's check without the pool)."""
        return check_rfpool_input(x, 1, self.min_size_after_pool, self.name)


def create_rfpool(k: int, min_size_after_pool: int = 1, name: str = "rfpool") -> nn.Module:
    """The rfpool of kernel ``k`` for a net that needs ``min_size_after_pool`` px a side after it."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"rfpool kernel size must be a positive int, got {k!r}")
    return RfPoolCheck(min_size_after_pool, name) if k == 1 else RfPool(k, min_size_after_pool, name)


def rfpool_output_size(size: int, k: int, halvings: int, ceil: bool) -> int:
    """Side of the final feature map: ``size // k``, then ``halvings`` stride-2 steps (ceil: padded convs)."""
    side = size // k
    for _ in range(halvings):
        side = -(-side // 2) if ceil else side // 2
    return side
