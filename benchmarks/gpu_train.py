"""Training throughput on a GPU: a bare PyTorch loop vs rf-bench's trainer (eager, captured, packed), side by side.

Per model, k and input size (CIFAR 32x32, Tiny-ImageNet 64x64), at the paper's batch 128 by default, with bf16
autocast and channels_last for every loop:

- ``bare``: timm model, SGD with momentum and weight decay, global-norm clipping, pre-normalised batches
  already on the device: the loop a user would write, nothing else;
- ``trainer``: rf-bench's ``Trainer.step`` with everything a step does (on-device crop/flip/normalise,
  running stats, NaN checks every 10 steps, the lr schedule);
- ``captured``: the same with ``cuda_graphs=True`` (the whole step replayed as one CUDA graph);
- ``packed N``: N processes, each a captured trainer, sharing the GPU; aggregate images/s.

MFU = images/s x training FLOPs per image (forward counted by ``torch.utils.flop_counter``, x3 for forward +
backward) / the device's dense bf16 peak. Results go to ``benchmarks/results/gpu_train.{json,md}`` with the device
name. On a machine without CUDA, ``--device cpu --quick`` runs the same code on a tiny model (a smoke test of the
script; its numbers are not GPU numbers and are printed, not written).

    python benchmarks/gpu_train.py [--models resnet50_rfpool1 vgg19_rfpool4] [--sizes 32 64] [--packed 1 2 4 8]
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import benchmark_device, synchronize, write_result  # noqa: E402
from grid_cost import forward_flops  # noqa: E402

# dense bf16 peak TFLOP/s (no sparsity), from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
DEFAULT_MODELS = [f"{family}{k}" for family in ("resnet50_rfpool", "vgg19_rfpool") for k in (1, 2, 3, 4)]


def peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def bare_rate(model_name: str, size: int, classes: int, batch: int, steps: int, warmup: int, device: torch.device,
              model_kwargs: Dict[str, Any], bf16: bool) -> float:
    import timm

    import rf_bench  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=classes, **model_kwargs).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-5)
    loss_fn = nn.CrossEntropyLoss()
    xs = [torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
          for _ in range(4)]
    ys = [torch.randint(0, classes, (batch,), device=device) for _ in range(4)]

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(xs[i % 4]), ys[i % 4])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def _trainer(model_name: str, size: int, classes: int, batch: int, device: torch.device,
             model_kwargs: Dict[str, Any], bf16: bool, cuda_graphs: bool, out: str):
    from rf_bench import data as D
    from rf_bench.recipes import resolve_config
    from rf_bench.trainer import Trainer

    class SyntheticTrainer(Trainer):
        def _load_data(self) -> None:  # a synthetic set of the wanted size instead of a named data set
            n = 8 * batch
            self.train_set = D.load("synthetic", "train", n=n, num_classes=classes, size=size)
            self.test_set = D.load("synthetic", "test", n=batch, num_classes=classes, size=size)

    cfg = resolve_config("paper", model=model_name, dataset="synthetic", batch_size=batch, epochs=1000,
                         model_kwargs=model_kwargs, channels_last=True, mixed_precision="bf16" if bf16 else "no",
                         cuda_graphs=cuda_graphs)
    trainer = SyntheticTrainer(cfg, out, progress=False, cpu=device.type == "cpu")
    trainer.setup()
    return trainer


def _endless_batches(trainer):
    epoch = 0
    while True:
        trainer.train_loader.set_epoch(epoch)
        yield from trainer.train_loader.iter_from(0)
        epoch += 1


def trainer_rate(model_name: str, size: int, classes: int, batch: int, steps: int, warmup: int,
                 device: torch.device, model_kwargs: Dict[str, Any], bf16: bool, cuda_graphs: bool,
                 barrier=None) -> float:
    """Images/s of ``Trainer.step`` with the trainer's loader and its NaN check every ``sync_every`` steps."""
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(model_name, size, classes, batch, device, model_kwargs, bf16, cuda_graphs, out)
        stream = _endless_batches(trainer)

        def run(first: int, count: int) -> None:
            for i in range(first, first + count):
                x, y = next(stream)
                trainer.step(x, y, i)
                if (i + 1) % trainer.sync_every == 0:
                    trainer.check_finite()

        run(0, warmup)
        synchronize(device)
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        run(warmup, steps)
        trainer.check_finite()
        synchronize(device)
        return steps * batch / (time.perf_counter() - t0)


