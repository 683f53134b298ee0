"""Where a split comes from: the Hub through ``datasets``, or a local copy in one of its known formats.

Every offline format of a data set yields identical tensors: images are decoded by one function from
the same bytes, classes are in the Hub's order (CIFAR's label order; sorted WordNet ids). ``load``
resolves the source and goes through the checked cache (``cache.py``).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from .cache import CACHE_VERSION, cached, default_cache_dir, source_fingerprint
from .imageset import ImageSet

__all__ = ["load", "DATASETS", "DATA_DIR_ENV", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "TINY_MEAN",
           "TINY_STD"]

DATA_DIR_ENV = "RF_BENCH_DATA_DIR"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)


# ----------------------------------------------------------------------------------------- decoding

def _decode(data: bytes, origin: str) -> np.ndarray:
    """One encoded image -> HWC uint8 RGB. Grayscale and palette images become RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"corrupt image in {origin}: {e}; re-download that file") from None


def _stack(arrays: Sequence[np.ndarray], origin: str) -> torch.Tensor:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images of different shapes {sorted(shapes)[:3]} in {origin}; is it the right data set?")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _progress(total: int, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), transient=True)
    return progress, progress.add_task(description, total=total)


def _decode_all(blobs: Sequence[bytes], origin: str) -> torch.Tensor:
    progress, task = _progress(len(blobs), f"decoding {origin}")
    arrays = []
    with progress:
        for i, blob in enumerate(blobs):
            arrays.append(_decode(blob, origin))
            if i % 512 == 0:
                progress.update(task, completed=i)
    return _stack(arrays, origin)


# ----------------------------------------------------------------------------- Hub-style (datasets)

def _from_hf_dataset(ds, image_col: str, label_col: str, origin: str) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """A ``datasets.Dataset`` -> tensors, decoding the raw bytes ourselves (identical to the file formats)."""
    from datasets import Image as HFImage

    classes = list(ds.features[label_col].names) if hasattr(ds.features[label_col], "names") else []
    raw = ds.cast_column(image_col, HFImage(decode=False))
    blobs = []
    for item in raw[image_col]:
        if item.get("bytes") is None:
            blobs.append(Path(item["path"]).read_bytes())
        else:
            blobs.append(item["bytes"])
    labels = torch.tensor(raw[label_col], dtype=torch.int64)
    return _decode_all(blobs, origin), labels, classes


@dataclass(frozen=True)
class _HubSpec:
    repo: str
    config: Optional[str]
    image_col: str
    label_col: str
    splits: Dict[str, str]  # our split -> Hub split
    parquet_dirs: Tuple[str, ...]  # where a local copy of the repo keeps its parquet files


# -------------------------------------------------------------------------------- source registry

@dataclass(frozen=True)
class _Source:
    """How one local format is found and read. ``find`` returns the path to read, or None."""

    layout: str  # shown in the "no local copy" error
    find: Callable[[Path, str], Optional[Path]]
    read: Callable[[Path, str], Tuple[torch.Tensor, torch.Tensor, List[str]]]


def _find_save_to_disk(root: Path, split: str) -> Optional[Path]:
    for cand in (root, *(p.parent for p in root.glob("*/dataset_dict.json"))):
        if (cand / "dataset_dict.json").is_file() or (cand / split / "state.json").is_file():
            return cand
    return None


def _find_parquet(spec: _HubSpec) -> Callable[[Path, str], Optional[Path]]:
    def find(root: Path, split: str) -> Optional[Path]:
        hub_split = spec.splits[split]
        for sub in ("",) + spec.parquet_dirs:
            if sorted((root / sub).glob(f"{hub_split}-*.parquet")):
                return root / sub
        return None
    return find


def _read_save_to_disk(spec: _HubSpec) -> Callable:
    def read(path: Path, split: str):
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises several types for damaged folders
            raise ValueError(f"cannot read the save_to_disk folder {path}: {e}") from None
        hub_split = spec.splits[split]
        if isinstance(ds, datasets.DatasetDict):
            if hub_split not in ds:
                raise ValueError(f"{path} has splits {list(ds)}, not {hub_split!r}")
            ds = ds[hub_split]
        return _from_hf_dataset(ds, spec.image_col, spec.label_col, str(path))
    return read


