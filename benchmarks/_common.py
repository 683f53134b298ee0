"""Shared helpers for the side-by-side benchmarks: timing and writing results atomically."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> Dict[str, Any]:
    return dict(python=platform.python_version(), torch=torch.__version__, cpus=os.cpu_count(),
                threads=torch.get_num_threads(), processor=platform.processor() or platform.machine())


def write_result(name: str, result: Dict[str, Any], markdown: str) -> Path:
    """``results/<name>.json`` and ``.md``, each replaced atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = dict(result, machine=machine(), date=time.strftime("%Y-%m-%d %H:%M:%S"))
    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", markdown)):
        path = RESULTS / f"{name}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return RESULTS / f"{name}.json"


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