def _packed_worker(args, barrier, results, index) -> None:
    results[index] = trainer_rate(*args, barrier=barrier)


def packed_rate(n: int, args: tuple) -> float:
    """N processes on one GPU, timed together after a barrier: the sum of their images/s."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Manager().dict()
    procs = [ctx.Process(target=_packed_worker, args=(args, barrier, results, i)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if len(results) != n:
        raise RuntimeError(f"{n - len(results)} of {n} packed processes failed (out of GPU memory?)")
    return sum(results.values())


def measure(model: str, size: int, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    classes = 10 if size == 32 else 200
    kwargs = dict(width_mult=args.width_mult) if args.width_mult != 1 else {}
    common = (model, size, classes, args.batch_size, args.steps, args.warmup, device, kwargs, device.type == "cuda")
    row: Dict[str, Any] = dict(model=model, size=size, batch=args.batch_size)
    row["flops_per_image"] = 3.0 * forward_flops(model, size, classes, **kwargs)  # forward + backward
    row["bare"] = bare_rate(*common)
    row["trainer"] = trainer_rate(*common, cuda_graphs=False)
    if device.type == "cuda":
        row["captured"] = trainer_rate(*common, cuda_graphs=True)
        for n in args.packed:
            if n > 1:
                row[f"packed{n}"] = packed_rate(n, common + (True,))
    return row


def _markdown(rows: List[Dict[str, Any]], device_name: str, peak: Optional[float], args) -> str:
    cols = ["bare", "trainer", "captured"] + [f"packed{n}" for n in args.packed if n > 1]
    precision = "bf16 autocast" if device_name != "cpu" else "float32"
    lines = [f"# Training images/s on {device_name} (batch {args.batch_size}, {precision}, channels_last)", "",
             f"{args.steps} timed steps after {args.warmup} warm-up steps per loop; MFU against a dense bf16 peak of "
             f"{peak:g} TFLOP/s." if peak else f"{args.steps} timed steps after {args.warmup} warm-up steps; no peak "
             "known for this device, so no MFU.", "",
             "| model | input | " + " | ".join(cols) + " | trainer / bare | best / bare | best MFU |",
             "|---|---|" + "---|" * (len(cols) + 3)]
    for r in rows:
        present = [c for c in cols if c in r]
        best = max(r[c] for c in present)
        mfu = f"{best * r['flops_per_image'] / (peak * 1e12):.1%}" if peak else "-"
        cells = [f"{r[c]:,.0f}" if c in r else "-" for c in cols]
        lines.append(f"| {r['model']} | {r['size']}x{r['size']} | " + " | ".join(cells) +
                     f" | {r['trainer'] / r['bare']:.1%} | {best / r['bare']:.2f}x | {mfu} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--packed", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny model, few steps")
    args = parser.parse_args()
    device, device_name = benchmark_device(args.device)
    if args.quick:
        args.models, args.sizes, args.steps, args.warmup, args.batch_size = args.models[:1], [32], 4, 2, 16
        args.width_mult = min(args.width_mult, 0.125)
    peak = peak_tflops(device)
    rows = [measure(m, s, args, device) for s in args.sizes for m in args.models]
    md = _markdown(rows, device_name, peak, args)
    print(md)
    if device.type != "cuda":
        return  # a smoke test of the script, not a GPU figure
    write_result("gpu_train", dict(device=device_name, peak_bf16_tflops=peak, batch_size=args.batch_size, steps=args.steps,
                            warmup=args.warmup, width_mult=args.width_mult, rows=rows), md)


if __name__ == "__main__":
    main()
