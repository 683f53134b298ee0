"""The RF-map probe: the paper's gradient "importance" maps and effective receptive fields.

The paper's method: a gradient of 1 on the centre unit of every channel of the last conv layer,
back-propagated to a random input, absolute value, averaged over ``n`` random inputs. Decisions:
the model is in eval mode, so the ``n`` inputs are independent and run as one batched backward pass
(tested equal to ``n`` separate passes); a map is the mean of ``|grad|`` over input channels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from rf_bench.claims import Claim
from rf_bench.paper import MEASURED_RF, RFMAP_MAXIMA
from rf_bench.reporting import ReportSection, by_family, by_k, mean_std, pyplot, savefig, write_csv

__all__ = ["RFMap", "gradient_map", "last_conv_name", "effective_rf", "RFMapConfig", "RFMapProbe", "plot_map",
           "rfmap_sections"]


@dataclass
class RFMap:
    """``mean_map`` (H x W): mean |grad| over the n repeats; ``maxima``: the max of each repeat's map."""

    mean_map: torch.Tensor
    maxima: torch.Tensor
    layer: str

    @property
    def mean_max(self) -> float:
        """The mean over inputs of each map's maximum."""
        return float(self.maxima.mean())

    @property
    def std_max(self) -> float:
        """The standard deviation over inputs of each map's maximum."""
        return float(self.maxima.std()) if self.maxima.numel() > 1 else 0.0


