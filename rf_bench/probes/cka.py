"""The CKA probe: exact linear Centred Kernel Alignment (Kornblith et al. 2019) between every pair of layers.

``CKA(X, Y) = <K_c, L_c>_F / (||K_c||_F ||L_c||_F)`` with ``K_c = H X X^T H`` the centred Gram matrix
of ``n`` examples. Each layer's ``n x n`` Gram is accumulated in float64 from one forward pass over the
images (conv maps flattened per example), normalised, and stacked, so that every pair of layers
comes out of one matrix product. Layers whose features would not fit the memory budget together
are done in groups, one forward pass each. This is the full-data estimator, not a minibatch average.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = ["linear_cka", "cka_matrix", "layer_grams", "default_layers", "CKAConfig", "CKAProbe"]


def _centred_gram(x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``H X X^T H`` in float64: columns centred in float64, products accumulated chunk by chunk.

    On the CPU each chunk goes through numpy, whose ``a @ a.T`` is a symmetric rank-k update (BLAS
    ``syrk``): half the work of the general product torch would do.
    """
    x = x.detach().reshape(x.shape[0], -1)
    n = x.shape[0]
    if x.device.type == "cpu":
        gram = np.zeros((n, n))
        for start in range(0, x.shape[1], chunk):
            block = np.array(x[:, start:start + chunk].numpy(), dtype=np.float64)  # a contiguous copy
            block -= block.mean(axis=0, keepdims=True)
            gram += block @ block.T
        return torch.from_numpy(gram)
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], chunk):
        block = x[:, start:start + chunk].double()
        block = block - block.mean(dim=0, keepdim=True)
        gram.addmm_(block, block.T)
    return gram


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two activation matrices (n x p and n x q; extra dims are flattened per example)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    k, l = _centred_gram(x), _centred_gram(y)
    return float((k * l).sum() / (k.norm() * l.norm()))


def default_layers(model: nn.Module, mode: str = "main") -> List[str]:
    """Module names whose outputs are compared.

    ``main`` (default): after each weight layer of the main path, the activation the next weight layer
    reads (for a bottleneck's last conv, the block output after the residual add and ReLU), then the
    logits: 50 layers for ResNet50, 17 for VGG19. ``blocks``: stage/block outputs only.
    ``shortcut``: ``main`` plus the residual shortcut convs. Anything else is a regex over module names.
    """
    from rf_bench.models import RfPoolResNet, RfPoolVGG

    if mode not in ("main", "blocks", "shortcut"):
        pattern = re.compile(mode)
        names = [n for n, _ in model.named_modules() if n and pattern.search(n)]
        if not names:
            raise ValueError(f"layer regex {mode!r} matches no module of {type(model).__name__}")
        return names
    if isinstance(model, RfPoolResNet):
        blocks = [f"{stage}.{i}" for stage in ("layer1", "layer2", "layer3", "layer4")
                  for i in range(len(getattr(model, stage)))]
        if mode == "blocks":
            return ["rfpool"] + blocks + ["fc"]
        names = ["rfpool"]
        for b in blocks:
            names += [f"{b}.act1", f"{b}.act2"]
            if mode == "shortcut" and getattr(model.get_submodule(b), "downsample", None) is not None:
                names.append(f"{b}.downsample")
            names.append(b)
        return names + ["fc"]
    if isinstance(model, RfPoolVGG):
        feats = list(model.features)
        conv_at = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
        if mode == "blocks":
            return [f"features.{i}" for i in model.feature_ends] + ["fc"]
        # the representation of conv i: the last module before the next conv (its BN+ReLU, and a pool if any)
        ends = [nxt - 1 for nxt in conv_at[1:]] + [len(feats) - 1]
        return [f"features.{i}" for i in ends] + ["fc"]
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not names:
        raise ValueError(f"{type(model).__name__} has no conv/linear layers; pass layers= (a regex or names)")
    return names


def _feature_sizes(model: nn.Module, layers: Sequence[str], image: torch.Tensor) -> Dict[str, int]:
    sizes: Dict[str, int] = {}

    def record(name):
        def hook(module, inputs, output) -> None:  # must return None: a value would replace the output
            sizes.setdefault(name, output[0].numel())
        return hook

    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in layers]
    try:
        with torch.no_grad():
            model(image[:1])
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in layers if n not in sizes]
    if missing:
        raise ValueError(f"layers {missing[:3]} did not run in the forward pass")
    return sizes


