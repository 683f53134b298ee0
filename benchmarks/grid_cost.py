"""What the paper's 80-run grid costs: training FLOPs per run, counted, and GPU hours.

When ``benchmarks/results/gpu_train.json`` holds measured images/s (``benchmarks/gpu_train.py`` on a GPU), the
hours come from those rates: per model and input size, the best per-GPU rate measured (captured or packed),
applied to every training image of every epoch (the test pass counted at a third of a training image).
Without it, the hours are an estimate, not a measurement: counted FLOPs (torch's FlopCounterMode on the real
full-width models, forward + 2x for the backward pass) divided by an assumed sustained rate (``--tflops``,
default 100 TFLOP/s in bf16).

    python benchmarks/grid_cost.py [--tflops 100]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

# (data set, image size, classes, training images, test images): PAPER.md's data sets
DATASETS = (("cifar10", 32, 10, 50_000, 10_000), ("tiny-imagenet", 64, 200, 100_000, 10_000))


def forward_flops(name: str, size: int, classes: int, **model_kwargs) -> int:
    """Forward FLOPs of one ``size x size`` image, counted by torch's FlopCounterMode."""
    import timm

    import rf_bench  # noqa: F401

    model = timm.create_model(name, num_classes=classes, **model_kwargs).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def measured_rates() -> dict:
    """``{(model, size): best images/s per GPU}`` from ``results/gpu_train.json``, if a GPU run wrote it."""
    path = Path(__file__).resolve().parent / "results" / "gpu_train.json"
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    if result.get("quick"):
        return {}  # a smoke test's figures are not a GPU's rates
    rates = {}
    for row in result["rows"]:
        if row.get("batch", 128) != 128:  # the paper's batch
            continue
        candidates = [row[key] for key in ("bare", "trainer", "captured") if key in row]
        candidates += [v for key, v in row.items() if key.startswith("packed") and isinstance(v, float)]
        if candidates:
            rates[(row["model"], row["size"])] = max(candidates)
    return dict(rates, device=result["device"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tflops", type=float, default=100.0, help="assumed sustained TFLOP/s per GPU")
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args()
    rows, total_hours = [], 0.0
    rates = measured_rates()
    for dataset, size, classes, n_train, n_test in DATASETS:
        for family in ("vgg19_rfpool", "resnet50_rfpool"):
            for k in (1, 2, 3, 4):
                fwd = forward_flops(f"{family}{k}", size, classes)
                run_flops = args.epochs * (3 * fwd * n_train + fwd * n_test)
                rate = rates.get((f"{family}{k}", size))
                if rate:
                    hours = args.epochs * (n_train + n_test / 3) / rate / 3600
                else:
                    hours = run_flops / (args.tflops * 1e12) / 3600
                total_hours += 5 * hours  # five seeds
                rows.append(dict(dataset=dataset, model=f"{family}{k}", gflops_per_image=fwd / 1e9,
                                 pflops_per_run=run_flops / 1e15, gpu_hours_per_run=hours,
                                 source=f"measured {rate:,.0f} img/s" if rate else "assumed TFLOP/s"))
    where = (f"measured images/s on {rates['device']} (`benchmarks/results/gpu_train.md`) where a rate was measured, "
             f"else FLOPs / an assumed {args.tflops:g} TFLOP/s" if rates else
             f"FLOPs / an assumed {args.tflops:g} TFLOP/s: **not measured** (no GPU result in "
             "`benchmarks/results/gpu_train.json`; run `benchmarks/gpu_train.py` on a GPU)")
    lines = ["# The paper's grid: training cost", "",
             "FLOPs counted by `torch.utils.flop_counter` on the full-width models (forward; training = 3x forward "
             f"per training image plus the test pass, {args.epochs} epochs). GPU hours: {where}.",
             "", "| data set | model | GFLOPs / image (fwd) | PFLOPs / run | GPU hours / run | from |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['gflops_per_image']:.3f} | {r['pflops_per_run']:.1f} | "
                     f"{r['gpu_hours_per_run']:.2f} | {r['source']} |")
    lines += ["", f"All 80 runs (5 seeds each): **{total_hours:.0f} GPU hours**; "
              f"with 16 GPUs at once, at least {max(total_hours / 16, max(r['gpu_hours_per_run'] for r in rows)):.1f} "
              f"hours of wall time (the longest run alone is {max(r['gpu_hours_per_run'] for r in rows):.1f} h).", ""]
    write_result("grid_cost", dict(tflops_assumed=args.tflops, measured_on=rates.get("device"), epochs=args.epochs, rows=rows,
                                   total_gpu_hours=total_hours), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
