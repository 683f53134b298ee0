"""The probe protocol, probe discovery (entry points), and the harness that runs a suite over runs.

A probe is a class with a ``name``, a ``version``, a ``Config`` dataclass of settings, a ``scope``
(``"run"``: one result per run; ``"group"``: one result per group of seeds) and a ``run`` method
returning a :class:`ProbeOutput`. Built-in and third-party probes are found the same way: through
the ``rf_bench.probes`` entry-point group, e.g. in a plugin's ``pyproject.toml``::

    [project.entry-points."rf_bench.probes"]
    mine = "my_package.probes:MyProbe"

A probe may also define ``report(records, store, out_dir) -> list[ReportSection]`` to add its tables
and figures to ``rf-bench report``.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn
from torch.nn import functional as F

from rf_bench.results import ResultStore, Run, config_hash, group_runs

__all__ = ["Probe", "ProbeOutput", "ProbeContext", "ReportSection", "available_probes", "resolve_suite",
           "apply_overrides", "run_suite", "evaluate"]

ENTRY_POINT_GROUP = "rf_bench.probes"


@dataclass
class ProbeOutput:
    """A probe's result: JSON-serialisable values and optional tensors (stored as safetensors)."""

    values: Dict[str, Any]
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ProbeContext:
    """What the harness gives every probe."""

    results_dir: Path
    data_dir: Optional[str] = None
    device: torch.device = torch.device("cpu")
    progress: bool = True


@dataclass
class ReportSection:
    """A part of REPORT.md: markdown, plus files it refers to (written by the probe into ``out_dir``)."""

    title: str
    markdown: str
    order: int = 50


class Probe:
    """Base class (subclassing is optional: the harness only needs these attributes)."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    scope: ClassVar[str] = "run"
    min_runs: ClassVar[int] = 1  # group probes: skip groups with fewer runs

    @dataclass
    class Config:
        pass

    def run(self, target: Run | List[Run], config: Any, ctx: ProbeContext) -> ProbeOutput:
        raise NotImplementedError


def available_probes() -> Dict[str, Type[Probe]]:
    """Every probe registered under the ``rf_bench.probes`` entry-point group, by name."""
    probes: Dict[str, Type[Probe]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not take the others down
            warnings.warn(f"probe {ep.name!r} ({ep.value}) failed to load: {e}")
            continue
        probes[ep.name] = obj if isinstance(obj, type) else type(obj)
    return dict(sorted(probes.items()))


def resolve_suite(suite: str) -> List[Type[Probe]]:
    """``all`` or a comma-separated list of probe names."""
    probes = available_probes()
    if suite == "all":
        return list(probes.values())
    chosen = []
    for name in (n.strip() for n in suite.split(",") if n.strip()):
        if name not in probes:
            raise ValueError(f"unknown probe {name!r}; available: {', '.join(probes) or 'none installed'}")
        chosen.append(probes[name])
    return chosen


def apply_overrides(probes: Sequence[Type[Probe]], settings: Sequence[str]) -> Dict[str, Any]:
    """Each probe's config with ``key=value`` / ``probe.key=value`` settings (values parsed as JSON)."""
    configs = {p.name: p.Config() for p in probes}
    for item in settings:
        if "=" not in item:
            raise ValueError(f"--set takes key=value or probe.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target, _, fld = key.rpartition(".")
        names = [target] if target else list(configs)
        hit = False
        for name in names:
            if name not in configs:
                raise ValueError(f"--set {item}: no probe {name!r} in the suite ({', '.join(configs)})")
            if fld in {f.name for f in dataclasses.fields(configs[name])}:
                if isinstance(value, list):
                    value = tuple(value)
                configs[name] = dataclasses.replace(configs[name], **{fld: value})
                hit = True
        if not hit:
            raise ValueError(f"--set {item}: no probe in the suite has a setting {fld!r}")
    return configs


def _config_dict(config: Any) -> Dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))


