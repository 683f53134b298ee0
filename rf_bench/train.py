"""Train an rfpool model (or any timm model): ``accelerate launch rf_bench/train.py --model ... --dataset ...``.

The run directory (DESIGN.md) is named after a hash of the resolved config, so the same command
twice resumes the run instead of starting over, from the last checkpoint, with bit-identical
results on CPU (and on CUDA with ``--deterministic``). Recipes are named presets; every
hyper-parameter flag overrides its recipe. The config lives in ``rf_bench.recipes``, the trainer in
``rf_bench.trainer``; this module is the entry point (function and command line).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from rf_bench.recipes import (CLIP_MODES, COMPILE_MODES, DEFAULT_RECIPE, RECIPES, TrainConfig, config_hash, lr_factor,
                              resolve_config, run_dir_for)
from rf_bench.trainer import NonFiniteLossError, Trainer, check_writable

__all__ = ["TrainConfig", "RECIPES", "resolve_config", "run_dir_for", "train", "main", "NonFiniteLossError",
           "config_hash", "lr_factor", "check_writable", "finished_line", "HelpFormatter"]


def train(cfg: TrainConfig, output: str | os.PathLike = "runs", data_dir: Optional[str] = None,
          checkpoint_every_steps: int = 0, log_with: Optional[str] = None, keep_checkpoints: int = 2,
          progress: bool = True, cpu: bool = False, eval_every: int = 1) -> Path:
    """Train (or resume, or skip if finished) the run of ``cfg``; returns its run directory.

    ``eval_every``: test every N epochs (0: the last epoch only; it is always tested).
    """
    return Trainer(cfg, output, data_dir=data_dir, checkpoint_every_steps=checkpoint_every_steps, log_with=log_with,
                   keep_checkpoints=keep_checkpoints, progress=progress, cpu=cpu, eval_every=eval_every).fit()


# ------------------------------------------------------------------------------------------ CLI

def _parse_kv(items: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--model-kwargs takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default in its help (unless it has none or says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or default == [] or "default" in text
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _recipe_summary(name: str) -> str:
    recipe = RECIPES[name]
    return f"{recipe['epochs']} epochs, lr {recipe['lr']:g}"


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The training options of ``rf-bench train`` and ``rf_bench/train.py``."""
    p.add_argument("--model", help="timm model name, e.g. resnet50_rfpool3 (required unless --config)")
    p.add_argument("--dataset", help="cifar10, tiny-imagenet, fashion-mnist, mnist, digits or synthetic "
                                     "(required unless --config)")
    p.add_argument("--config", metavar="JSON", help="a whole resolved TrainConfig as JSON (how sweeps launch runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order")
    p.add_argument("--recipe", default=DEFAULT_RECIPE,
                   help=f"named preset: {', '.join(f'{name} ({_recipe_summary(name)})' for name in RECIPES)}")
    p.add_argument("--output", default="runs", help="root folder of run directories")
    p.add_argument("--data-dir", help="local copy of the data set (see rf_bench.data)")
    p.add_argument("--train-per-class", type=int, metavar="N",
                   help="train on a seeded, stratified subset of N images per class (the test split stays whole)")
    p.add_argument("--subset-seed", type=int, help="which subset --train-per-class draws (default 0)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="train and test at N x N: both splits resized once, antialiased (default: the data set's "
                        "own, 32 for all but Tiny ImageNet's 64)")
    for name, typ in (("epochs", int), ("batch-size", int), ("lr", float), ("momentum", float),
                      ("weight-decay", float), ("clip-grad", float), ("warmup-epochs", float),
                      ("label-smoothing", float), ("schedule", str)):
        p.add_argument(f"--{name}", type=typ, default=None, help="overrides the recipe")
    p.add_argument("--clip-mode", choices=CLIP_MODES,
                   help="what --clip-grad bounds: the global gradient norm (default) or each gradient entry")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (overrides the recipe)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops (padding 4) and horizontal flips of the training images (overrides the recipe)")
    p.add_argument("--width-mult", type=float, help="model width multiplier (tiny models)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model kwargs, values parsed as JSON when they can be")
    p.add_argument("--mixed-precision", "--mixed_precision", dest="mixed_precision", choices=("no", "fp16", "bf16"),
                   help="default: what `accelerate launch` / its config says")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="model and batches in channels-last memory format")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile through accelerate (inductor)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES,
                   help="torch.compile mode (implies --compile); reduce-overhead captures CUDA graphs of the model")
    p.add_argument("--cuda-graphs", action="store_true", default=None,
                   help="capture the whole step (forward, backward, clip, SGD) in one CUDA graph (one GPU, CUDA only)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels (cuDNN, cuBLAS): bit-identical reruns and resumes on CUDA too")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is visible")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="SyncBatchNorm across GPUs (default on; CPU processes keep per-process statistics)")
    p.add_argument("--init-from", help="start from these weights (safetensors)")
    p.add_argument("--prune-rate", type=float, help="prune the starting weights globally by magnitude; keep them zero")
    p.add_argument("--checkpoint-every-steps", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--eval-every", type=int, default=1, metavar="N",
                   help="test every N epochs (0: the last epoch only, which is always tested)")
    p.add_argument("--log-with", choices=("tensorboard", "wandb", "all"), help="accelerate trackers, if installed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: one line per epoch")


