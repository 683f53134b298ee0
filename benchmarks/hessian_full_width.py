"""A converged top-90 Hessian spectrum of a full-width ResNet50 (23.5M parameters) on this CPU.

``hessian_eigenvalues`` with its defaults (thick-restart Lanczos, a float32 basis of 136 vectors since a
float64 one would pass 2 GiB), the probe's tolerance (1e-4), random-init resnet50_rfpool4, a few 32x32
images (the probe's 2048 take minutes per HVP here: a GPU job). Reports HVPs, seconds and peak RSS.

    python benchmarks/hessian_full_width.py [--images 8] [--k 90]
"""
from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, write_result  # noqa: E402


def main() -> None:
    import timm

    import rf_bench  # noqa: F401
    from rf_bench.probes.hessian import hessian_eigenvalues

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50_rfpool4")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--k", type=int, default=90)
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    n = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.images, 3, 32, 32, generator=g), torch.randint(0, model.num_classes, (args.images,), generator=g))]
    with Timer() as t:
        spectrum = hessian_eigenvalues(model, F.cross_entropy, batches, k=args.k, tol=args.tol)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    ev = spectrum.eigenvalues
    result = dict(model=args.model, params=n, images=args.images, k=args.k, tol=args.tol, hvps=spectrum.hvps,
                  seconds=t.seconds, peak_rss_gb=peak, top=float(ev[0]), kth=float(ev[-1]),
                  eigenvalues=ev.tolist())
    md = (f"# Converged top-{args.k} Hessian eigenvalues, full-width {args.model} ({n / 1e6:.2f}M parameters), "
          f"random init, {args.images} images 32x32, this CPU\n\n"
          f"Thick-restart Lanczos (float32 basis, `method=\"auto\"`), tol {args.tol:g}: **{spectrum.hvps} HVPs, "
          f"{t.seconds:.0f} s, peak RSS {peak:.2f} GB**. Largest eigenvalue {ev[0]:.4g}, {args.k}th {ev[-1]:.4g}.\n")
    write_result("hessian_full_width", result, md)
    print(md)


if __name__ == "__main__":
    main()