def last_conv_name(model: nn.Module) -> str:
    """The last ``Conv2d`` of the model (registration order, which is execution order for these CNNs)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer; pass layer=")
    return names[-1]


def _maps(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Per-sample |d(sum of centre units)/d input|, averaged over input channels: (n, H, W)."""
    captured: List[torch.Tensor] = []
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            fwd = model.forward_features if hasattr(model, "forward_features") else model
            fwd(x)
            if not captured:
                raise ValueError(f"layer {layer!r} did not run")
            out = captured[-1]
            h, w = out.shape[-2:]
            grad, = torch.autograd.grad(out[..., h // 2, w // 2].sum(), x)
    finally:
        handle.remove()
    return grad.abs().mean(dim=1)


def gradient_map(model: nn.Module, input_size: Sequence[int] = (3, 64, 64), n: int = 50, seed: int = 0,
                 layer: Optional[str] = None, batch_size: int = 50) -> RFMap:
    """The paper's RF map of ``model`` (default layer: its last conv), over ``n`` N(0, 1) inputs.

    Samples run ``batch_size`` at a time (memory); in eval mode the result does not depend on it.
    """
    layer = layer or last_conv_name(model)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(seed)
        xs = torch.randn(n, *input_size, generator=g)
        maps = torch.cat([_maps(model, xs[i:i + batch_size].to(param.device, param.dtype), layer).float().cpu()
                          for i in range(0, n, batch_size)])
    finally:
        model.train(was_training)
    return RFMap(mean_map=maps.mean(0), maxima=maps.flatten(1).max(1).values, layer=layer)


def effective_rf(mean_map: torch.Tensor, centre: Tuple[float, float], fractions=(0.5, 0.9, 0.99)) -> Dict[str, int]:
    """Half-side of the smallest square around ``centre`` holding each fraction of the gradient mass
    (the effective RF of Luo et al. 2016, with a square to match the square theoretical RF)."""
    h, w = mean_map.shape
    rows = torch.arange(h, dtype=torch.float64)[:, None] - centre[0]
    cols = torch.arange(w, dtype=torch.float64)[None, :] - centre[1]
    radius = torch.maximum(rows.abs(), cols.abs()).ceil().long().flatten()
    mass = mean_map.double().flatten()
    per_radius = torch.zeros(int(radius.max()) + 1, dtype=torch.float64).index_add_(0, radius, mass)
    cumulative = per_radius.cumsum(0) / per_radius.sum()
    return {f"r{int(round(100 * f))}": int(torch.searchsorted(cumulative, torch.tensor(f, dtype=torch.float64)))
            for f in fractions}


def plot_map(rfmap: RFMap, path, title: str = "") -> None:
    """One map as a PNG with its colour bar."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(rfmap.mean_map.numpy(), cmap="viridis")
    fig.colorbar(im, ax=ax, label="mean |grad|")
    ax.set_title(title or f"gradient map ({rfmap.layer})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    savefig(fig, path)
    plt.close(fig)


@dataclass
class RFMapConfig:
    """Settings of the RF-map probe (``--set rfmap.<name>=<value>``).

    Attributes:
        input_size: (C, H, W) of the noise inputs the maps are drawn on (C follows the run's model).
        n: noise inputs averaged into one map (the paper: 50).
        seed: seed of the noise inputs.
        stages: the weights mapped: "init" (the paper's maps) and/or "final".
        measure_rf: also measure the RF with gradients, on an input larger than the analytic RF.
    """

    input_size: Tuple[int, int, int] = (3, 64, 64)
    n: int = 50
    seed: int = 0
    stages: Tuple[str, ...] = ("init", "final")
    measure_rf: bool = True


def _init_maxima(record):
    init = record["values"].get("init")
    return {"RF-map maximum (init)": [init["mean_max"]] if init else []}


RFMAP_CLAIMS = (
    Claim("rfmap_maxima", "the RF maps' maxima of a randomly initialised model fall as the RF grows (Tables 3-4)",
          "falls", "rfmap", _init_maxima, missing="no init stage in these results (rfmap.stages)", order=5,
          read_together=("stages", "measure_rf")),  # the init maps do not depend on either
)


class RFMapProbe:
    """RF maps, their maxima, analytic / measured / effective RFs, at init and after training."""

    name = "rfmap"
    version = 1
    scope = "run"
    min_runs = 1
    Config = RFMapConfig
    claims = RFMAP_CLAIMS

    def run(self, run, config: RFMapConfig, ctx):
        """Gradient maps, analytic and measured RFs and effective-RF radii, at init and after training."""
        from rf_bench.probes.base import ProbeOutput
        from rf_bench.rf import gradient_rf, receptive_field

        # the input has the run's channels (1 for grey data sets) and the configured size
        channels = run.meta["model_kwargs"].get("in_chans", config.input_size[0])
        input_size = (channels, *config.input_size[1:])
        values: Dict[str, Any] = dict(k=run.k, family=run.family, input_size=list(input_size))
        tensors: Dict[str, torch.Tensor] = {}
        for stage in config.stages:
            model = run.create_model(stage).to(ctx.device)
            t0 = time.perf_counter()
            rfmap = gradient_map(model, input_size, n=config.n, seed=config.seed)
            seconds = time.perf_counter() - t0
            rf = receptive_field(model.cpu(), input_size, layer=rfmap.layer)
            h_out = _layer_hw(model, input_size, rfmap.layer)
            centre = rf.offset + (h_out[0] // 2) * rf.stride, rf.offset + (h_out[1] // 2) * rf.stride
            erf = effective_rf(rfmap.mean_map, centre)
            entry = dict(layer=rfmap.layer, mean_max=rfmap.mean_max, std_max=rfmap.std_max,
                         maxima=rfmap.maxima.tolist(), seconds=seconds, analytic_rf=rf.size, **erf,
                         **{f"{key}_over_rf": (2 * val + 1) / rf.size for key, val in erf.items()})
            if config.measure_rf:
                size = rf.size + 2 * rf.stride + 8
                entry["gradient_rf"] = gradient_rf(model.to(ctx.device), (channels, size, size),
                                                   layer=rfmap.layer, n=2)
            values[stage] = entry
            tensors[f"{stage}_map"] = rfmap.mean_map
        return ProbeOutput(values=values, tensors=tensors)

    @staticmethod
    def report(records, store, out_dir):
        """REPORT.md sections: RF maps and their tables per family and data set."""
        return rfmap_sections(records, store, Path(out_dir))


def _layer_hw(model: nn.Module, input_size: Sequence[int], layer: str) -> Tuple[int, int]:
    shapes: List[Tuple[int, int]] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[-2:])))
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model.eval().forward_features(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        handle.remove()
    return shapes[-1]


# -------------------------------------------------------------------------------------------- report

def rfmap_sections(records: List[Dict[str, Any]], store, out_dir: Path):
    """Figures 4-5 (maps per RF, per architecture) and Tables 3-4 (map maxima beside the paper's)."""
    sections, csv_rows = [], []
    for (family, dataset), recs in by_family(records).items():
        stages = [s for s in ("init", "final") if all(s in r["values"] for r in recs)]
        per_k = by_k(recs)
        header = ["k", "RF (analytic)", "RF (gradient)", "RF (paper)"]
        for stage in stages:
            header += [f"max ({stage})", f"ERF r50/r90/r99 ({stage})"]
        header += ["paper max"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        panels = {}
        for k, krecs in per_k.items():
            first = krecs[0]["values"][stages[0]] if stages else {}
            cells = [str(k), str(first.get("analytic_rf", "-")), str(first.get("gradient_rf", "-")),
                     str(MEASURED_RF.get(family, {}).get(k, "-"))]
            for stage in stages:
                maxima = [m for r in krecs for m in r["values"][stage]["maxima"]]
                mean, std = mean_std(maxima)
                cells.append(f"{mean:.3g} ± {std:.2g}" if std is not None else f"{mean:.3g}")
                erf = krecs[0]["values"][stage]
                cells.append(f"{erf['r50']}/{erf['r90']}/{erf['r99']}")
                csv_rows.append(dict(family=family, dataset=dataset, k=k, stage=stage,
                                     rf_analytic=first.get("analytic_rf"), rf_gradient=first.get("gradient_rf"),
                                     max_mean=mean, max_std=std, n=len(maxima), r50=erf["r50"], r90=erf["r90"],
                                     r99=erf["r99"], paper_max=RFMAP_MAXIMA.get(family, {}).get(k)))
                tensors = store.tensors(Path(krecs[0]["_path"]))
                panels[(stage, k)] = (tensors[f"{stage}_map"], first.get("analytic_rf"))
            paper = RFMAP_MAXIMA.get(family, {}).get(k)
            cells.append(f"{paper:.3g}" if paper is not None else "-")
            lines.append("| " + " | ".join(cells) + " |")
        figure = out_dir / f"rfmap_{family}_{dataset}.png"
        _plot_maps(panels, stages, sorted(per_k), f"{family}{{k}} ({dataset} runs)", figure)
        md = ("Gradient maps (the paper's method: |d centre units of the last conv / d input|, mean over "
              f"{recs[0]['config']['n']} random inputs, eval mode); maxima are mean ± std over all inputs and "
              "seeds; ERF radii hold 50/90/99% of the gradient mass (half-side of a square, px).\n\n"
              + "\n".join(lines) + f"\n\n![{family} maps]({figure.name})\n")
        sections.append(ReportSection(title=f"RF maps: {family} on {dataset}", markdown=md, order=40))
    write_csv(out_dir / "rfmap.csv", csv_rows)
    return sections


def _plot_maps(panels, stages, ks, title: str, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(stages), len(ks), figsize=(3.0 * len(ks), 2.8 * len(stages)), squeeze=False)
    for i, stage in enumerate(stages):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            image, rf = panels[(stage, k)]
            im = ax.imshow(image.numpy(), cmap="viridis")  # per-panel scale: maxima differ by orders of magnitude
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format="%.1e").ax.tick_params(labelsize=6)
            ax.set_title(f"k={k}, RF {rf} ({stage})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    savefig(fig, path)
    plt.close(fig)