def _tasks(probes, runs: Sequence[Run], configs) -> List[Tuple[Type[Probe], str, Any]]:
    tasks = []
    for probe in probes:
        if probe.scope == "group":
            for gid, members in group_runs(runs).items():
                if len(members) >= probe.min_runs:
                    tasks.append((probe, gid, members))
        else:
            tasks += [(probe, run.run_id, run) for run in runs]
    return tasks


def run_suite(probes: Sequence[Type[Probe]], runs: Sequence[Run], results_dir: str | Path,
              configs: Optional[Dict[str, Any]] = None, force: bool = False, data_dir: Optional[str] = None,
              progress: bool = True, log=print) -> List[Path]:
    """Run every (probe, run or group) once; finished results are reused unless ``force``.

    Results being computed by another process (its lock is held) are left to it and checked at the
    end, so concurrent ``rf-bench probe`` processes share the work instead of duplicating it.
    """
    from filelock import Timeout
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    store = ResultStore(results_dir)
    configs = configs or {p.name: p.Config() for p in probes}
    ctx = ProbeContext(results_dir=Path(results_dir), data_dir=data_dir,
                       device=torch.device("cuda" if torch.cuda.is_available() else "cpu"), progress=progress)
    tasks = _tasks(probes, runs, configs)
    written: List[Path] = []

    def attempt(probe, key, target, blocking: bool) -> bool:
        cfg = configs[probe.name]
        path = store.path(key, probe.name, config_hash(_config_dict(cfg)))
        lock = store.lock(path)
        try:
            lock.acquire(timeout=-1 if blocking else 0)
        except Timeout:
            return False
        try:
            existing = store.read(path)
            if path in store.skipped:
                log(f"{probe.name} on {key}: the stored result is {store.skipped.pop(path)}; recomputing")
            members = target if isinstance(target, list) else [target]
            if existing and not force:
                same_runs = existing.get("runs") == [r.run_id for r in members]
                if existing.get("version") == probe.version and same_runs:
                    written.append(path)
                    return True
                why = (f"stored by version {existing.get('version')}, now {probe.version}" if same_runs
                       else "its group has other runs now")
                log(f"{probe.name} on {key}: {why}; recomputing")
            t0 = time.perf_counter()
            out = probe().run(target, cfg, ctx)
            record = dict(probe=probe.name, version=probe.version, config=_config_dict(cfg), key=key,
                          runs=[r.run_id for r in members], run_dirs=[str(r.path) for r in members],
                          models=[r.model_name for r in members], dataset=members[0].dataset,
                          seeds=[r.seed for r in members], seconds=time.perf_counter() - t0,
                          created=time.strftime("%Y-%m-%dT%H:%M:%S"), values=out.values)
            store.write(path, record, out.tensors)
            written.append(path)
            return True
        finally:
            lock.release()

    bar = Progress(TextColumn("[bold]probes"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), disable=not progress)
    with bar:
        task_id = bar.add_task("", total=len(tasks))
        deferred = []
        for probe, key, target in tasks:
            bar.update(task_id, description=f"{probe.name} {key}")
            if attempt(probe, key, target, blocking=False):
                bar.advance(task_id)
            else:
                deferred.append((probe, key, target))
        for probe, key, target in deferred:  # another process holds these: wait for it, compute if it died
            bar.update(task_id, description=f"waiting for {probe.name} {key}")
            attempt(probe, key, target, blocking=True)
            bar.advance(task_id)
    return written


@torch.no_grad()
def evaluate(model: nn.Module, data, device: torch.device | str = "cpu", batch_size: int = 500) -> Tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on an ``ImageSet``."""
    from rf_bench.data import TensorLoader

    model = model.to(device).eval()
    loss_sum, correct = 0.0, 0
    for x, y in TensorLoader(data, batch_size, train=False, device=device):
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(data), correct / len(data)
