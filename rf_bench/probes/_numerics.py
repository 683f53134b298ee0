"""Numerics shared by the probes."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["exact_matmul"]


@contextlib.contextmanager
def exact_matmul():
    """No TF32 inside: on GPUs that allow it, a float32 product would silently keep 10 mantissa bits."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
