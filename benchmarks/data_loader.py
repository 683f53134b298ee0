"""One training epoch over CIFAR-sized data: rf-bench's TensorLoader vs torchvision transforms + DataLoader.

Both do random crop (padding 4), horizontal flip and normalisation on 50,000 x 3 x 32 x 32 images at
batch 128; torchvision from PIL images with ``num_workers=2``, the usual CIFAR recipe. Also times the
first decode of a CIFAR tarball into the uint8 cache and a cached load.

    python benchmarks/data_loader.py [--n 50000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import Timer, write_result  # noqa: E402

from rf_bench import data as D  # noqa: E402


class PILDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = [Image.fromarray(im.transpose(1, 2, 0)) for im in images]
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def epoch_torchvision(images: np.ndarray, labels: np.ndarray, batch: int) -> float:
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(D.CIFAR10_MEAN, D.CIFAR10_STD)])
    loader = DataLoader(PILDataset(images, labels, tf), batch_size=batch, shuffle=True, num_workers=2,
                        drop_last=True, persistent_workers=False)
    with Timer() as t:
        n = sum(x.shape[0] for x, _ in loader)
    return n / t.seconds


def epoch_rf_bench(images: np.ndarray, labels: np.ndarray, batch: int) -> float:
    data = D.ImageSet(torch.from_numpy(images), torch.from_numpy(labels), list(D.CIFAR10_CLASSES),
                      D.CIFAR10_MEAN, D.CIFAR10_STD)
    loader = D.TensorLoader(data, batch, train=True, seed=0)
    with Timer() as t:
        n = sum(x.shape[0] for x, _ in loader)
    return n / t.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n).astype(np.int64)

    rf = epoch_rf_bench(images, labels, args.batch)
    tv = epoch_torchvision(images, labels, args.batch)

    import fakedata
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fakedata.write_cifar_tarball(tmp / "src", {"train": (images, labels), "test": (images[:10], labels[:10])})
        with Timer() as first:
            D.load("cifar10", "train", data_dir=tmp / "src", cache_dir=tmp / "cache")
        with Timer() as cached:
            D.load("cifar10", "train", data_dir=tmp / "src", cache_dir=tmp / "cache")

    result = dict(n=args.n, batch=args.batch, rf_bench_images_per_s=round(rf), torchvision_images_per_s=round(tv),
                  ratio=round(rf / tv, 1), first_decode_s=round(first.seconds, 2),
                  cached_load_s=round(cached.seconds, 2))
    md = (f"# Data loader: one epoch, {args.n} x 3 x 32 x 32, batch {args.batch}, crop+flip+normalise\n\n"
          "| loader | images/s |\n|---|---|\n"
          f"| rf-bench TensorLoader (uint8 tensors, batched augmentation) | {rf:,.0f} |\n"
          f"| torchvision transforms + DataLoader(num_workers=2), PIL | {tv:,.0f} |\n"
          f"| **ratio** | **{rf / tv:.1f}x** |\n\n"
          f"First decode of a {args.n}-image CIFAR tarball into the cache: {first.seconds:.2f} s; "
          f"cached load (checksum verified): {cached.seconds:.2f} s.\n")
    write_result("data_loader", result, md)
    print(md)


if __name__ == "__main__":
    main()
