"""The prune probe: one-shot global magnitude pruning (``rf_bench.pruning``), then a masked fine-tune.

A pruned net's accuracy depends on the BatchNorm statistics it is evaluated with (``rf_bench.batchnorm``):
``prune.bn`` names the protocols measured, both by default: ``stored`` (the dense net's statistics, what the paper
reports) and ``recalibrate`` (statistics re-estimated on a fixed training subset after masking, no weight changed).
Every pruned and fine-tuned accuracy is stored, tabulated and judged per protocol, never pooled. Each rate also
records why a net may fail: each layer's kept fraction (layer collapse) and each layer's output standard deviation
relative to the dense net's (signal collapse).

``prune.basis`` names what a rate counts, both by default: ``all`` conv and linear weights (the paper's) or the
``live`` ones, those that see the image at the run's input size (``rf_bench.rf.live_weights``; the dead ones, which
only multiply zero padding, are removed as well and change no output). Every rate records its live sparsity (the
share of live weights removed) and the share of dead weights kept, and each (basis, protocol) gets a critical live
sparsity: where accuracy has fallen halfway from dense to chance. Masks that two bases share (a net with no dead
weight) are evaluated once.

The masks live in :mod:`rf_bench.pruning`, below both this probe and the trainer; their names are
re-exported here so ``from rf_bench.probes.prune import global_magnitude_masks`` keeps working.
"""
from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch

from rf_bench.batchnorm import recalibrate_batchnorm, training_subset
from rf_bench.claims import Claim, NotMeasured, at_chance, chance_level
from rf_bench.paper import MEASURED_RF, PRUNE_09
from rf_bench.pruning import (PRUNE_BASES, apply_masks, dead_kept, global_magnitude_masks, kept_fractions,
                              layer_output_stds, live_sparsity, prunable_parameters, relative_weight_change, sparsity)
from rf_bench.rf import live_weights, receptive_field
from rf_bench.reporting import (ReportSection, by_family, by_k, fmt_pct, integer_ticks, line_colors, markdown_table,
                                mean_std, paper_cell, pyplot, record_rf, savefig, write_csv)
from rf_bench.runs import FINAL_WEIGHTS

__all__ = ["prunable_parameters", "global_magnitude_masks", "apply_masks", "sparsity", "PruneConfig", "PruneProbe",
           "PRUNE_BN", "PRUNE_BASES", "SIGNAL_COLLAPSE", "record_protocols", "record_bases", "row_accuracy",
           "rows_of", "failure_cause", "critical_sparsity"]

PRUNE_BN = ("stored", "recalibrate")
# a layer whose output std falls below this share of the dense net's has lost its signal (signal collapse)
SIGNAL_COLLAPSE = 0.1
HEADLINE_RATE = 0.9  # the paper's headline pruning rate
_BN_WORDS = {"stored": "the dense net's stored BatchNorm statistics (the paper's protocol)",
             "recalibrate": "BatchNorm statistics re-estimated after masking on a fixed training subset"}


@dataclass
class PruneConfig:
    """Settings of the prune probe (``--set prune.<name>=<value>``).

    Attributes:
        rates: shares of the weights removed by one-shot global magnitude pruning (the paper: 0.5-0.9).
        finetune_epochs: epochs of masked fine-tuning after pruning at each rate (0: one-shot only; the paper: 10).
        finetune_recipe: the recipe the fine-tune trains with ("finetune": lr 1e-4, as in the paper).
        eval_batch_size: test images per forward pass.
        finetune_rates: the rates that are fine-tuned (default: every rate); the others stay one-shot.
        bn: BatchNorm protocols a pruned (and fine-tuned) net is evaluated with: "stored" (the dense net's
            statistics, the paper's) and/or "recalibrate" (re-estimated on bn_images training images after masking).
        bn_images: training images (a fixed, seeded, unaugmented subset, one batch) the statistics are re-estimated on.
        bn_seed: seed of that subset.
        signal_images: the first images of that subset on which each layer's output std is compared with the dense net's.
        basis: what a rate counts: "all" conv and linear weights (the paper's) and/or "live" ones (those that see the
            image at the run's input size; every dead weight is removed too).
        finetune_bases: the bases whose pruned nets are fine-tuned (default: "all" only, the paper's).
    """

    rates: Tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.97, 0.98)
    finetune_epochs: int = 10
    finetune_recipe: str = "finetune"  # lr 1e-4, weight decay 5e-4, momentum 0.9, clip 0.1 (PAPER.md)
    eval_batch_size: int = 500
    finetune_rates: Optional[Tuple[float, ...]] = None
    bn: Tuple[str, ...] = PRUNE_BN
    bn_images: int = 2048
    bn_seed: int = 0
    signal_images: int = 256
    basis: Tuple[str, ...] = PRUNE_BASES
    finetune_bases: Tuple[str, ...] = ("all",)
    # added later: left out of the stored config (and its hash) at their default, so earlier results stay found
    LATER_FIELDS: ClassVar[Tuple[str, ...]] = ("finetune_rates",)

    def __post_init__(self) -> None:
        bad = [rate for rate in tuple(self.rates) + tuple(self.finetune_rates or ()) if not 0.0 <= rate < 1.0]
        if bad:
            raise ValueError(f"prune.rates {bad} outside [0, 1): a rate is the share of weights removed, e.g. 0.9")
        self.bn = (self.bn,) if isinstance(self.bn, str) else tuple(self.bn)
        unknown = [mode for mode in self.bn if mode not in PRUNE_BN]
        if unknown or not self.bn:
            raise ValueError(f"prune.bn {list(self.bn)} must list one or more of {', '.join(PRUNE_BN)}, "
                             'e.g. --set \'prune.bn=["stored", "recalibrate"]\'')
        self.basis = (self.basis,) if isinstance(self.basis, str) else tuple(self.basis)
        self.finetune_bases = (self.finetune_bases,) if isinstance(self.finetune_bases, str) else tuple(self.finetune_bases)
        unknown = [b for b in self.basis if b not in PRUNE_BASES]
        if unknown or not self.basis:
            raise ValueError(f"prune.basis {list(self.basis)} must list one or more of {', '.join(PRUNE_BASES)}, "
                             "e.g. --set 'prune.basis=[\"all\", \"live\"]'")
        if any(b != "all" for b in self.finetune_bases):  # the trainer's masked fine-tune builds the paper's masks
            raise ValueError(f"prune.finetune_bases {list(self.finetune_bases)}: only \"all\" can be fine-tuned "
                             "(or [] for none); the live basis is measured one-shot")
        if self.bn_images < 1 or self.signal_images < 1:
            raise ValueError(f"prune.bn_images {self.bn_images} / signal_images {self.signal_images}: give counts >= 1")


