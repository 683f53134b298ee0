"""The run directory: its file names, its weights files, and reading a finished run (`Run`, `load_run`).

A run directory is what training writes and every other stage only reads (``config.json``, ``init.safetensors``,
``model.safetensors``, ``checkpoints/``, ``metrics.jsonl``, ``warnings.jsonl``, ``done`` last). Its files are
written through `rf_bench.files.atomic_write` (re-exported here with the other atomic helpers).
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .checkpoints import load_weights, sha256_file
from .files import atomic_write, atomic_write_json, atomic_write_text, replace_folder, stable_hash, temporary_path

__all__ = ["CONFIG", "INIT_WEIGHTS", "FINAL_WEIGHTS", "CHECKPOINTS", "METRICS", "DONE", "WARNINGS",
           "atomic_write", "atomic_write_text", "atomic_write_json", "temporary_path", "replace_folder",
           "canonical_safetensors", "save_weights", "recorded_sha256", "recorded_finish_time", "read_warnings",
           "stable_hash", "Run", "load_run", "find_runs", "group_runs", "read_metrics", "run_versions", "git_sha",
           "complete_checkpoints", "latest_checkpoint", "unreadable_checkpoint_errors", "weights_intact",
           "truncate_metrics"]

CONFIG = "config.json"  # resolved config, versions, git sha, data description
INIT_WEIGHTS = "init.safetensors"  # weights at step 0
FINAL_WEIGHTS = "model.safetensors"  # weights after the last epoch
CHECKPOINTS = "checkpoints"  # resumable state, one folder per saved step
METRICS = "metrics.jsonl"  # one line per epoch
DONE = "done"  # written last: the run is finished (with the final weights' sha256)
WARNINGS = "warnings.jsonl"  # what the trainer warned about while training (one JSON object a line)


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


def _done_lines(run_dir: str | os.PathLike) -> List[str]:
    """The lines of ``done``: when training finished, then ``sha256 <hex>`` of the final weights ([] if unfinished)."""
    path = Path(run_dir) / DONE
    return path.read_text().splitlines() if path.is_file() else []


def recorded_sha256(run_dir: str | os.PathLike) -> str | None:
    """The sha256 of ``model.safetensors`` recorded in ``done`` when training finished (None for older runs)."""
    found = [line.split()[-1] for line in _done_lines(run_dir) if line.startswith("sha256")]
    return found[0] if found else None


def recorded_finish_time(run_dir: str | os.PathLike) -> str | None:
    """When training finished, as ``done`` records it (``2026-01-01T12:00:00``, local time; None if it does not)."""
    first = (_done_lines(run_dir) or [""])[0].strip()
    return first if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", first) else None


def _json_lines(path: Path) -> List[Dict[str, Any]]:
    """One dict per non-empty line of a JSON-lines file ([] if it does not exist yet)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_warnings(run_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """What the trainer warned about while training a run (``warnings.jsonl``, one object a line; [] if none)."""
    return _json_lines(Path(run_dir) / WARNINGS)


# ------------------------------------------------------------------------------ reading a run

_RFPOOL = re.compile(r"rfpool(\d+)")


@dataclass(frozen=True)
class Run:
    """A finished training run directory (read-only for everything but the trainer)."""

    path: Path
    meta: Dict[str, Any]

    @property
    def run_id(self) -> str:
        """The run directory's name: model, data set, seed and config hash."""
        return self.meta.get("run_id", self.path.name)

    @property
    def config(self) -> Dict[str, Any]:
        """The run's resolved ``TrainConfig`` as a dict."""
        return self.meta["config"]

    @property
    def model_name(self) -> str:
        """The timm model name the run trained."""
        return self.config["model"]

    @property
    def dataset(self) -> str:
        """The data set the run trained on."""
        return self.config["dataset"]

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self.config["seed"]

    @property
    def k(self) -> Optional[int]:
        """The rfpool kernel size of the model (None for other models)."""
        m = _RFPOOL.search(self.model_name)
        return int(m.group(1)) if m else None

    @property
    def family(self) -> str:
        """The model name with its k replaced: ``resnet50_rfpool``."""
        return _RFPOOL.sub("rfpool", self.model_name)

    @property
    def group_id(self) -> str:
        """Same for every seed of one (model, dataset, recipe and overrides)."""
        return "group-" + stable_hash({k: v for k, v in self.config.items() if k != "seed"})

    @property
    def input_size(self) -> tuple:
        """The input size ``(C, H, W)`` the run trained on."""
        return tuple(self.meta["data"]["input_size"])

    @property
    def weights_sha256(self) -> Optional[str]:
        """The sha256 of ``model.safetensors`` recorded when training finished (None for runs from before it was)."""
        return recorded_sha256(self.path)

    def verify_weights(self) -> None:
        """Refuse final weights that are not the ones training finished with (damaged, replaced, half-copied)."""
        recorded, path = self.weights_sha256, self.path / FINAL_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"run {self.path} has no model.safetensors; rerun its training command to rebuild "
                                    "it from the last checkpoint")
        if recorded and sha256_file(path) != recorded:
            raise ValueError(f"run {self.path}: model.safetensors does not match the sha256 recorded when training "
                             "finished (damaged?); rerun its training command to rebuild it, or restore the file")

    def warnings(self) -> List[Dict[str, Any]]:
        """What the trainer warned about while training this run (``warnings.jsonl``: e.g. not learning)."""
        return read_warnings(self.path)

    @property
    def not_learning(self) -> bool:
        """Whether the trainer found this run not learning (training accuracy near chance, loss flat)."""
        return any(w.get("kind") == "not_learning" for w in self.warnings())

    def final_metrics(self) -> Dict[str, Any]:
        """The last epoch's line of ``metrics.jsonl`` (epoch, losses and accuracies; ``{}`` if there is none)."""
        epochs = read_metrics(self.path)
        last = epochs[-1] if epochs else {}
        return {k: last[k] for k in ("epoch", "test_acc", "test_loss", "train_acc", "train_loss") if k in last}

    def create_model(self, stage: str = "final") -> nn.Module:
        """The run's model with its ``init`` or ``final`` weights, in eval mode on the CPU."""
        import timm

        import rf_bench.models  # noqa: F401  (registers the rfpool models)

        model = timm.create_model(self.model_name, **self.meta["model_kwargs"])
        load_weights(model, self.path / (INIT_WEIGHTS if stage == "init" else FINAL_WEIGHTS))
        return model.eval()

    def load_data(self, split: str, data_dir: Optional[str] = None):
        """The split as the run saw it, at its image size: its training subset (``train_per_class``) for ``train``,
        the whole test."""
        from rf_bench import data as rf_data

        data = rf_data.load(self.dataset, split, data_dir=data_dir).resized(self.config.get("image_size"))
        per_class = self.config.get("train_per_class")
        if per_class and split == "train":
            data = data.per_class(per_class, self.config.get("subset_seed", 0))
        return data


