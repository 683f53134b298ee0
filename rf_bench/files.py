"""Files every writer of rf-bench shares: the one atomic write, and the stable hash that names runs and results.

Every file rf-bench writes, in a run directory or a result store or a report, goes through `atomic_write`: a
temporary file beside the target (named with the writer's pid, so two processes never share one), then
``os.replace``, so a reader sees the old file or the whole new one, never half of it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "temporary_path", "replace_folder",
           "stable_hash"]


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