# ------------------------------------------------------------------------------------ reading results

def record_protocols(record: Dict[str, Any]) -> List[str]:
    """The BatchNorm protocols a prune result holds; results from before ``prune.bn`` all used the stored ones."""
    return list(record["values"].get("bn") or ["stored"])


def record_bases(record: Dict[str, Any]) -> List[str]:
    """The bases a prune result holds; results from before ``prune.basis`` counted every weight."""
    return list(record["values"].get("basis") or ["all"])


def rows_of(record: Dict[str, Any], basis: str = "all") -> List[Dict[str, Any]]:
    """The rate rows of one basis (rows from before ``prune.basis`` are the "all" basis's)."""
    return [row for row in record["values"]["rates"] if row.get("basis", "all") == basis]


def critical_sparsity(values: Dict[str, Any], basis: str, bn: str) -> Optional[float]:
    """The live sparsity at which one-shot accuracy has fallen halfway from dense to chance, linearly interpolated
    between the rates measured (dense at live sparsity 0); None if no measured rate falls that far."""
    chance = 1.0 / values["num_classes"]
    halfway = (values["dense_acc"] + chance) / 2
    points = sorted((row["live_sparsity"], row_accuracy(row, bn, "pruned_acc"))
                    for row in values["rates"] if row.get("basis", "all") == basis and "live_sparsity" in row)
    points = [(0.0, values["dense_acc"])] + [(x, y) for x, y in points if y is not None]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y1 <= halfway < y0:
            return x0 + (y0 - halfway) / (y0 - y1) * (x1 - x0)
    return None


def _rows_per_basis(model, config: PruneConfig, live, measure) -> List[Dict[str, Any]]:
    """One row per (basis, rate): its live sparsity and dead share kept, and ``measure(masks, basis, rate)``'s
    accuracies; a mask another basis already measured is not measured again (a net without dead weights)."""
    measured: List[Tuple[Dict[str, Any], Dict[str, Any]]] = []  # (masks, row)
    rows = []
    for basis in config.basis:
        masks = global_magnitude_masks(model, config.rates, live if basis == "live" else None)
        for rate in config.rates:
            row = dict(basis=basis, rate=rate, live_sparsity=live_sparsity(masks[rate], live),
                       dead_kept=dead_kept(masks[rate], live))
            same = next((r for m, r in measured if _same_masks(m, masks[rate])), None)
            if same is not None:
                row.update({k: copy.deepcopy(v) for k, v in same.items()
                            if k not in row and not k.startswith("finetune") and k != "same_as"})
                row["same_as"] = dict(basis=same["basis"], rate=same["rate"])
            else:
                row.update(measure(masks[rate], basis, rate))
            measured.append((masks[rate], row))
            rows.append(row)
    return rows


def _analytic_rf(model, input_size) -> Optional[int]:
    """The exact RF of the model's features at its input size, recorded so that reports need not build the model."""
    try:
        return receptive_field(model, input_size).size
    except (NotImplementedError, ValueError):  # a model the RF tool cannot follow is still pruned
        return None


