"""Sweeps: a grid of runs from a TOML file, trained and probed locally or on SLURM (through submitit), then reported.

A sweep file::

    [sweep]
    name = "paper"
    output = "runs"            # run directories
    results = "results"        # probe results
    report = "report"          # REPORT.md and figures

    [grid]                     # families x ks, or explicit `models`; x datasets x seeds
    families = ["vgg19_rfpool", "resnet50_rfpool"]
    ks = [1, 2, 3, 4]
    datasets = ["cifar10", "tiny-imagenet"]
    seeds = [0, 1, 2, 3, 4]
    [grid.model_kwargs]        # optional: model keyword arguments as axes, each value its own runs
    width_mult = [0.0625, 0.125, 0.25]
    resnet50_rfpool = { width_mult = [0.0625, 0.125] }   # a family's (or model's) own axes instead

    [train]                    # recipe name plus any TrainConfig field
    recipe = "fast"            # the default; "paper" is the draft's recipe as written (it stays near chance)

    [probes]                   # the suite, then one table of settings per probe
    suite = "all"
    [probes.hessian]
    k = 90

    [sweep]                    # (continued) packing: several runs share one GPU (`--runs-per-gpu` overrides)
    runs_per_gpu = 1
    eval_every = 1             # test every N epochs while training (0: the last epoch only)

    [slurm]                    # submitit's parameters for `--launcher slurm`
    partition = "gpu"
    gpus_per_job = 1

Each run is one job: train (resuming from its own checkpoint), then its per-run probes. Once every run of the grid
is finished, the group probes (across seeds) run and the report is written. Everything is keyed by content, so a
rerun skips what is finished and resumes what is not; a failed run is recorded and the others go on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .results import load_run, write_json_atomic
from .runs import DONE, read_metrics
from .recipes import DEFAULT_RECIPE, validate_settings
from .train import TrainConfig, resolve_config, run_dir_for

__all__ = ["Sweep", "load_sweep", "SweepJob", "run_sweep", "sweep_status", "finish_sweep", "gpu_slots", "LAUNCHERS"]

LAUNCHERS = ("local", "slurm", "submitit-local")
_SLURM_KEYS = {"partition", "gpus_per_job", "time_min", "array_parallelism", "cpus_per_task", "mem_gb",
               "account", "qos", "constraint", "additional"}


@dataclass
class Sweep:
    """A parsed sweep file: the runs it names and where everything goes."""

    name: str
    runs: List[TrainConfig]
    output: Path
    results: Path
    report: Path
    suite: str = "all"
    probe_settings: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # [probes.<name>] tables, as written
    data_dir: Optional[str] = None
    slurm: Dict[str, Any] = field(default_factory=dict)
    runs_per_gpu: int = 1  # local launcher: worker processes that share one GPU (packed runs)
    eval_every: int = 1  # test every N epochs while training (0: the last epoch only)

    @property
    def state_dir(self) -> Path:
        """Where the per-run job states (state, error, lock) live."""
        return self.output / ".sweep"

    def run_dir(self, cfg: TrainConfig) -> Path:
        """The run directory a config trains into."""
        return run_dir_for(cfg, self.output)

    def to_dict(self) -> Dict[str, Any]:
        """The sweep as plain JSON values (for worker processes and SLURM jobs)."""
        d = dataclasses.asdict(self)
        d["runs"] = [c.identity() for c in self.runs]
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Sweep":
        """The sweep back from ``to_dict``."""
        d = dict(d, runs=[TrainConfig(**c) for c in d["runs"]])
        for key in ("output", "results", "report"):
            d[key] = Path(d[key])
        return cls(**d)


_SECTIONS = ("sweep", "grid", "train", "probes", "slurm")
_SWEEP_KEYS = {"name", "output", "results", "report", "data_dir", "runs_per_gpu", "eval_every"}
_GRID_KEYS = {"models", "families", "ks", "datasets", "seeds", "model_kwargs", "image_sizes"}
_GRID_ONLY = {"model": "models", "dataset": "datasets", "seed": "seeds"}  # [train] keys that belong to [grid]


# names people write for a TrainConfig field that spelling alone does not lead to
_SYNONYMS = {"learning_rate": "lr", "learning-rate": "lr", "wd": "weight_decay", "bs": "batch_size",
             "batchsize": "batch_size", "num_epochs": "epochs", "warmup": "warmup_epochs", "clip": "clip_grad"}


def _check_keys(table: Dict[str, Any], allowed: Sequence[str], where: str, what: str = "key") -> None:
    """Refuse a key (section, probe) that is not ``allowed``, suggesting the nearest one."""
    from .hints import nearest

    for key in table:
        if key not in allowed:
            close = [_SYNONYMS[key]] if _SYNONYMS.get(key) in allowed else []
            close = close or nearest(key, allowed)
            hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(allowed))}"
            raise ValueError(f"{where} has no {what} {key!r}; {hint}")


def _check_list(value: Any, kind: type, where: str) -> List[Any]:
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                           for v in value):
        raise ValueError(f"{where} must be a non-empty list of {kind.__name__}s, got {value!r}")
    return value


def _check_grid(grid: Dict[str, Any], where: str) -> None:
    _check_keys(grid, _GRID_KEYS, f"{where}: [grid]")
    for key, kind in (("models", str), ("families", str), ("datasets", str), ("ks", int), ("seeds", int),
                      ("image_sizes", int)):
        if key in grid:
            _check_list(grid[key], kind, f"{where}: [grid] {key}")
    axes = grid.get("model_kwargs", {})
    if not isinstance(axes, dict):
        raise ValueError(f"{where}: [grid] model_kwargs must be a table of lists, e.g. [grid.model_kwargs] "
                         "width_mult = [0.0625, 0.125]")
    for key, values in axes.items():
        for name, value in (values.items() if isinstance(values, dict) else [(key, values)]):
            if not isinstance(value, list) or not value:
                raise ValueError(f"{where}: [grid.model_kwargs] {name} = {value!r} must be a non-empty list of values")


def _kwargs_grid(axes: Dict[str, Any], model: str) -> List[Dict[str, Any]]:
    """Every combination of the model keyword arguments' values for ``model`` ([{}] without axes): a sub-table named
    after the model or its family (``resnet50_rfpool``) replaces the shared axes for it."""
    import itertools

    own = [table for name, table in axes.items() if isinstance(table, dict) and model.startswith(name)]
    chosen = own[0] if own else {name: values for name, values in axes.items() if not isinstance(values, dict)}
    names = sorted(chosen)
    return [dict(zip(names, values)) for values in itertools.product(*(chosen[n] for n in names))]


def _check_model_kwargs(models: Sequence[str], kwargs: Dict[str, Any], where: str) -> None:
    """Every model takes every keyword (built on the meta device: no weights, no time), or a one-line error with the
    nearest name the model's constructor takes."""
    import inspect

    import timm
    import torch

    from .probes.base import nearest_hint

    for model in models:
        try:
            with torch.device("meta"):
                timm.create_model(model, **kwargs)
        except TypeError as e:
            bad = next((k for k in kwargs if repr(k) in str(e) or k in str(e)), None)
            with torch.device("meta"):
                built = timm.create_model(model)
            accepted = [p for p in inspect.signature(type(built).__init__).parameters if p not in ("self", "kwargs")]
            hint = nearest_hint(bad, accepted) if bad else f"valid: {', '.join(accepted)}"
            raise ValueError(f"{where}: [grid.model_kwargs] {model} takes no keyword {bad!r}; {hint}") from None


