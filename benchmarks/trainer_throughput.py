"""Training images/s: rf-bench's trainer vs a bare PyTorch loop, side by side on this CPU.

Same model, global batch, optimizer (the paper's SGD with global-norm clipping) and data (digits,
32x32). The bare loop reads pre-normalised float tensors already in memory and does nothing else;
the trainer does everything a run does (accelerate, on-device augmentation and normalisation, NaN
checks, progress, per-epoch checkpoint and evaluation, which are not in its images/s). Epoch 1 is
warm-up for both; images/s are averaged over the following epochs.

    python benchmarks/trainer_throughput.py [--model vgg19_rfpool2] [--width-mult 0.25] [--epochs 6] [--repeats 6]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import rf_bench  # noqa: E402,F401
from rf_bench import data as D  # noqa: E402
from rf_bench import train as T  # noqa: E402


def bare_loop(cfg: T.TrainConfig) -> float:
    torch.manual_seed(cfg.seed)
    data = D.load(cfg.dataset, "train")
    x_all = D.normalize(data.images, data.mean, data.std)
    y_all = data.labels
    model = timm.create_model(cfg.model, num_classes=data.num_classes, **cfg.model_kwargs).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    steps = len(data) // cfg.batch_size
    rates = []
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(len(data))
        t0 = time.perf_counter()
        for s in range(steps):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            loss = loss_fn(model(x_all[idx]), y_all[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
        rates.append(steps * cfg.batch_size / (time.perf_counter() - t0))
    return sum(rates[1:]) / len(rates[1:])


def trainer(cfg: T.TrainConfig) -> float:
    with tempfile.TemporaryDirectory() as out:
        run_dir = T.train(cfg, output=out, progress=False)
        rates = [json.loads(line)["images_per_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sum(rates[1:]) / len(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vgg19_rfpool2")
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=6, help="alternate the loops this many times (runs vary ~10%%)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = T.resolve_config("paper", model=args.model, dataset="digits", epochs=args.epochs, batch_size=args.batch_size,
                           model_kwargs=dict(width_mult=args.width_mult))
    no_aug = dataclasses.replace(cfg, augment=False)
    runs = {"bare": [], "trainer": [], "trainer_no_augment": []}
    loops = [("bare", lambda: bare_loop(cfg)), ("trainer", lambda: trainer(cfg)),
             ("trainer_no_augment", lambda: trainer(no_aug))]
    for i in range(args.repeats):  # alternate, reversing the order every other time: a drift in the machine's
        for name, loop in loops if i % 2 == 0 else loops[::-1]:  # speed then favours no loop
            runs[name].append(loop())
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = dict(model=args.model, width_mult=args.width_mult, batch_size=args.batch_size, epochs=args.epochs,
                  median_images_per_s={k: round(v, 1) for k, v in med.items()},
                  ratio=round(med["trainer"] / med["bare"], 3),
                  ratio_no_augment=round(med["trainer_no_augment"] / med["bare"], 3),
                  all_runs={k: [round(x, 1) for x in v] for k, v in runs.items()})
    md = (f"# Trainer vs bare PyTorch loop ({args.model}, width {args.width_mult}, digits 32x32, batch "
          f"{args.batch_size}, paper SGD + clipping, CPU, median of {args.repeats} alternating runs)\n\n"
          "| loop | images/s | vs bare |\n|---|---|---|\n"
          f"| bare PyTorch loop, normalised tensors in memory, no augmentation | {med['bare']:,.1f} | 100% |\n"
          f"| rf-bench trainer, crop+flip+normalise per batch | {med['trainer']:,.1f} | "
          f"**{med['trainer'] / med['bare']:.1%}** |\n"
          f"| rf-bench trainer, `--no-augment` (same work as the bare loop) | {med['trainer_no_augment']:,.1f} | "
          f"**{med['trainer_no_augment'] / med['bare']:.1%}** |\n")
    write_result("trainer_throughput", result, md)
    print(md)


if __name__ == "__main__":
    main()
