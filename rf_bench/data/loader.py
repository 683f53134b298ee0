"""Batches on the training device: augmentation (pad-crop, flip) and normalisation on whole uint8 batches."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from .imageset import ImageSet

__all__ = ["TensorLoader", "augment_batch", "normalize", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # label of padding slots in a sharded eval split (cross_entropy ignores it)


def _mix(*parts: object) -> int:
    """A 63-bit seed from several values, so different streams (order, augmentation) never collide."""
    h = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _draw_crop_flip(n: int, padding: int, flip: bool, generator: torch.Generator,
                    device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Random crop offsets (dy, dx) in ``0..2 padding`` and flip flags for ``n`` images."""
    draw = dict(generator=generator, device=generator.device)
    dy = torch.randint(0, 2 * padding + 1, (n,), **draw).to(device)
    dx = torch.randint(0, 2 * padding + 1, (n,), **draw).to(device)
    mirrored = (torch.rand(n, **draw) < 0.5).to(device) if flip else None
    return dy, dx, mirrored


def _crop_flip(padded: torch.Tensor, idx: torch.Tensor, out_hw: Tuple[int, int], dy: torch.Tensor,
               dx: torch.Tensor, mirrored: Optional[torch.Tensor]) -> torch.Tensor:
    """Samples ``idx`` of a zero-padded uint8 set, cropped at ``(dy, dx)`` and mirrored where asked.

    One ``take`` with a flat index does crop, flip and batch gather together (3x faster than
    padding, advanced indexing and ``where`` per batch on a CPU).
    """
    n, device = idx.shape[0], padded.device
    h, w = out_hw
    c, hp, wp = padded.shape[1:]
    ar_h, ar_w = torch.arange(h, device=device), torch.arange(w, device=device)
    cols = ar_w.expand(n, w) if mirrored is None else torch.where(mirrored[:, None], ar_w.flip(0), ar_w)
    rows = dy[:, None] + ar_h
    cols = dx[:, None] + cols
    flat = ((idx * (c * hp * wp))[:, None, None, None] + (torch.arange(c, device=device) * (hp * wp))[None, :, None, None]
            + (rows * wp)[:, None, :, None] + cols[:, None, None, :])
    return padded.reshape(-1).take(flat)


def augment_batch(x: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a uint8 batch, on its own device."""
    padded = F.pad(x, (padding,) * 4) if padding else x
    idx = torch.arange(x.shape[0], device=x.device)
    dy, dx, mirrored = _draw_crop_flip(x.shape[0], padding, flip, generator, x.device)
    return _crop_flip(padded.contiguous(), idx, tuple(x.shape[-2:]), dy, dx, mirrored)


def _affine(mean: Sequence[float], std: Sequence[float], device: torch.device,
            dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of the normalisation, (1, C, 1, 1) each in ``dtype`` on ``device``, computed in float64."""
    std64 = torch.tensor(std, dtype=torch.float64)
    scale = 1.0 / (std64 * 255)
    shift = -torch.tensor(mean, dtype=torch.float64) / std64
    return scale.to(device, dtype).view(1, -1, 1, 1), shift.to(device, dtype).view(1, -1, 1, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> ``(x / 255 - mean) / std`` in ``dtype``, as one fused multiply-add."""
    scale, shift = _affine(mean, std, x.device, dtype)
    return torch.addcmul(shift, x.to(dtype), scale)


@dataclass
class TensorLoader:
    """Batches of an ``ImageSet`` on ``device``, augmented there; no workers, no PIL.

    The order is a pure function of ``(seed, epoch)`` and each sample's crop and flip of
    ``(seed, epoch, sample)``, so a resumed run sees the same batches, and so do 1 or N processes. With ``num_replicas`` > 1,
    each rank takes a disjoint interleaved slice (as ``DistributedSampler`` does) and every rank takes
    the same number of steps.
    """

    data: ImageSet
    batch_size: int
    train: bool = True
    seed: int = 0
    device: torch.device | str = "cpu"
    augment: bool = True
    padding: int = 4
    flip: bool = True
    num_replicas: int = 1
    rank: int = 0
    drop_last: Optional[bool] = None
    channels_last: bool = False
    epoch: int = 0
    _images: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if self.drop_last is None:
            self.drop_last = self.train
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} outside 0..{self.num_replicas - 1}")
        # the whole split lives on the device as uint8 (150 MB for CIFAR10 train), padded once for cropping
        images = self.data.images.to(self.device)
        self._augmenting = self.train and self.augment
        if self._augmenting and self.padding:
            images = F.pad(images, (self.padding,) * 4)
        self._images = images.contiguous()
        self._labels = self.data.labels.to(self.device)
        # once per loader: building them per batch costs host-to-device copies that stall a captured step
        self._scale, self._shift = _affine(self.data.mean, self.data.std, self.device, torch.float32)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the order and the augmentation (as ``DistributedSampler``)."""
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.data)
        if self.train:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(self.seed, self.epoch)))
        else:
            order = torch.arange(n)
        per_rank = n // self.num_replicas if self.drop_last else -(-n // self.num_replicas)
        total = per_rank * self.num_replicas
        if total > n:  # pad with -1 so every rank has equal work; padded slots get label IGNORE_INDEX
            order = torch.cat([order, torch.full((total - n,), -1, dtype=order.dtype)])
        return order[:total][self.rank::self.num_replicas]

    def __len__(self) -> int:
        n = len(self.data)
        per_rank = n // self.num_replicas if self.drop_last else -(-n // self.num_replicas)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_step: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_step..`` of the current epoch (mid-epoch resume skips without computing)."""
        order = self._indices()
        padded = bool((order < 0).any())  # the last rank's padding of an uneven split (on the host: no device sync)
        indices = order.to(self.device)
        if self._augmenting:
            # one draw per sample and epoch: a sample's crop depends on (seed, epoch, sample), not on which
            # rank or batch it lands in, so 1 and N processes see the same augmented global batch
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, "augment"))
            dy, dx, mirrored = _draw_crop_flip(len(self.data), self.padding, self.flip, g, self.device)
        for step in range(start_step, len(self)):
            idx = indices[step * self.batch_size:(step + 1) * self.batch_size]
            safe = idx.clamp(min=0) if padded else idx
            labels = self._labels.index_select(0, safe)
            if padded:
                labels = torch.where(idx >= 0, labels, IGNORE_INDEX)
            if self._augmenting:
                x = _crop_flip(self._images, safe, self.data.images.shape[-2:], dy[safe], dx[safe],
                               None if mirrored is None else mirrored[safe])
            else:
                x = self._images.index_select(0, safe)  # half the time of x[safe] for a batch of images
            x = torch.addcmul(self._shift, x.to(torch.float32), self._scale)  # = normalize(x, mean, std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, labels
