"""The probe harness, the prune probe and the report."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.probes.base import apply_overrides, resolve_suite
from rf_bench.probes.prune import global_magnitude_masks, prunable_parameters
from rf_bench.results import ResultStore, find_runs, group_runs, load_run

from conftest import HANG_S, TINY

RATES = (0.5, 0.6, 0.7, 0.8, 0.9)


def _brute_force_masks(model, rate):
    """Reference: a stable numpy argsort of all |w| (ties: lower position pruned first)."""
    params = prunable_parameters(model)
    mags = np.concatenate([p.detach().abs().numpy().ravel() for _, p in params])
    k = int(round(rate * mags.size))
    keep = np.ones(mags.size, bool)
    keep[np.argsort(mags, kind="stable")[:k]] = False
    out, start = {}, 0
    for name, p in params:
        out[name] = torch.from_numpy(keep[start:start + p.numel()].reshape(p.shape))
        start += p.numel()
    return out, k


def test_masks_equal_a_brute_force_global_sort_with_ties():
    model = timm.create_model("resnet50_rfpool2", width_mult=TINY)
    with torch.no_grad():  # plenty of exact ties, across layers too
        for i, (_, p) in enumerate(prunable_parameters(model)):
            p.view(-1)[::3] = 0.01 * (i % 4)
    masks = global_magnitude_masks(model, RATES)
    total = sum(p.numel() for _, p in prunable_parameters(model))
    for rate in RATES:
        ref, k = _brute_force_masks(model, rate)
        assert masks[rate].keys() == ref.keys()
        for name in ref:
            assert torch.equal(masks[rate][name], ref[name]), (rate, name)
        assert total - sum(int(m.sum()) for m in masks[rate].values()) == k  # exact pruned count
    # BN weights and biases are never pruned
    assert all(name.endswith("weight") and "bn" not in name for name in masks[0.5])


def test_masks_equal_torch_prune_global_unstructured():
    model = timm.create_model("vgg19_rfpool2", width_mult=TINY)
    masks = global_magnitude_masks(model, [0.7])[0.7]
    import copy

    import torch.nn.utils.prune as tprune
    ref = copy.deepcopy(model)
    modules = [(m, "weight") for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(modules, pruning_method=tprune.L1Unstructured, amount=0.7)
    ref_masks = {n.removesuffix("_mask"): b.bool() for n, b in ref.named_buffers() if n.endswith("_mask")}
    assert ref_masks.keys() == masks.keys()
    for name in masks:
        assert torch.equal(masks[name], ref_masks[name]), name


def test_finetune_keeps_pruned_weights_zero(tmp_path, tiny_runs):
    from rf_bench.train import resolve_config, train

    run = load_run(tiny_runs[0])
    cfg = resolve_config("finetune", model=run.model_name, dataset="digits", epochs=1, lr=0.05, clip_grad=0,
                         model_kwargs=run.config["model_kwargs"], prune_rate=0.8,
                         init_from=str(run.path / "model.safetensors"))
    out = train(cfg, output=tmp_path, progress=False)
    model = run.create_model("final")
    masks = global_magnitude_masks(model, [0.8])[0.8]
    final = load_file(str(out / "model.safetensors"))
    init = load_file(str(out / "init.safetensors"))
    moved = 0.0
    for name, mask in masks.items():
        assert (final[name][~mask] == 0).all(), name
        moved = max(moved, float((final[name] - init[name])[mask].abs().max()))
    assert moved > 0  # the kept weights did train


def _probe_cmd(*args):
    return [sys.executable, "-m", "rf_bench.cli", "probe", "--no-progress", *args]


def _dummy_distribution(root: Path, log: Path) -> Path:
    """A temporary installed distribution with an rf_bench.probes entry point (a third-party probe), no report() of
    its own, and one claim read from a value its results carry (1 / k) and from the k the harness records."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dummy_probe.py").write_text(textwrap.dedent(f"""
        import os, time
        from dataclasses import dataclass
        from rf_bench.claims import Claim
        from rf_bench.probes.base import ProbeOutput

        @dataclass
        class Config:
            sleep: float = 0.0

        class DummyProbe:
            name = "dummy"
            version = 1
            scope = "run"
            Config = Config
            claims = (Claim("dummy_inverse_k", "1 / k falls as k grows", "falls", "dummy",
                            lambda record: {{"inverse k": [record["values"]["inverse_k"]]}}),)

            def run(self, run, config, ctx):
                with open({str(log)!r}, "a") as f:
                    f.write(run.run_id + "\\n")
                time.sleep(config.sleep)
                n = sum(p.numel() for p in run.create_model().parameters())
                return ProbeOutput(values=dict(params=n, pid=os.getpid(), inverse_k=1 / run.k))
    """))
    info = root / "dummy_probe-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dummy-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[rf_bench.probes]\ndummy = dummy_probe:DummyProbe\n")
    return root


