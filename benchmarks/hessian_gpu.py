"""The Hessian probe on a GPU: a converged top-k of full-width models, with the Lanczos overhead measured.

For each model (default full-width ``resnet50_rfpool4`` and ``vgg19_rfpool4``, random init, CIFAR-size random
images, the probe's 2,048 images in batches of 512, float32):

- seconds per HVP (``HVP.matvec``, vectors on the device), median of a few;
- ``hessian_eigenvalues(k, tol)`` with the device-resident thick restart: total seconds, HVPs, Lanczos overhead
  (total minus HVPs x seconds per HVP, as a share of the HVP time) and peak device memory;
- the whole probe's Hessian work for one stage as ``rf-bench probe --suite hessian`` does it: top-k plus a
  20-sample Hutchinson trace, plus an 80-step x 4-run spectral density (SLQ).

Results go to ``benchmarks/results/hessian_gpu.{json,md}`` with the device name. ``--device cpu --quick`` runs a
narrow model on the CPU to check the script itself (printed, not written).

    python benchmarks/hessian_gpu.py [--models resnet50_rfpool4 vgg19_rfpool4] [--k 90] [--tol 1e-4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import benchmark_device, synchronize, write_result  # noqa: E402

import rf_bench  # noqa: E402,F401
from rf_bench.probes.hessian import HVP, hessian_eigenvalues, hessian_trace, spectral_density  # noqa: E402


def _setup(name: str, args, device: torch.device):
    import timm

    torch.manual_seed(0)
    kwargs = dict(width_mult=args.width_mult) if args.width_mult != 1 else {}
    model = timm.create_model(name, num_classes=10, **kwargs).to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    batches = [(x[i:i + args.batch].to(device), y[i:i + args.batch].to(device))
               for i in range(0, args.images, args.batch)]
    return model, batches


def measure(name: str, args, device: torch.device) -> Dict[str, Any]:
    model, batches = _setup(name, args, device)
    hvp = HVP(model, F.cross_entropy, batches)
    v = torch.randn(hvp.n, device=device, dtype=torch.float64)
    hvp.matvec(v)  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(args.hvp_repeats):
        synchronize(device)
        t0 = time.perf_counter()
        hvp.matvec(v)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    per_hvp = statistics.median(times)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    spec = hessian_eigenvalues(model, F.cross_entropy, batches, k=args.k, tol=args.tol)
    synchronize(device)
    eig_seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    t0 = time.perf_counter()
    trace, trace_se, trace_hvps = hessian_trace(model, F.cross_entropy, batches, args.trace_samples)
    trace_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    *_, slq_hvps = spectral_density(model, F.cross_entropy, batches, steps=args.slq_steps, runs=args.slq_runs)
    slq_seconds = time.perf_counter() - t0
    hvp_seconds = spec.hvps * per_hvp
    return dict(model=name, params=hvp.n, images=args.images, batch=args.batch, k=args.k, tol=args.tol,
                seconds_per_hvp=per_hvp, hvps=spec.hvps, eig_seconds=eig_seconds,
                lanczos_overhead=(eig_seconds - hvp_seconds) / hvp_seconds, peak_gib=peak,
                top=float(spec.eigenvalues[0]), kth=float(spec.eigenvalues[-1]),
                trace=trace, trace_stderr=trace_se, trace_hvps=trace_hvps, trace_seconds=trace_seconds,
                slq_hvps=slq_hvps, slq_seconds=slq_seconds,
                stage_seconds=eig_seconds + trace_seconds + slq_seconds)


def _markdown(rows, device_name: str, args) -> str:
    lines = [f"# Hessian on {device_name}: top-{args.k} (tol {args.tol:g}), trace and density, float32", "",
             f"{args.images} random 32x32 images in batches of {args.batch}, random init. Overhead = (Lanczos total "
             "- HVPs x seconds per HVP) / HVP time. A probe stage = top-k + Hutchinson trace "
             f"({args.trace_samples} samples) + SLQ ({args.slq_runs} x {args.slq_steps} steps); the probe runs two "
             "stages (init, trained).", "",
             "| model | params | s / HVP | HVPs | top-k s | overhead | peak GiB | trace s | SLQ s | stage s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['seconds_per_hvp']:.3f} | {r['hvps']} | "
                     f"{r['eig_seconds']:.0f} | {r['lanczos_overhead']:.1%} | {peak} | {r['trace_seconds']:.0f} | "
                     f"{r['slq_seconds']:.0f} | {r['stage_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50_rfpool4", "vgg19_rfpool4"])
    parser.add_argument("--k", type=int, default=90)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--hvp-repeats", type=int, default=5)
    parser.add_argument("--trace-samples", type=int, default=20)
    parser.add_argument("--slq-steps", type=int, default=80)
    parser.add_argument("--slq-runs", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: narrow model, small k")
    args = parser.parse_args()
    device, device_name = benchmark_device(args.device)
    if args.quick:
        args.models, args.k, args.images, args.batch, args.width_mult = args.models[:1], 5, 64, 32, 0.125
        args.hvp_repeats, args.trace_samples, args.slq_steps, args.slq_runs = 2, 3, 10, 1
    rows = [measure(name, args, device) for name in args.models]
    md = _markdown(rows, device_name, args)
    print(md)
    if device.type == "cuda":
        write_result("hessian_gpu", dict(device=device_name, rows=rows), md)


if __name__ == "__main__":
    main()
