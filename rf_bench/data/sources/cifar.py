"""CIFAR-10's original python pickles: ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/`` folder."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ._common import Decoded, Source

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR_SOURCES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _ArrayUnpickler(pickle.Unpickler):
    """Only what CIFAR's pickles hold (dicts, bytes, numpy arrays): no arbitrary code on load."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, origin: str) -> dict:
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"corrupt CIFAR batch {origin}: {e}; re-download cifar-10-python.tar.gz") from None


def _member(obj: Any, key: bytes, where: str) -> Any:
    """``obj[key]`` of an unpickled CIFAR dict, or a one-line error naming the file."""
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where} is not a CIFAR-10 python batch (no {key.decode()!r} entry); "
                         "re-download cifar-10-python.tar.gz")
    return obj[key]


def _cifar_batches(read_member: Callable[[str], bytes], split: str, origin: str) -> Decoded:
    meta = _unpickle(read_member("batches.meta"), f"{origin}/batches.meta")
    try:
        classes = [c.decode() for c in _member(meta, b"label_names", f"{origin}/batches.meta")]
    except (TypeError, AttributeError, UnicodeDecodeError):
        raise ValueError(f"{origin}/batches.meta has no list of class names; re-download it") from None
    images, labels = [], []
    for name in _CIFAR_FILES[split]:
        batch = _unpickle(read_member(name), f"{origin}/{name}")
        try:
            data = np.asarray(_member(batch, b"data", f"{origin}/{name}"), dtype=np.uint8)
            batch_labels = [int(v) for v in _member(batch, b"labels", f"{origin}/{name}")]
        except (TypeError, ValueError) as e:
            if "CIFAR-10 python batch" in str(e):
                raise
            raise ValueError(f"{origin}/{name} holds malformed data or labels ({e}); re-download it") from None
        if len(batch_labels) != len(data):
            raise ValueError(f"{origin}/{name} has {len(data)} images but {len(batch_labels)} labels; re-download it")
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{origin}/{name} holds {data.shape}, not (N, 3072) CIFAR rows; re-download it")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(batch_labels)
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64), classes


def _find_cifar_folder(root: Path, split: str) -> Optional[Path]:
    for cand in (root / "cifar-10-batches-py", root):
        if (cand / "batches.meta").is_file():
            return cand
    return None


def _read_cifar_folder(path: Path, split: str) -> Decoded:
    def member(name: str) -> bytes:
        f = path / name
        if not f.is_file():
            raise ValueError(f"{f} is missing; the folder must hold batches.meta, data_batch_1..5 and test_batch")
        return f.read_bytes()
    return _cifar_batches(member, split, str(path))


def _find_cifar_tar(root: Path, split: str) -> Optional[Path]:
    f = root / "cifar-10-python.tar.gz"
    return f if f.is_file() else None


def _read_cifar_tar(path: Path, split: str) -> Decoded:
    # members are read in memory: nothing is extracted, so no path in the archive can escape
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

            def member(name: str) -> bytes:
                if name not in members:
                    raise ValueError(f"{path} has no {name}; is it cifar-10-python.tar.gz?")
                return tar.extractfile(members[name]).read()

            return _cifar_batches(member, split, str(path))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"corrupt archive {path}: {e}; re-download it") from None


CIFAR_SOURCES = (
    Source("cifar-10-python.tar.gz", _find_cifar_tar, _read_cifar_tar),
    Source("its extracted cifar-10-batches-py/ folder", _find_cifar_folder, _read_cifar_folder),
)
