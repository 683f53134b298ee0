"""Pruning masks: one-shot global magnitude pruning of all conv and linear weights.

Every conv and linear weight (not BN, not biases) is ranked in one global list by magnitude; the
``round(rate * n)`` smallest are removed, ties broken by position so the pruned fraction is exact.
All rates come from one partial sort. The trainer (masked fine-tunes) and the prune probe both use
this module, which depends on neither. Two measures of why a pruned net fails live here too: each layer's
kept fraction (layer collapse: a layer with nothing kept) and each layer's output standard deviation
(signal collapse: the signal dies out with depth, arXiv 2502.15790); and how far a fine-tune moved the weights.

A rate can be counted over two bases: ``"all"`` conv and linear weights (the paper's), or only the ``"live"`` ones,
those that see the image at the run's input size (``rf_bench.rf.live_weights``): the rate is then the share of live
weights removed, and every dead weight (one that only multiplies zero padding) is removed as well.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["prunable_parameters", "global_magnitude_masks", "apply_masks", "sparsity", "kept_fractions",
           "layer_output_stds", "relative_weight_change", "PRUNE_BASES", "live_sparsity", "dead_kept"]

PRUNE_BASES = ("all", "live")  # what a pruning rate counts: every conv and linear weight, or the live ones


def prunable_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """``(name, weight)`` of every conv and linear layer, in ``named_parameters`` order."""
    wanted = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
    return [(n, p) for n, p in model.named_parameters() if id(p) in wanted]


def _kth_smallest(mags: torch.Tensor, ks: Sequence[int]) -> Dict[int, float]:
    """Exact k-th smallest (1-based) values of a non-negative float32 vector, for several k at once.

    A radix select: non-negative floats order like their int32 bit patterns, so one histogram of the
    top 16 bits finds the bin of every k, and only the few values in those bins are sorted. Two passes
    over the data instead of a partial sort per k (which took 0.6 s on ResNet50's 23.5M weights).
    """
    bits = mags.view(torch.int32)
    top = bits >> 15
    counts = torch.bincount(top, minlength=1 << 16).cumsum(0)
    wanted = torch.tensor(sorted(set(ks)), dtype=counts.dtype)
    bins = torch.searchsorted(counts, wanted)  # first bin whose cumulative count reaches k
    in_wanted_bin = torch.zeros(1 << 16, dtype=torch.bool)
    in_wanted_bin[bins] = True
    candidates = bits[in_wanted_bin[top]].sort().values  # a few thousand values
    cand_top = candidates >> 15
    out = {}
    for k, b in zip(wanted.tolist(), bins.tolist()):
        before = int(counts[b - 1]) if b > 0 else 0
        in_bin = candidates[cand_top == b]
        out[k] = float(in_bin[k - before - 1].view(torch.float32))
    return out


def global_magnitude_masks(model: nn.Module, rates: Sequence[float],
                           live: Optional[Dict[str, torch.Tensor]] = None) -> Dict[float, Dict[str, torch.Tensor]]:
    """``{rate: {param_name: keep mask}}``: for each rate, the ``round(rate * n)`` smallest |w| are dropped.

    With ``live`` (a bool mask per weight name, `rf_bench.rf.live_weights`), the rate is counted over the live
    weights only: ``round(rate * n_live)`` of them are dropped by magnitude, and every dead weight with them.
    Every rate's threshold comes from one radix select; only weights tied with a threshold are
    resolved by position (lowest index pruned first), so each rate prunes exactly its count, and the
    masks equal a stable global sort's (tested against numpy).
    """
    params = prunable_parameters(model)
    if not params:
        raise ValueError("the model has no conv or linear weights to prune")
    for rate in rates:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"pruning rate {rate} outside [0, 1)")
    mags = torch.cat([p.detach().abs().reshape(-1).float().cpu() for _, p in params])
    ranked = _flat_live(live, params) if live is not None else None
    if ranked is not None:
        mags = mags[ranked]
    n = mags.numel()
    counts = {rate: int(round(rate * n)) for rate in rates}
    thresholds = _kth_smallest(mags, [k for k in counts.values() if k > 0])
    masks: Dict[float, Dict[str, torch.Tensor]] = {}
    for rate, k in counts.items():
        if k == 0:
            keep = torch.ones(n, dtype=torch.bool)
        else:
            threshold = thresholds[k]
            keep = mags > threshold
            surplus = (n - int(torch.count_nonzero(keep))) - k  # ties at the threshold that must be kept after all
            if surplus:
                tied = torch.nonzero(mags == threshold).flatten()
                keep[tied[len(tied) - surplus:]] = True
        if ranked is not None:  # back to every weight: the dead ones are all dropped
            keep = torch.zeros(ranked.numel(), dtype=torch.bool).masked_scatter_(ranked, keep)
        masks[rate] = _split(keep, params)
    return masks


def _flat_live(live: Dict[str, torch.Tensor], params: List[Tuple[str, nn.Parameter]]) -> torch.Tensor:
    """The live masks of ``params``, flattened in their order (a weight ``live`` does not name is live)."""
    return torch.cat([live[n].reshape(-1).cpu().bool() if n in live else torch.ones(p.numel(), dtype=torch.bool)
                      for n, p in params])


def live_sparsity(masks: Dict[str, torch.Tensor], live: Dict[str, torch.Tensor]) -> float:
    """The share of live weights that ``masks`` remove (1.0 where no weight is live)."""
    removed = sum(int((~m.cpu() & live[n].cpu()).sum()) for n, m in masks.items() if n in live)
    total = sum(int(live[n].sum()) for n in masks if n in live)
    return removed / total if total else 1.0


def dead_kept(masks: Dict[str, torch.Tensor], live: Dict[str, torch.Tensor]) -> Optional[float]:
    """The share of dead weights that ``masks`` keep (None where every weight is live)."""
    kept = sum(int((m.cpu() & ~live[n].cpu()).sum()) for n, m in masks.items() if n in live)
    total = sum(int((~live[n]).sum()) for n in masks if n in live)
    return kept / total if total else None


def _split(flat: torch.Tensor, params: List[Tuple[str, nn.Parameter]]) -> Dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, p in params:
        out[name] = flat[start:start + p.numel()].view(p.shape).to(p.device)
        start += p.numel()
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


def sparsity(model: nn.Module, masks: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Fraction of prunable weights that are zero, and whether every masked weight is exactly zero."""
    params = dict(model.named_parameters())
    zeros = sum(int((params[n] == 0).sum()) for n in masks)
    total = sum(params[n].numel() for n in masks)
    masked_nonzero = sum(int(((params[n] != 0) & ~m.to(params[n].device)).sum()) for n, m in masks.items())
    return dict(zero_fraction=zeros / total, masked_nonzero=masked_nonzero)


def kept_fractions(masks: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """The share of each layer's weights a mask keeps, by parameter name (0.0: the layer collapsed)."""
    return {name: int(mask.sum()) / mask.numel() for name, mask in masks.items()}


@torch.no_grad()
def layer_output_stds(model: nn.Module, images: torch.Tensor) -> Dict[str, float]:
    """The standard deviation of every prunable layer's output over ``images`` (all elements, eval mode as the
    model is), by the layer's weight name: compared with the dense net's, it shows where a signal collapses."""
    weight_of = {id(p): name for name, p in prunable_parameters(model)}
    moments: Dict[str, List[float]] = {}  # name -> [count, sum, sum of squares], float64

    def hook(name):
        def record(_module, _inputs, output):
            out = output.detach().double()
            acc = moments.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += out.numel()
            acc[1] += float(out.sum())
            acc[2] += float((out * out).sum())
        return record

    handles = [m.register_forward_hook(hook(weight_of[id(m.weight)])) for m in model.modules()
               if isinstance(getattr(m, "weight", None), nn.Parameter) and id(m.weight) in weight_of]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    stds = {}
    for name, (n, total, squares) in moments.items():
        mean = total / n
        stds[name] = max(squares / n - mean * mean, 0.0) ** 0.5 * (n / max(n - 1, 1)) ** 0.5
    return {name: stds[name] for name, _ in prunable_parameters(model) if name in stds}


def relative_weight_change(before: nn.Module, after: nn.Module) -> float:
    """How far a fine-tune moved the prunable weights: ``||after - before|| / ||before||`` over all of them at once.
    Near 0, what the fine-tune changed that matters is its BatchNorm statistics, not its weights."""
    moved = sum(float((a.detach().double() - b.detach().double()).pow(2).sum())
                for (_, b), (_, a) in zip(prunable_parameters(before), prunable_parameters(after)))
    norm = sum(float(b.detach().double().pow(2).sum()) for _, b in prunable_parameters(before))
    return math.sqrt(moved / norm) if norm else 0.0
