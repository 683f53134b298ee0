"""Top-k Hessian eigenvalues: rf-bench (ARPACK, thick-restart Lanczos) vs PyHessian's power iteration with
deflation and hessian-eigenthings (its Lanczos and its deflated power iteration, with their defaults).

Side by side on one CPU, on a small CNN whose dense Hessian is the ground truth, for k = 10 and 90:
HVPs, seconds and the largest relative error against the true eigenvalues. PyHessian converges to the
largest-*magnitude* eigenvalues, so it is scored against those (like with like, rf-bench ``LM``);
rf-bench's default ``LA`` is scored against the largest by value.

    pip install pyhessian hessian-eigenthings==1.0.0a5   # benchmark-only dependencies
    python benchmarks/hessian_compare.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from rf_bench.probes.hessian import hessian_eigenvalues  # noqa: E402


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def dense_eigenvalues(model, x, y) -> np.ndarray:
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params, s = {}, 0
        for n, sh in zip(names, shapes):
            params[n] = flat[s:s + sh.numel()].view(sh)
            s += sh.numel()
        return F.cross_entropy(functional_call(model, params, (x.double(),)), y)

    h = torch.autograd.functional.hessian(loss, flat0)
    model.float()
    return np.linalg.eigvalsh(h.numpy())


def pyhessian_top(model, x, y, k):
    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the package re-exports a class of the same name

    calls = [0]
    original = ph.hessian_vector_product

    def counted(*a, **kw):
        calls[0] += 1
        return original(*a, **kw)

    ph.hessian_vector_product = counted
    try:
        t0 = time.perf_counter()
        comp = ph.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        values, _ = comp.eigenvalues(top_n=k)  # its defaults: maxIter 100, tol 1e-3
        return np.asarray(values), calls[0], time.perf_counter() - t0
    finally:
        ph.hessian_vector_product = original


def eigenthings_top(model, x, y, k, algorithm, which="LM"):
    """hessian-eigenthings with its defaults (Lanczos: 2k steps; power: 100 iterations, tol 1e-4), HVPs counted."""
    import hessian_eigenthings as he

    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
    calls = [0]
    matvec = op.matvec

    def counted(v):
        calls[0] += 1
        return matvec(v)

    op.matvec = counted
    t0 = time.perf_counter()
    if algorithm == "lanczos":
        res = he.lanczos(op, k=k, which=which, seed=0)
    else:
        res = he.deflated_power_iteration(op, k=k, seed=0)
    return res.eigenvalues.detach().double().numpy(), calls[0], time.perf_counter() - t0


def rel_err(got, true) -> float:
    got, true = np.sort(np.asarray(got))[::-1], np.sort(np.asarray(true))[::-1]
    return float(np.max(np.abs(got - true) / np.abs(true)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 90])
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = CNN().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    eig = dense_eigenvalues(model, x, y)
    n_params = len(eig)
    la_true = np.sort(eig)[::-1]
    lm_true = eig[np.argsort(-np.abs(eig))]
    rows, result = [], dict(params=n_params, negative_fraction=float((eig < 0).mean()))
    for k in args.ks:
        for which, truth in (("LA", la_true), ("LM", lm_true)):
            t0 = time.perf_counter()
            spec = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=k, which=which, tol=1e-6)
            sec = time.perf_counter() - t0
            err = rel_err(spec.eigenvalues.numpy(), truth[:k])
            result[f"rf_bench_{which}_k{k}"] = dict(hvps=spec.hvps, seconds=round(sec, 2), max_rel_error=err)
            rows.append(f"| rf-bench `{which}` (ARPACK, tol 1e-6) | {k} | {spec.hvps} | {sec:.1f} | {err:.1e} |")
            t0 = time.perf_counter()
            spec = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=k, which=which, tol=1e-6, method="lanczos")
            sec = time.perf_counter() - t0
            err = rel_err(spec.eigenvalues.numpy(), truth[:k])
            result[f"rf_bench_trlan_{which}_k{k}"] = dict(hvps=spec.hvps, seconds=round(sec, 2), max_rel_error=err)
            rows.append(f"| rf-bench `{which}` (thick-restart Lanczos, tol 1e-6) | {k} | {spec.hvps} | {sec:.1f} | "
                        f"{err:.1e} |")
            values, hvps, sec = eigenthings_top(model, x, y, k, "lanczos", which)
            err = rel_err(values, truth[:k])
            result[f"eigenthings_lanczos_{which}_k{k}"] = dict(hvps=hvps, seconds=round(sec, 2), max_rel_error=err)
            rows.append(f"| hessian-eigenthings Lanczos `{which}` (defaults) | {k} | {hvps} | {sec:.1f} | {err:.1e} |")
        values, hvps, sec = eigenthings_top(model, x, y, k, "power")
        err_lm, err_la = rel_err(values, lm_true[:k]), rel_err(values, la_true[:k])
        result[f"eigenthings_power_k{k}"] = dict(hvps=hvps, seconds=round(sec, 2), max_rel_error_vs_LM=err_lm,
                                                 max_rel_error_vs_LA=err_la)
        rows.append(f"| hessian-eigenthings deflated power iteration (defaults) | {k} | {hvps} | {sec:.1f} | "
                    f"{err_lm:.1e} (vs largest by value: {err_la:.1e}) |")
        values, hvps, sec = pyhessian_top(model, x, y, k)
        err_lm = rel_err(values, lm_true[:k])
        err_la = rel_err(values, la_true[:k])
        result[f"pyhessian_k{k}"] = dict(hvps=hvps, seconds=round(sec, 2), max_rel_error_vs_LM=err_lm,
                                         max_rel_error_vs_LA=err_la)
        rows.append(f"| PyHessian power iteration (defaults) | {k} | {hvps} | {sec:.1f} | {err_lm:.1e} "
                    f"(vs largest by value: {err_la:.1e}) |")
        ours = result[f"rf_bench_LM_k{k}"]
        result[f"k{k}_hvp_ratio"] = round(hvps / ours["hvps"], 1)
        result[f"k{k}_time_ratio"] = round(sec / max(ours["seconds"], 1e-9), 1)
        print(rows[-3:], flush=True)
    md = (f"# Top-k Hessian eigenvalues, {n_params}-parameter CNN, 256 images, dense ground truth "
          f"({100 * result['negative_fraction']:.0f}% of its eigenvalues are negative)\n\n"
          "| method | k | HVPs | seconds | max relative error |\n|---|---|---|---|---|\n" + "\n".join(rows)
          + "\n\n" + "; ".join(f"k={k}: PyHessian needs {result[f'k{k}_hvp_ratio']}x the HVPs and "
                                f"{result[f'k{k}_time_ratio']}x the time of rf-bench `LM`" for k in args.ks) + ".\n")
    write_result("hessian_compare", result, md)
    print(md)


if __name__ == "__main__":
    main()
