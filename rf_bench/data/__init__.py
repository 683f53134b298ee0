"""Data: every source decoded once into uint8 tensors ``(N, C, H, W)``, cached, and batched on device.

Sources (``load(name, split, data_dir=None)``):

- ``cifar10``: the Hub dataset ``uoft-cs/cifar10`` through ``datasets``, or offline from ``data_dir``:
  a ``save_to_disk`` folder, a local copy of the Hub repo's parquet files, ``cifar-10-python.tar.gz``
  or its extracted ``cifar-10-batches-py/`` folder.
- ``tiny-imagenet``: the Hub dataset ``zh-plus/tiny-imagenet`` (its ``valid`` split is the test set),
  or offline: ``save_to_disk``, parquet copy, the original ``tiny-imagenet-200/`` folder or ``.zip``.
- ``fashion-mnist`` / ``mnist``: the Hub datasets ``zalando-datasets/fashion_mnist`` / ``ylecun/mnist``, or
  offline: ``save_to_disk``, parquet copy, or the original IDX files (raw or gzipped); Debian's
  ``dataset-fashion-mnist`` package is found without a flag. Grey 28x28 images are zero-padded to 1x32x32
  and normalised with the train split's mean and std.
- ``digits``: scikit-learn's 8x8 digits, upscaled to 32x32 RGB, fixed stratified split (no network).
- ``synthetic``: seeded, learnable class templates plus noise, any size (tests).

Every offline format of a data set yields identical tensors: images are decoded by one function from
the same bytes, classes are in the Hub's order (CIFAR's label order; sorted WordNet ids).

The package has one module per job: ``imageset`` (the decoded split), ``sources`` (one module per
source family, and ``load``), ``cache`` (the checked on-disk cache) and ``loader`` (on-device batches).
"""
from .cache import CACHE_DIR_ENV, default_cache_dir
from .imageset import ImageSet
from .loader import IGNORE_INDEX, TensorLoader, augment_batch, normalize
from .sources import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DATA_DIR_ENV, DATASETS, TINY_MEAN, TINY_STD,
                      dataset_key, load)

__all__ = [
    "ImageSet", "load", "DATASETS", "TensorLoader", "augment_batch", "normalize", "default_cache_dir",
    "dataset_key", "DATA_DIR_ENV", "CACHE_DIR_ENV", "IGNORE_INDEX", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "TINY_MEAN",
    "TINY_STD",
]
