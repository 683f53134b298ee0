"""Shared helpers for the side-by-side benchmarks: timing and writing results atomically."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> Dict[str, Any]:
    return dict(python=platform.python_version(), torch=torch.__version__, cpus=os.cpu_count(),
                threads=torch.get_num_threads(), processor=platform.processor() or platform.machine())


def describe(info: Dict[str, Any]) -> str:
    """One line naming the machine a result was measured on."""
    return (f"{info['processor']}, {info['cpus']} CPUs ({info['threads']} torch threads), Python {info['python']}, "
            f"torch {info['torch']}")


def gpu_results_folder(out: Optional[Path], quick: bool, device: torch.device) -> Optional[Path]:
    """Where a GPU benchmark writes: ``--out`` when given; else ``benchmarks/results`` for a GPU's figures, and
    nowhere for a smoke test (``--quick``, or a CPU), whose numbers are not a GPU's."""
    if out is not None:
        return out
    return None if quick or device.type != "cuda" else RESULTS


def failure_reason(error: BaseException) -> str:
    """A failed measurement in one line: the exception's type and its message's last line (where CUDA's
    out-of-memory message says what it tried to allocate)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def write_result(name: str, result: Dict[str, Any], markdown: str, folder: Optional[Path] = None) -> Path:
    """``<folder>/<name>.json`` and ``.md`` (which ends with the machine and date), each replaced atomically;
    ``folder`` defaults to ``benchmarks/results``."""
    folder = Path(folder) if folder is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    result = dict(result, machine=machine(), date=time.strftime("%Y-%m-%d %H:%M:%S"))
    markdown = markdown.rstrip("\n") + f"\n\nMeasured on {describe(result['machine'])}, {result['date']}.\n"
    from rf_bench.files import atomic_write_text

    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", markdown)):
        atomic_write_text(folder / f"{name}{suffix}", text)
    return folder / f"{name}.json"


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def benchmark_device(name: str) -> Tuple[torch.device, str]:
    """The device a GPU benchmark runs on and its name; a one-line exit where CUDA is asked for and absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run on a GPU machine, or `--device cpu --quick` to check the "
                         "script itself")
    return device, torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock timings cover it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
