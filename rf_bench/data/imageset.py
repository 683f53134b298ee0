"""``ImageSet``: one decoded split as uint8 tensors, the currency of every other data module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

__all__ = ["ImageSet"]


@dataclass
class ImageSet:
    """A decoded split: uint8 images ``(N, C, H, W)``, int64 labels, class names, normalisation stats."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    name: str = ""
    split: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{len(self.labels)} labels for {self.images.shape[0]} images")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        """How many classes the split has."""
        return len(self.classes)

    @property
    def input_size(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "ImageSet":
        """The images at ``indices``, with the same classes and statistics."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.mean, self.std,
                        self.name, self.split, self.source)

    def resized(self, size: Optional[int]) -> "ImageSet":
        """The images at ``size`` x ``size``: bilinear, antialiased (a downscale averages, it does not alias),
        rounded back to uint8, in chunks; the same split at its own size (or ``None``) unchanged. The normalisation
        statistics stay the native train split's, so every size of a data set is normalised alike."""
        if size is None or tuple(self.images.shape[-2:]) == (size, size):
            return self
        chunks = [F.interpolate(chunk.double(), size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
                  for chunk in self.images.split(2048)]
        images = torch.cat(chunks) if chunks else self.images.new_zeros((0, self.images.shape[1], size, size))
        return ImageSet(images, self.labels, self.classes, self.mean, self.std, self.name, self.split, self.source)

    def per_class(self, n: int, seed: int = 0) -> "ImageSet":
        """A seeded, stratified subset: ``n`` images of every class, drawn without replacement, in split order."""
        if n < 1:
            raise ValueError(f"a subset of {n} images per class is empty; give n >= 1")
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        if int(counts.min()) < n:
            short = int(counts.argmin())
            raise ValueError(f"{self.name or 'the'} {self.split} split has only {int(counts[short])} images of class "
                             f"{self.classes[short]!r}; ask for at most {int(counts.min())} per class")
        g = torch.Generator().manual_seed(seed)
        picked = []
        for c in range(self.num_classes):
            members = torch.nonzero(self.labels == c).flatten()
            picked.append(members[torch.randperm(len(members), generator=g)[:n]])
        return self.subset(torch.cat(picked).sort().values)
