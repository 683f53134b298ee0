"""Claims: statistics against scipy and an independent permutation count, verdicts on results built to a
known truth, claims declared by a third-party probe, and the CLI / report surface."""
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from rf_bench.claims import (Claim, claims_markdown, collect_claims, evaluate_claims, evaluate_metric,
                             permutation_p_value, spearman_rho, welch_interval)
from rf_bench.results import ResultStore
from rf_bench.probes.base import available_probes

from conftest import HANG_S

KS = (1, 2, 3, 4)

BUILTIN_CLAIMS = collect_claims(available_probes())


def _independent_p(x, y):
    """Two-sided permutation p: every distinct arrangement of the labels, rho from scipy."""
    observed = abs(stats.spearmanr(x, y).statistic)
    arrangements = set(itertools.permutations(x))
    hits = sum(abs(stats.spearmanr(a, y).statistic) >= observed - 1e-12 for a in arrangements)
    return hits / len(arrangements)


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = np.repeat(KS, 3)
    y = np.round(rng.normal(size=x.size) - 0.3 * x, 1)  # rounding makes ties on both sides
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_of_a_constant_is_nan():
    assert math.isnan(spearman_rho([1, 2, 3], [5, 5, 5]))


@pytest.mark.parametrize("seed", range(3))
def test_exact_p_matches_an_independent_count(seed):
    rng = np.random.default_rng(seed)
    x = np.repeat(KS, 2)  # 8 points: exact
    y = rng.normal(size=8) - 0.5 * x
    p, method = permutation_p_value(x, y)
    assert method == "exact"
    assert p == pytest.approx(_independent_p(x, y), abs=1e-12)


def test_monte_carlo_p_agrees_with_the_exact_count():
    rng = np.random.default_rng(7)
    x = np.repeat((1, 2, 3), 3)  # 9 points: Monte Carlo
    y = rng.normal(size=9) - 0.4 * x
    p, method = permutation_p_value(x, y, resamples=20_000)
    assert "permutations" in method
    exact = _independent_p(x, y)
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-4


def test_welch_interval_matches_scipy():
    a, b = [0.90, 0.92, 0.91, 0.93], [0.80, 0.84, 0.79]
    lo, hi = welch_interval(a, b)
    res = stats.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert welch_interval([1.0], b) is None


# ------------------------------------------------------------------------- results of known truth

def _prune_record(family, k, seed, dense, pruned, finetuned=None, run_dir="/nonexistent"):
    row = dict(rate=0.9, pruned_acc=pruned, drop=dense - pruned)
    if finetuned is not None:
        row["finetuned_acc"] = finetuned
    return dict(probe="prune", version=1, dataset="digits", run_dirs=[run_dir], seeds=[seed],
                values=dict(k=k, family=family, dense_acc=dense, rates=[row], num_classes=10))


def _store(tmp_path, records):
    store = ResultStore(tmp_path / "results")
    for i, rec in enumerate(records):
        store.write(store.path(f"run{i}", rec["probe"], "h"), rec)
    return tmp_path / "results"


def _verdicts(results, claim_id, metric=None):
    return [v for v in evaluate_claims(results, BUILTIN_CLAIMS) if v.claim == claim_id and (metric is None or v.metric == metric)]


def _dense_grid(family, accuracy, seeds=5):
    """accuracy(k, seed) -> prune records; pruned accuracy is well above chance everywhere."""
    return [_prune_record(family, k, s, accuracy(k, s), 0.6) for k in KS for s in range(seeds)]