# a scalar field's default type -> (accepted value types, how to say it)
_SCALAR_KINDS = {bool: (bool, "true or false"), int: (int, "a whole number"), float: ((int, float), "a number"),
                 str: (str, "a string")}


def _check_train(train_spec: Dict[str, Any], where: str) -> None:
    """Every [train] key is a TrainConfig field whose value has the field's type."""
    for key, grid_key in _GRID_ONLY.items():
        if key in train_spec:
            raise ValueError(f"{where}: [train] {key} is set per run by [grid] {grid_key}; move it there")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    _check_keys(train_spec, list(defaults) + ["recipe"], f"{where}: [train]")
    for key, value in train_spec.items():
        wanted = _wrong_scalar(defaults.get(key), value)
        if wanted:
            raise ValueError(f"{where}: [train] {key} = {value!r} should be {wanted}")


def _wrong_scalar(default: Any, value: Any) -> Optional[str]:
    """What ``value`` should be, if it does not fit a field whose default is ``default`` (None if it fits)."""
    kind = _SCALAR_KINDS.get(type(default))
    if kind is None:  # no scalar default (None, a dict): the trainer checks it
        return None
    accepted, words = kind
    if (type(default) is bool) != isinstance(value, bool) or not isinstance(value, accepted):
        return words
    return None