def load_run(path: str | os.PathLike) -> Run:
    """The run directory at ``path``; a one-line error if it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run directory: {path} does not exist; check the path, or point at a folder "
                                "of runs (`rf-bench probe runs/`)")
    if not (path / CONFIG).is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json); point at <output>/<run id>")
    if not (path / DONE).is_file():
        raise ValueError(f"run {path} is not finished (no `done` marker); rerun its training command to finish it")
    try:
        meta = json.loads((path / CONFIG).read_text())
        meta["config"]["model"], meta["config"]["dataset"]
    except (ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or not UTF-8
        raise ValueError(f"{path / CONFIG} is damaged ({type(e).__name__}: {e}); delete the run directory "
                         "and rerun its training command") from None
    return Run(path=path, meta=meta)


def find_runs(patterns: Sequence[str]) -> List[Run]:
    """Run directories matching paths or globs; a folder of runs counts as all of them."""
    paths: List[Path] = []
    for pattern in patterns:
        matches = [Path(p) for p in sorted(glob.glob(os.path.expanduser(pattern)))]
        if not matches and glob.has_magic(pattern):
            raise FileNotFoundError(f"no path matches {pattern}; check the pattern, or point at a folder of runs")
        matches = matches or [Path(pattern)]
        for p in matches:
            if (p / CONFIG).is_file():
                paths.append(p)
            elif p.is_dir() and any((c / CONFIG).is_file() for c in p.iterdir() if c.is_dir()):
                paths += sorted(c for c in p.iterdir() if (c / CONFIG).is_file())
            else:
                paths.append(p)  # load_run says what is wrong with it
    seen, runs = set(), []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            runs.append(load_run(p))
    return runs


def group_runs(runs: Iterable[Run]) -> Dict[str, List[Run]]:
    """Runs by group id (all seeds of one model, data set and recipe), seeds in order."""
    groups: Dict[str, List[Run]] = {}
    for run in runs:
        groups.setdefault(run.group_id, []).append(run)
    return {g: sorted(rs, key=lambda r: r.seed) for g, rs in sorted(groups.items())}


# ------------------------------------------------------------- what training writes and resumes from

def read_metrics(run_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """The run's ``metrics.jsonl``, one dict per finished epoch (empty if there is none yet)."""
    return _json_lines(Path(run_dir) / METRICS)


def run_versions() -> Dict[str, Optional[str]]:
    """The versions a run was made with, read from the installed metadata (no import: ``datasets`` is only
    needed for Hub and parquet data, and a GPU image may lack it)."""
    from importlib.metadata import PackageNotFoundError, version

    import rf_bench

    def installed(name: str) -> Optional[str]:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return dict(rf_bench=rf_bench.__version__, torch=torch.__version__, timm=installed("timm"),
                accelerate=installed("accelerate"), datasets=installed("datasets"), python=sys.version.split()[0])


def git_sha() -> Optional[str]:
    """The git commit rf-bench runs from (None outside a clone)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def complete_checkpoints(run_dir: Path) -> List[Path]:
    """Checkpoints whose writing finished, oldest first (a corrupt one may still be among them)."""
    ckpts = sorted((run_dir / CHECKPOINTS).glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return [p for p in ckpts if (p / "trainer_state.json").is_file()]


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest checkpoint whose writing finished (None before the first)."""
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def unreadable_checkpoint_errors() -> Tuple[type, ...]:
    """What reading a damaged checkpoint or weights file raises."""
    import pickle

    from safetensors import SafetensorError

    return (SafetensorError, RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError)


def weights_intact(run_dir: Path) -> bool:
    """``model.safetensors`` matches the sha256 in ``done`` (older runs: it loads)."""
    path = run_dir / FINAL_WEIGHTS
    if not path.is_file():
        return False
    recorded = recorded_sha256(run_dir)
    if recorded:
        return sha256_file(path) == recorded
    from safetensors.torch import load_file

    try:
        load_file(str(path))
    except unreadable_checkpoint_errors():
        return False
    return True


def truncate_metrics(path: Path, before_epoch: int) -> None:
    """Drop metric lines of epochs that the checkpoint being resumed did not finish."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] < before_epoch]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
