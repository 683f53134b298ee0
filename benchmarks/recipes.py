"""Which recipe learns: the paper's recipe as written, each single change of it, and `fast`, side by side.

The draft's recipe (``paper``: SGD lr 1e-4, momentum 0.9, weight decay 5e-5, a 0.1 clip of the global gradient
norm, cosine annealing over the run) against the same recipe with one change at a time (lr 0.1; the 0.1 clip on
each gradient entry instead of the norm; no clip) and against ``fast``, on the same data, seeds and models. Per run:
test accuracy, the last epoch's training loss, how far the weights moved from their initial values
(``||w - w0|| / ||w0||`` over every parameter), whether the trainer flagged it as not learning, and wall time.
Each recipe keeps its schedule's shape (cosine over the run, ``fast``'s warm-up) compressed to ``--epochs``.

    python benchmarks/recipes.py                       # Fashion-MNIST, fashion-cpu's data and 12 epochs, 2 processes
    python benchmarks/recipes.py --quick               # digits, 2 epochs, one model: the script itself
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

# name -> (recipe, overrides): the paper's recipe, then one change of it at a time, then `fast`
VARIANTS = {
    "paper (as written)": ("paper", {}),
    "paper, lr 0.1": ("paper", dict(lr=0.1)),
    "paper, clip by value 0.1": ("paper", dict(clip_mode="value")),
    "paper, no clip": ("paper", dict(clip_grad=0)),
    "fast": ("fast", {}),
}


def weights_moved(run_dir: Path) -> float:
    """``||w - w0|| / ||w0||`` over every trained parameter (BatchNorm's running statistics left out)."""
    import torch
    from safetensors.torch import load_file

    init, final = load_file(str(run_dir / "init.safetensors")), load_file(str(run_dir / "model.safetensors"))
    names = [n for n in init if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    delta = torch.cat([(final[n].double() - init[n].double()).flatten() for n in names])
    base = torch.cat([init[n].double().flatten() for n in names])
    return float(delta.norm() / base.norm())


def one_run(model: str, width: float, variant: str, seed: int, settings: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    from rf_bench import train as T
    from rf_bench.results import load_run

    torch.set_num_threads(1)  # one thread a process, as in a study's worker
    recipe, overrides = VARIANTS[variant]
    cfg = T.resolve_config(recipe, model=model, dataset=settings["dataset"], seed=seed, epochs=settings["epochs"],
                           batch_size=settings["batch_size"], train_per_class=settings["train_per_class"],
                           model_kwargs=dict(width_mult=width), **overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run_dir = T.train(cfg, output=out, progress=False, data_dir=settings["data_dir"], eval_every=0)
        last = load_run(run_dir).final_metrics()
        row = dict(model=model, width_mult=width, recipe=variant, seed=seed, test_acc=last["test_acc"],
                   train_loss=last["train_loss"], weights_moved=weights_moved(run_dir),
                   not_learning=load_run(run_dir).not_learning, lr=cfg.lr, clip_grad=cfg.clip_grad,
                   clip_mode=cfg.clip_mode)
    return dict(row, wall_s=round(time.perf_counter() - start, 1))


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | width | recipe | seed | test acc | train loss (last epoch) | weights moved | flagged | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['width_mult']:g} | {r['recipe']} | {r['seed']} | {100 * r['test_acc']:.2f}% "
                     f"| {r['train_loss']:.4f} | {r['weights_moved']:.3g} | {'not learning' if r['not_learning'] else '-'} "
                     f"| {r['wall_s']:.0f} |")
    return "\n".join(lines)


def summary(rows: List[Dict[str, Any]]) -> str:
    """Mean test accuracy and weight movement per recipe over every model and seed."""
    lines = ["| recipe | runs | mean test acc | lowest | mean weights moved | flagged not learning |",
             "|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        mine = [r for r in rows if r["recipe"] == variant]
        if mine:
            accs = [r["test_acc"] for r in mine]
            lines.append(f"| {variant} | {len(mine)} | {100 * statistics.fmean(accs):.2f}% | {100 * min(accs):.2f}% | "
                         f"{statistics.fmean(r['weights_moved'] for r in mine):.3g} | "
                         f"{sum(r['not_learning'] for r in mine)} of {len(mine)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vgg19_rfpool1", "vgg19_rfpool4", "resnet50_rfpool1",
                                                         "resnet50_rfpool4"])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.0625])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--quick", action="store_true", help="digits, 2 epochs, vgg19_rfpool1: checks the script")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.epochs, args.models, args.train_per_class = "digits", 2, ["vgg19_rfpool1"], None
    settings = dict(dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                    train_per_class=args.train_per_class, data_dir=args.data_dir)
    grid = [(m, w, v, s) for w in args.widths for m in args.models for v in args.variants for s in args.seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one_run, *point, settings) for point in grid]
        rows = []
        for i, future in enumerate(futures, 1):
            rows.append(future.result())
            r = rows[-1]
            print(f"[{i}/{len(grid)}] {r['model']} w{r['width_mult']:g} {r['recipe']} s{r['seed']}: "
                  f"{100 * r['test_acc']:.2f}% in {r['wall_s']:.0f} s", flush=True)
    name = "recipes_quick" if args.quick else "recipes"
    per_class = f"{args.train_per_class} training images per class" if args.train_per_class else "the whole training split"
    text = (f"# Which recipe learns: the paper's recipe as written, each single change, and fast ({args.dataset}, "
            f"{per_class}, batch {args.batch_size}, {args.epochs} epochs, one thread a run)\n\n"
            "Every recipe keeps its schedule's shape compressed to the run's epochs (the paper's cosine over 200 "
            "epochs becomes a cosine over these). *weights moved* is ||w - w0|| / ||w0|| over every parameter; "
            "*flagged*: the trainer's not-learning warning (training accuracy under 1.5x chance and the loss down "
            "by under 5% after 3 epochs).\n\n" + summary(rows) + "\n\n" + table(rows)
            + f"\n\n{len(rows)} runs in {time.perf_counter() - start:.0f} s wall on {args.jobs} processes.")
    write_result(name, dict(rows=rows, settings=vars(args), variants={k: [r, o] for k, (r, o) in VARIANTS.items()}),
                 text, Path(args.out))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
