"""The saturation probe: how many of a layer's channel directions its features use (Shenk et al., 2021, ``delve``).

For each layer the CKA probe compares, the channels are the features and every (image, position) a sample: the
covariance of the channels, accumulated in float64 over the first ``saturation.n_images`` test images, has
eigenvalues ``l_1 >= ... >= l_c``; the layer's **saturation** is ``k / c``, ``k`` the fewest leading eigen-directions
whose variance reaches ``saturation.threshold`` of the total. A layer whose features span ``d`` of its ``c`` channels
equally has saturation ``d / c``. Low saturation in deep layers is what the thesis behind the paper calls "highly
redundant deep layers".

Beside each layer: its analytic RF over the image size (``rf_over_image``; the classifier's is global) and whether it
is past the border layer (its RF exceeds the image: Richter et al., 2021). The claim asks whether the deeper half's
saturation falls as the RF grows.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from rf_bench.claims import Claim
from rf_bench.data import normalize
from rf_bench.probes.cka import default_layers
from rf_bench.reporting import (ReportSection, by_family, by_k, integer_ticks, line_colors, markdown_table, mean_std,
                                pyplot, savefig, write_csv)
from rf_bench.rf import receptive_fields_at

__all__ = ["SaturationConfig", "SaturationProbe", "saturation_of", "channel_covariances", "layer_saturation",
           "saturation_sections"]


def saturation_of(covariance: torch.Tensor, threshold: float) -> float:
    """``k / c``: the share of the ``c`` eigen-directions of a channel covariance needed to explain ``threshold`` of
    its variance (0.0 for a layer with no variance at all)."""
    eigenvalues = torch.linalg.eigvalsh(covariance.double()).flip(0).clamp_min(0.0)
    total = float(eigenvalues.sum())
    if total <= 0.0:
        return 0.0
    explained = eigenvalues.cumsum(0) / total
    # a share that reaches the threshold only by rounding still counts: compare with a hair of slack
    needed = int(torch.searchsorted(explained, torch.tensor(threshold - 1e-12, dtype=explained.dtype))) + 1
    return min(needed, len(eigenvalues)) / len(eigenvalues)


class _Moments:
    """Running float64 sums of one layer's channel vectors: count, sum and sum of outer products."""

    def __init__(self) -> None:
        self.n, self.total, self.outer = 0, None, None

    def add(self, output: torch.Tensor) -> None:
        x = output.detach().double()
        x = x.movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() > 2 else x  # (samples, channels)
        if self.total is None:
            self.total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        self.n += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    def covariance(self) -> torch.Tensor:
        mean = self.total / self.n
        return (self.outer - self.n * torch.outer(mean, mean)) / max(self.n - 1, 1)


def channel_covariances(model: nn.Module, images: torch.Tensor, layers: Sequence[str],
                        batch_size: int = 128) -> Dict[str, torch.Tensor]:
    """The float64 channel covariance of each layer's output over every (image, position), from forward hooks."""
    moments = {name: _Moments() for name in layers}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: moments[name].add(out)) for name in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in images.split(batch_size):
                model(batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    missing = [name for name, m in moments.items() if m.n == 0]
    if missing:
        raise ValueError(f"layers {missing[:3]} did not run in the forward pass")
    return {name: m.covariance() for name, m in moments.items()}


def layer_saturation(model: nn.Module, images: torch.Tensor, layers: Sequence[str], threshold: float = 0.99,
                     batch_size: int = 128) -> Dict[str, float]:
    """Each layer's saturation over ``images`` (see the module docstring)."""
    return {name: saturation_of(cov, threshold)
            for name, cov in channel_covariances(model, images, layers, batch_size).items()}


@dataclass
class SaturationConfig:
    """Settings of the saturation probe (``--set saturation.<name>=<value>``).

    Attributes:
        threshold: the share of the variance the leading eigen-directions must explain (delve's 0.99).
        n_images: the first n test images the covariances are accumulated over.
        layers: which layers, as the CKA probe names them ("main", "blocks", "shortcut" or a regex).
        batch_size: images per forward pass.
        stage: the weights measured: "final" (trained) or "init".
    """

    threshold: float = 0.99
    n_images: int = 512
    layers: str = "main"
    batch_size: int = 128
    stage: str = "final"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"saturation.threshold {self.threshold} must be in (0, 1], e.g. 0.99")
        if self.n_images < 2:
            raise ValueError(f"saturation.n_images {self.n_images}: give at least 2 images")
        if self.stage not in ("final", "init"):
            raise ValueError(f"saturation.stage {self.stage!r} must be 'final' or 'init'")


def _deeper_half(record) -> Dict[str, List[float]]:
    values = record["values"]
    return {f"deeper-half saturation ({values['stage']})": [values["deeper_half"]]}


