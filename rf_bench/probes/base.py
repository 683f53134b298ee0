"""The probe protocol, probe discovery (entry points), and the harness that runs a suite over runs.

A probe is a class with a ``name``, a ``version``, a ``Config`` dataclass of settings, a ``scope``
(``"run"``: one result per run; ``"group"``: one result per group of seeds) and a ``run`` method
returning a `ProbeOutput`. Built-in and third-party probes are found the same way: through
the ``rf_bench.probes`` entry-point group, e.g. in a plugin's ``pyproject.toml``::

    [project.entry-points."rf_bench.probes"]
    mine = "my_package.probes:MyProbe"

A probe may also define ``report(records, store, out_dir) -> list[ReportSection]`` to add its tables
and figures to ``rf-bench report``; without one, the report still shows its scalar values.

As with pytest's plugins, ``RF_BENCH_DISABLE_PLUGIN_AUTOLOAD=1`` keeps third-party probes out (only
rf-bench's own load), and ``RF_BENCH_PLUGINS=name,...`` lets named ones back in: a test suite or a
study sees exactly the probes it asked for, whatever else is installed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from rf_bench.evaluation import evaluation_sums, loss_and_accuracy
from rf_bench.hints import nearest_hint  # re-exported: sweeps and plugins name choices the same way
from rf_bench.reporting import ReportSection  # re-exported: a plugin's report() returns these
from rf_bench.results import ResultStore, Run, group_runs, stable_hash
from rf_bench.runs import recorded_finish_time

__all__ = ["Probe", "ProbeOutput", "ProbeContext", "ReportSection", "available_probes", "resolve_suite",
           "apply_overrides", "nearest_hint", "load_settings", "settings_from_table", "describe_settings", "run_suite", "evaluate"]

ENTRY_POINT_GROUP = "rf_bench.probes"
_OWN_DISTRIBUTION = "rf-bench"


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
    # a long probe says where it is (e.g. "init: HVP 12 of about 40, 9 s left"); shown beside the suite's bar
    status: Callable[[str], None] = lambda message: None


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
        """Measure ``target`` (a run, or a group's runs) with ``config``; the harness stores the output."""
        raise NotImplementedError


def _autoloaded(ep: metadata.EntryPoint) -> bool:
    """Whether an entry point loads under ``RF_BENCH_DISABLE_PLUGIN_AUTOLOAD`` / ``RF_BENCH_PLUGINS``."""
    if not os.environ.get("RF_BENCH_DISABLE_PLUGIN_AUTOLOAD"):
        return True
    dist = getattr(ep, "dist", None)
    if dist is not None and (dist.metadata["Name"] or "").lower().replace("_", "-") == _OWN_DISTRIBUTION:
        return True
    allowed = {n.strip() for n in os.environ.get("RF_BENCH_PLUGINS", "").split(",") if n.strip()}
    return ep.name in allowed


def available_probes() -> Dict[str, Type[Probe]]:
    """Every probe registered under the ``rf_bench.probes`` entry-point group, by name."""
    probes: Dict[str, Type[Probe]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _autoloaded(ep):
            continue
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not take the others down
            warnings.warn(f"probe {ep.name!r} ({ep.value}) failed to load: {e}", stacklevel=2)
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


def _conforms(value: Any, annotation: Any) -> bool:
    """Whether a setting's value (parsed from JSON; lists already tuples) fits its field's type annotation."""
    import typing

    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return any(_conforms(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        items = args[:1] if len(args) == 2 and args[1] is Ellipsis else args
        return all(_conforms(v, items[0] if len(items) == 1 else t) for v, t in zip(value, items * len(value)))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _type_words(annotation: Any) -> Tuple[str, str]:
    """A field type in words, and an example value: ("a list of numbers", "[0.5, 0.9]")."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        words, example = _type_words(args[0])
        return f"{words} or null", example
    if typing.get_origin(annotation) in (tuple, list):
        inner = args[0] if args else Any
        return {float: ("a list of numbers", "[0.5, 0.9]"), int: ("a list of whole numbers", "[1, 2]"),
                str: ("a list of names", '["init", "final"]')}.get(inner, ("a list", "[...]"))
    return {int: ("a whole number", "90"), float: ("a number", "0.5"), bool: ("true or false", "true"),
            str: ("a name", '"recalibrate"')}.get(annotation, (str(annotation), "..."))


def _check_type(item: str, config: Any, fld: str, value: Any) -> None:
    """One line naming the expected type and an example (the setting's default where it has one) when a ``--set``
    value does not fit its setting."""
    import typing

    try:
        annotation = typing.get_type_hints(type(config)).get(fld, Any)
    except Exception:  # a plugin's annotations that do not resolve: its own checks (if any) decide
        return
    if not _conforms(value, annotation):
        words, example = _type_words(annotation)
        default = getattr(type(config)(), fld)
        if default is not None:
            example = json.dumps(list(default) if isinstance(default, tuple) else default)
        key = item.split("=", 1)[0]
        raise ValueError(f"--set {item}: {key} takes {words}, e.g. --set '{key}={example}'; got {value!r}")


def apply_overrides(probes: Sequence[Type[Probe]], settings: Sequence[str] = (),
                    tables: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Each probe's config with the settings of ``tables`` (a settings file's ``[probes.<name>]`` tables, values as
    they are), then the ``key=value`` / ``probe.key=value`` strings of ``settings`` (`rf-bench probe --set`,
    values parsed as JSON).

    Every value is checked against its setting's type, and each config's own checks run, before any probe starts:
    a wrong value is one line with the expected type and an example."""
    configs = {p.name: p.Config() for p in probes}
    items = [(f"{probe}.{key}={json.dumps(value)}", f"{probe}.{key}", value)
             for probe, table in (tables or {}).items() for key, value in table.items()]
    items += [_parsed_setting(item) for item in settings]
    for item, key, value in items:
        target, _, fld = key.rpartition(".")
        names = [target] if target else list(configs)
        hit = False
        for name in names:
            if name not in configs:
                raise ValueError(f"--set {item}: no probe {name!r} in the suite; {nearest_hint(name, list(configs))}")
            if fld in {f.name for f in dataclasses.fields(configs[name])}:
                if isinstance(value, list):
                    value = tuple(value)
                _check_type(item if target else f"{name}.{item}", configs[name], fld, value)
                try:
                    configs[name] = dataclasses.replace(configs[name], **{fld: value})
                except (TypeError, ValueError) as e:
                    raise ValueError(f"--set {item}: {e}") from None
                hit = True
        if not hit:
            known = [f.name for name in names for f in dataclasses.fields(configs[name])]
            where = f"probe {target!r}" if target else "probe in the suite"
            raise ValueError(f"--set {item}: no {where} has a setting {fld!r}; {nearest_hint(fld, known)} "
                             "(`rf-bench probe --list-settings` lists them)")
    return configs


def _parsed_setting(item: str) -> Tuple[str, str, Any]:
    """``probe.key=<json>`` as (the item, its key, its value parsed as JSON, else the text)."""
    if "=" not in item:
        raise ValueError(f"--set takes key=value or probe.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        return item, key, json.loads(raw)
    except json.JSONDecodeError:
        return item, key, raw


def settings_from_table(probes: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, Dict[str, Any]]]:
    """A sweep file's ``[probes]`` table as (its ``suite``, or None; the settings tables, probe by probe)."""
    probes = dict(probes)
    suite = probes.pop("suite", None)
    for probe, table in probes.items():
        if not isinstance(table, dict):
            raise ValueError(f"[probes] {probe} = {table!r} is not a table; write [probes.{probe}] settings")
    return suite, {probe: dict(sorted(table.items())) for probe, table in sorted(probes.items())}


def _shipped_settings() -> Dict[str, Any]:
    """Sweep files shipped with rf-bench whose [probes] tables ``--settings NAME`` reuses: the demo and the studies."""
    from importlib import resources

    from rf_bench.studies import available_studies

    shipped = {"demo": resources.files("rf_bench").joinpath("demo.toml")}
    shipped.update((name, resources.files("rf_bench.studies").joinpath(f"{name}.toml")) for name in available_studies())
    return shipped


def load_settings(source: str) -> Tuple[Optional[str], Dict[str, Dict[str, Any]]]:
    """The ``[probes]`` tables of a settings or sweep file, or of a shipped one by name (``demo``, a study).

    Returns (the file's suite or None, the settings tables for `apply_overrides`'s ``tables``).
    """
    import tomllib

    path = Path(source)
    shipped = _shipped_settings()
    if path.is_file():
        text = path.read_text()
    elif source in shipped:
        text = shipped[source].read_text()
    else:
        raise FileNotFoundError(f"no settings file {source}; name a TOML file with [probes.<name>] tables, or one of "
                                f"the shipped ones: {', '.join(shipped)}")
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source} is not valid TOML: {e}") from None
    if "probes" not in spec:
        raise ValueError(f"{source} has no [probes] table; write [probes.<name>] tables of settings "
                         "(`rf-bench probe --list-settings` lists them)")
    return settings_from_table(spec["probes"])


def _field_docs(config_type: type) -> Dict[str, str]:
    """One line per setting from a Google-style ``Attributes:`` section of the config's docstring."""
    docs: Dict[str, str] = {}
    lines = (config_type.__doc__ or "").expandtabs().splitlines()
    inside, current = False, None
    for line in lines:
        text = line.strip()
        if text == "Attributes:":
            inside = True
            continue
        if not inside or not text:
            continue
        name, sep, rest = text.partition(":")
        if sep and name.isidentifier() and name in {f.name for f in dataclasses.fields(config_type)}:
            current = name
            docs[name] = rest.strip()
        elif current:
            docs[current] += " " + text
    return docs


def describe_settings(probes: Sequence[Type[Probe]]) -> List[Tuple[str, str, Any, str]]:
    """(probe, setting, default, meaning) for every setting of every probe."""
    rows = []
    for probe in probes:
        config = probe.Config()
        docs = _field_docs(probe.Config)
        for f in dataclasses.fields(config):
            rows.append((probe.name, f.name, getattr(config, f.name), docs.get(f.name, "")))
    return rows


def _config_dict(config: Any) -> Dict[str, Any]:
    """A probe config as stored (and hashed): settings a probe added later (its ``LATER_FIELDS``) are left out while
    at their default, so results stored before they existed keep their hash and are still found."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    defaults = type(config)()
    for name in getattr(config, "LATER_FIELDS", ()):
        if name in values and values[name] == getattr(defaults, name):
            del values[name]
    return values


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


def _stale(existing: Dict[str, Any], probe, members: Sequence[Run], weights: List[Optional[str]]) -> Optional[str]:
    """Why a stored result no longer describes its runs (None if it still does): another probe version, other runs
    in its group, or other weights (a run trained again). A result from before weights were recorded is kept unless
    one of its runs finished training after it was measured."""
    if existing.get("runs") != [r.run_id for r in members]:
        return "its group has other runs now"
    if existing.get("version") != probe.version:
        return f"stored by version {existing.get('version')}, now {probe.version}"
    if existing.get("weights_sha256") not in (None, weights):
        return "the run's weights changed since (trained again)"
    if existing.get("weights_sha256") is None and _trained_after(members, existing.get("created")):
        return "it records no weights and a run finished training after it was measured (trained again)"
    return None


def _trained_after(members: Sequence[Run], created: Optional[str]) -> bool:
    """Whether a run finished training after ``created`` (both as ``done`` writes them; unknown times: False)."""
    finished = [recorded_finish_time(r.path) for r in members]
    return bool(created) and any(t is not None and t > created for t in finished)


def _record(probe, cfg: Any, key: str, members: Sequence[Run], out: ProbeOutput, seconds: float) -> Dict[str, Any]:
    """What is stored of one probe's result: the values, and everything that says what they were measured on (runs,
    their training settings and weights, the probe's version and settings), so a report needs no run directory."""
    first = members[0]
    return dict(probe=probe.name, version=probe.version, config=_config_dict(cfg), key=key,
                runs=[r.run_id for r in members], run_dirs=[str(r.path) for r in members],
                models=[r.model_name for r in members], dataset=first.dataset, family=first.family, k=first.k,
                train={k: v for k, v in first.config.items() if k != "seed"}, seeds=[r.seed for r in members],
                seconds=seconds, not_learning=[r.run_id for r in members if r.not_learning],
                weights_sha256=[r.weights_sha256 for r in members], created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                values=out.values)


def _stored_or_computed(store: ResultStore, path: Path, probe: Type[Probe], cfg: Any, key: str, target,
                        ctx: ProbeContext, force: bool, log) -> None:
    """The result at ``path``: the stored one where it is current (same weights, same probe), else measured now on
    weights verified against their recorded sha256, and stored."""
    existing = store.read(path)
    if path in store.skipped:
        log(f"{probe.name} on {key}: the stored result is {store.skipped.pop(path)}; recomputing")
    members = target if isinstance(target, list) else [target]
    if existing and not force:
        why = _stale(existing, probe, members, [r.weights_sha256 for r in members])
        if why is None:
            return
        log(f"{probe.name} on {key}: {why}; recomputing")
    for run in members:  # never measure weights that are not the ones training finished with
        run.verify_weights()
    t0 = time.perf_counter()
    out = probe().run(target, cfg, ctx)
    store.write(path, _record(probe, cfg, key, members, out, time.perf_counter() - t0), out.tensors)


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
    bar = Progress(TextColumn("[bold]probes"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), disable=not progress)
    task_id = bar.add_task("", total=len(tasks))

    def attempt(probe, key, target, blocking: bool) -> bool:
        cfg = configs[probe.name]
        path = store.path(key, probe.name, stable_hash(_config_dict(cfg)))
        lock = store.lock(path)
        try:
            lock.acquire(timeout=-1 if blocking else 0)
        except Timeout:
            return False
        try:
            status = (lambda message: bar.update(task_id, description=f"{probe.name} {key}: {message}"))
            _stored_or_computed(store, path, probe, cfg, key, target, dataclasses.replace(ctx, status=status),
                                force, log)
            written.append(path)
            return True
        finally:
            lock.release()

    with bar:
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

    batches = TensorLoader(data, batch_size, train=False, device=device)
    return loss_and_accuracy(evaluation_sums(model.to(device), batches, device))
