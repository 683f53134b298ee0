"""Results: the atomic result store, and how results are grouped (by setting, by training variant).

Reading run directories is `rf_bench.runs`'s job (``Run``, ``load_run``, ``find_runs`` and ``group_runs`` are
re-exported here).

A result is ``<results>/<key>/<probe>-<config hash>.json`` (plus ``.safetensors`` for tensors), where
``key`` is a run id, or ``group-<hash>`` for probes over all seeds of one (model, dataset, config).
Files are written to a temporary name and renamed, so a reader sees a whole result or none, and a
per-result lock file keeps two ``rf-bench probe`` processes from computing the same result twice.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .checkpoints import load_weights, sha256_file
from .recipes import RECIPES
from .runs import CONFIG, DONE, Run, atomic_write, atomic_write_json, find_runs, group_runs, load_run, stable_hash

__all__ = [
    "Run", "load_run", "find_runs", "group_runs", "load_weights", "sha256_file", "write_json_atomic",
    "ResultStore", "stable_hash", "settings_groups", "record_family", "record_k", "record_variant", "variant_groups",
]


def settings_groups(records: List[Dict[str, Any]], read_together: Sequence[str] = ()
                    ) -> List[Tuple[str, Dict[str, Any], List[Dict[str, Any]]]]:
    """Results of one probe split by setting: probe version and config, less the keys in ``read_together``.

    Each group comes as (label, setting, records); the label names what sets it apart from the other groups,
    e.g. ``finetune_epochs=2`` ("" when all results share one setting).
    """
    def setting(record: Dict[str, Any]) -> Dict[str, Any]:
        config = record.get("config") or {}
        described = {"version": record.get("version")}
        described.update((key, config[key]) for key in sorted(config) if key not in read_together)
        return described

    return _labelled_groups(records, setting)


def _labelled_groups(records: List[Dict[str, Any]], describe, context: Optional[List[Dict[str, Any]]] = None
                     ) -> List[Tuple[str, Dict[str, Any], List[Dict[str, Any]]]]:
    """``records`` split by ``describe(record)`` (a dict), each group as (label, description, records); the label
    lists the keys whose values differ between the groups of ``context`` (default: ``records``; "" where there is
    one), as `_recipe_aware` shortens it."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    described: Dict[str, Dict[str, Any]] = {}
    for record in records:
        description = describe(record)
        key = json.dumps(description, sort_keys=True, default=str)
        groups.setdefault(key, []).append(record)
        described[key] = description
    every = {json.dumps(d, sort_keys=True, default=str): d for d in map(describe, context or [])}
    every.update(described)
    if len(every) <= 1:
        return [("", description, groups[key]) for key, description in described.items()]
    names = dict.fromkeys(name for description in every.values() for name in description)
    differ = [name for name in names
              if len({json.dumps(d.get(name), default=str) for d in every.values()}) > 1]
    differ = _recipe_aware(names, differ, list(every.values()))
    return [(", ".join(f"{name}={_setting_value(described[key].get(name))}" for name in differ), described[key],
             group) for key, group in groups.items()]


def _recipe_aware(names: Iterable[str], differ: List[str], described: List[Dict[str, Any]]) -> List[str]:
    """Where the recipe differs between groups it names what it sets: ``differ`` less the keys that every group
    has at its own recipe's value, plus those that some group overrides (``lr=0.1, recipe=paper``)."""
    if "recipe" not in differ:
        return differ
    def at_recipe(name: str, d: Dict[str, Any]) -> bool:
        recipe = RECIPES.get(d.get("recipe"), {})
        return name in recipe and recipe[name] == d.get(name)

    def recipe_key(name: str) -> bool:
        return any(name in RECIPES.get(d.get("recipe"), {}) for d in described)

    return [name for name in names if name == "recipe"
            or (name in differ and not all(at_recipe(name, d) for d in described))
            or (recipe_key(name) and not all(at_recipe(name, d) for d in described))]


def record_family(record: Dict[str, Any]) -> Optional[str]:
    """The rfpool family of a result's runs (from the harness's record, else the probe's values)."""
    return record.get("family") or (record.get("values") or {}).get("family")


def record_k(record: Dict[str, Any]) -> Optional[int]:
    """The rfpool k of a result's runs (from the harness's record, else the probe's values)."""
    k = record.get("k")
    k = (record.get("values") or {}).get("k") if k is None else k
    return None if k is None else int(k)


# training settings that never set runs apart: the seed varies within a group; the model is (family, k)
_NOT_A_VARIANT = ("seed", "model", "dataset")


def record_variant(record: Dict[str, Any]) -> Dict[str, Any]:
    """What a result's runs were trained with besides family, k, data set and seed (``width_mult``, recipe, ...).

    Model keyword arguments come first, by name; then the other training settings. Read from the record
    (``train``), or, for results stored before it was recorded, from the first run's ``config.json``.
    """
    train = record.get("train")
    if train is None:
        dirs = record.get("run_dirs") or []
        path = Path(dirs[0]) / CONFIG if dirs else None
        train = json.loads(path.read_text())["config"] if path and path.is_file() else {}
    variant = {f"{key}": value for key, value in sorted((train.get("model_kwargs") or {}).items())}
    variant.update((key, value) for key, value in sorted(train.items())
                   if key not in _NOT_A_VARIANT and key != "model_kwargs"
                   and not (key == "image_size" and value is None))  # the data set's own size, as before the field
    return variant