def test_verdicts_follow_the_truth(tmp_path):
    noise = np.random.default_rng(0).normal(scale=0.01, size=(5, 5))
    records = (_dense_grid("vgg19_rfpool", lambda k, s: 0.95 - 0.05 * k + noise[k, s])  # falls: the paper's
               + _dense_grid("resnet50_rfpool", lambda k, s: 0.70 + 0.05 * k + noise[k, s]))  # rises: the opposite
    results = _store(tmp_path, records)
    by_family = {v.family: v for v in _verdicts(results, "dense_accuracy")}
    assert by_family["vgg19_rfpool"].verdict == "supported"
    assert by_family["resnet50_rfpool"].verdict == "contradicted"
    for v in by_family.values():
        assert v.n == 20 and v.counts == {k: 5 for k in KS}
        x = [k for k in KS for _ in range(5)]
        y = [r["values"]["dense_acc"] for r in records if r["values"]["family"] == v.family]
        assert v.rho == pytest.approx(stats.spearmanr(x, y).statistic)
        assert v.p_value < 0.05
        assert v.means[1] == pytest.approx(np.mean(y[:5]))
    effect = by_family["vgg19_rfpool"]
    assert effect.effect == pytest.approx(effect.means[4] - effect.means[1])
    assert effect.effect_ci[0] < effect.effect < effect.effect_ci[1] < 0


def test_flat_results_and_too_few_seeds_are_inconclusive(tmp_path):
    rng = np.random.default_rng(1)
    flat = [_prune_record("vgg19_rfpool", k, s, 0.8 + rng.normal(scale=0.02), 0.6) for k in KS for s in range(5)]
    # perfectly monotone, but one seed per k: the smallest two-sided p over 4 points is 2/24
    one_seed = [_prune_record("resnet50_rfpool", k, 0, 0.9 - 0.1 * k, 0.6) for k in KS]
    results = _store(tmp_path, flat + one_seed)
    by_family = {v.family: v for v in _verdicts(results, "dense_accuracy")}
    assert by_family["vgg19_rfpool"].verdict == "inconclusive"
    assert by_family["vgg19_rfpool"].p_value >= 0.05
    few = by_family["resnet50_rfpool"]
    assert few.verdict == "inconclusive" and few.rho == pytest.approx(-1.0)
    assert few.p_value == pytest.approx(2 / 24) and "1 point per k" in few.reason


def test_missing_metrics_are_reported_not_dropped(tmp_path):
    records = _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k, seeds=2)  # no fine-tune, no other probe
    verdicts = evaluate_claims(_store(tmp_path, records), BUILTIN_CLAIMS)
    finetuned = [v for v in verdicts if v.metric == "accuracy lost at 0.9, fine-tuned, BN stored"]
    assert len(finetuned) == 1 and finetuned[0].verdict == "not measured"
    assert "finetune_epochs" in finetuned[0].reason
    for claim in ("hessian_width", "cka_divergence", "rfmap_maxima"):
        (row,) = [v for v in verdicts if v.claim == claim]
        assert row.verdict == "not measured" and row.reason == f"no {row.claim.split('_')[0]} results"


def test_accuracy_at_chance_for_every_k_cannot_decide(tmp_path):
    # pruned accuracy at chance (10 classes) for every k: the drop only tracks the dense accuracy
    records = [_prune_record("vgg19_rfpool", k, s, 0.95 - 0.05 * k, 0.10 + 0.001 * s) for k in KS for s in range(5)]
    results = _store(tmp_path, records)
    (drop,) = _verdicts(results, "prune_robustness", "accuracy lost at 0.9, one-shot, BN stored")
    assert drop.verdict == "inconclusive" and drop.reason.startswith("pruned accuracy at chance for every k")
    assert drop.p_value < 0.05  # the statistics alone would have "supported" it
    (dense,) = _verdicts(results, "dense_accuracy")
    assert dense.verdict == "supported"


def test_the_share_of_accuracy_lost_separates_robustness_from_having_less_to_lose(tmp_path):
    # pruning halves every net's accuracy: fewer points are lost where the dense net is worse, the share is flat
    dense = {k: 0.9 - 0.1 * k for k in KS}
    records = [_prune_record("vgg19_rfpool", k, s, dense[k], dense[k] / 2) for k in KS for s in range(4)]
    results = _store(tmp_path, records)
    (points,) = _verdicts(results, "prune_robustness", "accuracy lost at 0.9, one-shot, BN stored")
    (share,) = _verdicts(results, "prune_robustness", "share of accuracy lost at 0.9, one-shot, BN stored")
    assert points.verdict == "supported" and points.means[1] == pytest.approx(0.4)
    assert share.verdict == "inconclusive" and share.means == pytest.approx({k: 0.5 for k in KS})
    assert share.reason == "the metric is constant over every k"


