"""Built-in data sets that need no download: scikit-learn's digits and seeded synthetic templates."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from ..imageset import ImageSet

__all__ = ["digits", "synthetic", "channel_stats"]


def digits(split: str, **kwargs) -> ImageSet:
    """scikit-learn's 8x8 digits at 32x32 RGB; a fixed stratified split, a quarter of the images for test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float()[:, None] / 16.0  # (1797, 1, 8, 8), values 0..16
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=0,
                                           stratify=bunch.target)
    mean, std = channel_stats(images[torch.from_numpy(train_idx)])
    idx = torch.from_numpy(train_idx if split == "train" else test_idx)
    return ImageSet(images[idx], labels[idx], [str(d) for d in range(10)], mean, std, "digits", split, "sklearn")


def synthetic(split: str, n: Optional[int] = None, num_classes: int = 10, size: int = 32, channels: int = 3,
               seed: int = 0, noise: float = 0.35) -> ImageSet:
    """Class templates (smooth random patterns, fixed by ``seed``) plus per-image noise: learnable."""
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.rand(num_classes, channels, 4, 4, generator=g), size=(size, size),
                              mode="bilinear", align_corners=False)
    n = n if n is not None else (50 * num_classes if split == "train" else 10 * num_classes)
    gs = torch.Generator().manual_seed(seed * 7919 + (1 if split == "train" else 2))
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gs)]
    x = templates[labels] + noise * torch.randn(n, channels, size, size, generator=gs)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, [f"class{i}" for i in range(num_classes)], (0.5,) * channels,
                    (0.25,) * channels, "synthetic", split, f"synthetic(seed={seed})")


def channel_stats(images: torch.Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std (unbiased) of uint8 images scaled to [0, 1]: the normalisation of a train split.

    Exact, from each channel's histogram of the 256 byte values (a float64 pass over 60,000 images takes 1 s).
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / (n - 1)
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)