def _read_parquet(spec: _HubSpec) -> Callable:
    def read(path: Path, split: str):
        import datasets

        files = sorted(str(p) for p in path.glob(f"{spec.splits[split]}-*.parquet"))
        try:
            ds = datasets.load_dataset("parquet", data_files={"split": files}, split="split")
        except Exception as e:
            raise ValueError(f"cannot read parquet files {files}: {e}") from None
        return _from_hf_dataset(ds, spec.image_col, spec.label_col, files[0])
    return read


# CIFAR-10, original python pickles ------------------------------------------------------------

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


def _cifar_batches(read_member: Callable[[str], bytes], split: str, origin: str):
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


def _check_labels(labels: torch.Tensor, num_classes: int, num_images: int, origin: Any) -> None:
    if len(labels) != num_images:
        raise ValueError(f"{origin}: {num_images} images but {len(labels)} labels; re-download or rebuild it")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{origin}: labels run from {int(labels.min())} to {int(labels.max())}, outside the "
                         f"{num_classes} classes; re-download or rebuild it")


def _find_cifar_folder(root: Path, split: str) -> Optional[Path]:
    for cand in (root / "cifar-10-batches-py", root):
        if (cand / "batches.meta").is_file():
            return cand
    return None


def _read_cifar_folder(path: Path, split: str):
    def member(name: str) -> bytes:
        f = path / name
        if not f.is_file():
            raise ValueError(f"{f} is missing; the folder must hold batches.meta, data_batch_1..5 and test_batch")
        return f.read_bytes()
    return _cifar_batches(member, split, str(path))


def _find_cifar_tar(root: Path, split: str) -> Optional[Path]:
    f = root / "cifar-10-python.tar.gz"
    return f if f.is_file() else None


def _read_cifar_tar(path: Path, split: str):
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


# Tiny ImageNet, original folder / zip ------------------------------------------------------------

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


def _read_tiny_original(path: Path, split: str):
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
    return _decode_all(blobs, str(path)), labels, classes


def _find_tiny_original(root: Path, split: str) -> Optional[Path]:
    for cand in (root / "tiny-imagenet-200", root):
        if (cand / "wnids.txt").is_file():
            return cand
    zipped = root / "tiny-imagenet-200.zip"
    return zipped if zipped.is_file() else None


# ------------------------------------------------------------------------------- data set specs

@dataclass(frozen=True)
class _DatasetSpec:
    hub: Optional[_HubSpec]
    local: Tuple[_Source, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Tuple[str, ...] = ()  # fallback when a format carries no names
    builder: Optional[Callable[..., ImageSet]] = None  # generated/embedded data sets


_CIFAR_HUB = _HubSpec("uoft-cs/cifar10", "plain_text", "img", "label", {"train": "train", "test": "test"},
                      ("plain_text",))
_TINY_HUB = _HubSpec("zh-plus/tiny-imagenet", None, "image", "label", {"train": "train", "test": "valid"},
                     ("data",))


def _hub_sources(spec: _HubSpec) -> Tuple[_Source, ...]:
    return (
        _Source("a `datasets` save_to_disk folder (dataset_dict.json)", _find_save_to_disk, _read_save_to_disk(spec)),
        _Source(f"a copy of the Hub repo {spec.repo} ({'/'.join(spec.parquet_dirs)}/<split>-*.parquet)",
                _find_parquet(spec), _read_parquet(spec)),
    )


def _digits(split: str, **kwargs) -> ImageSet:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float()[:, None] / 16.0  # (1797, 1, 8, 8), values 0..16
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.25, random_state=0,
                                           stratify=bunch.target)
    mean, std = _stats(images[torch.from_numpy(train_idx)])
    idx = torch.from_numpy(train_idx if split == "train" else test_idx)
    return ImageSet(images[idx], labels[idx], [str(d) for d in range(10)], mean, std, "digits", split, "sklearn")


def _synthetic(split: str, n: Optional[int] = None, num_classes: int = 10, size: int = 32, channels: int = 3,
               seed: int = 0, noise: float = 0.35) -> ImageSet:
    """Class templates (smooth random patterns, fixed by ``seed``) plus per-image noise: learnable."""
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.rand(num_classes, channels, 4, 4, generator=g), size=(size, size),
                              mode="bilinear", align_corners=False)
    n = n if n is not None else (50 * num_classes if split == "train" else 10 * num_classes)
    gs = torch.Generator().manual_seed(seed * 7919 + (1 if split == "train" else 2))
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gs)]
    x = templates[labels] + noise * torch.randn(n, channels, size, size, generator=gs)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, [f"class{i}" for i in range(num_classes)], (0.5,) * channels,
                    (0.25,) * channels, "synthetic", split, f"synthetic(seed={seed})")