def test_a_third_party_probe_declares_its_own_claim(tmp_path):
    class Sharpness:
        name = "sharpness"
        claims = (Claim("sharpness_rises", "sharpness rises with the RF", "rises", "sharpness",
                        lambda rec: {"sharpness": [rec["values"]["value"]]}),)

    records = [dict(probe="sharpness", version=1, dataset="digits", run_dirs=[], seeds=[s],
                    values=dict(k=k, family="vgg19_rfpool", value=float(k + 0.1 * s))) for k in KS for s in range(3)]
    results = _store(tmp_path, records)
    claims = collect_claims({"sharpness": Sharpness})
    (verdict,) = evaluate_claims(results, claims)
    assert (verdict.claim, verdict.verdict, verdict.n) == ("sharpness_rises", "supported", 12)
    builtin = {c.id for c in collect_claims(available_probes())}
    assert builtin == {"dense_accuracy", "prune_robustness", "critical_live_sparsity", "hessian_width", "cka_divergence",
                       "rfmap_maxima", "saturation_falls"}


def test_results_of_models_without_a_k_are_left_out(tmp_path):
    records = _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k, seeds=2)
    records.append(_prune_record("resnet18", None, 0, 0.5, 0.4))  # a plain timm model has no rfpool k
    verdicts = evaluate_claims(_store(tmp_path, records), BUILTIN_CLAIMS)
    assert {v.family for v in verdicts} == {"vgg19_rfpool"}
    (dense,) = [v for v in verdicts if v.claim == "dense_accuracy"]
    assert dense.n == 8


def _configured(record, created, rates=(0.9,), finetune_epochs=10, version=1):
    """``record`` (one rate) as probed under these settings at ``created``."""
    config = dict(rates=list(rates), finetune_epochs=finetune_epochs, finetune_recipe="finetune", eval_batch_size=500)
    record["values"]["rates"][0]["rate"] = rates[0]
    return dict(record, config=config, created=created, version=version)


def _store_by_run(tmp_path, records):
    """Each record under its run's key (family, k, seed) and its own config hash, as `rf-bench probe` stores them."""
    store = ResultStore(tmp_path / "results")
    for i, rec in enumerate(records):
        values = rec["values"]
        store.write(store.path(f"{values['family']}-k{values['k']}-s{rec['seeds'][0]}", "prune", f"c{i}"), rec)
    return tmp_path / "results"


def test_a_run_measured_twice_counts_once_with_its_newest_result(tmp_path):
    # the same 12 runs probed twice, with settings that leave the dense accuracy alone (other rates)
    truth = {(k, s): 0.95 - 0.05 * k + 0.01 * s for k in KS for s in range(3)}
    older = [_configured(_prune_record("vgg19_rfpool", k, s, 0.5, 0.4), "2026-01-01T00:00:00", rates=(0.7,))
             for k, s in truth]
    newer = [_configured(_prune_record("vgg19_rfpool", k, s, truth[k, s], 0.6), "2026-02-01T00:00:00")
             for k, s in truth]
    results = _store_by_run(tmp_path, newer + older)  # the older ones sort after the newer ones
    (dense,) = _verdicts(results, "dense_accuracy")
    assert dense.setting == "" and dense.n == 12 and dense.counts == {k: 3 for k in KS}
    assert dense.means == pytest.approx({k: np.mean([truth[k, s] for s in range(3)]) for k in KS})
    # a metric only the older results have still comes from them, once per run
    (lost,) = _verdicts(results, "prune_robustness", "accuracy lost at 0.7, one-shot, BN stored")
    assert lost.n == 12 and lost.means == pytest.approx({k: 0.1 for k in KS})


