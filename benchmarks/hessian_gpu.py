"""The Hessian probe on a GPU: a top-k of full-width models, with the Lanczos overhead measured.

For each model (default full-width ``resnet50_rfpool4`` and ``vgg19_rfpool4``, random init, CIFAR-size random
images, the probe's 2,048 images in batches of 512, float32):

- seconds per HVP (``HVP.matvec``, vectors on the device), median of a few;
- the float32 HVP's relative error against a float64 HVP of the same model and vector (TF32 would show here
  as about 1e-3);
- the top-k by the probe's thick-restart Lanczos, device-resident: total seconds, HVPs, Lanczos overhead
  (total minus HVPs x seconds per HVP, as a share of the HVP time) and peak device memory. Given
  ``--budget-s``, the solve stops there if it has not converged: the row then reports the HVPs done, the
  seconds per Lanczos step and the projected time of ``--project-hvps`` HVPs (503: what the converged top-90
  of this model took on the CPU);
- the rest of a probe stage, if the budget allows: a Hutchinson trace and a spectral density (SLQ).

Results go to ``hessian_gpu.{json,md}`` in ``--out`` (default ``benchmarks/results``), rewritten after each
model. ``--device cpu --quick`` runs a narrow model on the CPU to check the script itself (printed, and
written only to an ``--out`` given explicitly).

    python benchmarks/hessian_gpu.py [--models resnet50_rfpool4 vgg19_rfpool4] [--k 90] [--budget-s 120]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (benchmark_device, failure_reason, gpu_results_folder, synchronize,  # noqa: E402
                     write_result)

import rf_bench  # noqa: E402,F401
from rf_bench.probes.hessian import (HVP, hessian_trace, spectral_density, thick_restart_lanczos,  # noqa: E402
                                     top_k_basis_dtype)


class OutOfTime(Exception):
    pass


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


def hvp_relative_error(hvp: HVP, v: torch.Tensor) -> float:
    """``|H32 v - H64 v| / |H64 v|``: the float32 product against a float64 copy of the model on the same device."""
    exact = HVP(copy.deepcopy(hvp.model).double(), hvp.loss_fn, [(x.double(), y) for x, y in hvp.batches]).matvec(v)
    return float((hvp.matvec(v) - exact).norm() / exact.norm())


def _timed(matvec: Callable, device: torch.device, deadline: Optional[float]) -> Callable:
    def call(v):
        if deadline is not None and time.perf_counter() > deadline:
            raise OutOfTime
        out = matvec(v)
        synchronize(device)
        return out
    return call


def top_k(hvp: HVP, args, device: torch.device) -> Dict[str, Any]:
    """The probe's solver (``method="auto"``: thick restart, float64 basis while it fits in 2 GiB), stopped at
    ``args.budget_s`` if it has not converged by then."""
    dtype = top_k_basis_dtype(hvp.n, args.k, args.ncv)
    start = time.perf_counter()
    deadline = start + args.budget_s if args.budget_s else None
    calls_before = hvp.calls
    try:
        values, _, _ = thick_restart_lanczos(_timed(hvp.matvec, device, deadline), hvp.n, args.k, tol=args.tol,
                                             ncv=args.ncv, basis_dtype=dtype, device=hvp.device)
        converged, top, kth = True, float(values[0]), float(values[-1])
    except OutOfTime:
        converged, top, kth = False, None, None
    synchronize(device)
    return dict(converged=converged, hvps=hvp.calls - calls_before, eig_seconds=time.perf_counter() - start,
                top=top, kth=kth, basis_dtype=str(dtype).removeprefix("torch."))


def _say(*words) -> None:
    print(*words, file=sys.stderr, flush=True)


def measure(name: str, args, device: torch.device, save: Callable[[Dict[str, Any]], None] = lambda row: None
            ) -> Dict[str, Any]:
    """One model's row; ``save`` gets it once the top-k is done, so a time limit during the trace or the density
    keeps the top-k figures."""
    _say(f"{name}: set-up")
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
    _say(f"{name}: {per_hvp:.3f} s per HVP; the float64 check")
    row: Dict[str, Any] = dict(model=name, params=hvp.n, images=args.images, batch=args.batch, k=args.k, tol=args.tol,
                               seconds_per_hvp=per_hvp, hvp_rel_error=hvp_relative_error(hvp, v))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _say(f"{name}: top-{args.k}")
    row.update(top_k(hvp, args, device))  # counts its own HVPs
    row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    row["seconds_per_step"] = row["eig_seconds"] / max(row["hvps"], 1)
    row["lanczos_overhead"] = (row["eig_seconds"] - row["hvps"] * per_hvp) / max(row["hvps"] * per_hvp, 1e-12)
    row["projected_seconds"] = args.project_hvps * row["seconds_per_step"]
    save(row)
    if not row["converged"]:
        return row  # the budget went on the top-k: trace and density not measured
    _say(f"{name}: {row['hvps']} HVPs in {row['eig_seconds']:.0f} s; the trace and the density")
    t0 = time.perf_counter()
    row["trace"], row["trace_stderr"], row["trace_hvps"] = hessian_trace(model, F.cross_entropy, batches,
                                                                         args.trace_samples)
    row["trace_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    *_, row["slq_hvps"] = spectral_density(model, F.cross_entropy, batches, steps=args.slq_steps, runs=args.slq_runs)
    row["slq_seconds"] = time.perf_counter() - t0
    row["stage_seconds"] = row["eig_seconds"] + row["trace_seconds"] + row["slq_seconds"]
    return row


def _fmt(value, spec: str) -> str:
    return "not measured" if value is None else format(value, spec)


def _markdown(rows, device_name: str, args) -> str:
    budget = f", stopped after {args.budget_s:g} s if not converged" if args.budget_s else ""
    lines = [f"# Hessian on {device_name}: top-{args.k} (tol {args.tol:g}{budget}), trace and density, float32", "",
             f"{args.images} random 32x32 images in batches of {args.batch}, random init. Overhead = (Lanczos total "
             "- HVPs x seconds per HVP) / HVP time. HVP error: float32 against float64, same vector. Projected: "
             f"{args.project_hvps} HVPs at the measured seconds per Lanczos step. A probe stage = top-k + Hutchinson "
             f"trace ({args.trace_samples} samples) + SLQ ({args.slq_runs} x {args.slq_steps} steps).", "",
             "| model | params | s / HVP | HVP error | HVPs | converged | top-k s | s / step | overhead | peak GiB | "
             f"projected {args.project_hvps} HVPs s | trace s | SLQ s | stage s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | failed: {r['failed']} |" + " |" * 12)
            continue
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['seconds_per_hvp']:.3f} | "
                     f"{r['hvp_rel_error']:.1e} | {r['hvps']} | {'yes' if r['converged'] else 'no'} | "
                     f"{r['eig_seconds']:.0f} | {r['seconds_per_step']:.3f} | {r['lanczos_overhead']:.1%} | "
                     f"{_fmt(r['peak_gib'], '.1f')} | {r['projected_seconds']:.0f} | "
                     f"{_fmt(r.get('trace_seconds'), '.0f')} | {_fmt(r.get('slq_seconds'), '.0f')} | "
                     f"{_fmt(r.get('stage_seconds'), '.0f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50_rfpool4", "vgg19_rfpool4"])
    parser.add_argument("--k", type=int, default=90)
    parser.add_argument("--ncv", type=int, help="Lanczos basis size (default the probe's: k + max(20, k // 2))")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--hvp-repeats", type=int, default=5)
    parser.add_argument("--trace-samples", type=int, default=20)
    parser.add_argument("--slq-steps", type=int, default=80)
    parser.add_argument("--slq-runs", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop the top-k after this (0: run to the end)")
    parser.add_argument("--project-hvps", type=int, default=503)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results; --quick: none)")
    parser.add_argument("--quick", action="store_true", help="smoke test: narrow model, small k")
    args = parser.parse_args()
    device, device_name = benchmark_device(args.device)
    if args.quick:
        args.models, args.k, args.images, args.batch, args.width_mult = args.models[:1], 3, 32, 32, 0.125
        args.hvp_repeats, args.trace_samples, args.slq_steps, args.slq_runs = 2, 3, 10, 1
    folder = gpu_results_folder(args.out, args.quick, device)
    rows = []

    def save(partial: Optional[Dict[str, Any]] = None) -> None:
        shown = rows + ([partial] if partial is not None else [])
        if folder is not None:
            write_result("hessian_gpu", dict(device=device_name, quick=args.quick, rows=shown),
                         _markdown(shown, device_name, args), folder)

    for name in args.models:
        try:
            rows.append(measure(name, args, device, save))
        except Exception as e:  # noqa: BLE001 - recorded, and the next model goes on
            rows.append(dict(model=name, failed=failure_reason(e)))
        save()
    print(_markdown(rows, device_name, args))


if __name__ == "__main__":
    main()
