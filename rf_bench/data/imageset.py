"""``ImageSet``: one decoded split as uint8 tensors, the currency of every other data module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

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
