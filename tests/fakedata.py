"""Small data sets written in every on-disk format that rf_bench.data reads (CIFAR10, Tiny ImageNet)."""
from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_arrays(seed: int = 0, n_train: int = 20, n_test: int = 10) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        split: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))
        for split, n in (("train", n_train), ("test", n_test))
    }


def write_cifar_batches(root: Path, arrays) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}, f)
    x, y = arrays["train"]
    for i, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5)), start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": xs.reshape(len(xs), -1), b"labels": ys.tolist(), b"batch_label": b"x"}, f)
    x, y = arrays["test"]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": x.reshape(len(x), -1), b"labels": y.tolist()}, f)
    return folder


def write_cifar_tarball(root: Path, arrays) -> Path:
    src = write_cifar_batches(root / "src", arrays)
    out = root / "cifar-10-python.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return out


def _png(chw: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(chw.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def cifar_hf_datasets(arrays):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR_CLASSES)})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"img": [{"bytes": _png(im), "path": None} for im in x], "label": y.tolist()}, features=features)
        for split, (x, y) in arrays.items()
    })


def write_cifar_parquet(root: Path, arrays) -> Path:
    for split, ds in cifar_hf_datasets(arrays).items():
        (root / "plain_text").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "plain_text" / f"{split}-00000-of-00001.parquet"))
    return root


def write_save_to_disk(root: Path, dsdict) -> Path:
    dsdict.save_to_disk(str(root))
    return root


# ------------------------------------------------------------------------------------ Tiny ImageNet

TINY_WNIDS = ["n02124075", "n01443537", "n04067472"]  # wnids.txt is not sorted in the original


def _jpeg(rng, gray: bool = False) -> bytes:
    buf = io.BytesIO()
    arr = rng.integers(0, 256, (64, 64) if gray else (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr, mode="L" if gray else "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def tiny_files(seed: int = 0, per_class: int = 3, val_per_class: int = 2) -> Dict[str, bytes]:
    """The original tiny-imagenet-200 tree as {relative path: bytes}; one train image is grayscale."""
    rng = np.random.default_rng(seed)
    files = {"wnids.txt": "\n".join(TINY_WNIDS).encode() + b"\n",
             "words.txt": b"".join(f"{w}\tthing {w}\n".encode() for w in TINY_WNIDS)}
    for c, wnid in enumerate(TINY_WNIDS):
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
        for i in range(per_class):
            files[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = _jpeg(rng, gray=(c == 0 and i == 1))
    lines, k = [], 0
    for wnid in reversed(TINY_WNIDS):  # annotations are in file order, not class order
        for _ in range(val_per_class):
            files[f"val/images/val_{k}.JPEG"] = _jpeg(rng)
            lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
            k += 1
    files["val/val_annotations.txt"] = "\n".join(lines).encode() + b"\n"
    return files


def write_tiny_folder(root: Path, files: Dict[str, bytes]) -> Path:
    base = root / "tiny-imagenet-200"
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return base


def write_tiny_zip(root: Path, files: Dict[str, bytes], extra: Dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    out = root / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(out, "w") as z:
        for rel, data in {**files, **(extra or {})}.items():
            z.writestr(rel if rel.startswith("..") else f"tiny-imagenet-200/{rel}", data)
    return out


def tiny_canonical(files: Dict[str, bytes]) -> Dict[str, List[Tuple[bytes, int]]]:
    """(bytes, label) per split in the Hub copy's order: sorted wnids, class-major, then file name."""
    classes = sorted(TINY_WNIDS)
    train = sorted((classes.index(p.split("/")[1]), p) for p in files if p.startswith("train/") and p.endswith(".JPEG"))
    ann = [line.split("\t") for line in files["val/val_annotations.txt"].decode().splitlines()]
    val = sorted((classes.index(w), f"val/images/{name}") for name, w, *_ in ann)
    return {"train": [(files[p], c) for c, p in train], "valid": [(files[p], c) for c, p in val]}


def tiny_hf_datasets(files):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=sorted(TINY_WNIDS))})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for b, _ in items], "label": [c for _, c in items]},
            features=features)
        for split, items in tiny_canonical(files).items()
    })


def write_tiny_parquet(root: Path, files) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, ds in tiny_hf_datasets(files).items():
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001-abc.parquet"))
    return root


# ------------------------------------------------------------------------------ MNIST / Fashion-MNIST

FASHION_CLASSES = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def grey_arrays(seed: int = 0, n_train: int = 40, n_test: int = 20) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """28x28 grey images and labels 0..9 per split; every class appears in both splits."""
    rng = np.random.default_rng(seed)
    return {
        split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10)[rng.permutation(n)])
        for split, n in (("train", n_train), ("test", n_test))
    }


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of an unsigned-byte array: 0x0000 0x08 ndim, big-endian dims, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_idx(folder: Path, arrays, gz: bool = True) -> Path:
    """The four original files, gzipped (as the download and Debian ship them) or raw."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in arrays.items():
        for name, array in zip(IDX_FILES[split], (x, y)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return folder


def grey_hf_datasets(arrays, classes=FASHION_CLASSES):
    import datasets

    def png(hw: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(hw).save(buf, format="PNG")
        return buf.getvalue()

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"image": [{"bytes": png(im), "path": None} for im in x], "label": y.tolist()}, features=features)
        for split, (x, y) in arrays.items()
    })


def write_grey_parquet(root: Path, arrays, config: str = "fashion_mnist", classes=FASHION_CLASSES) -> Path:
    (root / config).mkdir(parents=True, exist_ok=True)
    for split, ds in grey_hf_datasets(arrays, classes).items():
        ds.to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
    return root