def layer_grams(model: nn.Module, images: torch.Tensor, layers: Sequence[str], batch_size: int = 250,
                budget_bytes: int = 2 << 30, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised centred Gram matrices, one per layer: ``(L, n, n)`` float64.

    Features are kept in float32 per group of layers that fits ``budget_bytes``; a group takes one
    forward pass over all images, so memory stays bounded whatever the model.
    """
    model = model.to(device).eval()
    n = images.shape[0]
    sizes = _feature_sizes(model, layers, images.to(device))
    groups: List[List[str]] = [[]]
    used = 0
    for name in layers:
        need = sizes[name] * n * 4
        if groups[-1] and used + need > budget_bytes:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += need
    grams = torch.empty(len(layers), n, n, dtype=torch.float64)
    index = {name: i for i, name in enumerate(layers)}
    for group in groups:
        buffers = {name: torch.empty(n, sizes[name], dtype=torch.float32, device=device) for name in group}
        cursor = [0]

        def keep(name):
            def hook(module, inputs, output):
                out = output.detach().reshape(output.shape[0], -1).float()
                buffers[name][cursor[0]:cursor[0] + out.shape[0]] = out
            return hook

        hooks = [model.get_submodule(name).register_forward_hook(keep(name)) for name in group]
        try:
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    cursor[0] = start
                    model(images[start:start + batch_size].to(device))
        finally:
            for h in hooks:
                h.remove()
        for name in group:
            gram = _centred_gram(buffers.pop(name))
            grams[index[name]] = (gram / gram.norm()).cpu()
    return grams


def cka_matrix(model_a: nn.Module, model_b: nn.Module, images: torch.Tensor,
               layers: Optional[Union[str, Sequence[str]]] = None, batch_size: int = 250,
               layers_b: Optional[Union[str, Sequence[str]]] = None, budget_bytes: int = 2 << 30,
               device: torch.device | str = "cpu") -> Tuple[torch.Tensor, List[str], List[str]]:
    """Exact linear CKA between every layer of ``model_a`` and every layer of ``model_b`` on ``images``.

    ``model_b`` may be ``model_a`` (within-model similarity; its Grams are computed once). ``layers``:
    None / ``"main"`` / ``"blocks"`` / ``"shortcut"`` / a regex / a list of module names.
    Returns ``(matrix L_a x L_b, names_a, names_b)``.
    """
    names_a = _resolve_layers(model_a, layers)
    names_b = _resolve_layers(model_b, layers_b if layers_b is not None else layers)
    grams_a = layer_grams(model_a, images, names_a, batch_size, budget_bytes, device)
    if model_b is model_a and names_b == names_a:
        grams_b = grams_a
    else:
        grams_b = layer_grams(model_b, images, names_b, batch_size, budget_bytes, device)
    matrix = grams_a.flatten(1) @ grams_b.flatten(1).T
    return matrix, names_a, names_b


def _resolve_layers(model: nn.Module, layers) -> List[str]:
    if layers is None or isinstance(layers, str):
        return default_layers(model, layers or "main")
    return list(layers)


# ------------------------------------------------------------------------------------------ probe

@dataclass
class CKAConfig:
    n_images: int = 1000  # the first n test images
    layers: str = "main"
    batch_size: int = 250
    budget_gib: float = 2.0
    stage: str = "final"


class CKAProbe:
    """Within-model CKA for every seed and cross-seed CKA for every pair of seeds (Figure 3)."""

    name = "cka"
    version = 1
    scope = "group"
    min_runs = 1
    Config = CKAConfig

    def run(self, runs, config: CKAConfig, ctx):
        from rf_bench.probes.base import ProbeOutput

        data = runs[0].load_data("test", ctx.data_dir)
        from rf_bench.data import normalize

        images = normalize(data.images[: config.n_images], data.mean, data.std)
        grams, names = {}, None
        for run in runs:
            model = run.create_model(config.stage)
            names = default_layers(model, config.layers) if names is None else names
            grams[run.seed] = layer_grams(model, images, names, config.batch_size,
                                          int(config.budget_gib * (1 << 30)), ctx.device).flatten(1)
        tensors, pairs = {}, []
        deeper = slice(len(names) // 2, len(names))
        for seed, g in grams.items():
            tensors[f"within_s{seed}"] = (g @ g.T).float()
        seeds = sorted(grams)
        for i, a in enumerate(seeds):
            for b in seeds[i + 1:]:
                m = grams[a] @ grams[b].T
                tensors[f"cross_s{a}_s{b}"] = m.float()
                pairs.append(dict(seeds=[a, b], deeper_half_diagonal=float(m.diagonal()[deeper].mean()),
                                  diagonal=m.diagonal().tolist()))
        return ProbeOutput(values=dict(k=runs[0].k, family=runs[0].family, layers=names, n_images=images.shape[0],
                                       seeds=seeds, pairs=pairs), tensors=tensors)

    @staticmethod
    def report(records, store, out_dir):
        from rf_bench.report import cka_sections

        return cka_sections(records, store, out_dir)