def variant_groups(records: List[Dict[str, Any]], context: Optional[List[Dict[str, Any]]] = None
                   ) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """Results split by `record_variant`, each labelled by what sets it apart (e.g. ``width_mult=0.25``) among the
    results of ``context`` (default: ``records``): a family trained at one width, beside one trained at several,
    still says its width.

    Runs trained differently are never pooled, as if they were seeds; one variant gives one group, label "".
    """
    labelled = [(label, group) for label, _, group in _labelled_groups(records, record_variant, context)]
    return sorted(labelled, key=lambda item: _variant_order(item[0]))


def _variant_order(label: str) -> Tuple:
    """Labels sort by their numbers where they have them (width_mult=0.0625 before 0.125 before 0.25)."""
    parts = []
    for item in label.split(", "):
        name, _, value = item.partition("=")
        try:
            parts.append((name, 0, float(value), ""))
        except ValueError:
            parts.append((name, 1, 0.0, value))
    return tuple(parts)


def _setting_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return "-" if value is None else str(value)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (`rf_bench.runs.atomic_write_json`)."""
    atomic_write_json(path, obj)


def _record_problem(record: Any) -> Optional[str]:
    """Why a parsed result file cannot be used (None if it can)."""
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not a result object"
    missing = [key for key in ("probe", "values", "dataset") if key not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(record["values"], dict):
        return "its values are not an object"
    return None


class ResultStore:
    """One JSON (+ optional safetensors) per (run or group, probe, probe-config hash)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.skipped: Dict[Path, str] = {}  # result files that could not be used, and why

    def path(self, key: str, probe: str, cfg_hash: str) -> Path:
        """Where the result of ``probe`` with ``config`` on ``key`` is stored."""
        return self.root / key / f"{probe}-{cfg_hash}.json"

    def read(self, path: Path) -> Optional[Dict[str, Any]]:
        """The result at ``path``; None if absent or unusable (then noted in ``skipped``, never raised)."""
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:  # ValueError: bad JSON or not UTF-8
            reason = f"unreadable ({type(e).__name__}: {str(e)[:80]})"
        else:
            reason = _record_problem(record)
            if reason is None:
                return record
        self.skipped[path] = reason
        return None

    def write(self, path: Path, record: Dict[str, Any], tensors: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Store a result (JSON values, tensors beside) atomically."""
        if tensors:
            from safetensors.torch import save

            tensor_path = path.with_suffix(".safetensors")
            data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
            atomic_write(tensor_path, lambda f: f.write(data), binary=True)
            record = dict(record, tensors=tensor_path.name)
        write_json_atomic(path, record)  # the JSON last: its presence means the tensors are there too

    def tensors(self, record_path: Path) -> Dict[str, torch.Tensor]:
        """The tensors stored with a result (empty if it has none)."""
        from safetensors.torch import load_file

        return load_file(str(record_path.with_suffix(".safetensors")))

    def records(self, probe: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every stored result (optionally of one probe), with its path."""
        out = []
        for path in sorted(self.root.glob("*/*.json")):
            rec = self.read(path)
            if rec and (probe is None or rec["probe"] == probe):
                out.append(dict(rec, _path=str(path)))
        return out

    def check_folder(self) -> None:
        """One line, worded alike by ``report`` and ``claims``, when the folder is missing or holds runs instead of
        probe results."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"no results folder {self.root}; make it with `rf-bench probe RUNS --results "
                                    f"{self.root}` (or a sweep), or name the folder that holds the results")
        if any((child / CONFIG).is_file() and (child / DONE).exists() for child in self.root.iterdir()
               if child.is_dir()):
            raise ValueError(f"{self.root} holds run directories, not probe results; make results with `rf-bench probe "
                             f"{self.root} --results results`, then name that folder")

    def nothing_usable(self) -> Exception:
        """The error for a store with no usable result: the unusable files named, each with why, or "run probe"."""
        if not self.skipped:
            return FileNotFoundError(f"no probe results in {self.root}; run `rf-bench probe` first")
        files = "; ".join(f"{path} is {reason}" for path, reason in sorted(self.skipped.items()))
        return ValueError(f"no usable probe results in {self.root}: {files}; delete or repair "
                          f"{'it' if len(self.skipped) == 1 else 'them'}, then `rf-bench probe` recomputes the results")

    def skipped_note(self) -> str:
        """One line per skipped result file, with what to do about it (empty when none was skipped)."""
        return "".join(f"warning: result {path} is {reason}; left out (`rf-bench probe` recomputes it)\n"
                       for path, reason in sorted(self.skipped.items()))

    def lock(self, path: Path):
        """A lock file for one result, so concurrent ``rf-bench probe`` processes split the work."""
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path.with_name(f".{path.name}.lock")))