def test_results_under_different_settings_get_their_own_rows(tmp_path):
    dense = {k: 0.95 - 0.05 * k for k in KS}
    long = [_configured(_prune_record("vgg19_rfpool", k, s, dense[k], 0.5, finetuned=dense[k] - 0.01 * k),
                        "2026-01-01T00:00:00") for k in KS for s in range(3)]
    short = [_configured(_prune_record("vgg19_rfpool", k, s, dense[k], 0.5, finetuned=dense[k] - 0.1),
                         "2026-02-01T00:00:00", finetune_epochs=2) for k in KS for s in range(3)]
    results = _store_by_run(tmp_path, long + short)
    (row,) = _verdicts(results, "dense_accuracy")  # the fine-tune does not touch the dense accuracy
    assert row.setting == "" and row.n == 12
    finetuned = {v.setting: v for v in _verdicts(results, "prune_robustness", "accuracy lost at 0.9, fine-tuned, BN stored")}
    assert set(finetuned) == {"finetune_epochs=10", "finetune_epochs=2"}
    assert all(v.n == 12 for v in finetuned.values())
    assert finetuned["finetune_epochs=10"].means == pytest.approx({k: 0.01 * k for k in KS})
    assert finetuned["finetune_epochs=10"].verdict == "contradicted"
    assert finetuned["finetune_epochs=2"].means == pytest.approx({k: 0.1 for k in KS})
    assert "[finetune_epochs=2]" in claims_markdown(finetuned.values())


def test_results_of_different_probe_versions_are_not_pooled(tmp_path):
    v1 = [_configured(_prune_record("vgg19_rfpool", k, s, 0.9 - 0.05 * k, 0.6), "2026-01-01T00:00:00")
          for k in KS for s in range(2)]
    v2 = [_configured(_prune_record("vgg19_rfpool", k, s, 0.9, 0.6), "2026-02-01T00:00:00", version=2)
          for k in KS for s in range(2, 4)]
    rows = {v.setting: v for v in _verdicts(_store_by_run(tmp_path, v1 + v2), "dense_accuracy")}
    assert set(rows) == {"version=1", "version=2"} and all(v.n == 8 for v in rows.values())
    assert rows["version=1"].rho == pytest.approx(-1.0) and rows["version=2"].means == pytest.approx({k: 0.9 for k in KS})


def test_a_claim_needs_a_direction():
    with pytest.raises(ValueError, match="direction"):
        Claim("x", "x", "grows", "prune", lambda rec: {})


def test_evaluate_metric_with_one_k_says_so():
    claim = collect_claims(available_probes())[0]
    records = [_prune_record("vgg19_rfpool", 2, s, 0.8, 0.6) for s in range(3)]
    verdict = evaluate_metric(claim, "dense test accuracy", "vgg19_rfpool", "digits", records)
    assert verdict.verdict == "inconclusive" and verdict.reason == "only k = 2 measured"


# ------------------------------------------------------------------------------------ CLI, report

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rf_bench.cli", *args], capture_output=True, text=True, timeout=HANG_S)


