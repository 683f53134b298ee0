"""The CKA probe: exact linear Centred Kernel Alignment (Kornblith et al. 2019) between every pair of layers.

``CKA(X, Y) = <K_c, L_c>_F / (||K_c||_F ||L_c||_F)`` with ``K_c = H X X^T H`` the centred Gram matrix
of ``n`` examples. Each layer's ``n x n`` Gram is built from one forward pass over the images (conv maps
flattened per example), normalised, and stacked, so that every pair of layers comes out of one matrix
product. Layers whose features would not fit the memory budget together are done in groups, one
forward pass each. This is the full-data estimator, not a minibatch average.

Cost: the Grams take ``n^2 sum(p) / 2`` multiply-adds (symmetric), about as many as the forward pass
of a ResNet50 at 32x32 with n = 1000 (184 vs 166 GFLOP). So the features are not copied (the hooks
keep the modules' own outputs unless a later module changes them in place), each layer is centred
into one reused buffer, and the products run in float32 (added up in float64 every 16k features,
then an exact float64 double-centring): within 4e-8 of float64 products on full-width ResNet50
activations. ``gram_dtype=torch.float64`` gives float64 products.

For ``n`` far beyond what ``n x n`` Grams allow, `minibatch_cka_matrix` is the unbiased
minibatch-HSIC estimator of Nguyen et al. (2021): it estimates the population CKA, not this sample's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from rf_bench._numerics import exact_matmul
from rf_bench.claims import Claim
from rf_bench.reporting import ReportSection, group_by, integer_ticks, mean_std, pyplot, record_rf, savefig, write_csv

__all__ = ["linear_cka", "cka_matrix", "minibatch_cka_matrix", "hsic1", "layer_grams", "default_layers", "CKAConfig", "CKAProbe",
           "cka_sections"]


_CHUNK = 1 << 14  # features per low-precision product before it is added up in float64


def _centred_gram(blocks: Sequence[torch.Tensor], dtype: torch.dtype = torch.float32,
                  scratch: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``H X X^T H`` (float64, ``n x n``) of the rows ``X = cat(blocks)``, each block ``n_b x p``.

    The blocks are centred into one ``n x p`` matrix in ``dtype`` (in ``scratch`` when it is big enough,
    so that a caller doing many layers touches fresh memory once), multiplied ``_CHUNK`` features at
    a time (`_gram_product`) and added up in float64. A last float64 double-centring removes
    what rounding left of the column means, so the centring before the product only has to keep
    the float32 products from cancelling.
    """
    blocks = [b.detach().reshape(b.shape[0], -1) for b in blocks]
    if blocks[0].dtype == torch.float64:  # never round float64 features down
        dtype = torch.float64
    n, p = sum(b.shape[0] for b in blocks), blocks[0].shape[1]
    mean = sum(b.sum(0, dtype=dtype) for b in blocks) / n
    if scratch is None or scratch.dtype != dtype or scratch.numel() < n * p:
        scratch = torch.empty(n * p, dtype=dtype, device=blocks[0].device)
    x = scratch[: n * p].view(n, p)
    row = 0
    for b in blocks:
        torch.sub(b, mean, out=x[row:row + b.shape[0]])
        row += b.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64) if out is None else out.zero_()
    with exact_matmul():
        for c in range(0, p, _CHUNK):
            gram += _gram_product(x[:, c:c + _CHUNK]).to(gram.device)
    gram -= gram.mean(0, keepdim=True)
    gram -= gram.mean(1, keepdim=True)
    return gram


