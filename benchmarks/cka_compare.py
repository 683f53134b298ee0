"""All-pairs linear CKA of a ResNet50 (random init, 32x32, n = 1000): rf-bench vs torch-cka vs ckatorch.

Each method runs in its own process (so peak memory is its own); all are checked against an exact
float64 numpy reference (the dual form, from activations captured in float64). ckatorch's exact
``cka_base`` works one pair at a time: it is timed on a sample of pairs and extrapolated.

    pip install torch-cka ckatorch    # benchmark-only dependencies
    python benchmarks/cka_compare.py [--model resnet50_rfpool4] [--n 1000]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import rf_bench  # noqa: E402,F401
from rf_bench.probes.cka import cka_matrix, default_layers, minibatch_cka_matrix  # noqa: E402


def _setup(model_name: str, n: int):
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, images, default_layers(model)


def _activations(model, images, layers, dtype, batch=250):
    acts = {name: [] for name in layers}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda m, i, o, name=name: acts[name].append(o.detach().reshape(len(o), -1).to(dtype))) for name in layers]
    with torch.no_grad():
        for s in range(0, len(images), batch):
            model(images[s:s + batch])
    for h in hooks:
        h.remove()
    return [torch.cat(acts[name]) for name in layers]


def run_method(method: str, model_name: str, n: int, out: Path) -> None:
    torch.set_num_threads(2)
    model, images, layers = _setup(model_name, n)
    with torch.no_grad():  # warm-up, so that no method pays for the first call's one-off set-up
        model(images[:250])
    t0 = time.perf_counter()
    extra = {}
    if method.startswith("rf_bench"):
        if method == "rf_bench_minibatch":
            matrix, _, _ = minibatch_cka_matrix(model, model, images, layers, batch_size=100)
        else:
            dtype = torch.float64 if method == "rf_bench_float64" else torch.float32
            matrix, _, _ = cka_matrix(model, model, images, layers, batch_size=250, gram_dtype=dtype)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, n, 250):
                model(images[s:s + 250])
        extra["forward_s"] = time.perf_counter() - t1
        if method == "rf_bench":  # again, now that the process's allocator holds the memory (no page faults)
            t1 = time.perf_counter()
            cka_matrix(model, model, images, layers, batch_size=250)
            extra["second_call_s"] = time.perf_counter() - t1
    elif method == "torch_cka":
        from torch.utils.data import DataLoader, TensorDataset
        from torch_cka import CKA

        cka = CKA(model, model, "a", "b", layers, layers, device="cpu")
        cka.compare(DataLoader(TensorDataset(images), batch_size=100))
        matrix = cka.export()["CKA"]
        seconds = time.perf_counter() - t0
    elif method == "ckatorch_pairwise":
        from ckatorch.core import cka_base

        acts = _activations(model, images, layers, torch.float32)
        forward = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        pairs = [tuple(rng.integers(0, len(layers), 2)) for _ in range(20)]
        t1 = time.perf_counter()
        for i, j in pairs:
            cka_base(acts[i], acts[j])
        per_pair = (time.perf_counter() - t1) / len(pairs)
        seconds = forward + per_pair * len(layers) ** 2
        matrix = torch.full((len(layers), len(layers)), float("nan"))
        for i, j in pairs[:5]:
            matrix[i, j] = float(cka_base(acts[i], acts[j]))
        extra = dict(per_pair_s=per_pair, extrapolated=True)
    elif method == "reference":
        acts = [a.double() for a in _activations(model, images, layers, torch.float64)]
        grams = []
        for a in acts:
            x = a.numpy() - a.numpy().mean(0)
            k = x @ x.T
            grams.append(k / np.linalg.norm(k))
        g = np.stack([k.ravel() for k in grams])
        matrix = torch.from_numpy(g @ g.T)
        seconds = time.perf_counter() - t0
    else:
        raise ValueError(method)
    np.save(out / f"{method}.npy", matrix.double().numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # KiB -> GiB
    (out / f"{method}.json").write_text(json.dumps(dict(seconds=seconds, peak_gib=peak, layers=len(layers), **extra)))


def _flops(model_name: str, n: int):
    """GFLOP of the forward pass over ``n`` images and of the symmetric Grams (``n^2`` x features)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, images, layers = _setup(model_name, 1)
    features = []
    hooks = [model.get_submodule(name).register_forward_hook(lambda m, i, o: features.append(o[0].numel()))
             for name in layers]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return counter.get_total_flops() * n / 1e9, n * n * sum(features) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50_rfpool4")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--method")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.method:
        return run_method(args.method, args.model, args.n, Path(args.out))
    methods = ["reference", "rf_bench", "rf_bench_float64", "rf_bench_minibatch", "torch_cka", "ckatorch_pairwise"]
    with tempfile.TemporaryDirectory() as tmp:
        stats = {}
        for method in methods:
            subprocess.run([sys.executable, __file__, "--method", method, "--model", args.model, "--n", str(args.n),
                            "--out", tmp], check=True)
            stats[method] = json.loads((Path(tmp) / f"{method}.json").read_text())
            stats[method]["matrix"] = np.load(Path(tmp) / f"{method}.npy")
            print(method, {k: v for k, v in stats[method].items() if k != "matrix"}, flush=True)
    ref = stats["reference"]["matrix"]
    rows, result = [], dict(model=args.model, n=args.n, layers=stats["rf_bench"]["layers"])
    for method in methods[1:]:
        s = stats[method]
        m = s["matrix"]
        mask = ~np.isnan(m)
        err = float(np.abs(m[mask] - ref[mask]).max())
        result[method] = dict(seconds=round(s["seconds"], 2), peak_gib=round(s["peak_gib"], 2), max_abs_error=err,
                              **{k: v for k, v in s.items() if k not in ("matrix", "seconds", "peak_gib", "layers")})
        rows.append(f"| {method} | {s['seconds']:.1f}{' (extrapolated)' if s.get('extrapolated') else ''} | "
                    f"{s['peak_gib']:.2f} | {err:.1e} |")
    ours = result["rf_bench"]
    non_forward = 1 - stats["rf_bench"]["forward_s"] / stats["rf_bench"]["seconds"]
    forward_gflop, gram_gflop = _flops(args.model, args.n)
    result.update(speedup_vs_torch_cka=round(result["torch_cka"]["seconds"] / ours["seconds"], 2),
                  speedup_vs_pairwise=round(result["ckatorch_pairwise"]["seconds"] / ours["seconds"], 1),
                  non_forward_fraction=round(non_forward, 3), forward_gflop=round(forward_gflop, 1),
                  gram_gflop_symmetric=round(gram_gflop, 1))
    md = (f"# All-pairs linear CKA, {args.model} (random init), {args.n} images 32x32, {result['layers']} layers, "
          "2 CPU threads\n\n| method | seconds | peak RSS (GiB) | max difference from exact float64 CKA |\n"
          "|---|---|---|---|\n" + "\n".join(rows)
          + f"\n\nrf-bench: {result['speedup_vs_torch_cka']}x faster than torch-cka, "
            f"{result['speedup_vs_pairwise']}x faster than pairwise exact CKA; "
            f"{100 * non_forward:.0f}% of its time is not the forward pass (a second call in the same process: "
            f"{stats['rf_bench']['second_call_s']:.1f} s, "
            f"{100 * (1 - stats['rf_bench']['forward_s'] / stats['rf_bench']['second_call_s']):.0f}%: the first "
            "call pays for fresh memory). The forward pass is "
            f"{forward_gflop:.0f} GFLOP; the exact Grams, symmetric, {gram_gflop:.0f} GFLOP (n^2 x features).\n"
            "rf_bench_minibatch (unbiased HSIC over batches of 100) estimates the population CKA, not this "
            "sample's: its difference from the exact sample CKA is the sample CKA's upward bias on wide "
            "layers plus sampling noise, not an error.\n")
    write_result("cka_compare", result, md)
    print(md)


if __name__ == "__main__":
    main()
