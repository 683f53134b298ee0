"""Numerics shared by the probes and the report (which draws the SLQ densities they store)."""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["exact_matmul", "slq_density"]


@contextlib.contextmanager
def exact_matmul():
    """No TF32 inside, for matmuls and cuDNN convolutions alike: on GPUs that allow it, a float32 product keeps 10
    mantissa bits (about 1e-3 relative), above the Lanczos tolerance, and torch leaves cuDNN's TF32 on by default."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def slq_density(nodes, weights, grid_points: int = 1000, sigma: Optional[float] = None,
                grid: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """SLQ quadrature (``nodes``/``weights``: one row per probe vector) smoothed by a Gaussian of width ``sigma``
    (default 1% of the range) on ``grid`` (default ``grid_points`` over the range plus 5% each side): a density
    that integrates to 1, since each row's weights sum to 1."""
    all_nodes = np.concatenate([np.asarray(n, dtype=np.float64) for n in nodes])
    all_weights = np.concatenate([np.asarray(w, dtype=np.float64) for w in weights]) / len(nodes)
    lo, hi = all_nodes.min(), all_nodes.max()
    span = max(hi - lo, 1e-12)
    sigma = sigma or 0.01 * span
    if grid is None:
        grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, grid_points)
    density = (all_weights[None, :] * np.exp(-((grid[:, None] - all_nodes[None, :]) ** 2) / (2 * sigma ** 2))).sum(1)
    density /= math.sqrt(2 * math.pi) * sigma
    return grid, density