def _check_probes(probes: Dict[str, Any], where: str) -> None:
    """The suite names installed probes, and every [probes.<name>] table sets only that probe's settings."""
    from .probes.base import resolve_suite

    suite = probes.get("suite", "all")
    try:
        chosen = {p.name: p for p in resolve_suite(suite)}
    except ValueError as e:
        raise ValueError(f"{where}: [probes] suite: {e}") from None
    for name, table in probes.items():
        if name == "suite":
            continue
        if not isinstance(table, dict):
            raise ValueError(f"{where}: [probes] {name} = {table!r} is not a table; write [probes.{name}] settings")
        _check_keys({name: None}, list(chosen), f"{where}: [probes] (suite {suite!r})", what="probe")
        settings = [f.name for f in dataclasses.fields(chosen[name].Config)]
        _check_keys(table, settings, f"{where}: [probes.{name}]")


def _grid_models(grid: Dict[str, Any], where: str) -> List[str]:
    if "models" in grid:
        return list(grid["models"])
    if "families" not in grid or "ks" not in grid:
        raise ValueError(f"{where}: [grid] needs `models`, or `families` and `ks`")
    return [f"{family}{k}" for family in grid["families"] for k in grid["ks"]]


def load_sweep(path: str | os.PathLike | None = None, *, text: Optional[str] = None,
               output: Optional[str] = None) -> Sweep:
    """Parse a sweep file (or ``text``); ``output`` puts runs, results and report under one folder instead."""
    from .models import unknown_model_hint  # importing it registers the rfpool models
    from .probes.base import settings_from_table

    where = str(path) if path else "sweep"
    try:
        spec = tomllib.loads(text if text is not None else Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no sweep file {path}; see benchmarks/configs/paper.toml for one") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where} is not valid TOML: {e}") from None
    _check_keys(spec, _SECTIONS, where, what="section")
    head, grid, train_spec = spec.get("sweep", {}), spec.get("grid", {}), dict(spec.get("train", {}))
    _check_keys(head, _SWEEP_KEYS, f"{where}: [sweep]")
    _check_grid(grid, where)
    _check_train(train_spec, where)
    _check_probes(spec.get("probes", {}), where)
    models = _grid_models(grid, where)
    for model in models:
        hint = unknown_model_hint(model)
        if hint:
            raise ValueError(f"{where}: unknown model {model!r}; {hint}")
    recipe = train_spec.pop("recipe", DEFAULT_RECIPE)
    base_kwargs = dict(train_spec.pop("model_kwargs", {}) or {})
    axes = grid.get("model_kwargs", {})
    for model in sorted(set(models)):
        variants = _kwargs_grid(axes, model)
        if variants != [{}]:
            _check_model_kwargs([model], dict(base_kwargs, **variants[0]), where)
    if "image_sizes" in grid and "image_size" in train_spec:
        raise ValueError(f"{where}: give the image size in [grid] image_sizes or in [train] image_size, not both")
    sizes = grid.get("image_sizes", [train_spec.pop("image_size", None)])  # an axis, or [train]'s one size
    runs = [resolve_config(recipe, model=model, dataset=dataset, seed=seed, model_kwargs=dict(base_kwargs, **extra),
                           image_size=size, **train_spec)
            for size in sizes for dataset in grid.get("datasets", ["cifar10"]) for model in models
            for extra in _kwargs_grid(axes, model) for seed in grid.get("seeds", [0])]
    _check_runs(runs, where)
    suite, settings = settings_from_table(spec.get("probes", {}))
    suite = suite or "all"
    slurm = spec.get("slurm", {})
    if set(slurm) - _SLURM_KEYS:
        raise ValueError(f"{where}: [slurm] has no key(s) {sorted(set(slurm) - _SLURM_KEYS)}; use {sorted(_SLURM_KEYS)}")
    root = Path(output) if output else None
    return Sweep(
        name=head.get("name", Path(where).stem), runs=runs,
        output=root / "runs" if root else Path(head.get("output", "runs")),
        results=root / "results" if root else Path(head.get("results", "results")),
        report=root / "report" if root else Path(head.get("report", "report")),
        suite=suite, probe_settings=settings, data_dir=head.get("data_dir"), slurm=slurm,
        runs_per_gpu=_positive_int(head.get("runs_per_gpu", 1), f"{where}: [sweep] runs_per_gpu"),
        eval_every=_whole_number(head.get("eval_every", 1), f"{where}: [sweep] eval_every"),
    )


