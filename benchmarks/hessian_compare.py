"""Top-k Hessian eigenvalues: rf-bench (ARPACK, thick-restart Lanczos) vs PyHessian's power iteration with
deflation and hessian-eigenthings (its Lanczos and its deflated power iteration, with their defaults).

Side by side on one CPU, on a small CNN whose dense Hessian is the ground truth and on a narrow rfpool
ResNet50 (ground truth: ARPACK at tol 1e-10 in float64), for k = 10 and 90: HVPs, seconds and the
largest relative error against the true eigenvalues. PyHessian converges to the
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


def compare(model, x, y, la_true, lm_true, k, label, rows, result, slow_baselines=True) -> None:
    """Every method at one k on one model; rows for the table, figures into ``result``."""
    def record(key, name, values, hvps, sec, truth):
        err = rel_err(values, truth[:k])
        result[f"{label}_{key}_k{k}"] = dict(hvps=hvps, seconds=round(sec, 2), max_rel_error=err)
        rows.append(f"| {label} | {name} | {k} | {hvps} | {sec:.1f} | {err:.1e} |")

    for which, truth in (("LA", la_true), ("LM", lm_true)):
        for method, name in (("arpack", "ARPACK"), ("lanczos", "thick-restart Lanczos")):
            t0 = time.perf_counter()
            spec = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=k, which=which, tol=1e-6, method=method)
            key = "rf_bench" if method == "arpack" else "rf_bench_trlan"
            record(f"{key}_{which}", f"rf-bench `{which}` ({name}, tol 1e-6)", spec.eigenvalues.numpy(), spec.hvps,
                   time.perf_counter() - t0, truth)
        values, hvps, sec = eigenthings_top(model, x, y, k, "lanczos", which)
        record(f"eigenthings_lanczos_{which}", f"hessian-eigenthings Lanczos `{which}` (defaults)", values, hvps, sec,
               truth)
    if not slow_baselines:
        return
    for key, name, run in (("eigenthings_power", "hessian-eigenthings deflated power iteration (defaults)",
                            lambda: eigenthings_top(model, x, y, k, "power")),
                           ("pyhessian", "PyHessian power iteration (defaults)", lambda: pyhessian_top(model, x, y, k))):
        values, hvps, sec = run()
        err_lm, err_la = rel_err(values, lm_true[:k]), rel_err(values, la_true[:k])
        result[f"{label}_{key}_k{k}"] = dict(hvps=hvps, seconds=round(sec, 2), max_rel_error_vs_LM=err_lm,
                                             max_rel_error_vs_LA=err_la)
        rows.append(f"| {label} | {name} | {k} | {hvps} | {sec:.1f} | {err_lm:.1e} (vs largest by value: {err_la:.1e}) |")
    ours, theirs = result[f"{label}_rf_bench_trlan_LM_k{k}"], result[f"{label}_pyhessian_k{k}"]
    result[f"{label}_k{k}_hvp_ratio"] = round(theirs["hvps"] / ours["hvps"], 1)
    result[f"{label}_k{k}_time_ratio"] = round(theirs["seconds"] / max(ours["seconds"], 1e-9), 1)
    print(rows[-2:], flush=True)


def narrow_resnet_truth(model, x, y, k):
    """No dense Hessian at this size: the reference is ARPACK at tol 1e-10 on a float64 copy of the model."""
    import copy

    ref = copy.deepcopy(model).double()
    la = hessian_eigenvalues(ref, F.cross_entropy, [(x.double(), y)], k=k, which="LA", tol=1e-10, method="arpack")
    lm = hessian_eigenvalues(ref, F.cross_entropy, [(x.double(), y)], k=k, which="LM", tol=1e-10, method="arpack")
    lm_values = lm.eigenvalues.numpy()
    return la.eigenvalues.numpy(), lm_values[np.argsort(-np.abs(lm_values))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 90])
    parser.add_argument("--narrow-ks", type=int, nargs="+", default=[10, 90])
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
        compare(model, x, y, la_true, lm_true, k, "cnn", rows, result)

    import timm

    import rf_bench  # noqa: F401

    torch.manual_seed(0)
    narrow = timm.create_model("resnet50_rfpool3", width_mult=0.0625, num_classes=10).eval()
    xr = torch.randn(64, 3, 32, 32, generator=g)
    yr = torch.randint(0, 10, (64,), generator=g)
    result["narrow_params"] = sum(p.numel() for p in narrow.parameters())
    for k in args.narrow_ks:
        la_true, lm_true = narrow_resnet_truth(narrow, xr, yr, k)
        compare(narrow, xr, yr, la_true, lm_true, k, "resnet", rows, result)
    md = (f"# Top-k Hessian eigenvalues: `cnn`, a {n_params}-parameter CNN, 256 images 8x8, dense ground truth "
          f"({100 * result['negative_fraction']:.0f}% of its eigenvalues are negative); `resnet`, resnet50_rfpool3 "
          f"at width 1/16 ({result['narrow_params']} parameters, BatchNorm in eval mode), 64 images 32x32, "
          "ground truth ARPACK at tol 1e-10 on a float64 copy\n\n"
          "| model | method | k | HVPs | seconds | max relative error |\n|---|---|---|---|---|---|\n" + "\n".join(rows)
          + "\n\n" + "; ".join(f"{label} k={k}: PyHessian needs {result[f'{label}_k{k}_hvp_ratio']}x the HVPs and "
                                f"{result[f'{label}_k{k}_time_ratio']}x the time of rf-bench `LM` (thick restart)"
                                for label, ks in (("cnn", args.ks), ("resnet", args.narrow_ks)) for k in ks) + ".\n")
    write_result("hessian_compare", result, md)
    print(md)


if __name__ == "__main__":
    main()
