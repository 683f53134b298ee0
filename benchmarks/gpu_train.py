"""Training throughput on a GPU: a bare PyTorch loop vs rf-bench's trainer (eager, captured, packed), side by side.

Per model, at the paper's batch 128 by default (plus batch 512 for the first model), on CIFAR-size 32x32
inputs, with bf16 autocast and channels_last for every loop:

- ``bare``: timm model, SGD with momentum and weight decay, global-norm clipping, pre-normalised batches
  already on the device: the loop a user would write, nothing else;
- ``trainer``: rf-bench's ``Trainer.step`` with everything a step does (on-device crop/flip/normalise,
  running stats, NaN checks every 10 steps, the lr schedule);
- ``captured``: the same with ``cuda_graphs=True`` (the whole step replayed as one CUDA graph);
- ``packed N``: N processes, each a captured trainer, sharing the GPU, released together by a barrier: all
  their images over the span from the first start to the last finish.

MFU = images/s x training FLOPs per image (forward counted by ``torch.utils.flop_counter``, x3 for forward +
backward) / the device's dense bf16 peak. The measurements run in order of importance (every model's bare,
trainer and captured loops; the large batch; then the packed runs) and stop being started once ``--budget-s``
has passed; each packed group has ``--packed-timeout-s`` to finish, after which its processes are killed and
the group is recorded as failed. The results (``gpu_train.json`` and ``.md``, in ``--out``, default
``benchmarks/results``) are rewritten after every measurement, so a hang or a kill keeps what finished.

On a machine without CUDA, ``--device cpu --quick`` runs the same code on a tiny model, packed runs in
eager mode included (a smoke test of the script: its numbers are not GPU numbers and are written only to
an ``--out`` given explicitly, never to ``benchmarks/results``). ``--quick`` on a GPU is a short check of the
same kind and follows the same rule.

    python benchmarks/gpu_train.py [--models resnet50_rfpool1 vgg19_rfpool4] [--packed 1 2 4 8] [--out DIR]
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (benchmark_device, failure_reason, gpu_results_folder, synchronize,  # noqa: E402
                     write_result)
from grid_cost import forward_flops  # noqa: E402

# dense bf16 peak TFLOP/s (no sparsity), from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
DEFAULT_MODELS = ["resnet50_rfpool1", "resnet50_rfpool4", "vgg19_rfpool1"]


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
                 barrier=None, barrier_timeout: Optional[float] = None) -> Dict[str, float]:
    """``Trainer.step`` with the trainer's loader and its NaN check every ``sync_every`` steps: the timed
    window's wall-clock start and end (``time.time()``, comparable across processes) and its images."""
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
            barrier.wait(barrier_timeout)  # a peer that died breaks the barrier instead of hanging the rest
        start = time.time()
        run(warmup, steps)
        trainer.check_finite()
        synchronize(device)
        return dict(start=start, end=time.time(), images=steps * batch)


def window_rate(window: Dict[str, float]) -> float:
    return window["images"] / (window["end"] - window["start"])


def packed_throughput(windows: Sequence[Dict[str, float]]) -> float:
    """Images/s of processes that ran side by side: all their images over the span from the first start to the
    last finish. (Adding up each process's own rate would credit a process that finished early with a share of
    the GPU it no longer used.)"""
    return sum(w["images"] for w in windows) / (max(w["end"] for w in windows) - min(w["start"] for w in windows))


def _packed_worker(args, barrier, barrier_timeout, results, index) -> None:
    results[index] = trainer_rate(*args, barrier=barrier, barrier_timeout=barrier_timeout)