def _check_runs(runs: List[TrainConfig], where: str) -> None:
    """The trainer's own checks (numbers, model and data set names), before any run starts."""
    for cfg in {json.dumps(c.identity(), sort_keys=True, default=str): c for c in runs}.values():
        try:
            validate_settings(cfg)
        except ValueError as e:
            raise ValueError(f"{where}: {e} (in [train] or [grid])") from None


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number >= 1, got {value!r}")
    return value


def _whole_number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


# ---------------------------------------------------------------- job state


class _JobState:
    """``<output>/.sweep/<run id>.json`` (done / failed / running) and a lock held while a job works on the run."""

    def __init__(self, sweep: Sweep, run_id: str) -> None:
        self.path = sweep.state_dir / f"{run_id}.json"
        self.lock_path = sweep.state_dir / f".{run_id}.lock"

    def read(self) -> Dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write(self, state: str, **extra: Any) -> None:
        write_json_atomic(self.path, dict(state=state, host=socket.gethostname(), pid=os.getpid(),
                                          updated=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra))

    def lock(self):
        from filelock import FileLock

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_path))

    def finished(self, run_dir: Path) -> bool:
        """Trained (the run's ``done`` marker) and its per-run probes stored (our ``done`` state)."""
        return self.read().get("state") == "done" and (run_dir / DONE).is_file()

    def is_locked(self) -> bool:
        from filelock import Timeout

        lock = self.lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False


def _last_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# ---------------------------------------------------------------- one job


def _probe_configs(sweep: Sweep):
    from .probes.base import apply_overrides, resolve_suite

    probes = resolve_suite(sweep.suite)
    return probes, apply_overrides(probes, tables=sweep.probe_settings)


def _train(sweep: Sweep, cfg: TrainConfig, progress: bool) -> Path:
    """In this process, or with ``accelerate launch`` over every visible GPU when there are several."""
    import subprocess

    import torch

    from .train import train

    gpus = torch.cuda.device_count()
    if gpus <= 1:
        return train(cfg, output=sweep.output, data_dir=sweep.data_dir, progress=progress, eval_every=sweep.eval_every)
    run_dir = sweep.run_dir(cfg)
    config_file = sweep.state_dir / f"{run_dir.name}.train.json"
    write_json_atomic(config_file, cfg.identity())
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "--multi_gpu",
           "-m", "rf_bench.train", "--config", str(config_file), "--output", str(sweep.output)]
    if sweep.data_dir:
        cmd += ["--data-dir", sweep.data_dir]
    cmd += ["--eval-every", str(sweep.eval_every)]
    if not progress:
        cmd.append("--no-progress")
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"accelerate launch exited with {proc.returncode}")
    return run_dir