def test_claims_cli_json_and_report(tmp_path):
    from rf_bench.report import claims_section

    results = _store(tmp_path, _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.001 * s, seeds=3))
    proc = _cli("claims", str(results), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    keys = {"claim", "family", "dataset", "metric", "direction", "means", "n", "rho", "p_value", "verdict", "reason"}
    assert all(keys <= set(row) for row in rows)
    dense = next(r for r in rows if r["claim"] == "dense_accuracy")
    assert dense["verdict"] == "supported" and dense["means"]["1"] == pytest.approx(0.851)
    table = _cli("claims", str(results))
    assert table.returncode == 0 and "dense_accuracy" in table.stdout and "supported" in table.stdout
    section = claims_section(results, BUILTIN_CLAIMS)
    assert section.order == 0 and "| dense_accuracy | vgg19_rfpool | digits |" in section.markdown


def test_the_report_gives_each_setting_its_own_sections_and_files(tmp_path):
    import re

    from rf_bench.report import write_report

    dense = {k: 0.95 - 0.05 * k for k in KS}
    tuned = {10: {k: dense[k] - 0.01 * k for k in KS}, 2: {k: dense[k] - 0.2 for k in KS}}
    records = [_configured(_prune_record("vgg19_rfpool", k, s, dense[k], 0.5, finetuned=tuned[epochs][k]),
                           "2026-01-01T00:00:00", finetune_epochs=epochs)
               for epochs in tuned for k in KS for s in range(2)]
    report = write_report(_store_by_run(tmp_path, records), tmp_path / "report", available_probes()).read_text()
    for epochs, by_k in tuned.items():
        title = f"## Pruning: vgg19_rfpool on digits (BN stored) [finetune_epochs={epochs}]"
        assert report.count(title) == 1
        section = report.split(title)[1].split("\n## ")[0]
        rows = [line.split(" | ") for line in section.splitlines() if re.match(r"\| [1-4] \|", line)]
        assert [row[3] for row in rows] == ["2"] * 4  # each run once: two seeds per k, not four
        assert [row[6] for row in rows] == [f"{100 * by_k[k]:.2f} ± 0.00" for k in KS]  # fine-tuned at 0.9
        (link,) = re.findall(r"!\[[^]]*\]\(([^)]+)\)", section)
        assert (tmp_path / "report" / link).is_file() and link.startswith(f"prune-finetune_epochs={epochs}/")


def test_report_folders_are_named_after_their_group():
    from rf_bench.report import _section_folder

    assert _section_folder("prune", "width_mult=0.25", "0123456789") == "prune-width_mult=0.25"
    assert _section_folder("cka", "width_mult=0.125, estimator=minibatch", "0123456789") == \
        "cka-width_mult=0.125-estimator=minibatch"
    assert _section_folder("prune", "rates=[0.5, 0.9]", "0123456789") == "prune-rates=_0.5-0.9"
    long = _section_folder("hessian", ", ".join(f"setting_{i}=value_{i}" for i in range(8)), "0123456789")
    assert len(long) <= len("hessian-") + 60 and long.endswith("-0123456789")


def test_runs_of_two_recipes_are_labelled_by_the_recipe_alone(tmp_path):
    """Runs trained with `fast` and with `paper` differ in seven settings; the recipe says all of them, so the
    group label is ``recipe=...``, and a setting overridden beyond its recipe is still named."""
    from rf_bench.recipes import RECIPES

    def trained(recipe, **overrides):
        return lambda record: dict(record, train=dict(RECIPES[recipe], recipe=recipe, **overrides))

    grid = _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s)
    records = [trained("fast")(r) for r in grid] + [trained("paper")(r) for r in grid]
    assert {v.variant for v in _verdicts(_store(tmp_path / "two", records), "dense_accuracy")} == \
        {"recipe=fast", "recipe=paper"}
    records = [trained("fast")(r) for r in grid] + [trained("paper", lr=0.1)(r) for r in grid]
    assert {v.variant for v in _verdicts(_store(tmp_path / "lr", records), "dense_accuracy")} == \
        {"lr=0.1, recipe=paper", "lr=0.1, recipe=fast"}


