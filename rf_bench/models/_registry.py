"""timm registration helpers: the k range, default cfgs, and pretrained tags from ``registry/`` manifests.

A manifest is ``registry/<model>.json``: ``{"model": name, "tags": {tag: entry}}`` where an entry
holds the Hub repo id and revision, file name, sha256, size, num_classes, input size, mean/std,
metrics and recipe. Each tag becomes a timm pretrained cfg ``<model>.<tag>``; an empty registry is
valid (every model then has one untagged cfg without weights).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from timm.models import generate_default_cfgs

from ..checkpoints import fetch_checkpoint, iter_manifests, manifest_entry
from ._rfpool import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["RFPOOL_KS", "rfpool_default_cfgs", "iter_manifests", "manifest_entry", "published_model_kwargs",
           "unknown_model_hint"]

RFPOOL_KS = tuple(range(1, 9))


CIFAR_SIZE = 32


def _base_cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10, "input_size": (3, CIFAR_SIZE, CIFAR_SIZE), "pool_size": None,
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


def _sizes(k: int, min_size_after_pool: int, final_side: Callable[[int, int], int], input_size=None):
    """``input_size`` (the CIFAR size, or the smallest the model accepts at this ``k``) and ``pool_size``."""
    if input_size is None:
        side = max(CIFAR_SIZE, k * min_size_after_pool)
        input_size = (3, side, side)
    input_size = tuple(input_size)
    return dict(input_size=input_size, pool_size=(final_side(input_size[1], k), final_side(input_size[2], k)))


def rfpool_default_cfgs(prefix: str, min_size_after_pool: int, final_side: Callable[[int, int], int],
                        **kwargs: Any) -> Dict[str, Any]:
    """timm ``default_cfgs`` for ``<prefix>1..8``: one untagged cfg each, plus published tags.

    ``final_side(size, k)`` is the side of the last feature map for a ``size`` input: the cfg's ``pool_size``.
    """
    cfgs: Dict[str, Dict[str, Any]] = {
        f"{prefix}{k}": _base_cfg(**_sizes(k, min_size_after_pool, final_side), **kwargs) for k in RFPOOL_KS}
    for manifest in iter_manifests():
        name = manifest["model"]
        if not name.startswith(prefix):
            continue
        k = int(name[len(prefix):])
        for tag, entry in sorted(manifest.get("tags", {}).items()):
            pool_size = _sizes(k, min_size_after_pool, final_side, entry["input_size"])["pool_size"]
            cfgs[f"{name}.{tag}"] = _tag_cfg(entry, pool_size=pool_size, **kwargs)
    return generate_default_cfgs(cfgs)


def unknown_model_hint(name: str) -> Optional[str]:
    """None if timm knows ``name`` (a pretrained tag after a dot is fine); else what to write instead."""
    import timm

    from ..hints import nearest

    arch = name.split(".")[0]
    if timm.is_model(arch):
        return None
    close = nearest(arch, timm.list_models(), n=3, cutoff=0.6)
    return f"did you mean {', '.join(close)}?" if close else "see timm.list_models('*rfpool*')"


_WEIGHT_SOURCES = ("file", "url", "state_dict", "hf_hub_id")


def published_model_kwargs(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Model kwargs for ``timm.create_model(variant[.tag], pretrained=...)``.

    As in timm, ``pretrained=True`` without a tag means the default tag (the first published one). A published
    tag brings the constructor arguments it was trained with (e.g. ``width_mult``; the caller's
    kwargs win). With ``pretrained=True`` the tag's file is fetched into timm's Hub cache and its sha256
    checked before timm loads it; a model without published weights is refused instead of silently random.
    """
    tag: Optional[str] = kwargs.get("pretrained_cfg") if isinstance(kwargs.get("pretrained_cfg"), str) else None
    if tag is None and pretrained and kwargs.get("pretrained_cfg") is None:
        from timm.models import get_pretrained_cfg

        default = get_pretrained_cfg(variant)  # timm's default: the first published tag, if any
        tag = default.tag if default is not None and default.has_weights else None
    entry = None
    if tag:
        try:
            entry = manifest_entry(f"{variant}.{tag}")[1]
        except KeyError:
            raise ValueError(f"unknown pretrained tag {variant}.{tag}; {_published_hint(variant)}") from None
        kwargs = {**entry.get("model_args", {}), **kwargs}
    if not pretrained or kwargs.get("pretrained_cfg") is not None and not isinstance(kwargs["pretrained_cfg"], str):
        return kwargs  # no weights wanted, or the caller's own pretrained_cfg dict
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if any(overlay.get(k) for k in _WEIGHT_SOURCES):
        return kwargs  # the caller points at their own weights
    if entry is None:
        raise ValueError(f"{variant} has no default weights; name a published tag: {_published_hint(variant)}")
    fetch_checkpoint(entry)
    return kwargs


def _published_hint(variant: str) -> str:
    tags = [f"{m['model']}.{t}" for m in iter_manifests() if m["model"] == variant for t in m.get("tags", {})]
    shown = ", ".join(sorted(tags)[:6]) if tags else "none published yet (rf-bench publish, or pretrained=False)"
    return f"published: {shown}; see timm.list_pretrained('*rfpool*')"