def _gram_product(a: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """``a @ a.T``, computing only the block lower triangle (``(parts + 1) / (2 parts)`` of a full product)
    and mirroring it. In torch rather than numpy's ``syrk``: on a CPU, two thread pools taking turns
    (torch's OpenMP and numpy's OpenBLAS, each spinning while idle) cost more than ``syrk`` saves."""
    n = a.shape[0]
    out = torch.empty(n, n, dtype=a.dtype, device=a.device)
    edges = [i * n // parts for i in range(parts + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        block = a[lo:hi] @ a[:hi].T  # rows lo:hi against every row up to hi
        out[lo:hi, :hi] = block
        out[:lo, lo:hi] = block[:, :lo].T
    return out


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two activation matrices (n x p and n x q; extra dims are flattened per example)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    k = _centred_gram([x.double()], torch.float64)
    l = _centred_gram([y.double()], torch.float64)
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


def _forward_with_hooks(model: nn.Module, hooks: Dict[str, Callable], inputs: Iterable[torch.Tensor]) -> None:
    """Each input through ``model`` without gradients, ``hooks[name]`` a forward hook on layer ``name``
    (hooks must return None: a value would replace the output); they are removed afterwards."""
    handles = [model.get_submodule(name).register_forward_hook(hook) for name, hook in hooks.items()]
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for h in handles:
            h.remove()


def _check_ran(layers: Sequence[str], seen) -> None:
    missing = [n for n in layers if n not in seen]
    if missing:
        raise ValueError(f"layers {missing[:3]} did not run in the forward pass")


def _capture_plan(model: nn.Module, layers: Sequence[str], image: torch.Tensor) -> Tuple[Dict[str, int], Set[str]]:
    """One example through the model: each layer's features per example, and the layers whose output
    must be copied to be kept, because a later module changes it in place (a BatchNorm before an
    in-place ReLU); the others are kept as the modules' own output tensors, with no copy."""
    sizes: Dict[str, int] = {}
    seen: Dict[str, Tuple[torch.Tensor, int]] = {}

    def record(name):
        def hook(module, inputs, output) -> None:
            if name not in sizes:
                sizes[name] = output[0].numel()
                seen[name] = (output, output._version)
        return hook

    _forward_with_hooks(model, {n: record(n) for n in layers}, [image])
    _check_ran(layers, sizes)
    return sizes, {name for name, (out, version) in seen.items() if out._version != version}


def layer_grams(model: nn.Module, images: torch.Tensor, layers: Sequence[str], batch_size: int = 250,
                budget_bytes: int = 2 << 30, device: torch.device | str = "cpu",
                gram_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised centred Gram matrices, one per layer: ``(L, n, n)`` float64.

    Each group of layers whose features fit ``budget_bytes`` takes one forward pass over all images,
    so memory stays bounded whatever the model. Products in ``gram_dtype`` (see the module's notes).
    """
    model = model.to(device).eval()
    n = images.shape[0]
    sizes, must_copy = _capture_plan(model, layers, images[:1].to(device))
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
    scratch = torch.empty(n * max(sizes.values()), dtype=gram_dtype, device=device)  # one, for every layer
    index = {name: i for i, name in enumerate(layers)}
    for group in groups:
        kept: Dict[str, List[torch.Tensor]] = {name: [] for name in group}

        def keep(name, kept=kept):
            copy = name in must_copy

            def hook(module, inputs, output) -> None:
                out = output.detach().flatten(1)
                if out.dtype in (torch.float16, torch.bfloat16):  # autocast: features in float32
                    out = out.float()
                elif copy:
                    out = out.clone()
                kept[name].append(out)
            return hook

        _forward_with_hooks(model, {name: keep(name) for name in group},
                            (images[start:start + batch_size].to(device) for start in range(0, n, batch_size)))
        for name in group:
            gram = _centred_gram(kept.pop(name), gram_dtype, scratch, out=grams[index[name]])
            gram /= gram.norm()
    return grams


def cka_matrix(model_a: nn.Module, model_b: nn.Module, images: torch.Tensor,
               layers: Optional[Union[str, Sequence[str]]] = None, batch_size: int = 250,
               layers_b: Optional[Union[str, Sequence[str]]] = None, budget_bytes: int = 2 << 30,
               device: torch.device | str = "cpu", gram_dtype: torch.dtype = torch.float32,
               ) -> Tuple[torch.Tensor, List[str], List[str]]:
    """Exact linear CKA between every layer of ``model_a`` and every layer of ``model_b`` on ``images``.

    ``model_b`` may be ``model_a`` (within-model similarity; its Grams are computed once). ``layers``:
    None / ``"main"`` / ``"blocks"`` / ``"shortcut"`` / a regex / a list of module names.
    ``gram_dtype``: the precision of the Gram products (float32, added up in float64, is within 1e-7
    of float64 on real activations; float64 costs twice the time on a CPU).
    Returns ``(matrix L_a x L_b, names_a, names_b)``.
    """
    names_a = _resolve_layers(model_a, layers)
    names_b = _resolve_layers(model_b, layers_b if layers_b is not None else layers)
    grams_a = layer_grams(model_a, images, names_a, batch_size, budget_bytes, device, gram_dtype)
    if model_b is model_a and names_b == names_a:
        grams_b = grams_a
    else:
        grams_b = layer_grams(model_b, images, names_b, batch_size, budget_bytes, device, gram_dtype)
    matrix = grams_a.flatten(1) @ grams_b.flatten(1).T
    return matrix, names_a, names_b


def hsic1(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012) between every pair of ``(L_a, m, m)`` and ``(L_b, m, m)`` Grams.

    ``HSIC_1(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((m-1)(m-2)) - 2/(m-2) 1'K~L~1] / (m(m-3))`` with ``K~`` the
    Gram with a zero diagonal: each term over all pairs is one matrix product. Needs ``m >= 4``.
    """
    m = grams_a.shape[-1]
    if m < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples per batch, got {m}")
    a, b = _zero_diagonal(grams_a), _zero_diagonal(grams_b)
    traces = a.flatten(1) @ b.flatten(1).T  # tr(K~ L~) = <K~, L~>_F: both symmetric
    row_a, row_b = a.sum(2), b.sum(2)  # K~ 1
    sums = torch.outer(row_a.sum(1), row_b.sum(1)) / ((m - 1) * (m - 2))
    return (traces + sums - 2 / (m - 2) * (row_a @ row_b.T)) / (m * (m - 3))


def _zero_diagonal(grams: torch.Tensor) -> torch.Tensor:
    grams = grams.clone()
    grams.diagonal(dim1=-2, dim2=-1).zero_()
    return grams


def minibatch_cka_matrix(model_a: nn.Module, model_b: nn.Module, images: torch.Tensor,
                         layers: Optional[Union[str, Sequence[str]]] = None, batch_size: int = 256,
                         layers_b: Optional[Union[str, Sequence[str]]] = None,
                         device: torch.device | str = "cpu") -> Tuple[torch.Tensor, List[str], List[str]]:
    """Linear CKA from unbiased HSIC summed over minibatches (Nguyen et al. 2021), for ``n`` beyond exact.

    ``CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) sum_b HSIC_1(L_b, L_b))``: memory is one
    batch's features and ``m x m`` Grams whatever ``n`` is. It estimates the *population* CKA, and gives
    the same answer from small batches as from large ones (averaging each batch's CKA does not). It is
    not the sample CKA of `cka_matrix`, which is biased upwards on wide layers (more so the
    smaller ``n``): the two differ by that bias plus sampling noise. A last batch of fewer than 4 images
    is left out. Same arguments and return value as `cka_matrix`.
    """
    names_a = _resolve_layers(model_a, layers)
    names_b = _resolve_layers(model_b, layers_b if layers_b is not None else layers)
    same = model_b is model_a and names_b == names_a
    cross = torch.zeros(len(names_a), len(names_b), dtype=torch.float64)
    self_a = torch.zeros(len(names_a), dtype=torch.float64)
    self_b = torch.zeros(len(names_b), dtype=torch.float64)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size]
        if batch.shape[0] < 4:
            break
        grams_a = _batch_grams(model_a, batch, names_a, device)
        grams_b = grams_a if same else _batch_grams(model_b, batch, names_b, device)
        cross += hsic1(grams_a, grams_b)
        self_a += _self_hsic1(grams_a)
        if not same:
            self_b += _self_hsic1(grams_b)
    if same:
        self_b = self_a
    return cross / torch.sqrt(torch.outer(self_a, self_b)), names_a, names_b


def _self_hsic1(grams: torch.Tensor) -> torch.Tensor:
    """``HSIC_1(K, K)`` for each Gram of a stack (the diagonal of ``hsic1(grams, grams)``, at ``L`` times less)."""
    m = grams.shape[-1]
    g = _zero_diagonal(grams)
    rows = g.sum(2)
    traces = (g * g).sum((1, 2))
    return (traces + rows.sum(1) ** 2 / ((m - 1) * (m - 2)) - 2 / (m - 2) * (rows * rows).sum(1)) / (m * (m - 3))


def _batch_grams(model: nn.Module, batch: torch.Tensor, layers: Sequence[str], device) -> torch.Tensor:
    """Float64 Grams ``X X^T`` of one batch for each layer: ``(L, m, m)``. The features are centred first:
    unbiased HSIC does not change when a constant is added to them, and its terms then cancel far less."""
    model = model.to(device).eval()
    grams: Dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output) -> None:
            x = output.detach().flatten(1).double()
            x = x - x.mean(0)
            grams[name] = (x @ x.T).cpu()
        return hook

    _forward_with_hooks(model, {name: keep(name) for name in layers}, [batch.to(device)])
    _check_ran(layers, grams)
    return torch.stack([grams[name] for name in layers])


def _resolve_layers(model: nn.Module, layers) -> List[str]:
    if layers is None or isinstance(layers, str):
        return default_layers(model, layers or "main")
    return list(layers)


# ------------------------------------------------------------------------------------------ probe

@dataclass
class CKAConfig:
    """Settings of the CKA probe (``--set cka.<name>=<value>``).

    Attributes:
        n_images: the first n test images the layers are compared on (the paper: 1000).
        layers: which layers: "main" (each weight layer of the main path, then the logits), "blocks" (block outputs),
            "shortcut" (main plus the shortcut convs), or a regex over module names.
        batch_size: images per forward pass.
        budget_gib: memory the stored activations may take before they are reduced to Gram matrices.
        stage: the weights compared: "final" (trained) or "init".
        estimator: "exact" (linear CKA on all images) or "minibatch" (unbiased HSIC summed over batches).
        gram_dtype: precision of the exact estimator's Gram products ("float64" takes twice the time).
    """

    n_images: int = 1000
    layers: str = "main"
    batch_size: int = 250
    budget_gib: float = 2.0
    stage: str = "final"
    estimator: str = "exact"  # minibatch: Nguyen et al. 2021
    gram_dtype: str = "float32"


def _cross_seed_cka(record):
    """The deeper half's cross-seed CKA diagonal, one value per seed pair (none with one seed)."""
    values = record["values"]
    return {f"deeper-half cross-seed CKA ({values.get('estimator', 'exact')})":
            [pair["deeper_half_diagonal"] for pair in values["pairs"]]}


CKA_CLAIMS = (
    Claim("cka_divergence", "deeper layers' representations diverge across seeds as the RF grows: the deeper "
          "half's cross-seed CKA falls (Figure 3)", "falls", "cka", _cross_seed_cka,
          missing="one seed per k: no seed pairs to compare", order=4,
          read_together=("estimator", "batch_size", "budget_gib")),  # the estimator is in the metric name
)


class CKAProbe:
    """Within-model CKA for every seed and cross-seed CKA for every pair of seeds (Figure 3)."""

    name = "cka"
    version = 2
    scope = "group"
    min_runs = 1
    Config = CKAConfig
    claims = CKA_CLAIMS

    def run(self, runs, config: CKAConfig, ctx):
        """CKA matrices of each run with itself and of every seed pair of the group."""
        from rf_bench.data import normalize
        from rf_bench.probes.base import ProbeOutput

        if config.estimator not in ("exact", "minibatch"):
            raise ValueError(f"cka.estimator must be 'exact' or 'minibatch', got {config.estimator!r}")
        if config.gram_dtype not in ("float32", "float64"):
            raise ValueError(f"cka.gram_dtype must be 'float32' or 'float64', got {config.gram_dtype!r}")
        data = runs[0].load_data("test", ctx.data_dir)
        images = normalize(data.images[: config.n_images], data.mean, data.std)
        models = {run.seed: run.create_model(config.stage) for run in runs}
        names = default_layers(next(iter(models.values())), config.layers)
        seeds = sorted(models)
        pairs_of_seeds = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
        if config.estimator == "exact":
            grams = {seed: layer_grams(model, images, names, config.batch_size, int(config.budget_gib * (1 << 30)),
                                       ctx.device, getattr(torch, config.gram_dtype)).flatten(1)
                     for seed, model in models.items()}
            within = {seed: g @ g.T for seed, g in grams.items()}
            cross = {(a, b): grams[a] @ grams[b].T for a, b in pairs_of_seeds}
        else:
            def minibatch(a, b):
                return minibatch_cka_matrix(models[a], models[b], images, names, config.batch_size,
                                            device=ctx.device)[0]
            within = {seed: minibatch(seed, seed) for seed in seeds}
            cross = {(a, b): minibatch(a, b) for a, b in pairs_of_seeds}
        tensors = {f"within_s{seed}": m.float() for seed, m in within.items()}
        pairs = []
        deeper = slice(len(names) // 2, len(names))
        for (a, b), m in cross.items():
            tensors[f"cross_s{a}_s{b}"] = m.float()
            pairs.append(dict(seeds=[a, b], deeper_half_diagonal=float(m.diagonal()[deeper].mean()),
                              diagonal=m.diagonal().tolist()))
        return ProbeOutput(values=dict(k=runs[0].k, family=runs[0].family, layers=names, n_images=images.shape[0],
                                       seeds=seeds, pairs=pairs, estimator=config.estimator), tensors=tensors)

    @staticmethod
    def report(records, store, out_dir):
        """REPORT.md sections: CKA tables and figures per family and data set."""
        return cka_sections(records, store, Path(out_dir))


# -------------------------------------------------------------------------------------------- report

def cka_sections(records: List[Dict[str, Any]], store, out_dir: Path):
    """Figure 3 (within-model and cross-seed CKA heatmaps per RF, red line at the middle layer) and the
    summary table (mean ± std over seed pairs of the deeper half's cross-seed diagonal)."""

    sections, csv_rows = [], []
    by_estimator = group_by(records, lambda r: (r["values"]["family"], r["dataset"], r["values"].get("estimator", "exact")))
    for (family, dataset, estimator), recs in by_estimator.items():
        recs = sorted(recs, key=lambda r: r["values"]["k"])
        suffix = "" if estimator == "exact" else f"_{estimator}"
        lines = ["| k | RF (analytic) | seeds | layers | deeper-half cross-seed CKA |", "|---|---|---|---|---|"]
        panels = []
        for rec in recs:
            v = rec["values"]
            rf = record_rf(rec)
            diag = [p["deeper_half_diagonal"] for p in v["pairs"]]
            if diag:
                mean, std = mean_std(diag)
                cell = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
            else:
                mean, std, cell = None, None, "- (one seed)"
            lines.append(f"| {v['k']} | {rf} | {len(v['seeds'])} | {len(v['layers'])} | {cell} |")
            csv_rows.append(dict(family=family, dataset=dataset, estimator=estimator, k=v["k"], rf_analytic=rf,
                                 seeds=len(v["seeds"]),
                                 deeper_half_cross_seed_cka_mean=mean, deeper_half_cross_seed_cka_std=std))
            tensors = store.tensors(Path(rec["_path"]))
            s0 = v["seeds"][0]
            cross = next((t for name, t in sorted(tensors.items()) if name.startswith("cross_")), None)
            panels.append((v["k"], rf, tensors[f"within_s{s0}"], cross))
        figure = out_dir / f"cka_{family}_{dataset}{suffix}.png"
        _plot_cka(panels, f"{family}{{k}} on {dataset}: linear CKA ({estimator})", figure)
        how = ("Exact linear CKA on the first test images" if estimator == "exact" else
               "Linear CKA estimated from unbiased HSIC summed over minibatches of the first test images "
               "(Nguyen et al. 2021; it estimates the population CKA, which the exact sample CKA overstates "
               "for wide layers)")
        md = (how + " between every pair of layers (the activation each "
              "weight layer hands on, then the logits): top row within one model, bottom row between two "
              "seeds; the red lines mark the middle layer. The table averages the cross-seed diagonal over "
              "the deeper half of the layers, mean ± std over seed pairs.\n\n" + "\n".join(lines)
              + f"\n\n![{family} CKA]({figure.name})\n")
        title = f"CKA: {family} on {dataset}" + ("" if estimator == "exact" else f" ({estimator} estimator)")
        sections.append(ReportSection(title=title, markdown=md, order=30))
    write_csv(out_dir / "cka.csv", csv_rows)
    return sections


def _plot_cka(panels, title: str, path: Path) -> None:
    plt = pyplot()
    rows = 2 if any(p[3] is not None for p in panels) else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(3.0 * len(panels), 2.9 * rows), squeeze=False)
    for j, (k, rf, within, cross) in enumerate(panels):
        for i, (matrix, label) in enumerate(((within, "within"), (cross, "cross-seed"))[:rows]):
            ax = axes[i][j]
            if matrix is None:
                ax.axis("off")
                continue
            im = ax.imshow(matrix.numpy(), cmap="magma", vmin=0, vmax=1, origin="lower")
            mid = matrix.shape[0] / 2 - 0.5
            ax.axhline(mid, color="red", lw=1)
            ax.axvline(mid, color="red", lw=1)
            ax.set_title(f"k={k}, RF {rf} ({label})", fontsize=8)
            ax.set_xlabel("layer", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            integer_ticks(ax.xaxis)
            integer_ticks(ax.yaxis)
            ax.tick_params(labelsize=6)
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="CKA")
    fig.suptitle(title, fontsize=10)
    savefig(fig, path)
    plt.close(fig)