SATURATION_CLAIMS = (
    Claim("saturation_falls", "the deeper half's layer saturation (share of channel directions explaining 99% of "
          "the variance) falls as the RF grows (the thesis's \"low feature saturation\"; not in the paper's draft)",
          "falls", "saturation", _deeper_half, order=6, read_together=("batch_size",)),
)


class SaturationProbe:
    """Per-layer saturation of the trained net, beside each layer's RF over the image size."""

    name = "saturation"
    version = 1
    scope = "run"
    min_runs = 1
    Config = SaturationConfig
    claims = SATURATION_CLAIMS

    def run(self, run, config: SaturationConfig, ctx):
        """Each layer's saturation on the first test images, its RF over the image and past-border flag."""
        from rf_bench.probes.base import ProbeOutput

        data = run.load_data("test", ctx.data_dir)
        images = normalize(data.images[: config.n_images], data.mean, data.std).to(ctx.device)
        model = run.create_model(config.stage).to(ctx.device)
        layers = default_layers(model, config.layers)
        saturation = layer_saturation(model, images, layers, config.threshold, config.batch_size)
        side = data.input_size[-2]
        rfs = receptive_fields_at(model.cpu(), data.input_size, layers)
        rf_over = [rfs[name].size / side if rfs[name] is not None else None for name in layers]
        deeper = [saturation[name] for name in layers[len(layers) // 2:]]
        return ProbeOutput(values=dict(
            k=run.k, family=run.family, layers=layers, saturation=[saturation[name] for name in layers],
            rf_over_image=rf_over, past_border=[r is None or r > 1.0 for r in rf_over],
            deeper_half=statistics.fmean(deeper), image_size=side, n_images=images.shape[0], stage=config.stage,
            threshold=config.threshold))

    @staticmethod
    def report(records, store, out_dir):
        """Saturation against depth, one line per k, per family and data set; the deeper half's per k."""
        return saturation_sections(records, Path(out_dir))


def saturation_sections(records: List[Dict[str, Any]], out_dir: Path) -> List[ReportSection]:
    """Per (family, data set): saturation against depth (a line per k, mean over seeds, the border marked) and a
    table of the deeper half's saturation and the share of layers past the border per k."""
    sections, csv_rows = [], []
    for (family, dataset), recs in by_family(records).items():
        curves: Dict[int, List[float]] = {}
        borders: Dict[int, Optional[int]] = {}
        rows = []
        for k, krecs in by_k(recs).items():
            per_layer = [r["values"]["saturation"] for r in krecs]
            curves[k] = [statistics.fmean(v) for v in zip(*per_layer)]
            past = krecs[0]["values"]["past_border"]
            borders[k] = past.index(True) if True in past else None
            deeper = [r["values"]["deeper_half"] for r in krecs]
            m, s = mean_std(deeper)
            rows.append([str(k), str(len(krecs)), f"{m:.3f}" + (f" ± {s:.3f}" if s is not None else ""),
                         f"{100 * sum(past) / len(past):.0f}%"])
            for depth, (name, value) in enumerate(zip(krecs[0]["values"]["layers"], curves[k]), start=1):
                csv_rows.append(dict(family=family, dataset=dataset, k=k, depth=depth, layer=name, saturation=value,
                                     past_border=past[depth - 1], n=len(krecs),
                                     image_size=krecs[0]["values"]["image_size"]))
        figure = out_dir / f"saturation_{family}_{dataset}.png"
        _plot_saturation(curves, borders, f"{family}{{k}} on {dataset}: layer saturation", figure)
        first = recs[0]["values"]
        md = (f"Each layer's saturation: the share of its channel covariance's eigen-directions needed to explain "
              f"{first['threshold']:g} of the variance, over every position of the first {first['n_images']} test "
              f"images at {first['image_size']} px ({first['stage']} weights), mean over seeds; the dotted line marks "
              "each k's border layer (the first whose RF exceeds the image).\n\n"
              + "\n".join(markdown_table(["k", "seeds", "deeper-half saturation", "layers past the border"], rows))
              + f"\n\n![{family} saturation]({figure.name})\n")
        sections.append(ReportSection(title=f"Saturation: {family} on {dataset}", markdown=md, order=45))
    write_csv(out_dir / "saturation.csv", csv_rows)
    return sections


def _plot_saturation(curves, borders, title: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for color, (k, curve) in zip(line_colors(len(curves)), sorted(curves.items())):
        ax.plot(range(1, len(curve) + 1), curve, "o-", ms=2.5, color=color, label=f"k={k}")
        if borders.get(k) is not None:
            ax.axvline(borders[k] + 1, color=color, ls=":", lw=1)
    integer_ticks(ax.xaxis)
    ax.set_xlabel("layer (input to output)")
    ax.set_ylabel("saturation")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    savefig(fig, path)
    plt.close(fig)
