"""The Hessian probe: the top eigenvalues of the training-loss Hessian at initialisation and after training.

The numerics (HVPs, thick-restart Lanczos, Hutchinson's trace, stochastic Lanczos quadrature) are in
:mod:`rf_bench.spectral`, re-exported here; the BatchNorm protocols (``hessian.bn``: recalibrated on the probe's
images by default) in :mod:`rf_bench.batchnorm`. This module runs them on a run's weights and renders the report.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rf_bench._numerics import slq_density
from rf_bench.batchnorm import BN_MODES, prepare_batchnorm, training_subset
from rf_bench.claims import Claim
from rf_bench.reporting import (ReportSection, by_k, group_by, integer_ticks, line_colors, mean_std, pyplot,
                                record_rf, savefig, write_csv)
from rf_bench.spectral import (GPU_SHARE_ENV, HVP, Batches, HessianSpectrum, hessian_eigenvalues, hessian_trace,
                               lanczos, lanczos_basis_size, spectral_density, thick_restart_lanczos,
                               top_k_basis_dtype)

__all__ = ["HVP", "HessianSpectrum", "hessian_eigenvalues", "hessian_trace", "spectral_density", "lanczos",
           "thick_restart_lanczos", "lanczos_basis_size", "top_k_basis_dtype", "HessianConfig", "HessianProbe",
           "BN_MODES", "prepare_batchnorm", "bn_mode", "slq_density", "GPU_SHARE_ENV", "hessian_sections"]

# ------------------------------------------------------------------------------------------ probe

@dataclass
class HessianConfig:
    """Settings of the Hessian probe (``--set hessian.<name>=<value>``); its cost is HVPs, each a pass over n_images.

    Attributes:
        k: eigenvalues computed, the largest first (the paper: 90).
        which: "LA" (largest by value) or "LM" (largest by magnitude, what power iteration finds).
        n_images: a fixed, seeded subset of the training split, not augmented, that the loss is taken over.
        batch_size: images per forward pass of one HVP (sets memory, not the result).
        subset_seed: seed of the image subset.
        tol: relative tolerance of the eigenvalues.
        ncv: Lanczos basis size (default: set by k); smaller takes fewer HVPs for a small k.
        method: "auto" (thick-restart Lanczos, float64 basis while it fits in 2 GiB, else float32) or "arpack".
        trace_samples: Rademacher vectors of Hutchinson's trace estimate.
        stages: the weights measured: "init" and/or "final".
        bn: BatchNorm protocol: "recalibrate" (statistics from the probe's images), "batch" or "stored".
        density_steps: Lanczos steps per vector of the SLQ spectral density (0: no density).
        density_runs: Rademacher vectors of the SLQ spectral density.
    """

    k: int = 90
    which: str = "LA"
    n_images: int = 2048
    batch_size: int = 256
    subset_seed: int = 0
    tol: float = 1e-4
    ncv: Optional[int] = None
    method: str = "auto"
    trace_samples: int = 20
    stages: Tuple[str, ...] = ("init", "final")
    bn: str = "recalibrate"
    density_steps: int = 30
    density_runs: int = 2

    def __post_init__(self) -> None:
        if self.bn not in BN_MODES:
            raise ValueError(f"hessian.bn {self.bn!r} is not one of {', '.join(BN_MODES)}")
        if self.density_steps < 0 or self.density_runs < 1:
            raise ValueError(f"hessian.density_steps {self.density_steps} / density_runs {self.density_runs}: "
                             "give steps >= 0 (0: no density) and runs >= 1")


def bn_mode(record) -> str:
    """The BatchNorm protocol of a result; results before probe version 3 all used the stored statistics."""
    return record["values"].get("bn", "stored")


def _init_width(record):
    """Three readings of "wider" at initialisation, each its own row, one set per BatchNorm protocol."""
    init = record["values"].get("init")
    mode = bn_mode(record)
    return {f"top eigenvalue (init, BN {mode})": [init["top"]] if init else [],
            f"top / last eigenvalue (init, BN {mode})": [init["ratio_top_last"]] if init else [],
            f"trace (init, BN {mode})": [init["trace"]] if init else []}


HESSIAN_CLAIMS = (
    Claim("hessian_width", "the Hessian spectrum at initialisation gets wider as the RF grows (Figures 1-2)",
          "rises", "hessian", _init_width, missing="no init stage in these results (hessian.stages)", order=3,
          # bn is in the metric names; chunk size, density and later stages leave the init top-k and trace alone
          read_together=("bn", "batch_size", "density_steps", "density_runs", "stages")),
)


class _HVPProgress:
    """Counts one stage's HVPs for the progress display: "init, top-k: HVP 12 of about 61, 40 s left".

    The top-k's count is an estimate (one Lanczos basis; restarts add more), so the total is "about"."""

    def __init__(self, stage: str, model: nn.Module, config: HessianConfig, status: Callable[[str], None]) -> None:
        n = sum(p.numel() for p in model.parameters())
        k = min(config.k, n - 1)
        density = config.density_steps * config.density_runs if config.density_steps > 0 else 0
        self.expected = lanczos_basis_size(n, k, config.ncv) + config.trace_samples + density
        self.stage, self.status, self.done = stage, status, 0
        self.start = time.perf_counter()

    def step(self, part: str) -> Callable[[int], None]:
        def on_hvp(_calls: int) -> None:
            self.done += 1
            self.expected = max(self.expected, self.done)
            per_hvp = (time.perf_counter() - self.start) / self.done
            left = per_hvp * (self.expected - self.done)
            self.status(f"{self.stage}, {part}: HVP {self.done} of about {self.expected}, "
                        f"{per_hvp:.2g} s each, ~{left:.0f} s left")
        return on_hvp


class HessianProbe:
    """Top-k Hessian eigenvalues and the Hutchinson trace at init and after training (Figures 1-2)."""

    name = "hessian"
    # 2: Hutchinson's Rademacher vectors drawn by torch (on any device), not numpy
    # 3: the BatchNorm protocol (``bn``, default recalibrate) and the SLQ spectral density
    version = 3
    scope = "run"
    min_runs = 1
    Config = HessianConfig
    claims = HESSIAN_CLAIMS

    def run(self, run, config: HessianConfig, ctx):
        """Top eigenvalues, trace and density of the run's Hessian at each stage."""
        from rf_bench.probes.base import ProbeOutput

        x, y = training_subset(run.load_data("train", ctx.data_dir), config.n_images, config.subset_seed, ctx.device)
        batches = [(x[i:i + config.batch_size], y[i:i + config.batch_size]) for i in range(0, len(y), config.batch_size)]
        values = dict(k=run.k, family=run.family, which=config.which, n_images=len(y), bn=config.bn)
        tensors = {}
        for stage in config.stages:
            # a fresh copy from the run's files: recalibrating it never touches them
            model = prepare_batchnorm(run.create_model(stage).to(ctx.device), config.bn, x)
            values[stage] = self._measure(model, batches, config, _HVPProgress(stage, model, config, ctx.status))
            tensors[f"{stage}_eigenvalues"] = torch.tensor(values[stage]["eigenvalues"], dtype=torch.float64)
        return ProbeOutput(values=values, tensors=tensors)

    @staticmethod
    def _measure(model: nn.Module, batches: Batches, config: HessianConfig, progress: "_HVPProgress") -> dict:
        """Top-k eigenvalues, Hutchinson trace and (optionally) the SLQ density of one prepared model."""
        n_params = sum(p.numel() for p in model.parameters())
        k = min(config.k, n_params - 1)
        # distributed=False: processes launched together share the harness's tasks (each result is
        # locked by one), so they are not in step to all-reduce one HVP
        spectrum = hessian_eigenvalues(model, F.cross_entropy, batches, k=k, which=config.which, tol=config.tol,
                                       ncv=config.ncv, method=config.method, distributed=False,
                                       on_hvp=progress.step("top-k"))
        trace, trace_se, trace_hvps = hessian_trace(model, F.cross_entropy, batches, config.trace_samples,
                                                    distributed=False, on_hvp=progress.step("trace"))
        ev = spectrum.eigenvalues
        out = dict(eigenvalues=ev.tolist(), hvps=spectrum.hvps, seconds=spectrum.seconds, top=float(ev[0]),
                   ratio_top_last=float(ev[0] / ev[-1]), trace=trace, trace_stderr=trace_se, trace_hvps=trace_hvps,
                   params=n_params)
        if config.density_steps > 0:
            _, _, nodes, weights, density_hvps = spectral_density(
                model, F.cross_entropy, batches, steps=config.density_steps, runs=config.density_runs,
                distributed=False, on_hvp=progress.step("density"))
            out.update(slq_nodes=[n.tolist() for n in nodes], slq_weights=[w.tolist() for w in weights],
                       density_hvps=density_hvps)
        return out

    @staticmethod
    def report(records, store, out_dir):
        """REPORT.md sections: spectra, traces and densities per family and data set."""
        return hessian_sections(records, Path(out_dir))


# --------------------------------------------------------------------------------------- hessian

def _hessian_groups(records):
    """Records by (family, data set, BatchNorm protocol): protocols never share a table or a figure."""
    return group_by(records, lambda r: (r["values"]["family"], r["dataset"], bn_mode(r)))


_BN_WORDS = {"recalibrate": "BatchNorm statistics recalibrated on these images, eval mode",
             "batch": "BatchNorm with each batch's statistics (train mode), the loss SGD minimises",
             "stored": "eval mode with the stored BatchNorm statistics (at initialisation: mean 0, variance 1)"}


def _mean_std_cv(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    if std is None:
        return f"{mean:.4g}"
    cv = f", CV {std / abs(mean):.2f}" if mean else ""
    return f"{mean:.4g} ± {std:.2g}{cv}"


def hessian_sections(records: List[Dict[str, Any]], out_dir: Path) -> List[ReportSection]:
    """Figures 1-2 (top eigenvalues vs index, one line per RF, init and trained panels), the SLQ spectral density
    per k, and a table of the top eigenvalue, the trace and largest/k-th, mean ± std and the seed-to-seed
    coefficient of variation; one section per BatchNorm protocol (`bn_mode`): protocols never share a table."""

    sections, csv_rows = [], []
    for (family, dataset, mode), recs in _hessian_groups(records).items():
        stages = [s for s in ("init", "final") if all(s in r["values"] for r in recs)]
        per_k = by_k(recs)
        header = ["k", "RF (analytic)", "seeds"]
        for stage in stages:
            header += [f"top ({stage})", f"trace ({stage})", f"top / last ({stage})"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        curves, densities = defaultdict(dict), defaultdict(dict)
        for k, krecs in per_k.items():
            rf = record_rf(krecs[0])
            cells = [str(k), str(rf), str(len(krecs))]
            for stage in stages:
                for key in ("top", "trace", "ratio_top_last"):
                    vals = [r["values"][stage][key] for r in krecs]
                    mean, std = mean_std(vals)
                    cells.append(_mean_std_cv(vals))
                    csv_rows.append(dict(family=family, dataset=dataset, bn=mode, k=k, rf_analytic=rf, stage=stage,
                                         metric=key, mean=mean, std=std,
                                         cv=(std / abs(mean) if std is not None and mean else None), n=len(vals)))
                spectra = np.asarray([r["values"][stage]["eigenvalues"] for r in krecs])
                curves[stage][(k, rf)] = spectra.mean(0)
                if all("slq_nodes" in r["values"][stage] for r in krecs):
                    densities[stage][(k, rf)] = ([n for r in krecs for n in r["values"][stage]["slq_nodes"]],
                                                 [w for r in krecs for w in r["values"][stage]["slq_weights"]])
            lines.append("| " + " | ".join(cells) + " |")
        stem = f"{family}_{dataset}_{mode}"
        figure = out_dir / f"hessian_{stem}.png"
        _plot_spectra(curves, stages, f"{family}{{k}} on {dataset}, BN {mode}: top Hessian eigenvalues", figure)
        which = recs[0]["values"]["which"]
        md = (f"Top {len(next(iter(curves[stages[0]].values())))} eigenvalues (largest by "
              f"{'value' if which == 'LA' else 'magnitude'}) of the training-loss Hessian on "
              f"{recs[0]['values']['n_images']} fixed training images, {_BN_WORDS[mode]}, by Lanczos; the trace by "
              "Hutchinson. Mean ± std over seeds, and the seed-to-seed coefficient of variation (CV = std / |mean|)."
              "\n\n" + "\n".join(lines) + f"\n\n![{family} spectra]({figure.name})\n")
        if densities and all(densities[stage] for stage in stages):
            density_figure = out_dir / f"hessian_density_{stem}.png"
            _plot_densities(densities, stages, f"{family}{{k}} on {dataset}, BN {mode}: spectral density (SLQ)",
                            density_figure)
            md += (f"\nThe spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019, as PyHessian "
                   f"plots it), every seed's probe vectors pooled, smoothed by a Gaussian of 1% of the range:\n\n"
                   f"![{family} densities]({density_figure.name})\n")
        sections.append(ReportSection(title=f"Hessian: {family} on {dataset} (BN {mode})", markdown=md, order=20))
    write_csv(out_dir / "hessian.csv", csv_rows)
    return sections


def _plot_densities(densities, stages, title: str, path: Path) -> None:
    """One panel per (stage, k): density against eigenvalue on a log axis, PyHessian's style."""
    plt = pyplot()
    ks = sorted({key for stage in stages for key in densities[stage]})
    fig, axes = plt.subplots(len(stages), len(ks), figsize=(3.0 * len(ks), 2.6 * len(stages)), squeeze=False)
    for row, stage in enumerate(stages):
        for col, (k, rf) in enumerate(ks):
            ax = axes[row][col]
            nodes, weights = densities[stage][(k, rf)]
            grid, density = slq_density(nodes, weights)
            # outlying eigenvalues carry weights many decades below the bulk: show 12 decades, as PyHessian does
            floor = density.max() * 1e-12
            ax.semilogy(grid, np.maximum(density, floor), color="C0")
            ax.set_ylim(bottom=floor)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            ax.set_title(f"{'init' if stage == 'init' else 'trained'}: k={k}, RF {rf}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("density", fontsize=8)
            if row == len(stages) - 1:
                ax.set_xlabel("eigenvalue", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    savefig(fig, path)
    plt.close(fig)


def _plot_spectra(curves, stages, title: str, path: Path) -> None:
    plt = pyplot()
    # constrained layout keeps the right panel's y label clear of the left panel
    fig, axes = plt.subplots(1, len(stages), figsize=(5.0 * len(stages), 3.8), squeeze=False, layout="constrained")
    for ax, stage in zip(axes[0], stages):
        items = sorted(curves[stage].items())
        for color, ((k, rf), ev) in zip(line_colors(len(items)), items):
            ax.plot(np.arange(1, len(ev) + 1), ev, color=color, label=f"k={k}, RF {rf}")
        positive = all((ev > 0).all() for _, ev in items)
        ax.set_yscale("log" if positive else "symlog")
        integer_ticks(ax.xaxis)
        ax.set_xlabel("eigenvalue rank")
        ax.set_ylabel("eigenvalue")
        ax.set_title({"init": "at initialisation", "final": "after training"}[stage], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    savefig(fig, path)
    plt.close(fig)
