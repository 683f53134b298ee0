"""What the paper's 80-run grid costs: training FLOPs per run, counted, and GPU hours at an assumed rate.

No GPU was available when this was written, so the hours are an estimate, not a measurement: counted
FLOPs (torch's FlopCounterMode on the real full-width models, forward + 2x for the backward pass) divided
by an assumed sustained rate (``--tflops``, default 100 TFLOP/s in bf16, roughly 10% of an H100's dense
peak, which is what small-image CNNs tend to sustain). Rerun with a measured rate when a GPU is lent.

    python benchmarks/grid_cost.py [--tflops 100]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

# (data set, image size, classes, training images, test images): PAPER.md's data sets
DATASETS = (("cifar10", 32, 10, 50_000, 10_000), ("tiny-imagenet", 64, 200, 100_000, 10_000))


def forward_flops(name: str, size: int, classes: int) -> int:
    import timm

    import rf_bench  # noqa: F401

    model = timm.create_model(name, num_classes=classes).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tflops", type=float, default=100.0, help="assumed sustained TFLOP/s per GPU")
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args()
    rows, total_hours = [], 0.0
    for dataset, size, classes, n_train, n_test in DATASETS:
        for family in ("vgg19_rfpool", "resnet50_rfpool"):
            for k in (1, 2, 3, 4):
                fwd = forward_flops(f"{family}{k}", size, classes)
                run_flops = args.epochs * (3 * fwd * n_train + fwd * n_test)
                hours = run_flops / (args.tflops * 1e12) / 3600
                total_hours += 5 * hours  # five seeds
                rows.append(dict(dataset=dataset, model=f"{family}{k}", gflops_per_image=fwd / 1e9,
                                 pflops_per_run=run_flops / 1e15, gpu_hours_per_run=hours))
    lines = [f"# The paper's grid: training cost (estimate at an assumed {args.tflops:g} TFLOP/s)", "",
             "FLOPs counted by `torch.utils.flop_counter` on the full-width models (forward; training = 3x forward "
             f"per training image plus the test pass, {args.epochs} epochs). GPU hours = FLOPs / assumed rate: "
             "**not measured** (no GPU was lent); rerun `benchmarks/grid_cost.py --tflops X` with a measured rate.",
             "", "| data set | model | GFLOPs / image (fwd) | PFLOPs / run | GPU hours / run |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['gflops_per_image']:.3f} | {r['pflops_per_run']:.1f} | "
                     f"{r['gpu_hours_per_run']:.2f} |")
    lines += ["", f"All 80 runs (5 seeds each): **{total_hours:.0f} GPU hours** at {args.tflops:g} TFLOP/s; "
              f"with 16 GPUs at once, at least {max(total_hours / 16, max(r['gpu_hours_per_run'] for r in rows)):.1f} "
              f"hours of wall time (the longest run alone is {max(r['gpu_hours_per_run'] for r in rows):.1f} h).", ""]
    write_result("grid_cost", dict(tflops_assumed=args.tflops, epochs=args.epochs, rows=rows,
                                   total_gpu_hours=total_hours), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
