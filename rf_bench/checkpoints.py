"""Published checkpoints: manifests in ``registry/``, verified downloads, and safe weight loading.

The layer below both ``models/_registry.py`` (``pretrained=True``) and ``hub.py`` (publishing): it reads
manifests, fetches a pinned file through ``huggingface_hub`` and checks its sha256, and loads weights
only from safetensors. It imports nothing else of rf-bench.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from torch import nn

__all__ = [
    "HubError", "WEIGHTS_NAME", "REGISTRY_ENV", "iter_manifests", "manifest_entry", "published_tags",
    "fetch_checkpoint", "sha256_file", "load_weights", "hub_error", "is_hub_failure",
]

WEIGHTS_NAME = "model.safetensors"
REGISTRY_ENV = "RF_BENCH_REGISTRY"


class HubError(RuntimeError):
    """A Hub problem stated in one line, with what to do about it."""


# ---------------------------------------------------------------- manifests

def _manifest_folders() -> Iterator[Any]:
    try:
        yield resources.files("rf_bench.registry")
    except ModuleNotFoundError:
        pass
    # extra folders (a lab's own publications) come after the shipped one, so their tags win
    for folder in filter(None, os.environ.get(REGISTRY_ENV, "").split(os.pathsep)):
        if Path(folder).is_dir():
            yield Path(folder)


def iter_manifests() -> Iterator[Dict[str, Any]]:
    """Yield every manifest: those shipped in ``rf_bench.registry`` (the repo's ``registry/``), then those in
    the folders named by ``$RF_BENCH_REGISTRY`` (``os.pathsep``-separated)."""
    for folder in _manifest_folders():
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".json"):
                yield json.loads(entry.read_text(encoding="utf-8"))


def manifest_entry(model_tag: str) -> Tuple[str, Dict[str, Any]]:
    """Find the manifest entry of ``model.tag`` (the last folder wins); ``KeyError`` if it was never published."""
    name, _, tag = model_tag.partition(".")
    found = None
    for manifest in iter_manifests():
        if manifest["model"] == name and tag in manifest.get("tags", {}):
            found = manifest["tags"][tag]
    if found is None:
        raise KeyError(model_tag)
    return name, found


def published_tags() -> Dict[str, Dict[str, Any]]:
    """``{"<model>.<tag>": manifest entry}`` for every published tag this install knows."""
    out = {}
    for manifest in iter_manifests():
        for tag, entry in manifest.get("tags", {}).items():
            out[f"{manifest['model']}.{tag}"] = entry
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- download

def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_error(e: Exception, repo_id: str, doing: str) -> HubError:
    """The Hub's answer (or the network's silence) as one actionable line."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        return HubError(f"cannot {doing} {repo_id}: HF_HUB_OFFLINE is set; unset it, or use --dry-run")
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        server = e.server_message or e.response.reason_phrase
        if status == 401:
            return HubError(f"the Hub refused the token ({status}: {server}); run `hf auth login` or set HF_TOKEN")
        if status == 403:
            return HubError(f"{repo_id} exists and this token cannot write to it ({status}: {server}); "
                            f"publish under a namespace you own with --namespace")
        if status == 404:
            return HubError(f"{repo_id} not found on {_endpoint()} ({server}); check the name and revision")
        return HubError(f"the Hub answered {status} to {doing} {repo_id}: {server}")
    return HubError(f"cannot reach the Hub at {_endpoint()} to {doing} {repo_id} ({type(e).__name__}: {e}); "
                    f"check the network, or work offline with HF_HUB_OFFLINE=1 and `rf-bench pull` done elsewhere")


def is_hub_failure(e: Exception) -> bool:
    """An HTTP answer from the Hub, offline mode, or a transport failure (whichever HTTP client the Hub uses)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    transport = type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3")
    return isinstance(e, (HfHubHTTPError, OfflineModeIsEnabled, OSError)) or transport


def fetch_checkpoint(entry: Dict[str, Any], *, cache_dir: Optional[str] = None) -> Path:
    """Download (or find in the cache) one published file at its pinned revision and check its sha256.

    This is the call timm's loader makes (same cache), so loading right after costs no second download.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, filename, revision = entry["repo_id"], entry.get("filename", WEIGHTS_NAME), entry.get("revision")
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except LocalEntryNotFoundError:
        raise HubError(f"{repo_id}@{revision} is not in the local cache and the Hub cannot be reached; "
                       f"run `rf-bench pull` where there is network (same HF_HOME), then use HF_HUB_OFFLINE=1") from None
    except Exception as e:
        if not is_hub_failure(e):
            raise
        raise hub_error(e, repo_id, "download") from None
    expected = entry.get("sha256")
    if expected:
        actual = sha256_file(path)
        if actual != expected:
            raise HubError(f"{repo_id}/{filename}@{revision} has sha256 {actual[:12]}..., the manifest says "
                           f"{expected[:12]}...; delete {path} (or the repo's cache folder) and download again, "
                           f"and tell the publisher if it persists")
    return path


# ---------------------------------------------------------------- weights

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load a safetensors state dict, with one-line errors for corrupt or mismatched files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"corrupt checkpoint {path} ({e}); re-download it or rerun its training") from None
    missing, unexpected = [], []
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            missing.append(k)
        elif state[k].shape != v.shape:
            raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: {k} is "
                             f"{tuple(state[k].shape)}, the model wants {tuple(v.shape)}; check the model name and kwargs")
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}; check the model name and kwargs")
    model.load_state_dict(state, strict=strict)
