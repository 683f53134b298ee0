"""Tiny ImageNet's original ``tiny-imagenet-200/`` layout, from a folder or from the zip without extracting it."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ._common import Decoded, Source, decode_all

__all__ = ["TINY_MEAN", "TINY_STD", "TINY_SOURCES"]

TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)

class _TinyFiles:
    """The original tiny-imagenet-200 layout, read from a folder or a zip without extracting it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".zip":
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise ValueError(f"corrupt archive {path}: {e}; re-download it") from None
            names = [n for n in self._zip.namelist() if not n.endswith("/")]
            prefix = next((n[: n.index("wnids.txt")] for n in names if n.endswith("wnids.txt")), None)
            if prefix is None:
                raise ValueError(f"{path} has no wnids.txt; is it tiny-imagenet-200.zip?")
            self._names = {n[len(prefix):]: n for n in names if n.startswith(prefix)}
        else:
            self._zip = None
            self._names = None

    def list(self, folder: str) -> List[str]:
        if self._zip is not None:
            return sorted(n for n in self._names if n.startswith(folder + "/") and "/" not in n[len(folder) + 1:])
        d = self.path / folder
        return sorted(f"{folder}/{p.name}" for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(self._names[name])
            return (self.path / name).read_bytes()
        except (KeyError, FileNotFoundError):
            raise ValueError(f"{self.path} has no {name}; is it the original tiny-imagenet-200 layout?") from None
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"corrupt member {name} of {self.path}: {e}") from None


def _read_tiny_original(path: Path, split: str) -> Decoded:
    files = _TinyFiles(path)
    classes = sorted(files.read("wnids.txt").decode().split())  # the Hub copy's label order
    index = {wnid: i for i, wnid in enumerate(classes)}
    items: List[Tuple[int, str]] = []
    if split == "train":
        for wnid in classes:
            items += [(index[wnid], name) for name in files.list(f"train/{wnid}/images")]
    else:
        for line in files.read("val/val_annotations.txt").decode().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                items.append((index[parts[1]], f"val/images/{parts[0]}"))
    items.sort()  # class-major, then file name: the Hub copy's order
    if not items:
        raise ValueError(f"{path} holds no {split} images; is it the original tiny-imagenet-200 layout?")
    blobs = [files.read(name) for _, name in items]
    labels = torch.tensor([label for label, _ in items], dtype=torch.int64)
    return decode_all(blobs, str(path)), labels, classes


def _find_tiny_original(root: Path, split: str) -> Optional[Path]:
    for cand in (root / "tiny-imagenet-200", root):
        if (cand / "wnids.txt").is_file():
            return cand
    zipped = root / "tiny-imagenet-200.zip"
    return zipped if zipped.is_file() else None


TINY_SOURCES = (
    Source("the original tiny-imagenet-200/ folder or tiny-imagenet-200.zip", _find_tiny_original, _read_tiny_original),
)
