"""The shipped studies (`rf-bench study NAME`) are valid sweep files with the grids their names promise."""
import pytest

from rf_bench.studies import available_studies, study_text
from rf_bench.sweep import load_sweep


def test_the_shipped_studies():
    assert set(available_studies()) >= {"digits", "fashion", "fashion-cpu"}
    with pytest.raises(ValueError, match="unknown study 'fasion'; choose one of digits, fashion, fashion-cpu"):
        study_text("fasion")


@pytest.mark.parametrize("name", available_studies())
def test_every_study_is_a_valid_sweep_of_the_paper_grid(tmp_path, name):
    sweep = load_sweep(text=study_text(name), output=tmp_path)  # validates [train] fields and probe settings
    models = {cfg.model for cfg in sweep.runs}
    assert models == {f"{family}{k}" for family in ("vgg19_rfpool", "resnet50_rfpool") for k in (1, 2, 3, 4)}
    assert len({cfg.seed for cfg in sweep.runs}) >= 3 and (sweep.suite == "all" or "prune" in sweep.suite)
    assert sweep.probe_settings["prune"]["finetune_epochs"] > 0  # the paper's masked fine-tune, so claim 2 is measured


def test_fashion_cpu_trains_on_a_stratified_subset_and_fashion_on_the_whole_split(tmp_path):
    cpu = load_sweep(text=study_text("fashion-cpu"), output=tmp_path)
    gpu = load_sweep(text=study_text("fashion"), output=tmp_path)
    assert {cfg.dataset for cfg in cpu.runs + gpu.runs} == {"fashion_mnist"}
    assert {cfg.train_per_class for cfg in cpu.runs} == {1000} and cpu.eval_every == 0
    assert {cfg.train_per_class for cfg in gpu.runs} == {None} and {cfg.model_kwargs.get("width_mult", 1.0)
                                                                    for cfg in gpu.runs} == {1.0}


def test_fashion_width_spans_4x_in_width_with_the_fashion_cpu_training(tmp_path):
    width = load_sweep(text=study_text("fashion-width"), output=tmp_path)
    cpu = load_sweep(text=study_text("fashion-cpu"), output=tmp_path)
    widths = {(cfg.model[:-1], cfg.model_kwargs["width_mult"]) for cfg in width.runs}
    assert widths == {("vgg19_rfpool", w) for w in (0.0625, 0.125, 0.25)} | {("resnet50_rfpool", w) for w in (0.0625, 0.125)}
    assert len(width.runs) == 4 * 3 * (3 + 2)
    same = ("recipe", "epochs", "batch_size", "lr", "train_per_class", "dataset")
    assert {tuple(getattr(c, f) for f in same) for c in width.runs} == {tuple(getattr(c, f) for f in same) for c in cpu.runs}
    prune = width.probe_settings["prune"]
    assert prune["rates"] == [0.5, 0.7, 0.8, 0.9, 0.95] and prune["finetune_rates"] == [0.9]


def test_study_time_adds_up_over_resumed_invocations(tmp_path):
    """study.json keeps one entry per invocation; its wall time is their sum, and the last one names the machine."""
    import json

    from rf_bench.studies import record_study_time

    path = tmp_path / "report" / "study.json"
    path.parent.mkdir()
    record_study_time(path, name="s", runs=4, done_before=0, jobs=2, started=1000.0, finished=1100.5)
    facts = record_study_time(path, name="s", runs=4, done_before=3, jobs=2, started=5000.0, finished=5020.0)
    assert json.loads(path.read_text()) == facts
    assert [i["wall_s"] for i in facts["invocations"]] == [100.5, 20.0]
    assert facts["wall_s"] == 120.5 and facts["runs"] == 4
    assert [i["runs_done_before"] for i in facts["invocations"]] == [0, 3]
    assert "CPUs" in facts["machine"] and "torch" in facts["machine"]
    assert "cpu_s" not in facts  # neither invocation measured it


def test_study_cpu_time_is_summed_only_where_every_invocation_measured_it(tmp_path):
    from rf_bench.studies import record_study_time

    path = tmp_path / "study.json"
    facts = record_study_time(path, name="s", runs=4, done_before=0, jobs=2, started=0.0, finished=100.0, cpu_s=150.0)
    assert facts["cpu_s"] == 150.0 and facts["invocations"][0]["cpu_s"] == 150.0
    facts = record_study_time(path, name="s", runs=4, done_before=2, jobs=2, started=500.0, finished=550.0, cpu_s=99.96)
    assert facts["cpu_s"] == 250.0
    facts = record_study_time(path, name="s", runs=4, done_before=3, jobs=2, started=900.0, finished=910.0)
    assert "cpu_s" not in facts and facts["wall_s"] == 160.0  # a partial sum would understate the cost


def test_cpu_seconds_counts_finished_worker_processes():
    """A sweep's workers are child processes: their CPU time counts once they have been waited for."""
    import subprocess
    import sys

    from rf_bench.studies import cpu_seconds

    before = cpu_seconds()
    child = subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                            "while time.process_time() - t < 0.5: pass"], check=True)
    assert child.returncode == 0
    spent = cpu_seconds() - before
    assert spent >= 0.5, spent  # the child's busy half second, and its start-up, counted


def test_fashion_resolution_is_fashion_cpu_at_32_and_64_px_with_its_32_px_runs(tmp_path):
    from rf_bench.recipes import config_hash

    resolution = load_sweep(text=study_text("fashion-resolution"), output=tmp_path)
    cpu = load_sweep(text=study_text("fashion-cpu"), output=tmp_path)
    assert {c.image_size for c in resolution.runs} == {None, 64} and len(resolution.runs) == 2 * 4 * 3 * 2
    ids = {config_hash(c) for c in cpu.runs if c.seed < 3}
    assert {config_hash(c) for c in resolution.runs if c.image_size is None} == ids
    assert "saturation" in resolution.suite and resolution.probe_settings["prune"] == cpu.probe_settings["prune"]
    for probe in ("hessian", "cka"):  # the 32 px runs' results of fashion-cpu are found again
        assert resolution.probe_settings[probe] == cpu.probe_settings[probe]