def _stats(images: torch.Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    x = images.double() / 255
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


DATASETS: Dict[str, _DatasetSpec] = {
    "cifar10": _DatasetSpec(
        _CIFAR_HUB,
        _hub_sources(_CIFAR_HUB) + (
            _Source("cifar-10-python.tar.gz", _find_cifar_tar, _read_cifar_tar),
            _Source("its extracted cifar-10-batches-py/ folder", _find_cifar_folder, _read_cifar_folder),
        ),
        CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES,
    ),
    "tiny-imagenet": _DatasetSpec(
        _TINY_HUB,
        _hub_sources(_TINY_HUB) + (
            _Source("the original tiny-imagenet-200/ folder or tiny-imagenet-200.zip",
                    _find_tiny_original, _read_tiny_original),
        ),
        TINY_MEAN, TINY_STD,
    ),
    "digits": _DatasetSpec(None, (), (), (), builder=_digits),
    "synthetic": _DatasetSpec(None, (), (), (), builder=_synthetic),
}
_SPLITS = {"train": "train", "test": "test", "valid": "test", "val": "test", "validation": "test"}

# ------------------------------------------------------------------------------------------- load

def dataset_key(name: str) -> str:
    """The registered name ``name`` means (case and ``_``/``-`` do not matter); a one-line error otherwise."""
    import difflib

    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        close = difflib.get_close_matches(key, list(DATASETS), n=1)
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


def _load_hub(name: str, spec: _DatasetSpec, split: str) -> ImageSet:
    import datasets

    hub = spec.hub
    try:
        ds = datasets.load_dataset(hub.repo, hub.config, split=hub.splits[split])
    except Exception as e:  # offline, DNS, HTTP: datasets raises many types; all mean "no Hub copy"
        raise _no_local_copy_error(name, spec, None, f"the Hub is unreachable ({type(e).__name__})") from None
    images, labels, classes = _from_hf_dataset(ds, hub.image_col, hub.label_col, hub.repo)
    return ImageSet(images, labels, classes or list(spec.classes), spec.mean, spec.std, name, split, hub.repo)


def load(name: str, split: str, data_dir: Optional[str | os.PathLike] = None,
         cache_dir: Optional[str | os.PathLike] = None, **kwargs) -> ImageSet:
    """Load a split as uint8 tensors, decoding it only the first time (then from the cache).

    ``data_dir`` (or ``$RF_BENCH_DATA_DIR``) points at a local copy; without one, the Hub is used
    through ``datasets``. ``split`` is ``train`` or ``test`` (Tiny ImageNet's ``valid`` is its test).
    ``kwargs`` go to generated data sets (``synthetic``: n, num_classes, size, channels, seed).
    """
    name, spec, split = _resolve(name, split)
    if spec.builder is not None:
        return spec.builder(split, **kwargs)
    if kwargs:
        raise ValueError(f"{name} takes no options, got {sorted(kwargs)}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        root = Path(data_dir).expanduser()
        for source in spec.local:
            for base in (root / name, root):
                path = source.find(base, split) if base.is_dir() else None
                if path is None:
                    continue
                key = f"v{CACHE_VERSION}:{source.layout}:{source_fingerprint(path)}"

                def build(source=source, path=path) -> ImageSet:
                    images, labels, classes = source.read(path, split)
                    _check_labels(labels, len(classes or spec.classes), len(images), path)  # before it is cached
                    return ImageSet(images, labels, classes or list(spec.classes), spec.mean, spec.std, name,
                                    split, str(path))
                return cached(cache, name, split, hashlib.sha256(key.encode()).hexdigest(), build)
        raise _no_local_copy_error(name, spec, root, "no local copy found")
    key = hashlib.sha256(f"v{CACHE_VERSION}:{spec.hub.repo}:{spec.hub.config}:{split}".encode()).hexdigest()
    return cached(cache, name, split, key, lambda: _load_hub(name, spec, split))


