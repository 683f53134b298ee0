"""The checked cache: a decoded split saved once as safetensors with its sha256, rebuilt when it is damaged."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from .imageset import ImageSet

__all__ = ["CACHE_DIR_ENV", "CACHE_VERSION", "default_cache_dir", "source_fingerprint", "cached"]

CACHE_DIR_ENV = "RF_BENCH_CACHE"
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused


def default_cache_dir() -> Path:
    """``$RF_BENCH_CACHE``, or ``~/.cache/rf_bench/data``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "rf_bench" / "data")


def source_fingerprint(path: Path) -> str:
    """Paths, sizes and mtimes of the source files: changes when the local copy does."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(images.contiguous().numpy().data)
    h.update(labels.contiguous().numpy().data)
    return h.hexdigest()


def _cache_path(cache_dir: Path, name: str, split: str, key: str) -> Path:
    return cache_dir / f"{name}-{split}-{key[:16]}.safetensors"


def _read_cache(path: Path) -> Optional[ImageSet]:
    """The cached split, or None if it is missing, truncated or does not match its checksum."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
        if meta.get("sha256") != _digest(images, labels):
            raise ValueError("checksum mismatch")
        info = json.loads(meta["info"])
    except (SafetensorError, ValueError, KeyError, OSError, RuntimeError) as e:
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]warning:[/] cache {path} is corrupt ({e}); rebuilding it")
        return None
    return ImageSet(images, labels, info["classes"], tuple(info["mean"]), tuple(info["std"]), info["name"],
                    info["split"], info["source"])


def _write_cache(path: Path, data: ImageSet) -> None:
    from safetensors.torch import save

    from rf_bench.files import atomic_write

    info = dict(classes=data.classes, mean=data.mean, std=data.std, name=data.name, split=data.split,
                source=data.source)
    blob = save({"images": data.images.contiguous(), "labels": data.labels.contiguous()},
                metadata={"sha256": _digest(data.images, data.labels), "info": json.dumps(info),
                          "version": str(CACHE_VERSION)})
    atomic_write(path, lambda f: f.write(blob), binary=True)  # readers see the old file or the whole new one


def cached(cache_dir: Path, name: str, split: str, key: str, build: Callable[[], ImageSet]) -> ImageSet:
    """Load from the cache or build it once; a file lock makes concurrent processes (DDP ranks) wait."""
    from filelock import FileLock

    path = _cache_path(cache_dir, name, split, key)
    data = _read_cache(path)
    if data is not None:
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        data = _read_cache(path)  # another process may have built it while we waited
        if data is None:
            data = build()
            _write_cache(path, data)
    return data


