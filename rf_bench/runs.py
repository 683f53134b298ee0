"""The run directory: its file names, and the one atomic write every writer of rf-bench uses.

A run directory is what training writes and every other stage only reads (``config.json``, ``init.safetensors``,
``model.safetensors``, ``checkpoints/``, ``metrics.jsonl``, ``done`` last). Every file rf-bench writes, in a run
directory or a result store or a report, goes through `atomic_write`: a temporary file beside the target (named
with the writer's pid, so two processes never share one), then ``os.replace``, so a reader sees the old file or the
whole new one, never half of it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any, Callable, Dict

__all__ = ["CONFIG", "INIT_WEIGHTS", "FINAL_WEIGHTS", "CHECKPOINTS", "METRICS", "DONE", "WARNINGS",
           "atomic_write", "atomic_write_text", "atomic_write_json", "temporary_path", "replace_folder",
           "canonical_safetensors", "save_weights", "recorded_sha256", "read_warnings", "stable_hash"]

CONFIG = "config.json"  # resolved config, versions, git sha, data description
INIT_WEIGHTS = "init.safetensors"  # weights at step 0
FINAL_WEIGHTS = "model.safetensors"  # weights after the last epoch
CHECKPOINTS = "checkpoints"  # resumable state, one folder per saved step
METRICS = "metrics.jsonl"  # one line per epoch
DONE = "done"  # written last: the run is finished (with the final weights' sha256)
WARNINGS = "warnings.jsonl"  # what the trainer warned about while training (one JSON object a line)


def temporary_path(path: Path) -> Path:
    """The temporary name `atomic_write` writes ``path`` under: hidden, beside it, unique to this process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, binary: bool = False,
                 newline: str | None = None) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it over ``path``; returns ``path``.

    The parent folder is made if needed; on an error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": newline, "encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def replace_folder(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename a folder written in full under ``tmp`` to ``final`` (absent): it appears complete or not at all."""
    os.replace(tmp, final)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its ``__metadata__`` keys sorted: safetensors writes them in hash-map order,
    which differs from process to process, so identical tensors would get another sha256 on every write."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size].decode("utf-8"))
    if len(header.get("__metadata__") or {}) < 2:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return data[:8] + text.ljust(size, b" ") + data[8 + size:]  # same keys reordered: same length


def save_weights(state: Dict[str, Any], path: str | os.PathLike, metadata: Dict[str, str]) -> Path:
    """Weights as safetensors, atomically and byte for byte the same for the same tensors and metadata."""
    from safetensors.torch import save

    data = canonical_safetensors(save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata=metadata))
    return atomic_write(path, lambda f: f.write(data), binary=True)


def recorded_sha256(run_dir: str | os.PathLike) -> str | None:
    """The sha256 of ``model.safetensors`` recorded in ``done`` when training finished (None for older runs)."""
    path = Path(run_dir) / DONE
    lines = path.read_text().splitlines() if path.is_file() else []
    found = [line.split()[-1] for line in lines if line.startswith("sha256")]
    return found[0] if found else None


def read_warnings(run_dir: str | os.PathLike) -> list:
    """What the trainer warned about while training a run (``warnings.jsonl``, one object a line; [] if none)."""
    path = Path(run_dir) / WARNINGS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of a string."""
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`atomic_write` of ``obj`` as indented JSON with sorted keys and a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def stable_hash(obj: Any) -> str:
    """A short, stable hash of a JSON-able object (sorted keys): run and result ids (`rf_bench.recipes.config_hash`
    is this of a training config's identity)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]
