"""The prune probe's BatchNorm protocols and its layer and signal collapse diagnostics."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import rf_bench  # noqa: F401
from rf_bench.batchnorm import recalibrate_batchnorm, training_subset
from rf_bench.data import normalize
from rf_bench.probes.base import ProbeContext, available_probes
from rf_bench.probes.prune import PruneConfig, PruneProbe, critical_sparsity, failure_cause, row_accuracy
from rf_bench.pruning import apply_masks, global_magnitude_masks, layer_output_stds, prunable_parameters
from rf_bench.results import ResultStore, load_run, sha256_file


def _accuracy(model, data) -> float:
    """Reference accuracy: one eval-mode forward over the whole split, no loader."""
    model.eval()
    with torch.no_grad():
        logits = model(normalize(data.images, data.mean, data.std))
    return int((logits.argmax(1) == data.labels).sum()) / len(data.labels)


@pytest.fixture(scope="module")
def probed(tiny_runs, tmp_path_factory):
    run = load_run(tiny_runs[0])
    config = PruneConfig(rates=(0.5, 0.9), finetune_epochs=0, bn_images=200, signal_images=64)
    out = PruneProbe().run(run, config, ProbeContext(results_dir=tmp_path_factory.mktemp("results")))
    return run, config, out.values


def test_stored_statistics_give_the_masked_nets_own_accuracy_and_recalibrated_ones_their_own(probed):
    run, config, values = probed
    test, train = run.load_data("test"), run.load_data("train")
    model = run.create_model("final")
    assert values["dense_acc"] == pytest.approx(_accuracy(model, test), abs=1e-12)  # unchanged by the protocols
    calibration, _ = training_subset(train, config.bn_images, config.bn_seed)
    masks = global_magnitude_masks(model, config.rates)
    for row in values["rates"]:
        pruned = run.create_model("final")
        apply_masks(pruned, masks[row["rate"]])
        assert row_accuracy(row, "stored", "pruned_acc") == pytest.approx(_accuracy(pruned, test), abs=1e-12)
        recalibrated = recalibrate_batchnorm(pruned, calibration)
        assert row_accuracy(row, "recalibrate", "pruned_acc") == pytest.approx(_accuracy(recalibrated, test), abs=1e-12)


def test_kept_fractions_weighted_by_layer_size_add_up_to_what_the_rate_keeps(probed):
    _, _, values = probed
    sizes = values["layer_sizes"]
    assert len(sizes) == len(values["layers"]) == len(values["dense_signal_std"])
    for row in values["rates"]:
        kept = sum(f * n for f, n in zip(row["kept"], sizes))
        assert kept == pytest.approx(sum(sizes) - round(row["rate"] * sum(sizes)), abs=1e-6)
        assert 0 < min(row["kept"]) <= 1
        for bn in ("stored", "recalibrate"):
            assert len(row["bn"][bn]["signal"]) == len(sizes) and all(s >= 0 for s in row["bn"][bn]["signal"])


def test_output_stds_are_each_layers_own_over_the_images():
    import timm

    model = timm.create_model("vgg19_rfpool1", width_mult=0.125).eval()
    images = torch.randn(8, 3, 32, 32)
    stds = layer_output_stds(model, images)
    names = [name for name, _ in prunable_parameters(model)]
    assert list(stds) == names
    first_conv = model.get_submodule(names[0].rsplit(".", 1)[0])
    with torch.no_grad():
        expected = first_conv(images).double().std()
    assert stds[names[0]] == pytest.approx(float(expected), rel=1e-6)


def test_a_net_with_a_layer_pruned_away_is_reported_as_layer_collapse(tiny_runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs[0], run_dir)
    weights = load_file(str(run_dir / "model.safetensors"))
    run = load_run(run_dir)
    layers = [name for name, _ in prunable_parameters(run.create_model("final"))]
    victim = layers[2]  # a small middle conv: global magnitude pruning at 0.5 takes all of it first
    weights[victim] = weights[victim] * 1e-8
    save_file(weights, str(run_dir / "model.safetensors"))
    (run_dir / "done").write_text(f"rewritten\nsha256 {sha256_file(run_dir / 'model.safetensors')}\n")
    config = PruneConfig(rates=(0.5,), finetune_epochs=0, bn_images=128, signal_images=32, basis=("all",))
    values = PruneProbe().run(load_run(run_dir), config, ProbeContext(results_dir=tmp_path / "results")).values
    (row,) = values["rates"]
    assert row["kept"][2] == 0.0 and min(row["kept"][:2] + row["kept"][3:]) > 0
    for bn in ("stored", "recalibrate"):
        assert failure_cause(row, bn, chance=0.1).startswith("layer collapse (1 layer(s)"), bn


def test_signal_collapse_and_neither_are_told_apart_from_a_row():
    row = dict(rate=0.9, kept=[0.2, 0.05, 0.1], bn={"stored": dict(pruned_acc=0.1, signal=[0.9, 0.02, 0.01]),
                                                   "recalibrate": dict(pruned_acc=0.1, signal=[1.0, 0.9, 0.8])})
    assert failure_cause(row, "stored", 0.1).startswith("signal collapse (output std 0.01 of the dense net's at layer 3")
    assert failure_cause(row, "recalibrate", 0.1) == "neither"
    row["bn"]["recalibrate"]["pruned_acc"] = 0.6
    assert failure_cause(row, "recalibrate", 0.1) == ""  # above chance: nothing to explain
    old = dict(rate=0.9, pruned_acc=0.1)  # a result stored before the protocols: read as the stored one
    assert row_accuracy(old, "stored", "pruned_acc") == 0.1 and row_accuracy(old, "recalibrate", "pruned_acc") is None


def test_bn_settings_are_checked():
    assert PruneConfig(bn="recalibrate").bn == ("recalibrate",)
    with pytest.raises(ValueError, match="prune.bn .* one or more of stored, recalibrate"):
        PruneConfig(bn=("batch",))


def test_claims_keep_the_protocols_apart_and_old_results_read_as_stored(tmp_path):
    from rf_bench.claims import collect_claims, evaluate_claims

    store = ResultStore(tmp_path)
    for k in (1, 2, 3, 4):
        for seed in range(3):
            dense = 0.9 - 0.02 * k
            row = dict(rate=0.9, kept=[0.1], bn={"stored": dict(pruned_acc=0.1), "recalibrate": dict(pruned_acc=0.2 * k)})
            values = dict(dense_acc=dense, k=k, family="vgg19_rfpool", num_classes=10, rates=[row],
                          bn=["stored", "recalibrate"])
            store.write(tmp_path / f"vgg19_rfpool{k}-digits-s{seed}" / "prune-x.json",
                        dict(probe="prune", version=2, config=dict(rates=[0.9]), key=f"r{k}{seed}", dataset="digits",
                             family="vgg19_rfpool", k=k, values=values))
        store.write(tmp_path / f"vgg19_rfpool{k}-digits-old" / "prune-y.json",  # stored-only, before prune.bn
                    dict(probe="prune", version=1, config=dict(rates=[0.9]), key=f"old{k}", dataset="digits",
                         family="vgg19_rfpool", k=k, values=dict(dense_acc=0.9, k=k, family="vgg19_rfpool",
                                                                 num_classes=10, rates=[dict(rate=0.9, pruned_acc=0.1)])))
    verdicts = evaluate_claims(tmp_path, collect_claims(available_probes()))
    recal = [v for v in verdicts if v.metric == "accuracy lost at 0.9, one-shot, BN recalibrate"]
    assert len(recal) == 1 and recal[0].verdict == "supported" and recal[0].setting == "version=2"
    stored = [v for v in verdicts if v.metric == "accuracy lost at 0.9, one-shot, BN stored"]
    assert stored and all("pruned accuracy at chance for every k" in v.reason for v in stored)
    assert any("version=1" in v.setting for v in stored)  # the old results: their own rows, labelled as stored


# ------------------------------------------------------------------------------------------ bases: all and live

def test_a_net_without_dead_weights_evaluates_each_mask_once(probed):
    _, _, values = probed  # vgg19_rfpool1 at 32 px: every weight sees the image, so both bases prune alike
    assert values["basis"] == ["all", "live"] and sum(values["layer_live"]) == sum(values["layer_sizes"])
    by_basis = {(row["basis"], row["rate"]): row for row in values["rates"]}
    for rate in (0.5, 0.9):
        paper, live = by_basis[("all", rate)], by_basis[("live", rate)]
        assert live["same_as"] == dict(basis="all", rate=rate) and "same_as" not in paper
        assert live["bn"] == paper["bn"] and live["dead_kept"] is None
        n = sum(values["layer_sizes"])
        assert live["live_sparsity"] == pytest.approx(round(rate * n) / n, abs=1e-12)


@pytest.fixture(scope="module")
def dead_run(tmp_path_factory):
    """A vgg19_rfpool3 run: at 32 px most of its deep conv weights never see the image."""
    from rf_bench.train import resolve_config, train

    cfg = resolve_config("fast", model="vgg19_rfpool3", dataset="digits", seed=0, epochs=1, lr=0.02, batch_size=32,
                         model_kwargs=dict(width_mult=0.125))
    run = load_run(train(cfg, output=tmp_path_factory.mktemp("runs"), progress=False))
    config = PruneConfig(rates=(0.5, 0.9), finetune_epochs=0, bn_images=128, signal_images=32)
    out = PruneProbe().run(run, config, ProbeContext(results_dir=tmp_path_factory.mktemp("results")))
    return run, config, out.values


def test_the_live_basis_prunes_live_weights_by_magnitude_and_every_dead_one(dead_run):
    from rf_bench.rf import live_weights

    run, config, values = dead_run
    model, test = run.create_model("final"), run.load_data("test")
    live = {n: m for n, m in live_weights(model, (3, 32, 32)).items() if n in values["layers"]}
    assert values["layer_live"] == [int(live[n].sum()) for n in values["layers"]]
    assert 0.7 < 1 - sum(values["layer_live"]) / sum(values["layer_sizes"]) < 0.8
    for row in values["rates"]:
        masks = global_magnitude_masks(model, [row["rate"]], live if row["basis"] == "live" else None)[row["rate"]]
        removed_live = sum(int((~masks[n] & live[n]).sum()) for n in live)
        dead = sum(int((~live[n]).sum()) for n in live)
        assert row["live_sparsity"] == pytest.approx(removed_live / sum(values["layer_live"]))
        assert row["dead_kept"] == pytest.approx(sum(int((masks[n] & ~live[n]).sum()) for n in live) / dead)
        if row["basis"] == "live":
            assert row["dead_kept"] == 0.0 and "same_as" not in row
        pruned = run.create_model("final")
        apply_masks(pruned, masks)
        assert row_accuracy(row, "stored", "pruned_acc") == pytest.approx(_accuracy(pruned, test), abs=1e-12)
    # at one rate the paper's basis removes fewer live weights: the dead ones count towards its rate
    by_basis = {(row["basis"], row["rate"]): row for row in values["rates"]}
    assert by_basis[("all", 0.9)]["live_sparsity"] < by_basis[("live", 0.9)]["live_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert values["rf"] == 3 * 178 + 2 and values["input_size"] == [3, 32, 32]


def test_critical_sparsity_interpolates_where_accuracy_falls_halfway_to_chance():
    def row(basis, x, acc):
        return dict(basis=basis, rate=x, live_sparsity=x, bn=dict(stored=dict(pruned_acc=acc)))

    values = dict(dense_acc=0.9, num_classes=10, rates=[row("all", 0.5, 0.8), row("all", 0.8, 0.3),
                                                        row("live", 0.5, 0.85), row("live", 0.9, 0.6)])
    # halfway between 0.9 and chance (0.1) is 0.5: crossed between (0.5, 0.8) and (0.8, 0.3)
    assert critical_sparsity(values, "all", "stored") == pytest.approx(0.5 + 0.3 * (0.8 - 0.5) / (0.8 - 0.3))
    assert critical_sparsity(values, "live", "stored") is None  # never fell that far


def test_the_report_shows_both_bases_and_accuracy_against_live_sparsity(dead_run, probed, tmp_path):
    from rf_bench.probes.prune import prune_sections

    records = [dict(probe="prune", dataset="digits", config={}, models=[f"vgg19_rfpool{v['k']}"], values=v)
               for v in (probed[2], dead_run[2])]
    sections = {s.title: s.markdown for s in prune_sections(records, tmp_path)}
    assert "Pruning: vgg19_rfpool on digits (BN stored, rates over live weights)" in sections
    live = sections["Pruning: weights that never see the image, vgg19_rfpool on digits"]
    dead_share = 1 - sum(dead_run[2]["layer_live"]) / sum(dead_run[2]["layer_sizes"])
    assert f"| 3 | {100 * dead_share:.1f}% |" in live and "| 1 | 0.0% |" in live
    assert (tmp_path / "prune_live_vgg19_rfpool_digits.png").stat().st_size > 10_000