def test_claims_cli_without_results_is_one_line(tmp_path):
    proc = _cli("claims", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "rf-bench probe" in proc.stderr


def _at_width(record, width):
    """``record`` as the harness stores it for a run trained at ``width_mult=width``."""
    return dict(record, train=dict(model_kwargs=dict(width_mult=width), recipe="fast", epochs=3))


def test_widths_are_never_pooled_in_claims_or_the_report(tmp_path):
    from rf_bench.report import write_report

    # the narrow nets lose accuracy with k, the wide ones gain it: pooled, the two would cancel out
    narrow = [_at_width(r, 0.0625) for r in _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s, 3)]
    wide = [_at_width(r, 0.25) for r in _dense_grid("vgg19_rfpool", lambda k, s: 0.6 + 0.05 * k + 0.002 * s, 3)]
    results = _store(tmp_path, narrow + wide)
    rows = {v.variant: v for v in _verdicts(results, "dense_accuracy")}
    assert set(rows) == {"width_mult=0.0625", "width_mult=0.25"}
    assert rows["width_mult=0.0625"].verdict == "supported" and rows["width_mult=0.0625"].n == 12
    assert rows["width_mult=0.25"].verdict == "contradicted" and rows["width_mult=0.25"].n == 12
    report = write_report(results, tmp_path / "report", available_probes()).read_text()
    assert "| dense_accuracy | vgg19_rfpool [width_mult=0.0625] | digits |" in report
    assert "| dense_accuracy | vgg19_rfpool [width_mult=0.25] | digits |" in report
    for width, by_k in ((0.0625, lambda k: 0.9 - 0.05 * k + 0.002), (0.25, lambda k: 0.6 + 0.05 * k + 0.002)):
        section = report.split(f"## Pruning: vgg19_rfpool on digits (BN stored) [width_mult={width}]\n", 1)[1].split("\n## ")[0]
        dense = {int(line.split(" | ")[0][2:]): line.split(" | ")[4] for line in section.splitlines()
                 if line[:3] in ("| 1", "| 2", "| 3", "| 4")}
        assert dense == {k: f"{100 * by_k(k):.2f} ± 0.20" for k in KS}  # each width's own seeds, nothing else


def test_accuracies_are_percent_in_claims_as_in_every_table(tmp_path):
    from rf_bench.report import claims_section

    results = _store(tmp_path, _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.001 * s, seeds=3))
    rows = [line for line in claims_section(results, BUILTIN_CLAIMS).markdown.splitlines()
            if line.startswith("| dense_accuracy")]
    assert len(rows) == 2 and "**supported**" in rows[0]  # the verdict first, the values per k below
    assert "| 85.10% ± 0.10% |" in rows[1]  # k = 1: mean 0.851, std 0.001


def test_the_claims_table_fits_100_columns_when_piped(tmp_path):
    records = (_dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.001 * s, seeds=3)
               + [_at_width(r, 0.25) for r in _dense_grid("resnet50_rfpool", lambda k, s: 0.8 + 0.001 * s, seeds=3)])
    proc = _cli("claims", str(_store(tmp_path, records)))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert "dense_accuracy" in proc.stdout and "vgg19_rfpool" in proc.stdout and "why" in proc.stdout
    assert "85.1%" in proc.stdout and "supported" in proc.stdout and "[width_mult=0.25]" not in proc.stdout


def test_the_width_figure_has_one_line_per_width_and_the_papers_reference(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from rf_bench import report, reporting

    narrow = [_at_width(r, 0.0625) for r in _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s, 3)]
    wide = [_at_width(r, 0.25) for r in _dense_grid("vgg19_rfpool", lambda k, s: 0.6 + 0.05 * k + 0.002 * s, 3)]
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: figures.append(fig))
    plt = reporting.pyplot()
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    text = report.write_report(_store(tmp_path, narrow + wide), tmp_path / "report", available_probes()).read_text()
    section = text.split("## Width: vgg19_rfpool on digits (BN stored)\n", 1)[1].split("\n## ", 1)[0]
    assert "| 0.0625 | dense | 85.20 ± 0.20 | 80.20 ± 0.20 | 75.20 ± 0.20 | 70.20 ± 0.20 |" in section
    assert "| 0.25 | pruned 0.9, one-shot | 60.00 ± 0.00 |" in section
    (fig,) = [f for f in figures if f._suptitle and "per width" in f._suptitle.get_text()]
    dense, pruned = fig.axes[:2]
    labels = [line.get_label() for line in pruned.get_lines()]
    assert labels == ["width 0.0625", "width 0.25", "paper, CIFAR10, full width"]
    assert list(pruned.get_lines()[2].get_ydata()) == [10.9, 32.4, 87.6, 85.8]  # the paper's VGG19, CIFAR10, 0.9
    assert list(dense.get_lines()[0].get_ydata()) == pytest.approx([85.2, 80.2, 75.2, 70.2])
    for fig in figures:
        plt.close(fig)