def packed_rate(n: int, args: tuple, timeout: float) -> float:
    """N processes on one device, released together by a barrier. Each has ``timeout`` seconds in all (start-up
    and capture included); a process that fails or hangs breaks the barrier and the group is killed."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # this process's cached blocks from the loops before would crowd the workers out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier, results = ctx.Barrier(n), manager.dict()
        procs = [ctx.Process(target=_packed_worker, args=(args, barrier, timeout, results, i)) for i in range(n)]
        deadline = time.monotonic() + timeout
        for p in procs:
            p.start()
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
            p.join()
        windows = list(results.values())
    if len(windows) != n:
        raise RuntimeError(f"{n - len(windows)} of {n} packed processes did not finish ({len(hung)} still running "
                           f"after {timeout:.0f} s and killed; out of memory?)")
    return packed_throughput(windows)


Job = Tuple[Dict[str, Any], str, Callable[[], float]]


def plan(args: argparse.Namespace, device: torch.device) -> Tuple[List[Dict[str, Any]], List[Job]]:
    """The result rows (model, input, batch) and the measurements that fill them, most important first."""
    cuda = device.type == "cuda"
    kwargs = dict(width_mult=args.width_mult) if args.width_mult != 1 else {}
    rows: Dict[tuple, Dict[str, Any]] = {}

    def row(model: str, size: int, batch: int) -> Dict[str, Any]:
        if (model, size, batch) not in rows:
            classes = 10 if size == 32 else 200
            rows[(model, size, batch)] = dict(model=model, size=size, batch=batch, classes=classes,
                                              flops_per_image=3.0 * forward_flops(model, size, classes, **kwargs))
        return rows[(model, size, batch)]

    def common(r: Dict[str, Any]) -> tuple:
        return (r["model"], r["size"], r["classes"], r["batch"], args.steps, args.warmup, device, kwargs, cuda)

    def loops(r: Dict[str, Any]) -> List[Job]:
        out = [(r, "bare", lambda: bare_rate(*common(r))),
               (r, "trainer", lambda: window_rate(trainer_rate(*common(r), cuda_graphs=False)))]
        if cuda:
            out.append((r, "captured", lambda: window_rate(trainer_rate(*common(r), cuda_graphs=True))))
        return out

    jobs: List[Job] = []
    for size in args.sizes:
        for model in args.models:
            jobs += loops(row(model, size, args.batch_size))
    if args.big_batch:
        jobs += loops(row(args.models[0], args.sizes[0], args.big_batch))
    for size in args.sizes:
        for model in args.models:
            r = row(model, size, args.batch_size)
            for n in args.packed:  # captured on a GPU; eager in the CPU smoke test
                packed = lambda r=r, n=n: packed_rate(n, common(r) + (cuda,), args.packed_timeout_s)  # noqa: E731
                jobs.append((r, f"packed{n}", packed))
    return list(rows.values()), jobs


def run_jobs(jobs: Sequence[Job], budget_s: float, after_each: Callable[[], None]) -> None:
    """Each measurement in turn; one that fails is recorded with its reason and the others go on. None is
    started once ``budget_s`` has passed: those are recorded as not measured."""
    start = time.monotonic()
    for r, column, measure in jobs:
        if time.monotonic() - start > budget_s:
            r.setdefault("not_measured", []).append(column)
            continue
        print(f"{r['model']} {r['size']}x{r['size']} batch {r['batch']}: {column} ...", file=sys.stderr, flush=True)
        try:
            r[column] = measure()
        except Exception as e:  # noqa: BLE001 - recorded in the results, with its reason
            r.setdefault("failed", {})[column] = failure_reason(e)
        after_each()


def _cell(r: Dict[str, Any], column: str) -> str:
    if column in r:
        return f"{r[column]:,.0f}"
    if column in r.get("failed", {}):
        return "failed"
    return "not measured" if column in r.get("not_measured", []) else "-"


def _markdown(rows: List[Dict[str, Any]], device_name: str, peak: Optional[float], args) -> str:
    cols = ["bare", "trainer", "captured"] + [f"packed{n}" for n in args.packed]
    precision = "bf16 autocast" if device_name != "cpu" else "float32"
    lines = [f"# Training images/s on {device_name} ({precision}, channels_last)", "",
             f"{args.steps} timed steps after {args.warmup} warm-up steps per loop; MFU against a dense bf16 peak of "
             f"{peak:g} TFLOP/s." if peak else f"{args.steps} timed steps after {args.warmup} warm-up steps; no peak "
             "known for this device, so no MFU.", "",
             "| model | input | batch | " + " | ".join(cols) + " | trainer / bare | best / bare | best MFU |",
             "|---|---|---|" + "---|" * (len(cols) + 3)]
    notes = []
    for r in rows:
        present = [c for c in cols if c in r]
        best = max((r[c] for c in present), default=None)
        ratio = f"{r['trainer'] / r['bare']:.1%}" if "trainer" in r and "bare" in r else "-"
        best_ratio = f"{best / r['bare']:.2f}x" if best and "bare" in r else "-"
        mfu = f"{best * r['flops_per_image'] / (peak * 1e12):.1%}" if peak and best else "-"
        lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | " +
                     " | ".join(_cell(r, c) for c in cols) + f" | {ratio} | {best_ratio} | {mfu} |")
        notes += [f"- {r['model']} batch {r['batch']}, {c}: {why}" for c, why in r.get("failed", {}).items()]
    if notes:
        lines += ["", "Failed:", ""] + notes
    if any(r.get("not_measured") for r in rows):
        lines += ["", f"Not measured: not started within the {args.budget_s:g} s budget (`--budget-s`)."]
    return "\n".join(lines) + "\n"


def _quick(args: argparse.Namespace, device: torch.device) -> None:
    args.models, args.sizes, args.steps, args.warmup, args.batch_size = args.models[:1], [32], 4, 2, 16
    args.width_mult = min(args.width_mult, 0.125)
    if device.type != "cuda":  # a CPU check of the code paths, packed included, in a minute or two
        args.big_batch = 0
        args.packed = [n for n in args.packed if n == 2]
    else:
        args.big_batch = 32 if args.big_batch else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--big-batch", type=int, default=512, help="also the first model at this batch (0: no)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--packed", nargs="*", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--packed-timeout-s", type=float, default=90.0, help="per packed group, start-up included")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no measurement after this")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results; --quick: none)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model, few steps")
    args = parser.parse_args()
    device, device_name = benchmark_device(args.device)
    if args.quick:
        _quick(args, device)
    folder = gpu_results_folder(args.out, args.quick, device)
    peak = peak_tflops(device)
    rows, jobs = plan(args, device)

    def write() -> None:
        if folder is not None:
            write_result("gpu_train", dict(device=device_name, peak_bf16_tflops=peak, steps=args.steps,
                                           warmup=args.warmup, width_mult=args.width_mult, quick=args.quick,
                                           rows=rows), _markdown(rows, device_name, peak, args), folder)

    run_jobs(jobs, args.budget_s, write)
    print(_markdown(rows, device_name, peak, args))


if __name__ == "__main__":
    main()
