"""Where a split comes from: the Hub through ``datasets``, or a local copy in one of its known formats.

One module per source family: ``hub`` (the Hub, ``save_to_disk``, parquet copies), ``cifar`` (CIFAR-10's
pickles), ``tiny`` (Tiny ImageNet's original layout), ``idx`` (MNIST-style IDX files) and ``builtin`` (digits,
synthetic). This module holds the data set specs and ``load``, which resolves a source and goes through the
checked cache (``cache.py``).

Every source of a data set yields identical tensors: images are decoded by one function from the same bytes,
the same post-processing follows (grey 28x28 data sets are padded to 32x32), and classes are in the Hub's order.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from ..cache import CACHE_VERSION, cached, default_cache_dir, source_fingerprint
from ..imageset import ImageSet
from ._common import Decoded, Source, check_labels
from .builtin import channel_stats, digits, synthetic
from .cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR_SOURCES
from .hub import HubSpec, hub_sources, load_from_hub
from .idx import idx_source
from .tiny import TINY_MEAN, TINY_STD, TINY_SOURCES

__all__ = ["load", "dataset_key", "native_side", "DATASETS", "DATA_DIR_ENV", "DEBIAN_FASHION_MNIST", "CIFAR10_CLASSES",
           "CIFAR10_MEAN", "CIFAR10_STD", "TINY_MEAN", "TINY_STD", "FASHION_MNIST_CLASSES", "folder_names"]

DATA_DIR_ENV = "RF_BENCH_DATA_DIR"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # `apt-get install dataset-fashion-mnist`
# the Hub copy's class names, so every source of Fashion-MNIST names its classes alike
FASHION_MNIST_CLASSES = ("T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class _DatasetSpec:
    hub: Optional[HubSpec]
    local: Tuple[Source, ...]
    mean: Tuple[float, ...] = ()  # empty: measured on the train split (stats_from_train)
    std: Tuple[float, ...] = ()
    classes: Tuple[str, ...] = ()  # fallback when a format carries no names
    builder: Optional[Callable[..., ImageSet]] = None  # generated/embedded data sets
    pad_to: Optional[int] = None  # zero-pad smaller images to this square size (28x28 -> 32x32, as LeNet did)
    default_dirs: Tuple[Path, ...] = ()  # local copies found without --data-dir (a system package's files)
    side: Optional[int] = None  # image side the models see (after padding); None: set by the caller (synthetic)

    @property
    def stats_from_train(self) -> bool:
        return not self.mean


_CIFAR_HUB = HubSpec("uoft-cs/cifar10", "plain_text", "img", "label", {"train": "train", "test": "test"},
                     ("plain_text",))
_TINY_HUB = HubSpec("zh-plus/tiny-imagenet", None, "image", "label", {"train": "train", "test": "valid"},
                    ("data",))
_FASHION_HUB = HubSpec("zalando-datasets/fashion_mnist", "fashion_mnist", "image", "label",
                       {"train": "train", "test": "test"}, ("fashion_mnist",), mode="L")
_MNIST_HUB = HubSpec("ylecun/mnist", "mnist", "image", "label", {"train": "train", "test": "test"}, ("mnist",),
                     mode="L")

DATASETS: Dict[str, _DatasetSpec] = {
    "cifar10": _DatasetSpec(_CIFAR_HUB, hub_sources(_CIFAR_HUB) + CIFAR_SOURCES, CIFAR10_MEAN, CIFAR10_STD,
                            CIFAR10_CLASSES, side=32),
    "tiny-imagenet": _DatasetSpec(_TINY_HUB, hub_sources(_TINY_HUB) + TINY_SOURCES, TINY_MEAN, TINY_STD, side=64),
    "fashion-mnist": _DatasetSpec(
        _FASHION_HUB, hub_sources(_FASHION_HUB) + (idx_source(("FashionMNIST/raw", "fashion-mnist"), 10),),
        classes=FASHION_MNIST_CLASSES, pad_to=32, default_dirs=(DEBIAN_FASHION_MNIST,), side=32),
    "mnist": _DatasetSpec(_MNIST_HUB, hub_sources(_MNIST_HUB) + (idx_source(("MNIST/raw",), 10),),
                          classes=MNIST_CLASSES, pad_to=32, side=32),
    "digits": _DatasetSpec(None, (), builder=digits, side=32),
    "synthetic": _DatasetSpec(None, (), builder=synthetic),
}
_SPLITS = {"train": "train", "test": "test", "valid": "test", "val": "test", "validation": "test"}


# ------------------------------------------------------------------------------------------- load

def native_side(name: str) -> Optional[int]:
    """The side a data set is prepared at before any ``image_size`` (None for generated data of any size, or an
    unknown name)."""
    try:
        return DATASETS[dataset_key(name)].side
    except ValueError:
        return None


def dataset_key(name: str) -> str:
    """The registered name ``name`` means (case and ``_``/``-`` do not matter); a one-line error otherwise."""
    from rf_bench.hints import nearest

    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        close = nearest(key, DATASETS, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}{hint}")
    return key


def _resolve(name: str, split: str) -> Tuple[str, _DatasetSpec, str]:
    key = dataset_key(name)
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    return key, DATASETS[key], _SPLITS[split]


def _no_local_copy_error(name: str, spec: _DatasetSpec, data_dir: Optional[Path], reason: str) -> FileNotFoundError:
    layouts = "; ".join(s.layout for s in spec.local)
    where = f"nothing usable in {data_dir}" if data_dir else f"no --data-dir / ${DATA_DIR_ENV} given"
    return FileNotFoundError(
        f"cannot load {name}: {reason}, and {where}. Point --data-dir (or ${DATA_DIR_ENV}) at a folder holding "
        f"one of: {layouts}"
    )


def _pad_square(images: torch.Tensor, size: int, origin: object) -> torch.Tensor:
    """Zero-pad (N, C, h, w) images evenly to (N, C, size, size)."""
    h, w = images.shape[-2:]
    if h > size or w > size or (size - h) % 2 or (size - w) % 2:
        raise ValueError(f"{origin} holds {h}x{w} images, which do not pad evenly to {size}x{size}; "
                         "is it the right data set?")
    if (h, w) == (size, size):
        return images
    dy, dx = (size - h) // 2, (size - w) // 2
    return F.pad(images, (dx, dx, dy, dy)).contiguous()


def _finish(name: str, spec: _DatasetSpec, split: str, decoded: Decoded, origin: object,
            train_stats: Callable[[], Tuple[Sequence[float], Sequence[float]]]) -> ImageSet:
    """The post-processing every source of a data set shares: label check, padding, normalisation stats."""
    images, labels, classes = decoded
    classes = list(classes or spec.classes)
    check_labels(labels, len(classes), len(images), origin)  # before it is cached
    if spec.pad_to:
        images = _pad_square(images, spec.pad_to, origin)
    if not spec.stats_from_train:
        mean, std = spec.mean, spec.std
    elif split == "train":
        mean, std = channel_stats(images)
    else:
        mean, std = train_stats()
    return ImageSet(images, labels, classes, tuple(mean), tuple(std), name, split, str(origin))


def folder_names(name: str) -> Tuple[str, ...]:
    """Every spelling of a data set's folder that is found under ``--data-dir``: ``fashion-mnist``,
    ``fashion_mnist``, ``fashionmnist`` and their capitalised forms (``FashionMNIST``, torchvision's)."""
    key = dataset_key(name)
    words = key.split("-")
    capitalised = "".join(w.capitalize() for w in words).replace("Mnist", "MNIST")
    spellings = ["-".join(words), "_".join(words), "".join(words), capitalised, key.upper()]
    return tuple(dict.fromkeys(spellings))


def _local_roots(name: str, spec: _DatasetSpec, data_dir: Optional[Path]) -> Tuple[Path, ...]:
    """Folders to search: the one given (from --data-dir or ``$RF_BENCH_DATA_DIR``) and its sub-folder named like
    the data set (any spelling), else the system locations."""
    if data_dir:
        return tuple(data_dir / folder for folder in folder_names(name)) + (data_dir,)
    return tuple(d for d in spec.default_dirs if d.is_dir())


def load(name: str, split: str, data_dir: Optional[str | os.PathLike] = None,
         cache_dir: Optional[str | os.PathLike] = None, **kwargs) -> ImageSet:
    """Load a split as uint8 tensors, decoding it only the first time (then from the cache).

    ``data_dir`` (or ``$RF_BENCH_DATA_DIR``) points at a local copy; without one, a data set's system location
    (Debian's ``/usr/share/datasets/fashion-mnist``) and then the Hub (through ``datasets``) are used.
    ``split`` is ``train`` or ``test`` (Tiny ImageNet's ``valid`` is its test).
    ``kwargs`` go to generated data sets (``synthetic``: n, num_classes, size, channels, seed).
    """
    name, spec, split = _resolve(name, split)
    if spec.builder is not None:
        return spec.builder(split, **kwargs)
    if kwargs:
        raise ValueError(f"{name} takes no options, got {sorted(kwargs)}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    given = data_dir or os.environ.get(DATA_DIR_ENV)
    root = Path(given).expanduser() if given else None

    def train_stats():
        train = load(name, "train", data_dir=data_dir, cache_dir=cache_dir)
        return train.mean, train.std

    for base in _local_roots(name, spec, root):
        for source in spec.local:
            path = source.find(base, split) if base.is_dir() else None
            if path is None:
                continue
            key = f"v{CACHE_VERSION}:{source.layout}:{source_fingerprint(path)}"

            def build(source=source, path=path) -> ImageSet:
                return _finish(name, spec, split, source.read(path, split), path, train_stats)
            return cached(cache, name, split, hashlib.sha256(key.encode()).hexdigest(), build)
    if root:
        raise _no_local_copy_error(name, spec, root, "no local copy found")

    def build_from_hub() -> ImageSet:
        try:
            decoded = load_from_hub(spec.hub, split)
        except ConnectionError as e:
            raise _no_local_copy_error(name, spec, None, f"the Hub is unreachable ({e})") from None
        return _finish(name, spec, split, decoded, spec.hub.repo, train_stats)
    key = hashlib.sha256(f"v{CACHE_VERSION}:{spec.hub.repo}:{spec.hub.config}:{split}".encode()).hexdigest()
    return cached(cache, name, split, key, build_from_hub)