def test_claims_over_nets_that_never_trained_are_not_measured(tmp_path):
    # the trainer flagged every run: whatever the numbers say, they are not evidence about the RF
    flagged = [dict(r, not_learning=[f"run{i}"]) for i, r in
               enumerate(_dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s))]
    (dense,) = _verdicts(_store(tmp_path / "flagged", flagged), "dense_accuracy")
    assert dense.verdict == "not measured" and "never trained" in dense.reason and dense.means
    # results from before the flag: dense accuracy at chance for every k says the same
    at_chance = _dense_grid("vgg19_rfpool", lambda k, s: 0.1 + 0.001 * k)
    (dense,) = _verdicts(_store(tmp_path / "chance", at_chance), "dense_accuracy")
    assert dense.verdict == "not measured" and dense.reason.startswith("dense accuracy at chance for every k")
    # one flagged run among trained ones does not silence the rest
    mixed = [dict(r, not_learning=["run0"]) if i == 0 else r for i, r in
             enumerate(_dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s))]
    (dense,) = _verdicts(_store(tmp_path / "mixed", mixed), "dense_accuracy")
    assert dense.verdict == "supported"


def test_the_report_table_says_why_without_repeating_rho_and_p(tmp_path):
    """REPORT.md's why cell sits beside the rho and p columns: a supported row says the direction and the points,
    an inconclusive one the threshold it missed; the statistics appear once per row."""
    falls = _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s)
    flat = _dense_grid("resnet50_rfpool", lambda k, s: 0.8 + 0.01 * ((k * 7 + s * 3) % 5))
    verdicts = evaluate_claims(_store(tmp_path, falls + flat), list(BUILTIN_CLAIMS))
    main_table = claims_markdown(verdicts).split("<details>")[0]
    rows = {line.split(" | ")[1]: line for line in main_table.splitlines() if line.startswith("| dense_accuracy |")}
    supported, inconclusive = rows["vgg19_rfpool"], rows["resnet50_rfpool"]
    points = len(falls)
    assert f"| **supported** | falls with k, as the paper says ({points} points) | -" in supported
    assert "| **inconclusive** | p >= 0.05 (" in inconclusive and "rho =" not in inconclusive


def test_a_claim_whose_metric_raises_is_one_not_measured_row_and_the_rest_stand(tmp_path):
    def broken(record):
        return {"sharpness": [record["values"]["final"]["top"]]}  # a stage these results lack: KeyError

    class Sharp:
        name = "prune"
        claims = (Claim("sharp", "a third-party claim", "rises", "prune", broken),)

    results = _store(tmp_path, _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s))
    verdicts = evaluate_claims(results, list(BUILTIN_CLAIMS) + list(Sharp.claims))
    (row,) = [v for v in verdicts if v.claim == "sharp"]
    assert row.verdict == "not measured" and row.reason == "its metric raised KeyError: 'final'"
    assert any(v.claim == "dense_accuracy" and v.verdict == "supported" for v in verdicts)
    assert "| sharp |" in claims_markdown(verdicts)


def test_a_family_at_one_width_beside_one_at_several_still_says_its_width(tmp_path):
    """The width study's ResNet50 at 1/8 only, beside VGG19 at three widths: its claims rows name the width."""
    vgg = [_at_width(r, w) for w in (0.0625, 0.125)
           for r in _dense_grid("vgg19_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s, 3)]
    resnet = [_at_width(r, 0.125) for r in _dense_grid("resnet50_rfpool", lambda k, s: 0.9 - 0.05 * k + 0.002 * s, 3)]
    verdicts = _verdicts(_store(tmp_path, vgg + resnet), "dense_accuracy")
    assert {(v.family, v.variant) for v in verdicts} == {
        ("vgg19_rfpool", "width_mult=0.0625"), ("vgg19_rfpool", "width_mult=0.125"),
        ("resnet50_rfpool", "width_mult=0.125")}