def _env_with(path: Path):
    return dict(os.environ, PYTHONPATH=str(path) + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
                RF_BENCH_PLUGINS="dummy")


CHEAP_SETTINGS = """
# every built-in probe, briefly
[probes.prune]
finetune_epochs = 0
rates = [0.5]
[probes.hessian]
k = 2
ncv = 6
tol = 0.01
n_images = 16
trace_samples = 2
density_steps = 0
stages = ["init"]
[probes.cka]
n_images = 32
[probes.rfmap]
n = 2
stages = ["init"]
measure_rf = false
"""


def test_third_party_probe_runs_in_suite_all_and_reaches_the_report_and_claims(tmp_path, tiny_runs):
    plugin = _dummy_distribution(tmp_path / "site", tmp_path / "calls.log")
    results, report = tmp_path / "results", tmp_path / "report"
    settings = tmp_path / "cheap.toml"
    settings.write_text(CHEAP_SETTINGS)
    env = _env_with(plugin)
    proc = subprocess.run(_probe_cmd(*map(str, tiny_runs), "--suite", "all", "--results", str(results),
                                     "--settings", str(settings)), capture_output=True, text=True, env=env,
                          timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = ResultStore(results)
    dummy = store.records("dummy")
    assert len(dummy) == 4 and len(store.records("prune")) == 4
    assert {r["probe"] for r in store.records()} == {"dummy", "prune", "hessian", "cka", "rfmap", "saturation"}
    assert store.records("hessian")[0]["config"]["k"] == 2  # the settings file was read
    expected = sum(p.numel() for p in load_run(tiny_runs[0]).create_model().parameters())
    assert dummy[0]["values"]["params"] == expected

    cli = [sys.executable, "-m", "rf_bench.cli"]
    proc = subprocess.run(cli + ["report", str(results), "--out", str(report)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (report / "REPORT.md").read_text()
    section = text.split("## dummy\n", 1)[1].split("\n## ", 1)[0]  # a section though the probe writes no report()
    tables = [[[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()]
              for block in section.split("\n\n") if block.startswith("|")]
    (per_result, _, *rows), (per_model, _, *means) = tables  # header, rule, rows: one per result, one per model
    rows = [dict(zip(per_result, row)) for row in rows]
    means = {row[0]: dict(zip(per_model, row)) for row in means}
    assert len(rows) == 4 and {row["params"] for row in rows} == {str(expected)}
    assert sorted((row["model"], row["seeds"], row["inverse_k"]) for row in rows) == [
        ("vgg19_rfpool1", "0", "1"), ("vgg19_rfpool1", "1", "1"), ("vgg19_rfpool2", "0", "0.5"), ("vgg19_rfpool2", "1", "0.5")]
    assert means["vgg19_rfpool2"]["results"] == "2" and means["vgg19_rfpool2"]["inverse_k"] == "0.5 ± 0"
    proc = subprocess.run(cli + ["claims", str(results), "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [v for v in json.loads(proc.stdout) if v["claim"] == "dummy_inverse_k"]
    assert row["family"] == "vgg19_rfpool" and row["means"] == {"1": 1.0, "2": 0.5} and row["rho"] == -1.0


def test_two_concurrent_probe_processes_share_the_work(tmp_path, tiny_runs):
    log = tmp_path / "calls.log"
    plugin = _dummy_distribution(tmp_path / "site", log)
    results = tmp_path / "results"
    cmd = _probe_cmd(*map(str, tiny_runs), "--suite", "dummy", "--results", str(results), "--set", "sleep=1.0")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env_with(plugin))
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=HANG_S)
        assert p.returncode == 0, err[-3000:]
    calls = log.read_text().split()
    assert sorted(calls) == sorted(load_run(d).run_id for d in tiny_runs)  # each run computed exactly once
    records = ResultStore(results).records("dummy")
    assert len(records) == 4
    for rec in records:  # complete JSON, written once
        assert json.loads(Path(rec["_path"]).read_text())["values"]["params"] > 0
    assert len({rec["values"]["pid"] for rec in records}) == 2  # both processes did some of it


def test_results_are_reused_and_old_versions_recomputed(tmp_path, tiny_runs):
    plugin = _dummy_distribution(tmp_path / "site", tmp_path / "calls.log")
    results = tmp_path / "results"
    cmd = _probe_cmd(str(tiny_runs[0]), "--suite", "dummy", "--results", str(results))
    env = _env_with(plugin)
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert len((tmp_path / "calls.log").read_text().split()) == 1  # the second run reused it
    (record,) = ResultStore(results).records("dummy")
    path = Path(record["_path"])
    path.write_text(json.dumps(dict(json.loads(path.read_text()), version=0)))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert "stored by version 0" in proc.stdout and "recomputing" in proc.stdout
    assert len((tmp_path / "calls.log").read_text().split()) == 2
    forced = subprocess.run(cmd + ["--force"], env=env, capture_output=True)
    assert forced.returncode == 0 and len((tmp_path / "calls.log").read_text().split()) == 3


def test_probe_errors(tmp_path, tiny_runs):
    with pytest.raises(ValueError, match="unknown probe 'hessain'; available: .*prune"):
        resolve_suite("hessain")
    with pytest.raises(ValueError, match="no probe in the suite has a setting 'nope'"):
        apply_overrides(resolve_suite("prune"), ["nope=1"])
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not finished .*rerun its training command"):
        load_run(unfinished)
    proc = subprocess.run(_probe_cmd(str(unfinished), "--results", str(tmp_path / "r")), capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_grouping_is_by_model_dataset_and_recipe(tiny_runs):
    groups = group_runs(find_runs([str(Path(tiny_runs[0]).parent)]))
    assert len(groups) == 2
    for members in groups.values():
        assert [r.seed for r in members] == [0, 1] and len({r.model_name for r in members}) == 1


def _table_rows(section: str):
    """``{k: {column: cell}}`` of the first table in a report section."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    return {int(cells[0]): dict(zip(columns, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


@pytest.mark.slow
def test_end_to_end_prune_report_numbers_equal_stored_results(tmp_path, tiny_runs):
    from rf_bench.probes.prune import PruneConfig, row_accuracy, rows_of

    results, report = tmp_path / "results", tmp_path / "report"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(_probe_cmd(str(Path(tiny_runs[0]).parent), "--suite", "prune", "--results", str(results),
                                     "--set", "finetune_epochs=1", "--set", "prune.bn_images=256"),
                          capture_output=True, text=True, env=env, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "rf_bench.cli", "report", str(results), "--out", str(report)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (report / "REPORT.md").read_text()
    for name in ("prune_vgg19_rfpool_digits", "prune_vgg19_rfpool_digits_recalibrate", "prune_collapse_vgg19_rfpool_digits"):
        assert (report / f"{name}.png").stat().st_size > 10_000, name
    records = ResultStore(results).records("prune")
    assert len(records) == 4

    def expected(values):
        v = 100 * np.asarray(values)
        return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"

    for bn in ("stored", "recalibrate"):
        section = text.split(f"## Pruning: vgg19_rfpool on digits (BN {bn})\n", 1)[1].split("\n## ", 1)[0]
        rows = _table_rows(section)
        assert set(rows) == {1, 2}
        assert ("paper pruned 0.9" in rows[1]) == (bn == "stored")  # the paper's numbers beside its own protocol
        for k, row in rows.items():
            recs = [r for r in records if r["values"]["k"] == k]
            assert row["RF (analytic)"] == str(178 * k + 2) and row["seeds"] == "2"
            assert row["dense"] == expected([r["values"]["dense_acc"] for r in recs])
            for rate in RATES:
                by_rate = [x for r in recs for x in rows_of(r, "all") if x["rate"] == rate]
                assert row[f"pruned {rate:g}"] == expected([row_accuracy(x, bn, "pruned_acc") for x in by_rate])
                assert row[f"fine-tuned {rate:g}"] == expected([row_accuracy(x, bn, "finetuned_acc") for x in by_rate])
                assert all(x["finetuned_sparsity"] >= rate - 1e-5 for x in by_rate)  # round(rate * n) / n
    csv = (report / "prune.csv").read_text().splitlines()
    n = len(PruneConfig().rates)  # the default rates: per (protocol, k), dense and each rate's pruned (and fine-tuned)
    all_basis, live_basis = 2 * 2 * (1 + 2 * n), 2 * 2 * (1 + n)  # the live basis is one-shot only
    assert csv[0].startswith("family,dataset,bn,k,rf_analytic") and csv[0].endswith(",basis")
    assert len(csv) == 1 + all_basis + live_basis


def test_a_failing_probe_report_is_named_and_the_rest_is_written(tmp_path, tiny_runs, monkeypatch):
    from rf_bench.probes import base
    from rf_bench.report import write_report

    class Broken:
        name, version, scope = "broken", 1, "run"
        Config = base.Probe.Config

        def run(self, run, config, ctx):
            return base.ProbeOutput(values=dict(score=float(run.k)))

        @staticmethod
        def report(records, store, out_dir):
            raise RuntimeError("the figure code has a bug")

    probes = dict(base.available_probes(), broken=Broken)
    monkeypatch.setattr(base, "available_probes", lambda: probes)
    results = tmp_path / "results"
    base.run_suite([Broken, probes["prune"]], [load_run(d) for d in tiny_runs[:2]], results,
                   apply_overrides([probes["prune"]], ["rates=[0.5]", "finetune_epochs=0"]) | {"broken": Broken.Config()},
                   progress=False)
    logged = []
    text = write_report(results, tmp_path / "report", probes, log=logged.append).read_text()
    assert "## broken: report failed" in text and "RuntimeError: the figure code has a bug" in text
    assert "## Pruning: vgg19_rfpool on digits" in text and "## Does the paper hold?" in text
    assert any("broken" in line for line in logged)


def test_list_settings_names_every_setting_of_every_builtin_probe_with_its_default_and_meaning():
    proc = subprocess.run([sys.executable, "-m", "rf_bench.cli", "probe", "--list-settings"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    import dataclasses

    from rf_bench.probes.base import describe_settings

    rows = describe_settings(resolve_suite("all"))
    for probe in resolve_suite("all"):
        for f in dataclasses.fields(probe.Config):
            (row,) = [r for r in rows if r[:2] == (probe.name, f.name)]
            assert row[2] == getattr(probe.Config(), f.name) and len(row[3]) > 10, row  # a default and a meaning
            assert f.name in proc.stdout
    assert len(proc.stdout.splitlines()) >= len(rows)


def test_set_keys_and_run_globs_get_hints():
    with pytest.raises(ValueError, match="no probe 'hessian' has a setting 'kk'; did you mean 'k'"):
        apply_overrides(resolve_suite("hessian"), ["hessian.kk=3"])
    with pytest.raises(ValueError, match="no probe 'hesian' in the suite; did you mean 'hessian'"):
        apply_overrides(resolve_suite("hessian,cka"), ["hesian.k=3"])
    with pytest.raises(FileNotFoundError, match="no path matches .*nothing-here-\\*"):
        find_runs(["nothing-here-*"])


def test_a_settings_file_sizes_the_probes_and_set_overrides_it(tmp_path):
    from rf_bench.probes.base import load_settings

    suite, tables = load_settings("demo")  # a shipped sweep file's [probes] tables, values as they are
    assert tables["hessian"]["k"] == 3 and isinstance(tables["prune"]["rates"], list)
    configs = apply_overrides(resolve_suite(suite), ["hessian.k=4"], tables=tables)
    assert suite == "all" and configs["hessian"].k == 4 and configs["hessian"].n_images == 32
    assert configs["prune"].finetune_epochs == 0 and configs["rfmap"].n == 8
    (tmp_path / "bad.toml").write_text("[train]\nepochs = 3\n")
    with pytest.raises(ValueError, match="has no \\[probes\\] table"):
        load_settings(str(tmp_path / "bad.toml"))


def test_ctrl_c_in_the_hessian_step_is_one_line_and_the_rerun_resumes(tmp_path, tiny_runs):
    results = tmp_path / "results"
    prune = ["--set", "prune.rates=[0.5]", "--set", "prune.finetune_epochs=0"]

    def command(*hessian):
        return _probe_cmd(str(tiny_runs[0]), "--suite", "prune,hessian", "--results", str(results), *prune,
                          *[arg for item in hessian for arg in ("--set", f"hessian.{item}")])

    # Ctrl-C as a terminal delivers it: a suite run as a background job (`make test &`) starts its processes with
    # SIGINT ignored, and the probe would never see it
    proc = subprocess.Popen(command("n_images=256", "k=30", "tol=1e-9", "density_steps=0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline and proc.poll() is None and not list(results.glob("*/.hessian-*.lock")):
        time.sleep(0.2)  # prune is stored; the Hessian has begun
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().count("\n") == 0 and "Traceback" not in err + out
    assert err.startswith("interrupted: 1 finished result(s)") and "the same command resumes" in err
    (pruned,) = ResultStore(results).records("prune")
    stamp = Path(pruned["_path"]).stat().st_mtime_ns
    assert not ResultStore(results).records("hessian") and not list(results.glob("*/.*.tmp*"))
    rerun = subprocess.run(command("n_images=32", "k=2", "density_steps=0"), capture_output=True, text=True,
                           timeout=HANG_S)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert Path(pruned["_path"]).stat().st_mtime_ns == stamp  # kept, not recomputed
    assert len(ResultStore(results).records("hessian")) == 1


def test_finetune_rates_fine_tune_only_those_and_older_results_keep_their_hash(tmp_path, tiny_runs):
    from rf_bench.probes.base import ProbeContext, _config_dict
    from rf_bench.probes.prune import PruneConfig, PruneProbe, prune_sections

    assert "finetune_rates" not in _config_dict(PruneConfig())  # a result stored before the setting is still found
    config = PruneConfig(rates=(0.5, 0.9), finetune_epochs=1, finetune_rates=(0.9,))
    out = PruneProbe().run(load_run(tiny_runs[0]), config, ProbeContext(results_dir=tmp_path))
    by_rate = {row["rate"]: row for row in out.values["rates"] if row["basis"] == "all"}
    for bn in ("stored", "recalibrate"):
        assert "finetuned_acc" not in by_rate[0.5]["bn"][bn] and 0 <= by_rate[0.9]["bn"][bn]["finetuned_acc"] <= 1
    assert by_rate[0.9]["finetuned_sparsity"] >= 0.9 - 1e-5
    # how far the fine-tune moved the weights, against the files: the dense weights masked at 0.9, the fine-tune's own
    model = load_run(tiny_runs[0]).create_model()
    mask = global_magnitude_masks(model, [0.9])[0.9]
    tuned = load_file(str(tmp_path / load_run(tiny_runs[0]).run_id / "prune-finetune" / by_rate[0.9]["finetune_run"]
                          / "model.safetensors"))
    pruned = {name: (w.detach() * mask[name]).double().numpy() for name, w in prunable_parameters(model)}
    moved = sum(((tuned[name].double().numpy() - w) ** 2).sum() for name, w in pruned.items())
    expected = np.sqrt(moved / sum((w ** 2).sum() for w in pruned.values()))
    assert 0 < expected and by_rate[0.9]["finetune_weight_change"] == pytest.approx(expected, rel=1e-9)
    assert "finetune_weight_change" not in by_rate[0.5]
    # the report has a fine-tuned column only at the rate that was fine-tuned, under both protocols
    record = dict(values=out.values, config=_config_dict(config), family="vgg19_rfpool", dataset="digits", k=2,
                  run_dirs=[tiny_runs[0]])
    sections = prune_sections([record], tmp_path)
    titles = [sec.title for sec in sections]
    tables = [sec.markdown for sec in sections if sec.title.startswith("Pruning: vgg19_rfpool on digits (BN")
              and "live" not in sec.title]
    assert len(tables) == 2 and "Pruning: vgg19_rfpool on digits (BN stored, rates over live weights)" in titles
    live = next(sec.markdown for sec in sections if sec.title.endswith("(BN stored, rates over live weights)"))
    assert "fine-tuned 0.9" not in live  # the live basis is measured one-shot, even where its masks are the same
    for table in tables:
        columns = [c.strip() for c in table.split("\n\n")[1].splitlines()[0].strip("|").split("|")]
        assert [c for c in columns if c.startswith(("pruned", "fine-tuned"))] == ["pruned 0.5", "pruned 0.9",
                                                                                   "fine-tuned 0.9"]
        moved = 100 * by_rate[0.9]["finetune_weight_change"]
        assert f"at 0.9 by {moved:.3g}% on average (largest {moved:.3g}%)" in table


def test_damaged_weights_are_refused_in_one_line_and_nothing_is_written(tmp_path, tiny_runs):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_runs[0], run)
    blob = bytearray((run / "model.safetensors").read_bytes())
    blob[-64:] = bytes(64)  # 64 bytes of the last tensor overwritten
    (run / "model.safetensors").write_bytes(bytes(blob))
    results = tmp_path / "results"
    proc = subprocess.run(_probe_cmd(str(run), "--suite", "prune", "--results", str(results), "--set",
                                     "prune.rates=[0.5]", "--set", "prune.finetune_epochs=0"),
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=HANG_S)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "model.safetensors does not match the sha256 recorded when training finished" in line
    assert "rerun its training command" in line
    assert not list(results.glob("*/*.json"))


def test_weights_trained_again_get_a_new_result(tmp_path, tiny_runs):
    import shutil

    from rf_bench.probes.base import run_suite

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs[0], run_dir)
    probes = resolve_suite("prune")
    configs = apply_overrides(probes, ["prune.rates=[0.5]", "prune.finetune_epochs=0", "prune.bn_images=64"])
    logged = []
    (first,) = run_suite(probes, [load_run(run_dir)], tmp_path / "results", configs, progress=False, log=logged.append)
    before = json.loads(first.read_text())
    assert before["weights_sha256"] == [load_run(run_dir).weights_sha256]
    run_suite(probes, [load_run(run_dir)], tmp_path / "results", configs, progress=False, log=logged.append)
    assert logged == []  # the same weights: reused
    weights = load_file(str(run_dir / "model.safetensors"))  # "trained again": other weights, recorded as final
    from rf_bench.runs import recorded_sha256, save_weights

    save_weights({k: v * 0.5 if v.is_floating_point() else v for k, v in weights.items()},
                 run_dir / "model.safetensors", {"stage": "final"})
    from rf_bench.results import sha256_file

    (run_dir / "done").write_text(f"again\nsha256 {sha256_file(run_dir / 'model.safetensors')}\n")
    assert recorded_sha256(run_dir) != before["weights_sha256"][0]
    run_suite(probes, [load_run(run_dir)], tmp_path / "results", configs, progress=False, log=logged.append)
    assert logged == [f"prune on {load_run(run_dir).run_id}: the run's weights changed since (trained again); recomputing"]
    assert json.loads(first.read_text())["weights_sha256"] == [recorded_sha256(run_dir)]


def test_identical_tensors_are_written_byte_for_byte_alike_in_any_process(tmp_path):
    code = textwrap.dedent("""
        import sys, torch
        from rf_bench.runs import save_weights
        save_weights({"b": torch.ones(3), "a": torch.arange(4.0)}, sys.argv[1],
                     dict(model="vgg19_rfpool1", stage="final", rf_bench="0", seed="1"))
    """)
    paths = [tmp_path / f"w{i}.safetensors" for i in range(4)]
    for path in paths:  # each process hashes the metadata keys in its own order
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=HANG_S)
    assert len({p.read_bytes() for p in paths}) == 1
    loaded = load_file(str(paths[0]))
    assert torch.equal(loaded["a"], torch.arange(4.0)) and torch.equal(loaded["b"], torch.ones(3))


def test_a_result_that_records_no_weights_is_kept_unless_its_run_was_trained_after_it(tmp_path, tiny_runs):
    """Results from before weights were recorded: kept when measured after training finished, recomputed when a
    run's ``done`` says it finished training later (a run trained again beside an old result)."""
    import shutil

    from rf_bench.probes.base import run_suite

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs[0], run_dir)
    probes = resolve_suite("prune")
    configs = apply_overrides(probes, ["prune.rates=[0.5]", "prune.finetune_epochs=0", "prune.bn_images=64"])
    (path,) = run_suite(probes, [load_run(run_dir)], tmp_path / "results", configs, progress=False)
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "weights_sha256"}
    sha = (run_dir / "done").read_text().split("\n", 1)[1]
    logged = []
    for created, finished, recomputed in (("2026-01-02T00:00:00", "2026-01-01T00:00:00", False),
                                          ("2026-01-01T00:00:00", "2026-01-02T00:00:00", True),
                                          ("2026-01-01T00:00:00", "an older run's marker", False)):
        path.write_text(json.dumps(dict(old, created=created)))
        (run_dir / "done").write_text(f"{finished}\n{sha}")
        logged.clear()
        run_suite(probes, [load_run(run_dir)], tmp_path / "results", configs, progress=False, log=logged.append)
        assert bool(logged) == recomputed, (created, finished, logged)
        assert all("finished training after it was measured" in line for line in logged)
        assert ("weights_sha256" in json.loads(path.read_text())) == recomputed