class SweepJob:
    """One run of a sweep: train it, then its per-run probes. Picklable, so submitit can ship it to a cluster.

    On preemption or timeout submitit calls `checkpoint`, which requeues the same job; it resumes from the
    run's own last checkpoint, because the run directory is a function of the config.
    """

    def __init__(self, sweep: Sweep, progress: bool = False) -> None:
        self.sweep_dict = sweep.to_dict()
        self.progress = progress

    @property
    def sweep(self) -> Sweep:
        """The sweep this job belongs to."""
        return Sweep.from_dict(self.sweep_dict)

    def __call__(self, index: int) -> str:
        from filelock import Timeout

        from .probes.base import run_suite

        sweep = self.sweep
        cfg = sweep.runs[index]
        run_dir = sweep.run_dir(cfg)
        state = _JobState(sweep, run_dir.name)
        lock = state.lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return "running elsewhere"
        try:
            if state.finished(run_dir):
                return "done"
            state.write("running")
            try:
                _train(sweep, cfg, self.progress)
                probes, configs = _probe_configs(sweep)
                per_run = [p for p in probes if p.scope == "run"]
                run_suite(per_run, [load_run(run_dir)], sweep.results, {p.name: configs[p.name] for p in per_run},
                          data_dir=sweep.data_dir, progress=self.progress, log=lambda *a: None)
            except BaseException as e:
                state.write("failed", error=_last_line(e))
                raise
            state.write("done")
            return "done"
        finally:
            lock.release()
            _release_device_memory()

    def checkpoint(self, index: int):
        """submitit's requeue hook: the same job again, which resumes its run."""
        import submitit

        return submitit.helpers.DelayedSubmission(SweepJob(self.sweep, self.progress), index)


# ---------------------------------------------------------------- the whole sweep


def finish_sweep(sweep: Sweep, progress: bool = True, log: Callable[..., None] = print) -> Optional[Path]:
    """Group probes over the finished runs, then the report (a no-op for results already stored)."""
    return _finish(sweep, progress)[0]


def _finish(sweep: Sweep, progress: bool) -> Tuple[Optional[Path], List[Dict[str, Any]]]:
    """`finish_sweep`, with the results the report was written from (the store is read once)."""
    from .probes.base import available_probes, run_suite
    from .report import write_report
    from .results import ResultStore

    finished = [load_run(sweep.run_dir(c)) for c in sweep.runs if (sweep.run_dir(c) / DONE).is_file()]
    if not finished:
        return None, []
    probes, configs = _probe_configs(sweep)
    run_suite(probes, finished, sweep.results, configs, data_dir=sweep.data_dir, progress=progress,
              log=lambda *a: None)
    records = ResultStore(sweep.results).records()
    return write_report(sweep.results, sweep.report, available_probes(), records=records), records


def _executor(sweep: Sweep, launcher: str, folder: Path):
    import submitit

    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=int(sweep.slurm.get("time_min", 60)))
        return executor
    slurm = sweep.slurm
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params = dict(timeout_min=int(slurm.get("time_min", 24 * 60)), gpus_per_node=int(slurm.get("gpus_per_job", 1)),
                  tasks_per_node=1, cpus_per_task=int(slurm.get("cpus_per_task", 8)), name=f"rf-bench-{sweep.name}",
                  slurm_array_parallelism=int(slurm.get("array_parallelism", 16)))
    for key, param in (("partition", "slurm_partition"), ("mem_gb", "mem_gb"), ("account", "slurm_account"),
                       ("qos", "slurm_qos"), ("constraint", "slurm_constraint")):
        if key in slurm:
            params[param] = slurm[key]
    if "additional" in slurm:
        params["slurm_additional_parameters"] = dict(slurm["additional"])
    executor.update_parameters(**params)
    return executor


