"""Hub-style sources through ``datasets``: the Hub itself, a ``save_to_disk`` folder, a copy of the repo's parquet files.

Images are decoded from their raw bytes by ``_common.decode_all``, the same function the file formats use, so a
Hub copy and an original archive give identical tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from ._common import Decoded, Source, decode_all

__all__ = ["HubSpec", "hub_sources", "from_hf_dataset", "load_from_hub"]


@dataclass(frozen=True)
class HubSpec:
    """A data set on the Hub: its repository, splits and column names."""
    repo: str
    config: Optional[str]
    image_col: str
    label_col: str
    splits: Dict[str, str]  # our split -> Hub split
    parquet_dirs: Tuple[str, ...]  # where a local copy of the repo keeps its parquet files
    mode: str = "RGB"  # PIL mode the images are decoded to ("L" for grey data sets)


def from_hf_dataset(ds, spec: HubSpec, origin: str) -> Decoded:
    """A ``datasets.Dataset`` -> tensors, decoding the raw bytes ourselves (identical to the file formats)."""
    from datasets import Image as HFImage

    feature = ds.features[spec.label_col]
    classes = list(feature.names) if hasattr(feature, "names") else []
    raw = ds.cast_column(spec.image_col, HFImage(decode=False))
    blobs = []
    for item in raw[spec.image_col]:
        if item.get("bytes") is None:
            blobs.append(Path(item["path"]).read_bytes())
        else:
            blobs.append(item["bytes"])
    labels = torch.tensor(raw[spec.label_col], dtype=torch.int64)
    return decode_all(blobs, origin, spec.mode), labels, classes


def load_from_hub(spec: HubSpec, split: str) -> Decoded:
    """The split from the Hub; any failure to reach it raises ``ConnectionError``."""
    import datasets

    try:
        ds = datasets.load_dataset(spec.repo, spec.config, split=spec.splits[split])
    except Exception as e:  # offline, DNS, HTTP: datasets raises many types; all mean "no Hub copy"
        raise ConnectionError(type(e).__name__) from None
    return from_hf_dataset(ds, spec, spec.repo)


def _find_save_to_disk(root: Path, split: str) -> Optional[Path]:
    for cand in (root, *(p.parent for p in root.glob("*/dataset_dict.json"))):
        if (cand / "dataset_dict.json").is_file() or (cand / split / "state.json").is_file():
            return cand
    return None


def _find_parquet(spec: HubSpec) -> Callable[[Path, str], Optional[Path]]:
    def find(root: Path, split: str) -> Optional[Path]:
        hub_split = spec.splits[split]
        for sub in ("",) + spec.parquet_dirs:
            if sorted((root / sub).glob(f"{hub_split}-*.parquet")):
                return root / sub
        return None
    return find


def _read_save_to_disk(spec: HubSpec) -> Callable[[Path, str], Decoded]:
    def read(path: Path, split: str) -> Decoded:
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
        return from_hf_dataset(ds, spec, str(path))
    return read


def _read_parquet(spec: HubSpec) -> Callable[[Path, str], Decoded]:
    def read(path: Path, split: str) -> Decoded:
        import datasets

        files = sorted(str(p) for p in path.glob(f"{spec.splits[split]}-*.parquet"))
        try:
            ds = datasets.load_dataset("parquet", data_files={"split": files}, split="split")
        except Exception as e:
            raise ValueError(f"cannot read parquet files {files}: {e}") from None
        return from_hf_dataset(ds, spec, files[0])
    return read


def hub_sources(spec: HubSpec) -> Tuple[Source, ...]:
    """The two local copies of a Hub data set: ``save_to_disk`` and the repo's parquet files."""
    return (
        Source("a `datasets` save_to_disk folder (dataset_dict.json)", _find_save_to_disk, _read_save_to_disk(spec)),
        Source(f"a copy of the Hub repo {spec.repo} ({'/'.join(spec.parquet_dirs)}/<split>-*.parquet)",
               _find_parquet(spec), _read_parquet(spec)),
    )
