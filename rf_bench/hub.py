"""The Hugging Face Hub: publish finished runs as timm checkpoints, record them in ``registry/``, fetch them verified.

A published run is one Hub model repo per pretrained tag (``ORG/resnet50_rfpool3.cifar10_s0``) in timm's
layout: ``model.safetensors`` (the run's final weights, byte for byte), timm's ``config.json``, a model card
``README.md`` and the run's own ``run/config.json`` and ``run/metrics.jsonl``. The tag's manifest entry in
``registry/<model>.json`` pins the commit and the file's sha256; ``timm.create_model(tag, pretrained=True)``
downloads through timm's Hub path and `fetch_checkpoint` refuses a file whose sha256 differs.

All network traffic goes through ``huggingface_hub`` (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE`` apply).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .checkpoints import (REGISTRY_ENV, WEIGHTS_NAME, HubError, fetch_checkpoint, hub_error, is_hub_failure,
                          published_tags, sha256_file)
from .results import Run, load_run, write_json_atomic
from .runs import CONFIG, METRICS

__all__ = [
    "HubError", "PublishedTag", "tag_for_run", "repo_id_for", "build_repo_folder", "model_card", "publish",
    "publish_run", "write_manifest", "default_registry_dir", "fetch_checkpoint", "pull", "published_tags",
]

HUB_DATASETS = {"cifar10": "uoft-cs/cifar10", "tiny-imagenet": "zh-plus/tiny-imagenet"}


@dataclass(frozen=True)
class PublishedTag:
    """One published checkpoint: the run it came from and the timm tag it gets."""
    model: str
    tag: str
    repo_id: str
    entry: Dict[str, Any]
    folder: Path

    @property
    def name(self) -> str:
        """The timm pretrained tag, ``<model>.<dataset>[_<recipe>]_s<seed>``."""
        return f"{self.model}.{self.tag}"


# ---------------------------------------------------------------- naming


def tag_for_run(run: Run) -> str:
    """``<dataset>_s<seed>``, with the recipe when it is not the paper's (``digits_fast_s0``)."""
    recipe = run.config.get("recipe", "paper")
    middle = "" if recipe == "paper" else f"_{recipe}"
    return f"{run.dataset}{middle}_s{run.seed}"


def repo_id_for(namespace: str, model: str, tag: str) -> str:
    """The Hub repository id of a tag under ``namespace``."""
    return f"{namespace}/{model}.{tag}"


# ---------------------------------------------------------------- the repo folder


def _probe_summaries(run: Run, results_dir: Optional[Path]) -> Dict[str, Dict[str, Any]]:
    """The scalar values of every stored probe result of this run (``{}`` when there are none)."""
    if results_dir is None or not (results_dir / run.run_id).is_dir():
        return {}
    out = {}
    for path in sorted((results_dir / run.run_id).glob("*.json")):
        rec = json.loads(path.read_text())
        scalars = {k: v for k, v in rec.get("values", {}).items() if isinstance(v, (int, float, str))}
        if "probe" in rec and scalars:
            out[rec["probe"]] = scalars
    return out


def _manifest_entry(run: Run, repo_id: str, tag: str, weights: Path) -> Dict[str, Any]:
    import rf_bench

    data = run.meta["data"]
    model_args = {k: v for k, v in run.meta["model_kwargs"].items() if k not in ("num_classes", "in_chans")}
    return dict(
        repo_id=repo_id, revision=None, filename=WEIGHTS_NAME, sha256=sha256_file(weights),
        size=weights.stat().st_size, num_classes=len(data["classes"]), input_size=list(data["input_size"]),
        mean=list(data["mean"]), std=list(data["std"]), model_args=model_args, dataset=run.dataset,
        seed=run.seed, recipe=run.config.get("recipe"), metrics=run.final_metrics(), run_id=run.run_id,
        rf_bench=rf_bench.__version__,
    )