def _config_from_file(path: Path) -> TrainConfig:
    import dataclasses

    from rf_bench.hints import nearest

    try:
        fields = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path} is not valid JSON ({e}); pass a run's config.json or fix the file") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--config {path} holds a {type(fields).__name__}, not an object of TrainConfig fields")
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    fields = fields.get("config", fields) if "run_id" in fields else fields  # a run's config.json works too
    for key in fields:
        if key not in known:
            close = nearest(key, known, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            raise ValueError(f"--config {path}: unknown field {key!r}; {hint}")
    return TrainConfig(**fields)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A resolved ``TrainConfig`` from parsed options (recipe, then overrides)."""
    if getattr(args, "config", None):
        return _config_from_file(Path(args.config))
    if not args.model or not args.dataset:
        raise ValueError("name --model and --dataset (or pass --config FILE)")
    model_kwargs = _parse_kv(args.model_kwargs)
    if args.width_mult is not None:
        model_kwargs["width_mult"] = args.width_mult
    return resolve_config(
        args.recipe, model=args.model, dataset=args.dataset, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        clip_grad=args.clip_grad, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        schedule=args.schedule, nesterov=args.nesterov, augment=args.augment, model_kwargs=model_kwargs,
        mixed_precision=args.mixed_precision, channels_last=args.channels_last, compile=args.compile,
        sync_bn=args.sync_bn, init_from=args.init_from, prune_rate=args.prune_rate, compile_mode=args.compile_mode,
        cuda_graphs=args.cuda_graphs, deterministic=args.deterministic, train_per_class=args.train_per_class,
        subset_seed=args.subset_seed, clip_mode=getattr(args, "clip_mode", None),
        image_size=getattr(args, "image_size", None),
    )


def finished_line(run_dir: Path) -> str:
    """What a user wants once training ends: the final test accuracy and where the run is."""
    from rf_bench.results import Run

    metrics = Run(path=Path(run_dir), meta={}).final_metrics()
    acc = metrics.get("test_acc")
    epochs = metrics.get("epoch", -1) + 1  # metrics count epochs from 0
    tested = f"test accuracy {100 * acc:.2f}% after {epochs} epochs" if acc is not None else "not tested"
    return f"{tested}; run directory: {run_dir}"


def run_from_args(args: argparse.Namespace) -> Path:
    """Train the run the options describe; returns its directory."""
    if args.log_with and args.log_with != "all":
        import importlib.util
        module = {"tensorboard": "tensorboard", "wandb": "wandb"}[args.log_with]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"--log-with {args.log_with} needs `pip install {module}`")
    return train(config_from_args(args), output=args.output, data_dir=args.data_dir,
                 checkpoint_every_steps=args.checkpoint_every_steps, log_with=args.log_with,
                 progress=not args.no_progress, cpu=args.cpu, eval_every=args.eval_every)


def main(argv: Optional[List[str]] = None) -> int:
    """The ``accelerate launch rf_bench/train.py`` entry point."""
    from safetensors import SafetensorError

    parser = argparse.ArgumentParser(prog="rf_bench/train.py", description=__doc__, formatter_class=HelpFormatter)
    add_train_args(parser)
    parser.add_argument("--debug", action="store_true", help="on an error, show the whole traceback")
    args = parser.parse_args(argv)
    if args.deterministic:
        from rf_bench.trainer import prepare_deterministic_process

        prepare_deterministic_process()
    try:
        run_dir = run_from_args(args)
    except (ValueError, OSError, NonFiniteLossError, SafetensorError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(finished_line(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
