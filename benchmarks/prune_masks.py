"""Masks for all five pruning rates on a full-width ResNet50: rf-bench vs torch.nn.utils.prune.

torch's ``global_unstructured`` (L1) is called once per rate on a fresh copy of the model, as a user
would; rf-bench's ``global_magnitude_masks`` makes all five masks from one partial sort. The masks
must be identical (random float weights have no ties).

    python benchmarks/prune_masks.py [--model resnet50_rfpool1]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import timm
import torch
import torch.nn.utils.prune as tprune
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, write_result  # noqa: E402

import rf_bench  # noqa: E402,F401
from rf_bench.probes.prune import global_magnitude_masks  # noqa: E402

RATES = (0.5, 0.6, 0.7, 0.8, 0.9)


def torch_masks(model: nn.Module):
    out, seconds = {}, 0.0
    for rate in RATES:
        m = copy.deepcopy(model)  # global_unstructured reparametrises the model; each rate needs a fresh one
        modules = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        with Timer() as t:
            tprune.global_unstructured(modules, pruning_method=tprune.L1Unstructured, amount=rate)
        seconds += t.seconds
        out[rate] = {n.removesuffix("_mask"): b.bool() for n, b in m.named_buffers() if n.endswith("_mask")}
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50_rfpool1")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = timm.create_model(args.model)
    ours_times, torch_times = [], []
    for _ in range(args.repeats):
        with Timer() as t:
            ours = global_magnitude_masks(model, RATES)
        ours_times.append(t.seconds)
        ref, seconds = torch_masks(model)
        torch_times.append(seconds)
    # identical up to ties: weights whose |w| equals a rate's threshold may be kept by one and pruned by the other
    differing, ties_only = 0, True
    mags = {n: p.detach().abs() for n, p in model.named_parameters()}
    for r in RATES:
        pruned_max = max(float(mags[n][~ours[r][n]].max()) for n in ours[r] if (~ours[r][n]).any())
        for n in ours[r]:
            diff = ours[r][n] != ref[r][n]
            differing += int(diff.sum())
            ties_only &= bool((mags[n][diff] == pruned_max).all())
    identical = differing == 0
    o, r = min(ours_times), min(torch_times)
    n = sum(int(m.numel()) for m in ours[0.5].values())
    result = dict(model=args.model, weights=n, rates=RATES, rf_bench_s=round(o, 3), torch_prune_s=round(r, 3),
                  speedup=round(r / o, 1), identical=identical, differing_weights=differing,
                  differences_are_threshold_ties=ties_only)
    md = (f"# Pruning masks, 5 rates, {args.model} ({n / 1e6:.2f}M prunable weights), best of {args.repeats}\n\n"
          "| method | seconds |\n|---|---|\n"
          f"| torch.nn.utils.prune.global_unstructured, once per rate | {r:.3f} |\n"
          f"| rf_bench global_magnitude_masks, all rates | {o:.3f} |\n"
          f"| **speed-up** | **{r / o:.1f}x** |\n\nMasks identical: {identical}; {differing} weight(s) differ over the five "
          f"rates, all tied at a threshold (torch breaks ties arbitrarily, rf-bench by position): {ties_only}.\n")
    write_result("prune_masks", result, md)
    print(md)


if __name__ == "__main__":
    main()