def model_card(run: Run, tag: str, repo_id: str, entry: Dict[str, Any],
               probes: Optional[Dict[str, Dict[str, Any]]] = None) -> str:
    """The repo's README.md: YAML metadata for the Hub (timm, data set, accuracy), then the run in prose."""
    from huggingface_hub import EvalResult, ModelCardData

    from .paper import MEASURED_RF
    from .reporting import model_rf

    name = f"{run.model_name}.{tag}"
    acc = entry["metrics"].get("test_acc")
    dataset_id = HUB_DATASETS.get(run.dataset)
    card_data = ModelCardData(
        library_name="timm", license="apache-2.0", pipeline_tag="image-classification",
        tags=["image-classification", "timm", "rf-bench", "receptive-field", run.family],
        datasets=[dataset_id] if dataset_id else None, metrics=["accuracy"],
        model_name=name,
        eval_results=[EvalResult(task_type="image-classification", dataset_type=dataset_id or run.dataset,
                                 dataset_name=run.dataset, dataset_split="test", metric_type="accuracy",
                                 metric_value=float(acc))] if acc is not None else None,
    )
    rf = model_rf(run.model_name, run.config["model_kwargs"])
    measured = MEASURED_RF.get(run.family, {}).get(run.k)
    recipe = {k: run.config[k] for k in ("recipe", "epochs", "batch_size", "lr", "momentum", "nesterov",
                                         "weight_decay", "clip_grad", "schedule", "augment") if k in run.config}
    lines = [
        f"# {name}",
        "",
        f"`{run.model_name}` trained on {run.dataset} (seed {run.seed}) by "
        f"[rf-bench](https://github.com/rf-bench/rf-bench): a CIFAR-style {run.family.split('_')[0].upper()} "
        f"whose receptive field is set by one `MaxPool2d({run.k}, stride={run.k})` after the first convolution.",
        "",
        "## Receptive field",
        f"- analytic (exact, from the graph): **{rf} px**",
        f"- measured by gradients in the paper: {measured} px" if measured else "- not measured in the paper",
        "",
        "## Results",
        f"- test accuracy: **{acc:.4f}**" if acc is not None else "- test accuracy: not recorded",
        f"- epochs: {entry['metrics'].get('epoch', 0) + 1}, model args: `{json.dumps(entry['model_args'])}`",
    ]
    for probe, values in sorted((probes or {}).items()):
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(values.items())[:8])
        lines.append(f"- probe `{probe}`: {shown}")
    lines += [
        "",
        "## Recipe",
        "```json",
        json.dumps(recipe, indent=2, sort_keys=True),
        "```",
        "",
        "## Use it",
        "```python",
        "import rf_bench, timm  # rf_bench registers the rfpool models and their published tags",
        f'model = timm.create_model("{name}", pretrained=True).eval()',
        "```",
        f"or `timm.create_model(\"hf-hub:{repo_id}\")` after `import rf_bench`. The weights' sha256 is "
        f"`{entry['sha256']}`; rf-bench refuses a download that does not match it.",
        "",
        "The run's own `config.json` (resolved config, versions) and `metrics.jsonl` (one line per epoch) are in `run/`.",
    ]
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def build_repo_folder(run: Run | str | os.PathLike, folder: str | os.PathLike, namespace: str,
                      tag: Optional[str] = None, results_dir: Optional[str | os.PathLike] = None) -> PublishedTag:
    """Write the Hub repo of one finished run into ``folder`` (nothing is uploaded)."""
    from timm.models._hub import save_config_for_hf

    run = run if isinstance(run, Run) else load_run(run)
    tag = tag or tag_for_run(run)
    repo_id = repo_id_for(namespace, run.model_name, tag)
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "run").mkdir(parents=True)
    shutil.copyfile(run.path / WEIGHTS_NAME, folder / WEIGHTS_NAME)
    shutil.copyfile(run.path / CONFIG, folder / "run" / CONFIG)
    shutil.copyfile(run.path / METRICS, folder / "run" / METRICS)
    entry = _manifest_entry(run, repo_id, tag, folder / WEIGHTS_NAME)
    data = run.meta["data"]
    save_config_for_hf(
        run.create_model(), str(folder / "config.json"),
        model_config=dict(label_names=list(data["classes"]), pretrained_cfg=dict(tag=tag)),
        data_config=dict(input_size=tuple(data["input_size"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
                         crop_pct=1.0),
    )
    probes = _probe_summaries(run, Path(results_dir) if results_dir else None)
    (folder / "README.md").write_text(model_card(run, tag, repo_id, entry, probes))
    return PublishedTag(run.model_name, tag, repo_id, entry, folder)


# ---------------------------------------------------------------- manifests


def default_registry_dir() -> Path:
    """Where ``publish`` records manifests: ``$RF_BENCH_REGISTRY``, else the repo's ``registry/`` (source checkout)."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV].split(os.pathsep)[0])
    from importlib import resources

    folder = Path(str(resources.files("rf_bench.registry")))
    if not os.access(folder, os.W_OK) or "site-packages" in folder.parts:
        raise HubError(f"the installed registry {folder} is not a source checkout; pass --registry DIR "
                       f"or set {REGISTRY_ENV}")
    return folder


def write_manifest(registry_dir: str | os.PathLike, model: str, tag: str, entry: Dict[str, Any]) -> Path:
    """Add or replace one tag in ``<registry_dir>/<model>.json`` (sorted keys, atomic, under a lock)."""
    from filelock import FileLock

    path = Path(registry_dir) / f"{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        manifest = json.loads(path.read_text()) if path.is_file() else {"model": model, "tags": {}}
        manifest["tags"][tag] = entry
        write_json_atomic(path, manifest)
    return path


# ---------------------------------------------------------------- upload


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return token


def upload(published: PublishedTag, *, private: bool = False, token: Optional[str] = None) -> str:
    """Create the repo (if needed) and upload its folder in one commit; returns the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi(token=token or _token())
    run_id = published.entry["run_id"]
    try:
        api.create_repo(published.repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=published.repo_id, folder_path=str(published.folder),
                                 commit_message=f"rf-bench: publish run {run_id} as {published.name}",
                                 commit_description=f"test accuracy {published.entry['metrics'].get('test_acc')}")
    except Exception as e:
        if not is_hub_failure(e):
            raise
        raise hub_error(e, published.repo_id, "publish to") from None
    return info.oid


def publish_run(run_dir: Run | str | os.PathLike, namespace: str, *, staging: str | os.PathLike,
                registry_dir: Optional[str | os.PathLike] = None, dry_run: bool = False, private: bool = False,
                tag: Optional[str] = None, results_dir: Optional[str | os.PathLike] = None,
                token: Optional[str] = None) -> PublishedTag:
    """Publish one finished run: folder, upload, then its manifest entry with the commit it landed in."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)  # load_run refuses an unfinished run
    folder = Path(staging) / f"{run.model_name}.{tag or tag_for_run(run)}"
    published = build_repo_folder(run, folder, namespace, tag=tag, results_dir=results_dir)
    if dry_run:
        return published
    revision = upload(published, private=private, token=token)
    entry = dict(published.entry, revision=revision, published=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_manifest(registry_dir or default_registry_dir(), published.model, published.tag, entry)
    return PublishedTag(published.model, published.tag, published.repo_id, entry, folder)


def publish(run_dirs: Sequence[str | os.PathLike], namespace: str, *, staging: str | os.PathLike = "hub-staging",
            registry_dir: Optional[str | os.PathLike] = None, dry_run: bool = False, private: bool = False,
            results_dir: Optional[str | os.PathLike] = None, progress: bool = True) -> List[PublishedTag]:
    """Publish several runs; a token is required (and checked first) unless ``dry_run``."""
    from .results import find_runs

    runs = find_runs([str(p) for p in run_dirs])
    token = None if dry_run else _token()
    if not dry_run:
        registry_dir = registry_dir or default_registry_dir()
    out = []
    for run in _tracked(runs, "publishing", progress):
        out.append(publish_run(run, namespace, staging=staging, registry_dir=registry_dir, dry_run=dry_run,
                               private=private, results_dir=results_dir, token=token))
    return out


def _tracked(items: Sequence[Any], what: str, show: bool) -> Iterable[Any]:
    if not show:
        return items
    from rich.progress import track

    return track(items, description=what)


# ---------------------------------------------------------------- download


def pull(names: Sequence[str] = (), *, all_tags: bool = False, cache_dir: Optional[str] = None,
         progress: bool = True) -> Dict[str, Path]:
    """Pre-fetch published checkpoints (``model.tag`` names, or every one) into the Hub cache, verified."""
    known = published_tags()
    if all_tags:
        names = list(known)
    if not names:
        raise HubError("name TAGs to pull (e.g. resnet50_rfpool3.cifar10_s0) or pass --all")
    unknown = [n for n in names if n not in known]
    if unknown:
        listing = ", ".join(list(known)[:5]) or "none yet"
        raise HubError(f"not published: {', '.join(unknown)}; published tags: {listing} "
                       f"(timm.list_pretrained('*rfpool*'))")
    return {name: fetch_checkpoint(known[name], cache_dir=cache_dir)
            for name in _tracked(list(names), "pulling", progress)}