def _same_masks(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(bool(torch.equal(a[n], b[n])) for n in a)


def row_accuracy(row: Dict[str, Any], bn: str, key: str) -> Optional[float]:
    """``pruned_acc`` or ``finetuned_acc`` of one rate's row under protocol ``bn`` (None if not measured)."""
    if "bn" in row:
        return row["bn"].get(bn, {}).get(key)
    return row.get(key) if bn == "stored" else None


def failure_cause(row: Dict[str, Any], bn: str, chance: Optional[float]) -> str:
    """Why a one-shot pruned net is at chance: "layer collapse" (a layer with nothing kept), "signal collapse" (a
    layer's output std under `SIGNAL_COLLAPSE` of the dense net's), or "neither"; "" when it is above chance."""
    acc = row_accuracy(row, bn, "pruned_acc")
    if acc is None or chance is None or acc >= 1.5 * chance:
        return ""
    kept = row.get("kept") or []
    if kept and min(kept) == 0.0:
        return f"layer collapse ({sum(k == 0.0 for k in kept)} layer(s) with nothing kept)"
    signal = (row.get("bn") or {}).get(bn, {}).get("signal") or []
    if signal and min(signal) < SIGNAL_COLLAPSE:
        depth = signal.index(min(signal))
        return f"signal collapse (output std {min(signal):.2g} of the dense net's at layer {depth + 1})"
    return "neither" if kept else "not recorded"


# -------------------------------------------------------------------------------------------- claims

_STAGES = (("one-shot", "pruned_acc"), ("fine-tuned", "finetuned_acc"))


def _drop_metric(rate: float, stage: str, bn: str, share: bool = False, basis: str = "all") -> str:
    counted = "" if basis == "all" else " of live weights"  # the paper's basis keeps the names it always had
    return f"{'share of ' if share else ''}accuracy lost at {rate:g}{counted}, {stage}, BN {bn}"


def _dense_accuracy(record):
    return {"dense test accuracy": [record["values"]["dense_acc"]]}


def _accuracy_lost(record):
    """Dense minus pruned (and fine-tuned) accuracy at every rate and BatchNorm protocol, in points and as a share of
    the dense accuracy (a net with less accuracy has less to lose: the share tells robustness from that); empty
    without a fine-tune."""
    values = record["values"]
    dense = values["dense_acc"]
    lost = {}
    for bn in record_protocols(record):
        for row in values["rates"]:
            basis = row.get("basis", "all")
            for stage, key in _STAGES:
                acc = row_accuracy(row, bn, key)
                if stage == "fine-tuned" and basis not in (record.get("config") or {}).get("finetune_bases", ["all"]):
                    continue  # a basis that is never fine-tuned has no fine-tuned row to judge
                lost[_drop_metric(row["rate"], stage, bn, basis=basis)] = [dense - acc] if acc is not None else []
                lost[_drop_metric(row["rate"], stage, bn, share=True, basis=basis)] = (
                    [(dense - acc) / dense] if acc is not None and dense else [])
    return lost


def _critical(record):
    """The critical live sparsity per basis and protocol (the live sparsity where accuracy has fallen halfway from
    dense to chance); a net that never fell that far at the rates measured counts at the largest one measured."""
    critical = record["values"].get("critical") or {}
    return {_critical_metric(basis, bn): [value if value is not None else _largest_live_sparsity(record, basis)]
            for basis, by_bn in critical.items() for bn, value in by_bn.items()}


def _largest_live_sparsity(record, basis: str) -> float:
    """A net still above halfway at every rate counts at the largest live sparsity measured: a lower bound on its
    critical sparsity, which can only understate a rise with k that such nets show."""
    return max(row["live_sparsity"] for row in rows_of(record, basis))


def _critical_metric(basis: str, bn: str) -> str:
    return f"critical live sparsity, {'rate over all weights' if basis == 'all' else 'rate over live weights'}, BN {bn}"


def _accuracies_behind(metric: str, records):
    """By k, the accuracies a metric is computed from: dense, or pruned / fine-tuned at its rate and protocol."""
    found: Dict[int, List[float]] = {}
    for rec in records:
        values = rec["values"]
        if metric == "dense test accuracy" or metric.startswith("critical"):
            accs = [values["dense_acc"]]
        else:
            accs = [row_accuracy(row, bn, key) for bn in record_protocols(rec) for row in values["rates"]
                    for stage, key in _STAGES
                    if metric in (_drop_metric(row["rate"], stage, bn, basis=row.get("basis", "all")),
                                  _drop_metric(row["rate"], stage, bn, True, row.get("basis", "all")))]
        found.setdefault(values["k"], []).extend(a for a in accs if a is not None)
    return found


def _at_chance(metric: str, records):
    """Accuracies at chance for every k cannot rank the k's (and make drops track dense accuracy)."""
    chance = chance_level(records[0])
    if at_chance(_accuracies_behind("dense test accuracy", records), chance):
        return NotMeasured("dense accuracy at chance for every k: the nets never trained")
    if metric != "dense test accuracy" and at_chance(_accuracies_behind(metric, records), chance):
        return f"{'fine-tuned' if 'fine-tuned' in metric else 'pruned'} accuracy at chance for every k"
    return None


# settings that change no pruned accuracy's meaning, or that the metric names spell out (rate, stage, bn, basis)
_READ_TOGETHER = ("rates", "eval_batch_size", "finetune_rates", "bn", "signal_images", "basis", "finetune_bases")

PRUNE_CLAIMS = (
    Claim("dense_accuracy", "dense test accuracy falls as the RF grows (Table 1)", "falls", "prune",
          _dense_accuracy, caveat=_at_chance, order=1, unit="%",
          read_together=_READ_TOGETHER + ("finetune_epochs", "finetune_recipe", "bn_images", "bn_seed")),
    Claim("prune_robustness", "the accuracy lost to one-shot pruning shrinks as the RF grows, before and after "
          "the masked fine-tune, in points and as a share of the dense accuracy (Tables 1-2), per BatchNorm "
          "protocol", "falls", "prune", _accuracy_lost, caveat=_at_chance,
          missing="no fine-tune in these results (prune.finetune_epochs = 0)", order=2, unit="%",
          read_together=_READ_TOGETHER),
    Claim("critical_live_sparsity", "the critical live sparsity (share of the weights that see the image removed "
          "when one-shot accuracy has fallen halfway to chance) rises as the RF grows, per basis and BatchNorm "
          "protocol; a net that never falls that far counts at the largest live sparsity measured", "rises", "prune",
          _critical, caveat=_at_chance, order=2, unit="",
          missing="no live sparsity in these results (prune results from before prune.basis)",
          read_together=_READ_TOGETHER + ("finetune_epochs", "finetune_recipe")),
)


# --------------------------------------------------------------------------------------------- probe

def _relative(stds: Dict[str, float], dense: Dict[str, float]) -> List[float]:
    return [stds[name] / dense[name] if dense[name] else math.nan for name in dense]


class PruneProbe:
    """Dense, pruned and masked-fine-tuned test accuracy at each rate and BatchNorm protocol (Tables 1-2)."""

    name = "prune"
    # 2: BatchNorm protocols (``bn``), kept fractions and relative output stds per layer
    # 3: bases (``basis``): rates over all or live weights, live sparsity, dead weights kept, critical live sparsity
    version = 3
    scope = "run"
    min_runs = 1
    Config = PruneConfig
    claims = PRUNE_CLAIMS

    def run(self, run, config: PruneConfig, ctx):
        """Dense accuracy; at each basis and rate, one-shot pruned and fine-tuned accuracy under each protocol."""
        from rf_bench.probes.base import ProbeOutput, evaluate

        model = run.create_model("final")
        test = run.load_data("test", ctx.data_dir)
        _, dense = evaluate(model, test, ctx.device, config.eval_batch_size)
        subset, _ = training_subset(run.load_data("train", ctx.data_dir), max(config.bn_images, config.signal_images),
                                    config.bn_seed, ctx.device)
        calibration, signal_batch = subset[:config.bn_images], subset[:config.signal_images]
        dense_stds = layer_output_stds(model, signal_batch)
        input_size = tuple(test.images.shape[1:])
        layers = [name for name, _ in prunable_parameters(model)]
        live = {name: mask for name, mask in live_weights(model, input_size).items() if name in layers}

        def accuracy_and_signal(net):
            _, acc = evaluate(net, test, ctx.device, config.eval_batch_size)
            return acc, _relative(layer_output_stds(net, signal_batch), dense_stds)

        def under_protocols(net, key):
            out = {}
            for bn in config.bn:
                ready = net if bn == "stored" else recalibrate_batchnorm(copy.deepcopy(net), calibration)
                acc, signal = accuracy_and_signal(ready)
                out[bn] = {key: acc, ("signal" if key == "pruned_acc" else "finetuned_signal"): signal}
            return out

        def measure(masks, basis, rate):
            pruned_model = copy.deepcopy(model)
            apply_masks(pruned_model, masks)
            row = dict(pruned_sparsity=sparsity(pruned_model, masks)["zero_fraction"],
                       kept=list(kept_fractions(masks).values()), bn=under_protocols(pruned_model, "pruned_acc"))
            if basis in config.finetune_bases and self._fine_tunes(config, rate):
                tuned, ft_dir, check = self._finetune(run, config, ctx, pruned_model, masks, rate, basis)
                for bn, result in under_protocols(tuned, "finetuned_acc").items():
                    row["bn"][bn].update(result)
                row.update(finetuned_sparsity=check["zero_fraction"], finetune_run=ft_dir.name,
                           finetune_weight_change=relative_weight_change(pruned_model, tuned))
            return row

        rows = _rows_per_basis(model, config, live, measure)
        values = dict(dense_acc=dense, k=run.k, family=run.family, rates=rows, num_classes=len(test.classes),
                      bn=list(config.bn), basis=list(config.basis), layers=layers,
                      layer_sizes=[p.numel() for _, p in prunable_parameters(model)],
                      layer_live=[int(live[name].sum()) for name in layers], input_size=list(input_size),
                      rf=_analytic_rf(model, input_size),
                      dense_signal_std=list(dense_stds.values()))
        values["critical"] = {basis: {bn: critical_sparsity(values, basis, bn) for bn in config.bn}
                              for basis in config.basis}
        return ProbeOutput(values=values)

    @staticmethod
    def _fine_tunes(config: PruneConfig, rate: float) -> bool:
        return config.finetune_epochs > 0 and (config.finetune_rates is None or rate in config.finetune_rates)

    @staticmethod
    def _finetune(run, config: PruneConfig, ctx, pruned_model, masks, rate: float, basis: str = "all"):
        """The masked fine-tune at one rate (a training run of its own under the results): the tuned model, its
        run directory and its sparsity check."""
        from rf_bench.results import load_weights
        from rf_bench.train import resolve_config, train

        cfg = resolve_config(config.finetune_recipe, model=run.model_name, dataset=run.dataset,
                             seed=run.seed, epochs=config.finetune_epochs, augment=run.config["augment"],
                             model_kwargs=run.config["model_kwargs"], prune_rate=rate,
                             train_per_class=run.config.get("train_per_class"),
                             subset_seed=run.config.get("subset_seed"),
                             init_from=str((run.path / FINAL_WEIGHTS).resolve()))
        ft_dir = train(cfg, output=ctx.results_dir / run.run_id / "prune-finetune", data_dir=ctx.data_dir,
                       progress=False, eval_every=0)  # tested below; per-epoch tests would be waste
        tuned = copy.deepcopy(pruned_model)
        load_weights(tuned, ft_dir / FINAL_WEIGHTS)
        check = sparsity(tuned, masks)
        if check["masked_nonzero"]:
            raise RuntimeError(f"fine-tune at rate {rate} revived {check['masked_nonzero']} pruned weights")
        return tuned, ft_dir, check

    @staticmethod
    def report(records, store, out_dir):
        """REPORT.md sections of one group of runs trained alike: per protocol, pruning tables beside the paper's,
        CSV and figures; and the collapse figures."""
        return prune_sections(records, Path(out_dir))

    @staticmethod
    def report_across_variants(records, store, out_dir):
        """The width view: where runs differ in ``width_mult``, accuracy against k with a line per width."""
        return width_sections(records, Path(out_dir))


# -------------------------------------------------------------------------------------------- report

def _weight_change_line(records) -> str:
    """One sentence on how far the fine-tunes moved the weights, per fine-tuned rate ("" where not recorded)."""
    by_rate: Dict[float, List[float]] = {}
    for rec in records:
        for row in rec["values"]["rates"]:
            if row.get("finetune_weight_change") is not None:
                by_rate.setdefault(row["rate"], []).append(row["finetune_weight_change"])
    parts = [f"at {rate:g} by {100 * statistics.fmean(v):.3g}% on average (largest {100 * max(v):.3g}%)"
             for rate, v in sorted(by_rate.items())]
    return (" The fine-tune moved the prunable weights, relative to their norm, " + "; ".join(parts) + "."
            if parts else "")


def _protocols(records) -> List[str]:
    found = {bn for rec in records for bn in record_protocols(rec)}
    return [bn for bn in PRUNE_BN if bn in found]


def _headline_rate(rates: List[float]) -> Optional[float]:
    """The paper's headline rate if measured, else the highest rate up to it (else the lowest)."""
    below = [r for r in rates if r <= HEADLINE_RATE]
    return max(below) if below else (min(rates) if rates else None)


def _accuracies(records, bn: str, rate: float, key: str) -> List[float]:
    values = [row_accuracy(row, bn, key) for r in records for row in r["values"]["rates"] if row["rate"] == rate]
    return [v for v in values if v is not None]


def _causes(records, bn: str, rate: float) -> str:
    """The failure causes of the seeds at chance at ``rate``, counted (``2 signal collapse, 1 neither``)."""
    causes = [failure_cause(row, bn, chance_level(r)) for r in records for row in r["values"]["rates"]
              if row["rate"] == rate]
    named = [c.split(" (")[0] for c in causes if c]
    return ", ".join(f"{named.count(c)} {c}" for c in dict.fromkeys(named)) or "-"


def prune_sections(records: List[Dict[str, Any]], out_dir: Path) -> List[ReportSection]:
    """Tables 1-2 of the paper per (architecture, data set), basis and BatchNorm protocol, accuracy-vs-rate plots,
    accuracy against live sparsity with the critical live sparsity, and the layer and signal collapse at the
    headline rate."""
    sections, csv_rows, live_rows = [], [], []
    for (family, dataset), recs in by_family(records).items():
        for basis in _bases(recs):
            view = _basis_view(recs, basis)
            sections += _basis_sections(family, dataset, view, basis, out_dir, csv_rows)
        live = _live_section(family, dataset, recs, out_dir, live_rows)
        if live:
            sections.append(live)
        collapse = _collapse_section(family, dataset, _basis_view(recs, "all"),
                                     sorted({row["rate"] for rec in recs for row in rows_of(rec, "all")}), out_dir)
        if collapse:
            sections.append(collapse)
    write_csv(out_dir / "prune.csv", csv_rows)
    write_csv(out_dir / "prune_live.csv", live_rows)
    return sections


def _bases(records) -> List[str]:
    found = {basis for rec in records for basis in record_bases(rec)}
    return [basis for basis in PRUNE_BASES if basis in found]


def _basis_view(records, basis: str):
    """The records with only one basis's rate rows: every table and figure helper reads one basis at a time. A basis
    that is not fine-tuned shows no fine-tuned accuracy, even where its mask equals a fine-tuned one's."""
    view = []
    for rec in records:
        tuned = basis in (rec.get("config") or {}).get("finetune_bases", ["all"])
        rows = rows_of(rec, basis) if tuned else [_one_shot(row) for row in rows_of(rec, basis)]
        view.append(dict(rec, values=dict(rec["values"], rates=rows)))
    return view


def _one_shot(row: Dict[str, Any]) -> Dict[str, Any]:
    """A rate's row without what a fine-tune measured."""
    kept = {k: v for k, v in row.items() if not k.startswith("finetune")}
    if "bn" in row:
        kept["bn"] = {bn: {k: v for k, v in m.items() if not k.startswith("finetuned")} for bn, m in row["bn"].items()}
    return kept


_BASIS_WORDS = {"all": "", "live": (" Rates count only the live weights, those that see the image at the run's input "
                                    "size; every dead weight (one that only multiplies zero padding) is removed too.")}


def _basis_sections(family, dataset, recs, basis: str, out_dir: Path, csv_rows) -> List[ReportSection]:
    """One basis's tables and figures, one per BatchNorm protocol; their rows appended to ``csv_rows``."""
    sections = []
    rates = sorted({row["rate"] for rec in recs for row in rec["values"]["rates"]})
    for bn in _protocols(recs):
        start = len(csv_rows)
        lines, curves = _prune_table(family, dataset, recs, rates, bn, csv_rows)
        for row in csv_rows[start:]:
            row["basis"] = basis
        suffix = ("" if bn == "stored" else f"_{bn}") + ("" if basis == "all" else f"_{basis}")
        figure = out_dir / f"prune_{family}_{dataset}{suffix}.png"
        counted = "" if basis == "all" else ", rates over live weights"
        _plot_prune(curves, f"{family}{{k}} on {dataset}, BN {bn}{counted}", figure)
        why = (f" The last column names, for seeds at chance after one-shot pruning at {_headline_rate(rates):g}, "
               f"why: a layer with nothing kept (layer collapse), a layer whose output std fell under "
               f"{SIGNAL_COLLAPSE:g} of the dense net's (signal collapse), or neither."
               if "why" in lines[0] else "")
        md = (f"Test accuracy (%) of the dense net, after one-shot global magnitude pruning, and after a masked "
              f"fine-tune, with {_BN_WORDS[bn]}; mean ± std over seeds.{_BASIS_WORDS[basis]}{why}"
              f"{_weight_change_line(recs)}\n\n" + "\n".join(lines)
              + f"\n\n![{family} {dataset} BN {bn}{counted}]({figure.name})\n")
        sections.append(ReportSection(title=f"Pruning: {family} on {dataset} (BN {bn}{counted})", markdown=md,
                                      order=10 + PRUNE_BN.index(bn)))  # the paper's protocol first
    return sections


def _live_section(family, dataset, recs, out_dir: Path, csv_rows) -> Optional[ReportSection]:
    """One-shot accuracy against live sparsity (a panel per basis and protocol, a line per k), the dead share of each
    k's weights, how many of the weights pruned at the headline rate were dead, and the critical live sparsity;
    None for results from before live weights were recorded."""
    with_live = [r for r in recs if r["values"].get("layer_live")]
    if not with_live:
        return None
    panels = [(basis, bn) for basis in _bases(with_live) for bn in _protocols(with_live)]
    curves: Dict[Tuple[str, str], Dict[int, List[Tuple[float, float]]]] = {}
    rows = []
    for k, krecs in by_k(with_live).items():
        for panel in panels:
            points: Dict[float, List[Tuple[float, float]]] = {}
            for rec in krecs:
                for row in rows_of(rec, panel[0]):
                    acc = row_accuracy(row, panel[1], "pruned_acc")
                    if acc is not None and "live_sparsity" in row:
                        points.setdefault(row["rate"], []).append((row["live_sparsity"], acc))
            curves.setdefault(panel, {})[k] = [(0.0, statistics.fmean(r["values"]["dense_acc"] for r in krecs))] + [
                (statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts))
                for _, pts in sorted(points.items())]
        rows.append([str(k), _dead_share_cell(krecs), _dead_pruned_cell(krecs)]
                    + [_critical_cell(krecs, basis, bn) for basis, bn in panels])
        for basis, bn in panels:
            values = _criticals(krecs, basis, bn)
            found = [v for v in values if v is not None]
            m, sd = mean_std(found) if found else (None, None)
            csv_rows.append(dict(family=family, dataset=dataset, k=k, basis=basis, bn=bn, critical_mean=m,
                                 critical_std=sd, n=len(found), never_fell=len(values) - len(found),
                                 dead_share=_dead_share(krecs), dead_of_pruned=_dead_of_pruned(krecs)))
    figure = out_dir / f"prune_live_{family}_{dataset}.png"
    _plot_live(curves, panels, f"{family}{{k}} on {dataset}: one-shot accuracy against live sparsity", figure)
    header = ["k", "dead share of weights", f"of those pruned at {HEADLINE_RATE:g} (all), dead"] + [
        f"critical live sparsity, rate over {basis} weights, BN {bn}" for basis, bn in panels]
    size = "x".join(str(v) for v in with_live[0]["values"].get("input_size", []))
    md = (f"A weight is live if it reads an input pixel (not zero padding) at some output position at the run's input "
          f"size ({size or 'as trained'}); a dead one receives no gradient but weight decay's and changes no output. "
          "Live sparsity is the share of live weights a mask removes. The critical live sparsity is where one-shot "
          "accuracy has fallen halfway from dense to chance, linearly interpolated between the rates measured "
          "(mean ± std over seeds; \"> x\" where some seed never fell that far, x the largest live sparsity "
          "measured).\n\n" + "\n".join(markdown_table(header, rows)) + f"\n\n![{family} live sparsity]({figure.name})\n")
    return ReportSection(title=f"Pruning: weights that never see the image, {family} on {dataset}", markdown=md,
                         order=12)


