"""Test loss and accuracy: the one evaluation loop of the trainer (over its processes) and the probes."""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterable, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["evaluation_sums", "loss_and_accuracy"]


def evaluation_sums(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                    device: torch.device | str,
                    autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """float64 ``[summed cross-entropy, correct, images]`` of ``model`` (eval mode, no gradients) over ``batches``
    of (images, labels). A label below 0 is padding (shards made equal across processes) and counts nowhere.
    Sums, not means, so that processes' shares add up (``accelerator.reduce(..., "sum")``)."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad(), autocast():
        for x, y in batches:
            logits = model(x)
            kept = y >= 0
            logits, y = logits[kept], y[kept]
            totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += kept.sum()
    return totals


def loss_and_accuracy(totals: torch.Tensor) -> Tuple[float, float]:
    """Mean cross-entropy and accuracy from `evaluation_sums` (0 and 0 over no image)."""
    loss, correct, images = totals.tolist()
    return loss / max(images, 1), correct / max(images, 1)
