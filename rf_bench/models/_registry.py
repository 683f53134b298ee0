"""timm registration helpers: the k range, default cfgs, and pretrained tags from ``registry/`` manifests.

A manifest is ``registry/<model>.json``: ``{"model": name, "tags": {tag: entry}}`` where an entry
holds the Hub repo id and revision, file name, sha256, size, num_classes, input size, mean/std,
metrics and recipe. Each tag becomes a timm pretrained cfg ``<model>.<tag>``; an empty registry is
valid (every model then has one untagged cfg without weights).
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict, Iterator, Tuple

from timm.models import generate_default_cfgs

from ._rfpool import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["RFPOOL_KS", "rfpool_default_cfgs", "iter_manifests"]

RFPOOL_KS = tuple(range(1, 9))


def iter_manifests() -> Iterator[Dict[str, Any]]:
    """Yield every manifest shipped in ``rf_bench.registry`` (the repo's ``registry/`` folder)."""
    try:
        folder = resources.files("rf_bench.registry")
    except ModuleNotFoundError:
        return
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            yield json.loads(entry.read_text(encoding="utf-8"))


def _base_cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10, "input_size": (3, 32, 32), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": CIFAR10_MEAN, "std": CIFAR10_STD,
        "license": "apache-2.0",
        **kwargs,
    }


def _tag_cfg(entry: Dict[str, Any], **kwargs: Any) -> Dict[str, Any]:
    """A published checkpoint as a timm pretrained cfg (downloaded through timm's Hub path)."""
    hub_id = entry["repo_id"]
    if entry.get("revision"):
        hub_id = f"{hub_id}@{entry['revision']}"
    return _base_cfg(
        hf_hub_id=hub_id,
        hf_hub_filename=entry.get("filename", "model.safetensors"),
        num_classes=entry["num_classes"],
        input_size=tuple(entry["input_size"]),
        mean=tuple(entry["mean"]),
        std=tuple(entry["std"]),
        **kwargs,
    )


def rfpool_default_cfgs(prefix: str, **kwargs: Any) -> Dict[str, Any]:
    """timm ``default_cfgs`` for ``<prefix>1..8``: one untagged cfg each, plus published tags."""
    cfgs: Dict[str, Dict[str, Any]] = {f"{prefix}{k}": _base_cfg(**kwargs) for k in RFPOOL_KS}
    for manifest in iter_manifests():
        name = manifest["model"]
        if not name.startswith(prefix):
            continue
        for tag, entry in sorted(manifest.get("tags", {}).items()):
            cfgs[f"{name}.{tag}"] = _tag_cfg(entry, **kwargs)
    return generate_default_cfgs(cfgs)


def manifest_entry(model_tag: str) -> Tuple[str, Dict[str, Any]]:
    """Find the manifest entry of ``model.tag``; ``KeyError`` if it was never published."""
    name, _, tag = model_tag.partition(".")
    for manifest in iter_manifests():
        if manifest["model"] == name and tag in manifest.get("tags", {}):
            return name, manifest["tags"][tag]
    raise KeyError(model_tag)