def _dead_share(krecs) -> float:
    """The mean share of the prunable weights that are dead."""
    return statistics.fmean(1 - sum(r["values"]["layer_live"]) / sum(r["values"]["layer_sizes"]) for r in krecs)


def _dead_share_cell(krecs) -> str:
    return f"{100 * _dead_share(krecs):.1f}%"


def _dead_of_pruned(krecs) -> Optional[float]:
    """The mean share of the weights pruned at the headline rate (rate over all weights) that were dead."""
    shares = []
    for rec in krecs:
        values = rec["values"]
        dead = sum(values["layer_sizes"]) - sum(values["layer_live"])
        for row in rows_of(rec, "all"):
            if row["rate"] == HEADLINE_RATE and row.get("dead_kept") is not None:
                pruned = row["rate"] * sum(values["layer_sizes"])
                shares.append(dead * (1 - row["dead_kept"]) / pruned)
            elif row["rate"] == HEADLINE_RATE and "dead_kept" in row:  # no dead weight at all
                shares.append(0.0)
    return statistics.fmean(shares) if shares else None


def _dead_pruned_cell(krecs) -> str:
    share = _dead_of_pruned(krecs)
    return "-" if share is None else f"{100 * share:.1f}%"


def _criticals(krecs, basis: str, bn: str) -> List[Optional[float]]:
    """Each record's critical live sparsity under ``basis`` and ``bn`` (None: never fell halfway, or not recorded)."""
    return [(r["values"].get("critical") or {}).get(basis, {}).get(bn) for r in krecs]