def pending_runs(sweep: Sweep) -> List[int]:
    """Indices of the sweep's runs that have not finished (training and per-run probes)."""
    return [i for i, cfg in enumerate(sweep.runs)
            if not _JobState(sweep, sweep.run_dir(cfg).name).finished(sweep.run_dir(cfg))]


def run_sweep(sweep: Sweep, launcher: str = "local", *, max_parallel: int = 1, dry_run: bool = False,
              wait: bool = True, progress: bool = True, log: Callable[..., None] = print,
              runs_per_gpu: Optional[int] = None) -> Dict[str, Any]:
    """Run every unfinished run of the grid, then the group probes and the report.

    ``local`` runs the jobs in this process one after another, or ``max_parallel`` at a time in worker processes
    (``runs_per_gpu`` of them share each GPU, default the sweep file's; with several per GPU and no
    ``max_parallel``, every GPU is filled); ``slurm`` submits a job array through submitit and, with ``wait``,
    waits for it before the group probes; ``submitit-local`` is the same submitit path with its local executor.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    per_gpu = _positive_int(runs_per_gpu if runs_per_gpu is not None else sweep.runs_per_gpu, "--runs-per-gpu")
    if launcher == "local" and max_parallel <= 1 and per_gpu > 1:
        max_parallel = per_gpu * max(1, _visible_gpus())
    todo = pending_runs(sweep)
    log(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} done, {len(todo)} to run")
    if dry_run:
        for i in todo:
            cfg = sweep.runs[i]
            kwargs = f" ({_kwargs_label(cfg.model_kwargs)})" if cfg.model_kwargs else ""
            log(f"  would run {cfg.model}{kwargs} on {cfg.dataset}, seed {cfg.seed} -> {sweep.run_dir(cfg)}")
        return dict(todo=todo, failed=[])
    failed: List[Dict[str, Any]] = []
    if launcher == "local" and max_parallel <= 1:
        job = SweepJob(sweep, progress=progress)
        for n, i in enumerate(todo, 1):
            cfg = sweep.runs[i]
            log(f"[{n}/{len(todo)}] {cfg.model} {cfg.dataset} seed {cfg.seed}")
            try:
                job(i)
            except Exception as e:  # recorded in the run's state; the other runs go on
                failed.append(dict(index=i, run=sweep.run_dir(cfg).name, error=_last_line(e)))
                log(f"  failed: {_last_line(e)}")
    elif launcher == "local":
        failed = _run_in_pool(sweep, todo, max_parallel, progress, log, per_gpu)
    elif todo:
        failed = _run_with_submitit(sweep, launcher, todo, wait, log)
        if not wait:
            return dict(todo=todo, failed=failed)
    report, records = _finish(sweep, progress)
    if report:
        log(f"report: {report}")
    return dict(todo=todo, failed=failed, report=report, records=records)


def _release_device_memory() -> None:
    """Hand a finished job's cached GPU memory back to the device: a pool worker lives on to its next job, and
    the workers packed on the same GPU need that memory now."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _init_worker(slots, threads: int, runs_per_gpu: int = 1) -> None:
    """A pool worker takes one GPU (or its share of the CPU cores) for every job it will run; packed workers
    are told their share of that GPU's memory (the Hessian probe sizes its basis by it)."""
    from .spectral import GPU_SHARE_ENV

    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        os.environ[GPU_SHARE_ENV] = repr(1.0 / runs_per_gpu)
    import torch

    torch.set_num_threads(threads)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def gpu_slots(workers: int, gpus: int, runs_per_gpu: int = 1) -> List[Optional[int]]:
    """The GPU of each worker: ``runs_per_gpu`` consecutive workers share a GPU, then the next GPU (round robin
    when there are more workers than places); ``None`` for every worker on a machine without GPUs."""
    if not gpus:
        return [None] * workers
    return [(slot // runs_per_gpu) % gpus for slot in range(workers)]


@contextlib.contextmanager
def _workers_end_with_this_process(ctx):
    """Ctrl-C or a SIGTERM (`kill`, a scheduler's time limit) ends the workers too, at once: without this the
    pool waits for their running jobs, and a SIGTERM leaves them running on, orphaned. Finished work is kept
    (results are written atomically, runs resume from their checkpoints)."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        yield
    except BaseException:
        for child in ctx.active_children():
            child.terminate()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _run_in_pool(sweep: Sweep, todo: Sequence[int], max_parallel: int, progress: bool,
                 log: Callable[..., None], runs_per_gpu: int = 1) -> List[Dict[str, Any]]:
    """``max_parallel`` worker processes, each pinned to one GPU that ``runs_per_gpu`` of them share (or
    cores / max_parallel threads on a CPU)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    ctx = multiprocessing.get_context("spawn")
    slots = ctx.Queue()
    for gpu in gpu_slots(max_parallel, _visible_gpus(), runs_per_gpu):
        slots.put(gpu)
    threads = max(1, (os.cpu_count() or 1) // max_parallel)
    failed = []
    bar = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), disable=not progress)
    with ProcessPoolExecutor(max_parallel, mp_context=ctx, initializer=_init_worker,
                             initargs=(slots, threads, runs_per_gpu)) as pool, bar, _workers_end_with_this_process(ctx):
        task = bar.add_task("", total=len(todo))
        futures = {pool.submit(SweepJob(sweep), i): i for i in todo}
        for future in as_completed(futures):
            i = futures[future]
            cfg = sweep.runs[i]
            try:
                future.result()
                bar.update(task, advance=1, description=f"{cfg.model} seed {cfg.seed} done")
            except Exception as e:  # recorded in the run's state; the other runs go on
                failed.append(dict(index=i, run=sweep.run_dir(cfg).name, error=_last_line(e)))
                bar.update(task, advance=1, description=f"{cfg.model} seed {cfg.seed} FAILED")
                log(f"{cfg.model} {cfg.dataset} seed {cfg.seed} failed: {_last_line(e)}")
    return failed


def _run_with_submitit(sweep: Sweep, launcher: str, todo: Sequence[int], wait: bool,
                       log: Callable[..., None]) -> List[Dict[str, Any]]:
    folder = sweep.state_dir / "submitit"
    executor = _executor(sweep, launcher, folder)
    jobs = executor.map_array(SweepJob(sweep), list(todo))
    log(f"submitted {len(jobs)} job(s) to {launcher} (logs in {folder})")
    if not wait:
        return []
    failed = []
    for i, job in zip(todo, jobs):
        try:
            job.result()
        except Exception as e:
            failed.append(dict(index=i, run=sweep.run_dir(sweep.runs[i]).name, error=_last_line(e)))
    return failed


def _kwargs_label(kwargs: Dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(kwargs.items())) or "-"


def sweep_status(sweep: Sweep) -> List[Dict[str, Any]]:
    """One row per run: done / running / failed / pending, with the last error line of a failure."""
    rows = []
    for cfg in sweep.runs:
        run_dir = sweep.run_dir(cfg)
        state = _JobState(sweep, run_dir.name)
        recorded = state.read()
        if state.finished(run_dir):
            status = "done"
        elif state.is_locked():
            status = "running"
        elif recorded.get("state") == "failed":
            status = "failed"
        else:
            status = "pending"  # never started, or its job was killed: the next sweep resumes it
        epochs = len(read_metrics(run_dir))
        rows.append(dict(model=cfg.model, dataset=cfg.dataset, seed=cfg.seed, run=run_dir.name, status=status,
                         model_kwargs=_kwargs_label(cfg.model_kwargs),
                         epochs=f"{epochs}/{cfg.epochs}", error=recorded.get("error", "") if status == "failed" else ""))
    return rows
