"""The prune probe: one-shot global magnitude pruning (``rf_bench.pruning``), then a masked fine-tune.

The masks live in :mod:`rf_bench.pruning`, below both this probe and the trainer; their names are
re-exported here so ``from rf_bench.probes.prune import global_magnitude_masks`` keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

from rf_bench.claims import Claim, at_chance, chance_level
from rf_bench.pruning import apply_masks, global_magnitude_masks, prunable_parameters, sparsity

__all__ = ["prunable_parameters", "global_magnitude_masks", "apply_masks", "sparsity", "PruneConfig", "PruneProbe"]


@dataclass
class PruneConfig:
    """Settings of the prune probe (``--set prune.<name>=<value>``).

    Attributes:
        rates: shares of the weights removed by one-shot global magnitude pruning (the paper: 0.5-0.9).
        finetune_epochs: epochs of masked fine-tuning after pruning at each rate (0: one-shot only; the paper: 10).
        finetune_recipe: the recipe the fine-tune trains with ("finetune": lr 1e-4, as in the paper).
        eval_batch_size: test images per forward pass.
        finetune_rates: the rates that are fine-tuned (default: every rate); the others stay one-shot.
    """

    rates: Tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    finetune_epochs: int = 10
    finetune_recipe: str = "finetune"  # lr 1e-4, weight decay 5e-4, momentum 0.9, clip 0.1 (PAPER.md)
    eval_batch_size: int = 500
    finetune_rates: Optional[Tuple[float, ...]] = None
    # added later: left out of the stored config (and its hash) at their default, so earlier results stay found
    LATER_FIELDS: ClassVar[Tuple[str, ...]] = ("finetune_rates",)


def _dense_accuracy(record):
    return {"dense test accuracy": [record["values"]["dense_acc"]]}


_STAGES = (("one-shot", "pruned_acc"), ("fine-tuned", "finetuned_acc"))


def _drop_metric(rate: float, stage: str, share: bool = False) -> str:
    return f"{'share of ' if share else ''}accuracy lost at {rate:g}, {stage}"


def _accuracy_lost(record):
    """Dense minus pruned (and fine-tuned) accuracy at every rate, in points and as a share of the dense accuracy
    (a net with less accuracy has less to lose: the share tells robustness from that); empty without a fine-tune."""
    values = record["values"]
    dense = values["dense_acc"]
    lost = {}
    for row in values["rates"]:
        for stage, key in _STAGES:
            acc = row.get(key)
            lost[_drop_metric(row["rate"], stage)] = [dense - acc] if acc is not None else []
            lost[_drop_metric(row["rate"], stage, share=True)] = [(dense - acc) / dense] if acc is not None and dense else []
    return lost


def _accuracies_behind(metric: str, records):
    """By k, the accuracies a metric is computed from: dense, or pruned / fine-tuned at its rate."""
    by_k = {}
    for rec in records:
        values = rec["values"]
        accs = [values["dense_acc"]] if metric == "dense test accuracy" else [
            row[key] for row in values["rates"] for stage, key in _STAGES
            if key in row and metric in (_drop_metric(row["rate"], stage), _drop_metric(row["rate"], stage, True))]
        by_k.setdefault(values["k"], []).extend(accs)
    return by_k


def _at_chance(metric: str, records):
    """Accuracies at chance for every k cannot rank the k's (and make drops track dense accuracy)."""
    chance = chance_level(records[0])
    dense = _accuracies_behind("dense test accuracy", records)
    if at_chance(dense, chance):
        return "dense accuracy at chance for every k"
    if metric != "dense test accuracy" and at_chance(_accuracies_behind(metric, records), chance):
        return f"{'fine-tuned' if 'fine-tuned' in metric else 'pruned'} accuracy at chance for every k"
    return None


PRUNE_CLAIMS = (
    Claim("dense_accuracy", "dense test accuracy falls as the RF grows (Table 1)", "falls", "prune",
          _dense_accuracy, caveat=_at_chance, order=1, unit="%",
          read_together=("rates", "eval_batch_size", "finetune_epochs", "finetune_recipe", "finetune_rates")),
    Claim("prune_robustness", "the accuracy lost to one-shot pruning shrinks as the RF grows, before and after "
          "the masked fine-tune, in points and as a share of the dense accuracy (Tables 1-2)", "falls", "prune", _accuracy_lost, caveat=_at_chance,
          missing="no fine-tune in these results (prune.finetune_epochs = 0)", order=2, unit="%",
          read_together=("rates", "eval_batch_size", "finetune_rates")),  # each rate and stage is its own metric
)


class PruneProbe:
    """Dense, pruned and masked-fine-tuned test accuracy at each rate (Tables 1-2 of the paper)."""

    name = "prune"
    version = 1
    scope = "run"
    min_runs = 1
    Config = PruneConfig
    claims = PRUNE_CLAIMS

    def run(self, run, config: PruneConfig, ctx):
        """Dense, one-shot pruned and fine-tuned test accuracy at each rate."""
        import copy

        from rf_bench.probes.base import ProbeOutput, evaluate
        from rf_bench.results import load_weights
        from rf_bench.train import resolve_config, train

        model = run.create_model("final")
        test = run.load_data("test", ctx.data_dir)
        _, dense = evaluate(model, test, ctx.device, config.eval_batch_size)
        masks = global_magnitude_masks(model, config.rates)
        rows = []
        for rate in config.rates:
            pruned_model = copy.deepcopy(model)
            apply_masks(pruned_model, masks[rate])
            _, pruned = evaluate(pruned_model, test, ctx.device, config.eval_batch_size)
            row = dict(rate=rate, pruned_acc=pruned, drop=dense - pruned,
                       pruned_sparsity=sparsity(pruned_model, masks[rate])["zero_fraction"])
            if config.finetune_epochs > 0 and (config.finetune_rates is None or rate in config.finetune_rates):
                cfg = resolve_config(config.finetune_recipe, model=run.model_name, dataset=run.dataset,
                                     seed=run.seed, epochs=config.finetune_epochs, augment=run.config["augment"],
                                     model_kwargs=run.config["model_kwargs"], prune_rate=rate,
                                     train_per_class=run.config.get("train_per_class"),
                                     subset_seed=run.config.get("subset_seed"),
                                     init_from=str((run.path / "model.safetensors").resolve()))
                ft_dir = train(cfg, output=ctx.results_dir / run.run_id / "prune-finetune", data_dir=ctx.data_dir,
                               progress=False, eval_every=0)  # tested below; per-epoch tests would be waste
                tuned = copy.deepcopy(pruned_model)
                load_weights(tuned, ft_dir / "model.safetensors")
                check = sparsity(tuned, masks[rate])
                if check["masked_nonzero"]:
                    raise RuntimeError(f"fine-tune at rate {rate} revived {check['masked_nonzero']} pruned weights")
                _, tuned_acc = evaluate(tuned, test, ctx.device, config.eval_batch_size)
                row.update(finetuned_acc=tuned_acc, finetuned_sparsity=check["zero_fraction"],
                           finetune_run=ft_dir.name)
            rows.append(row)
        return ProbeOutput(values=dict(dense_acc=dense, k=run.k, family=run.family, rates=rows,
                                       num_classes=len(test.classes)))

    @staticmethod
    def report(records, store, out_dir):
        """REPORT.md sections: pruning tables beside the paper's, CSV and figures."""
        from rf_bench.report import prune_sections

        return prune_sections(records, out_dir)