def _critical_cell(krecs, basis: str, bn: str) -> str:
    values = _criticals(krecs, basis, bn)
    if any(v is None for v in values):
        largest = max((row["live_sparsity"] for r in krecs for row in rows_of(r, basis) if "live_sparsity" in row),
                      default=None)
        return f"> {100 * largest:.1f}%" if largest is not None else "-"
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if std is not None else "")


def _accuracy_panels(n: int, cols: int, size: Tuple[float, float]):
    """A figure of ``n`` panels sharing an accuracy axis, ``cols`` to a row: the pyplot module, the figure and its
    panels in reading order; `_finish_panels` labels and saves it."""
    plt = pyplot()
    cols = min(cols, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(size[0] * cols, size[1] * nrows), squeeze=False, sharey=True,
                             layout="constrained")
    return plt, fig, axes, [ax for row in axes for ax in row]


def _finish_panels(plt, fig, axes, flat, used: int, title: str, path: Path) -> None:
    """The unused panels hidden, the accuracy label on each row, the title; saved to ``path``."""
    for ax in flat[used:]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel("test accuracy (%)")
    fig.suptitle(title, fontsize=10)
    savefig(fig, path)
    plt.close(fig)


def _plot_live(curves, panels, title: str, path: Path) -> None:
    plt, fig, axes, flat = _accuracy_panels(len(panels), 2, (4.4, 3.4))
    for ax, panel in zip(flat, panels):
        by_k_curve = curves.get(panel, {})
        for color, (k, points) in zip(line_colors(len(by_k_curve)), sorted(by_k_curve.items())):
            ax.plot([100 * x for x, _ in points], [100 * y for _, y in points], "o-", ms=3, color=color, label=f"k={k}")
        basis, bn = panel
        ax.set_title(f"rate over {basis} weights, BN {bn}", fontsize=9)
        ax.set_xlabel("live sparsity (% of live weights removed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _finish_panels(plt, fig, axes, flat, len(panels), title, path)


def _prune_table(family, dataset, recs, rates, bn, csv_rows):
    """One protocol's table lines and curves; its rows appended to ``csv_rows``."""
    paper_beside = bn == "stored"  # the paper evaluated with the dense net's statistics
    tuned_rates = [rate for rate in rates if _accuracies(recs, bn, rate, "finetuned_acc")]  # a column where measured
    header = ["k", "RF (analytic)", "RF (paper)", "seeds", "dense"]
    for rate in rates:
        header += [f"pruned {rate:g}"] + ([f"fine-tuned {rate:g}"] if rate in tuned_rates else [])
    header += ["paper dense", "paper pruned 0.9"] if paper_beside else []
    headline = _headline_rate(rates)
    diagnosed = any(row.get("kept") for r in recs for row in r["values"]["rates"])  # not in results before prune.bn
    header += [f"at chance at {headline:g}: why"] if diagnosed else []
    rows, curves = [], {}
    for k, krecs in by_k(recs).items():
        rf = record_rf(krecs[0])
        paper_rf = MEASURED_RF.get(family, {}).get(k)
        dense = [r["values"]["dense_acc"] for r in krecs]
        cells = [str(k), str(rf or "-"), str(paper_rf or "-"), str(len(krecs)), fmt_pct(dense)]
        base = dict(family=family, dataset=dataset, bn=bn, k=k, rf_analytic=rf, rf_paper=paper_rf)
        pruned_curve, tuned_curve = [], []
        for rate in rates:
            pruned, tuned = _accuracies(krecs, bn, rate, "pruned_acc"), _accuracies(krecs, bn, rate, "finetuned_acc")
            cells += [fmt_pct(pruned)] + ([fmt_pct(tuned)] if rate in tuned_rates else [])
            pruned_curve.append(statistics.fmean(pruned) if pruned else math.nan)
            tuned_curve.append(statistics.fmean(tuned) if tuned else math.nan)
            for metric, vals in (("pruned", pruned), ("finetuned", tuned)):
                if vals:
                    m, s = mean_std(vals)
                    csv_rows.append(dict(base, rate=rate, metric=metric, mean=m, std=s, n=len(vals)))
        m, s = mean_std(dense)
        csv_rows.append(dict(base, rate=0.0, metric="dense", mean=m, std=s, n=len(dense)))
        if paper_beside:
            paper = PRUNE_09.get((family, dataset), {}).get(k)
            cells += [paper_cell(paper[0] if paper else None), paper_cell(paper[1] if paper else None)]
        cells += [_causes(krecs, bn, headline)] if diagnosed else []
        rows.append(cells)
        curves[(k, rf)] = ([0.0] + rates, [statistics.fmean(dense)] + pruned_curve,
                           [statistics.fmean(dense)] + tuned_curve)
    return markdown_table(header, rows), curves


def _plot_prune(curves, title: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for color, ((k, rf), (rates, pruned, tuned)) in zip(line_colors(len(curves)), sorted(curves.items())):
        ax.plot(rates, [100 * v for v in pruned], "o-", color=color, label=f"k={k}, RF {rf} (pruned)")
        if not all(math.isnan(v) for v in tuned[1:]):  # a legend entry only for curves that were measured
            ax.plot(rates, [100 * v for v in tuned], "s--", color=color, label=f"k={k} (fine-tuned)")
    ax.set_xlabel("pruning rate")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    savefig(fig, path)
    plt.close(fig)


def _collapse_section(family, dataset, recs, rates, out_dir: Path) -> Optional[ReportSection]:
    """Kept fraction and relative output std against depth at the headline rate, one line per k (mean over seeds);
    None for results stored before they were recorded."""
    rate = _headline_rate(rates)
    with_layers = [r for r in recs if r["values"].get("layers")]
    if rate is None or not with_layers:
        return None
    protocols = _protocols(with_layers)
    panels = [("kept", None)] + [("signal", bn) for bn in protocols]
    curves: Dict[Tuple[str, Optional[str]], Dict[int, List[float]]] = {}
    for k, krecs in by_k(with_layers).items():
        rows = [row for r in krecs for row in r["values"]["rates"] if row["rate"] == rate]
        curves.setdefault(("kept", None), {})[k] = _mean_curve([row["kept"] for row in rows])
        for bn in protocols:
            signals = [row["bn"][bn]["signal"] for row in rows if bn in row.get("bn", {})]
            curves.setdefault(("signal", bn), {})[k] = _mean_curve(signals)
    figure = out_dir / f"prune_collapse_{family}_{dataset}.png"
    _plot_collapse(curves, panels, f"{family}{{k}} on {dataset}, one-shot at {rate:g}", figure)
    smallest = {k: min(v) for k, v in curves[("kept", None)].items()}
    md = (f"Why pruned nets fail, at rate {rate:g}: each prunable layer's kept share of weights (a layer at 0 has "
          f"collapsed) and its output standard deviation relative to the dense net's on {with_layers[0]['config'].get('signal_images', '-')} "
          f"training images, per BatchNorm protocol (below {SIGNAL_COLLAPSE:g}: signal collapse), against depth; "
          "mean over seeds. Smallest kept share per k: "
          + ", ".join(f"k={k}: {100 * v:.2f}%" for k, v in smallest.items()) + f".\n\n![{family} collapse]({figure.name})\n")
    return ReportSection(title=f"Pruning: layer and signal collapse, {family} on {dataset}", markdown=md, order=12)


def _mean_curve(curves: List[List[float]]) -> List[float]:
    return [statistics.fmean(values) for values in zip(*curves)] if curves else []


def _plot_collapse(curves, panels, title: str, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        by_k_curve = curves.get(panel, {})
        for color, (k, curve) in zip(line_colors(len(by_k_curve)), sorted(by_k_curve.items())):
            ax.plot(range(1, len(curve) + 1), curve, "o-", ms=2.5, color=color, label=f"k={k}")
        kind, bn = panel
        if kind == "signal":
            ax.axhline(SIGNAL_COLLAPSE, color="#7F7F7F", ls="--", lw=1)
            ax.set_yscale("log")
        else:  # a collapsed layer keeps 0: symlog shows it where a log axis would drop it
            ax.set_yscale("symlog", linthresh=1e-3)
        integer_ticks(ax.xaxis)
        ax.set_title("kept share of weights" if kind == "kept" else f"output std / dense, BN {bn}", fontsize=9)
        ax.set_xlabel("prunable layer (input to output)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    savefig(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- width

def _width(record: Dict[str, Any]) -> Optional[float]:
    from rf_bench.results import record_variant

    width = record_variant(record).get("width_mult")
    return None if width is None else float(width)


def width_sections(records: List[Dict[str, Any]], out_dir: Path) -> List[ReportSection]:
    """Does the RF effect need wide nets? Per (family, data set) with runs at several widths and per BatchNorm
    protocol: accuracy kept after one-shot pruning at each rate against k, one line per width, beside the paper's
    CIFAR10 full-width values; and dense accuracy against k. Each width's runs are its own (never pooled)."""
    import json

    from rf_bench.reporting import group_by
    from rf_bench.results import record_family, record_k, record_variant

    def rest(record):  # everything else that sets runs apart stays apart: one figure per such group
        return json.dumps({k: v for k, v in record_variant(record).items() if k != "width_mult"}, sort_keys=True,
                          default=str)

    sections, csv_rows = [], []
    groups = group_by((r for r in records if _width(r) is not None and record_k(r) is not None),
                      lambda r: (record_family(r), r["dataset"], rest(r)))
    several = len({key[:2] for key in groups}) < len(groups)
    for index, ((family, dataset, other), recs) in enumerate(groups.items()):
        widths = sorted({_width(r) for r in recs})
        if len(widths) < 2:
            continue
        for bn in _protocols(recs):
            stem = f"width_{family}_{dataset}" + (f"_{index}" if several else "") + ("" if bn == "stored" else f"_{bn}")
            md = _width_view(family, dataset, recs, widths, bn, out_dir / f"{stem}.png", csv_rows)
            title = f"Width: {family} on {dataset} (BN {bn})" + (f" [{other}]" if several else "")
            sections.append(ReportSection(title=title, markdown=md, order=9))
    write_csv(out_dir / "width.csv", csv_rows)
    return sections


def _width_view(family, dataset, recs, widths, bn, figure: Path, csv_rows) -> str:
    from rf_bench.results import record_k

    rates = sorted({row["rate"] for r in recs for row in rows_of(r, "all")})  # the paper's basis
    curves: Dict[Tuple[float, Any], Dict[int, List[float]]] = {}  # (width, rate or "dense") -> {k: [accuracies]}
    for r in recs:
        k, width = record_k(r), _width(r)
        curves.setdefault((width, "dense"), {}).setdefault(k, []).append(r["values"]["dense_acc"])
        for row in rows_of(r, "all"):
            acc = row_accuracy(row, bn, "pruned_acc")
            if acc is not None:
                curves.setdefault((width, row["rate"]), {}).setdefault(k, []).append(acc)
    ks = sorted({record_k(r) for r in recs})
    rows = []
    for width in widths:
        for rate in ["dense"] + rates:
            per_k = curves.get((width, rate), {})
            label = "dense" if rate == "dense" else f"pruned {rate:g}, one-shot"
            rows.append([f"{width:g}", label] + [fmt_pct(per_k.get(k, [])) for k in ks])
            for k, values in sorted(per_k.items()):
                m, s = mean_std(values)
                csv_rows.append(dict(family=family, dataset=dataset, bn=bn, width_mult=width, k=k,
                                     rate=0.0 if rate == "dense" else rate,
                                     metric="dense" if rate == "dense" else "pruned", mean=m, std=s, n=len(values)))
    _plot_widths(curves, widths, rates, ks, PRUNE_09.get((family, "cifar10"), {}) if bn == "stored" else {},
                 f"{family} on {dataset}, BN {bn}: accuracy against k, per width", figure)
    reference = (" The dashed grey line is the paper's CIFAR10 result at full width (another data set, for "
                 "reference; the paper used the stored statistics).") if bn == "stored" else ""
    lines = markdown_table(["width", "accuracy"] + [f"k={k}" for k in ks], rows)
    return (f"Test accuracy (%) at each width (`width_mult`), mean ± std over seeds: dense, and after one-shot global "
            f"magnitude pruning at each rate, with {_BN_WORDS[bn]}.{reference}\n\n" + "\n".join(lines)
            + f"\n\n![{family} widths, BN {bn}]({figure.name})\n")


def _plot_widths(curves, widths, rates, ks, paper, title: str, path: Path) -> None:
    """One panel per rate (dense first), three to a row: accuracy against k, a line per width, the paper's CIFAR10
    beside it."""
    panels = ["dense"] + rates
    plt, fig, axes, flat = _accuracy_panels(len(panels), 3, (3.4, 3.0))
    for ax, rate in zip(flat, panels):
        for color, width in zip(line_colors(len(widths)), widths):
            per_k = curves.get((width, rate), {})
            xs = [k for k in ks if k in per_k]
            ax.plot(xs, [100 * statistics.fmean(per_k[k]) for k in xs], "o-", color=color, label=f"width {width:g}")
        reference = {k: entry[0 if rate == "dense" else 1][0] for k, entry in paper.items()}
        if reference and rate in ("dense", HEADLINE_RATE):
            ax.plot(sorted(reference), [reference[k] for k in sorted(reference)], "s--", color="#7F7F7F",
                    label="paper, CIFAR10, full width")
        ax.set_title("dense" if rate == "dense" else f"pruned {rate:g}, one-shot", fontsize=9)
        ax.set_xlabel("k")
        integer_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
    flat[0].legend(fontsize=7)
    _finish_panels(plt, fig, axes, flat, len(panels), title, path)
