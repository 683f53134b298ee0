"""The original IDX files of MNIST and Fashion-MNIST (``train-images-idx3-ubyte[.gz]`` and friends), raw or gzipped.

IDX is a big-endian header (two zero bytes, a type code, the number of dimensions, then each dimension as a
32-bit count) followed by the array. Everything in the header is checked against the body and against the
other file of the pair, so a damaged download is refused in one line that names the file, before it is cached.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ._common import Decoded, Source

__all__ = ["read_idx", "idx_source", "IDX_PREFIXES"]

_UBYTE = 0x08  # the only element type MNIST-style files use
IDX_PREFIXES = {"train": "train", "test": "t10k"}
# how the pair of files is spelled: the original names, and the dotted variant of some mirrors
_NAMES = ("{prefix}-{kind}-idx{ndim}-ubyte", "{prefix}-{kind}.idx{ndim}-ubyte")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"corrupt IDX file {path}: {e}; re-download it") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions -> a read-only numpy array, header checked."""
    raw = _read_bytes(path)
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path} is truncated ({len(raw)} bytes, shorter than an IDX header); re-download it")
    zero, dtype, got_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _UBYTE or got_ndim != ndim:
        raise ValueError(f"{path} has magic number 0x{raw[:4].hex()}, not 0x0000{_UBYTE:02x}{ndim:02x} (unsigned bytes, "
                         f"{ndim} dimensions); is it the right file?")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - head != expected:
        shape = "x".join(map(str, dims))
        raise ValueError(f"{path} holds {len(raw) - head} bytes of data but its header says {shape} = {expected}; "
                         "the file is truncated or damaged, re-download it")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _find_file(folder: Path, prefix: str, kind: str, ndim: int) -> Optional[Path]:
    for pattern in _NAMES:
        name = pattern.format(prefix=prefix, kind=kind, ndim=ndim)
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def _pair(folder: Path, split: str) -> Tuple[Optional[Path], Optional[Path]]:
    prefix = IDX_PREFIXES[split]
    return _find_file(folder, prefix, "images", 3), _find_file(folder, prefix, "labels", 1)


def _read_pair(folder: Path, split: str, num_classes: int) -> Decoded:
    images_file, labels_file = _pair(folder, split)
    if images_file is None or labels_file is None:
        missing = "images" if images_file is None else "labels"
        raise ValueError(f"{folder} has no {IDX_PREFIXES[split]}-{missing} IDX file beside the other one; "
                         "copy both files of the pair")
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise ValueError(f"{labels_file} has {len(labels)} labels but {images_file.name} has {len(images)} images; "
                         "re-download the pair")
    if len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"{labels_file} has label {int(labels.max())}, outside the {num_classes} classes; "
                         "re-download it")
    # (N, H, W) -> (N, 1, H, W): one grey channel, as the Hub copy's "L" images decode
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), []


def idx_source(subfolders: Sequence[str], num_classes: int) -> Source:
    """The IDX pair of a split, in the folder given or in one of ``subfolders`` (e.g. torchvision's ``MNIST/raw``)."""
    def find(root: Path, split: str) -> Optional[Path]:
        for folder in (root, *(root / sub for sub in subfolders)):
            if any(f is not None for f in _pair(folder, split)):
                return folder
        return None

    def read(folder: Path, split: str) -> Decoded:
        return _read_pair(folder, split, num_classes)

    layout = "the original IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...; raw or gzipped)"
    return Source(layout, find, read)
