"""What torch.compile (inductor) and channels-last give rf-bench's trainer on a CPU, side by side with eager.

For each family at each width: the trainer (the ``fast`` recipe, one thread, the same data, seed and batches)
in three modes, eager, ``--channels-last`` and ``--compile``; images/s of the epochs after the first (the first
carries the compilation, reported apart), and the last epoch's train loss and test accuracy, which must agree
with eager's within float32 rounding grown over a few epochs. Ratios are reported whatever side of 1 they fall.
This is the measurement that sized the width study (``rf-bench study fashion-width``).

    python benchmarks/cpu_training_speed.py                       # both families, widths 1/16, 1/8, 1/4
    python benchmarks/cpu_training_speed.py --widths 0.0625 --models vgg19_rfpool1 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

MODES = {"eager": {}, "channels_last": dict(channels_last=True), "compile": dict(compile=True)}


def one_run(model: str, width: float, mode: str, args) -> Dict[str, Any]:
    import rf_bench  # noqa: F401
    from rf_bench import train as T

    torch.set_num_threads(1)  # as in a study's worker
    cfg = T.resolve_config("fast", model=model, dataset=args.dataset, seed=0, epochs=args.epochs,
                           batch_size=args.batch_size, lr=0.05, train_per_class=args.train_per_class,
                           model_kwargs=dict(width_mult=width), **MODES[mode])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run_dir = T.train(cfg, output=out, progress=False, data_dir=args.data_dir, eval_every=0)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [m["images_per_s"] for m in metrics[1:]] or [metrics[0]["images_per_s"]]
    return dict(model=model, width_mult=width, mode=mode, images_per_s=round(statistics.median(steady), 1),
                first_epoch_s=round(metrics[0]["seconds"], 1), epoch_s=round(statistics.median(
                    m["seconds"] for m in metrics[1:]) if len(metrics) > 1 else metrics[0]["seconds"], 2),
                train_loss=metrics[-1]["train_loss"], test_acc=metrics[-1]["test_acc"],
                wall_s=round(time.perf_counter() - start, 1))


def one_step_agreement(model_name: str, width: float, mode: str, batch_size: int) -> Dict[str, float]:
    """The same weights and batch in float64 (the reference), eager float32 and ``mode`` float32: each float32
    gradient's relative L2 error against the reference. ``mode`` agrees within float32 rounding when its error is of
    eager's size. Over epochs the differences grow, as any two SGD trajectories' do."""
    import copy

    import timm

    import rf_bench  # noqa: F401

    torch.manual_seed(0)
    eager = timm.create_model(model_name, num_classes=10, width_mult=width).train()
    other, reference = copy.deepcopy(eager), copy.deepcopy(eager).double()
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    x_other = x.to(memory_format=torch.channels_last) if mode == "channels_last" else x
    if mode == "channels_last":
        other = other.to(memory_format=torch.channels_last)
    run = torch.compile(other) if mode == "compile" else other

    def gradient(net, module, inputs):
        torch.nn.functional.cross_entropy(net(inputs), y).backward()
        return torch.cat([p.grad.double().flatten() for p in module.parameters()])

    exact = gradient(reference, reference, x.double())
    error = lambda g: float((g - exact).norm() / exact.norm())  # noqa: E731
    return dict(eager_grad_error=error(gradient(eager, eager, x)), mode_grad_error=error(gradient(run, other, x_other)))


def markdown(rows: List[Dict[str, Any]], args) -> str:
    lines = [f"# torch.compile and channels-last vs eager: rf-bench's trainer on a CPU ({args.dataset}, "
             f"{args.train_per_class or 'all'} images per class, batch {args.batch_size}, {args.epochs} epochs, "
             "one thread)", "",
             "images/s of the epochs after the first; the first epoch (compilation included) apart; the last "
             "epoch's train loss and test accuracy beside eager's.", "",
             "| model | width | mode | images/s | vs eager | first epoch (s) | epoch (s) | train loss | test acc | "
             "gradient error vs float64: eager, this mode |", "|---|---|---|---|---|---|---|---|---|---|"]
    eager = {(r["model"], r["width_mult"]): r for r in rows if r["mode"] == "eager"}
    for r in rows:
        base = eager.get((r["model"], r["width_mult"]))
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        lines.append(f"| {r['model']} | {r['width_mult']:g} | {r['mode']} | {r['images_per_s']:,.1f} | {ratio} | "
                     f"{r['first_epoch_s']} | {r['epoch_s']} | {r['train_loss']:.5f} | {100 * r['test_acc']:.2f}% | "
                     + (f"{r['eager_grad_error']:.1e}, {r['mode_grad_error']:.1e} |" if "mode_grad_error" in r else "- |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vgg19_rfpool1", "resnet50_rfpool1"])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.0625, 0.125, 0.25])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir")
    parser.add_argument("--train-per-class", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        for width in args.widths:
            for mode in args.modes:
                rows.append(one_run(model, width, mode, args))
                if mode != "eager":
                    rows[-1].update(one_step_agreement(model, width, mode, args.batch_size))
                print(json.dumps(rows[-1]), flush=True)
    text = markdown(rows, args)
    write_result("cpu_training_speed", dict(rows=rows, settings=vars(args)), text, Path(args.out))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
