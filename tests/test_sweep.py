"""Sweeps: the TOML grid, kill-and-rerun idempotence, submitit's executor, failures, and the embedded demo."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rf_bench.cli import main
from rf_bench.results import ResultStore, load_run
from rf_bench.sweep import load_sweep, run_sweep, sweep_status

from conftest import HANG_S

REPO_ROOT = Path(__file__).resolve().parents[1]

# 2 models x 2 seeds on digits, tiny, with two cheap probes: a run-scoped one and a group-scoped one
SMALL = """
[sweep]
name = "small"

[grid]
models = ["vgg19_rfpool1", "vgg19_rfpool2"]
datasets = ["digits"]
seeds = [0, 1]

[train]
recipe = "fast"
epochs = 2
batch_size = 64
lr = 0.05
model_kwargs = { width_mult = 0.0625 }

[probes]
suite = "prune,cka"

[probes.prune]
rates = [0.5, 0.9]
finetune_epochs = 0

[probes.cka]
n_images = 64
"""


def _cli(*args, **kwargs):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "rf_bench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT, start_new_session=True,
                            **kwargs)


def _records_by_key(results: Path):
    """(key, probe) -> number of stored results; every one must be there exactly once."""
    counts = {}
    for path in results.glob("*/*.json"):
        rec = json.loads(path.read_text())
        counts[(rec["key"], rec["probe"])] = counts.get((rec["key"], rec["probe"]), 0) + 1
    return counts


def _assert_complete(sweep, epochs=2):
    for cfg in sweep.runs:
        run_dir = sweep.run_dir(cfg)
        assert (run_dir / "done").is_file()
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in lines] == list(range(epochs))  # no epoch trained twice, none missing
    assert sorted(p.name for p in sweep.output.iterdir() if not p.name.startswith(".")) == \
        sorted(sweep.run_dir(c).name for c in sweep.runs)
    counts = _records_by_key(sweep.results)
    run_ids = {sweep.run_dir(c).name for c in sweep.runs}
    assert {k for k, p in counts if p == "prune"} == run_ids
    assert len([k for k, p in counts if p == "cka"]) == 2  # one group per model, both seeds
    assert set(counts.values()) == {1}
    assert all(r["status"] == "done" for r in sweep_status(sweep))


WIDTHS = SMALL.replace('seeds = [0, 1]\n', 'seeds = [0, 1]\n[grid.model_kwargs]\nwidth_mult = [0.0625, 0.125]\n')


def test_a_model_keyword_is_a_grid_axis_with_its_own_runs_checked_before_any_work(tmp_path, capsys):
    from rf_bench.cli import main

    sweep = load_sweep(text=WIDTHS, output=str(tmp_path))
    widths = sorted((c.model, c.seed, c.model_kwargs["width_mult"]) for c in sweep.runs)
    assert widths == sorted((m, s, w) for m in ("vgg19_rfpool1", "vgg19_rfpool2") for s in (0, 1) for w in (0.0625, 0.125))
    assert len({sweep.run_dir(c) for c in sweep.runs}) == 8  # each width its own run id
    plain = load_sweep(text=SMALL, output=str(tmp_path))  # [train] model_kwargs alone keeps its run ids
    assert {sweep.run_dir(c) for c in plain.runs} < {sweep.run_dir(c) for c in sweep.runs}
    path = tmp_path / "widths.toml"
    path.write_text(WIDTHS)
    assert main(["sweep", str(path), "--output", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "vgg19_rfpool1 (width_mult=0.125) on digits, seed 1" in out and out.count("would run") == 8
    assert main(["sweep", str(path), "--output", str(tmp_path), "--status"]) == 0
    assert "width_mult" in capsys.readouterr().out
    assert sorted({row["model_kwargs"] for row in sweep_status(sweep)}) == ["width_mult=0.0625", "width_mult=0.125"]
    with pytest.raises(ValueError, match="takes no keyword 'widht_mult'; did you mean 'width_mult'"):
        load_sweep(text=WIDTHS.replace("width_mult = [", "widht_mult = ["))
    with pytest.raises(ValueError, match="must be a non-empty list"):
        load_sweep(text=WIDTHS.replace("width_mult = [0.0625, 0.125]", "width_mult = 0.125"))
    # a family's own axes: vgg19_rfpool2 stops at the narrow width
    own = load_sweep(text=WIDTHS.replace("width_mult = [0.0625, 0.125]\n",
                                         "width_mult = [0.0625, 0.125]\nvgg19_rfpool2 = { width_mult = [0.0625] }\n"))
    assert sorted({(c.model, c.model_kwargs["width_mult"]) for c in own.runs}) == [
        ("vgg19_rfpool1", 0.0625), ("vgg19_rfpool1", 0.125), ("vgg19_rfpool2", 0.0625)]


def test_paper_grid_is_80_runs_and_bad_files_are_one_line(tmp_path):
    sweep = load_sweep(REPO_ROOT / "benchmarks" / "configs" / "paper.toml", output=str(tmp_path))
    assert len(sweep.runs) == 80 and len({sweep.run_dir(c) for c in sweep.runs}) == 80
    assert {c.recipe for c in sweep.runs} == {"paper-lr0.1"} and {c.epochs for c in sweep.runs} == {200}
    assert {(c.lr, c.clip_grad) for c in sweep.runs} == {(0.1, 0.1)}  # the paper's recipe, its lr corrected
    assert {(c.model[:-1], c.dataset) for c in sweep.runs} == {
        (f, d) for f in ("vgg19_rfpool", "resnet50_rfpool") for d in ("cifar10", "tiny-imagenet")}
    assert sweep.probe_settings["hessian"]["k"] == 90 and sweep.slurm["gpus_per_job"] == 1
    for text, message in (("[grid]\nmodels = ['resnet50_rfpool9']", "unknown model 'resnet50_rfpool9'"),
                          ("[grid]\nmodels = ['vgg19_rfpool1']\n[train]\nlearning_rate = 1",
                           "[train] has no key 'learning_rate'; did you mean 'lr'?"),
                          ("[gird]\n", "has no section 'gird'; did you mean 'grid'?"),
                          ("[grid\n", "not valid TOML")):
        with pytest.raises(ValueError, match=re.escape(message)):
            load_sweep(text=text)


@pytest.mark.slow
def test_sweep_killed_midway_then_rerun_has_every_run_and_result_once(tmp_path):
    (tmp_path / "small.toml").write_text(SMALL)
    sweep = load_sweep(tmp_path / "small.toml", output=str(tmp_path / "out"))
    first = sweep.run_dir(sweep.runs[0])
    proc = _cli("sweep", str(tmp_path / "small.toml"), "--output", str(tmp_path / "out"), "--no-progress")
    deadline = time.time() + 300
    second_started = sweep.run_dir(sweep.runs[1]) / "config.json"
    while not second_started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert second_started.exists(), proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way: run 1 finished and probed, run 2 in training
    proc.wait()
    statuses = [r["status"] for r in sweep_status(sweep)]
    assert statuses[0] == "done" and "done" not in statuses[2:]
    kept = {p: p.stat().st_mtime_ns for p in [first / "model.safetensors", *sweep.results.glob(f"{first.name}/*.json")]}

    rerun = _cli("sweep", str(tmp_path / "small.toml"), "--output", str(tmp_path / "out"), "--no-progress")
    out, err = rerun.communicate(timeout=HANG_S)
    assert rerun.returncode == 0, err[-3000:]
    assert "1 done, 3 to run" in out
    _assert_complete(sweep)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished work was not redone
    assert (sweep.report / "REPORT.md").is_file()

    again = _cli("sweep", str(tmp_path / "small.toml"), "--output", str(tmp_path / "out"), "--no-progress")
    out, err = again.communicate(timeout=HANG_S)
    assert again.returncode == 0 and "4 done, 0 to run" in out, err[-3000:]
    _assert_complete(sweep)


@pytest.mark.slow
def test_submitit_local_executor_runs_the_same_sweep(tmp_path):
    sweep = load_sweep(text=SMALL, output=str(tmp_path / "out"))
    outcome = run_sweep(sweep, "submitit-local", progress=False, log=lambda *a: None)
    assert outcome["failed"] == [] and outcome["report"].is_file()
    _assert_complete(sweep)
    assert list((sweep.state_dir / "submitit").glob("*_result.pkl"))  # really went through submitit's jobs


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, capsys):
    text = SMALL.replace('models = ["vgg19_rfpool1", "vgg19_rfpool2"]', 'models = ["vgg19_rfpool5", "vgg19_rfpool1"]')
    text = text.replace("seeds = [0, 1]", "seeds = [0]").replace("epochs = 2", "epochs = 1")
    (tmp_path / "bad.toml").write_text(text)
    args = ["sweep", str(tmp_path / "bad.toml"), "--output", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    out = capsys.readouterr()
    assert "1 run(s) failed" in out.err
    sweep = load_sweep(tmp_path / "bad.toml", output=str(tmp_path / "out"))
    rows = {r["model"]: r for r in sweep_status(sweep)}
    assert rows["vgg19_rfpool1"]["status"] == "done"
    assert rows["vgg19_rfpool5"]["status"] == "failed" and "vgg19_rfpool4" in rows["vgg19_rfpool5"]["error"]
    assert main(["sweep", str(tmp_path / "bad.toml"), "--output", str(tmp_path / "out"), "--status"]) == 0
    assert "1 done, 0 running, 1 failed, 0 pending" in capsys.readouterr().out


def _table_rows(report: str, heading: str):
    section = report.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| k ")]


@pytest.mark.demo
def test_demo_reports_every_table_and_figure_and_reproduces_the_committed_report(tmp_path):
    start = time.perf_counter()
    proc = _cli("demo", "--out", str(tmp_path / "demo"), "--no-progress")
    out, err = proc.communicate(timeout=HANG_S)
    print(f"rf-bench demo: {time.perf_counter() - start:.0f} s")  # a figure for the docs, not a pass mark
    assert proc.returncode == 0, err[-3000:]
    report_path = tmp_path / "demo" / "report" / "REPORT.md"
    assert str(report_path) in out.replace("\n", "")
    report = report_path.read_text()
    # its cost beside it: the wall time, and the CPU time of the workers that trained and probed (the main process
    # alone, which mostly waits, would use a small part of one core)
    facts = json.loads((report_path.parent / "study.json").read_text())
    assert facts["runs"] == 16 and facts["wall_s"] > 0 and facts["cpu_s"] > 0.5 * facts["wall_s"], facts
    assert report.index("## Does the paper hold?") < report.index("## Pruning")  # the claims come first
    assert "dense_accuracy" in out and "Does the paper hold?" in out  # and are printed on the terminal
    for kind in ("Pruning", "Hessian", "CKA", "RF maps", "Saturation"):
        for family in ("resnet50_rfpool", "vgg19_rfpool"):
            assert f"## {kind}: {family} on digits" in report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    # prune (stored, recalibrated, each over all and over live weights; collapse; live sparsity), Hessian top-k,
    # Hessian density, CKA, RF maps and saturation for each family
    assert len(images) == 22 and all((report_path.parent / png).stat().st_size > 10_000 for png in images)

    # numbers in the report equal the stored results (recomputed here from the result files)
    store = ResultStore(tmp_path / "demo" / "results")
    hessian = store.records("hessian")
    assert len(hessian) == 16 and len(store.records("prune")) == 16 and len(store.records("rfmap")) == 16
    assert len(store.records("cka")) == 8
    rows = _table_rows(report, "Hessian: vgg19_rfpool on digits (BN recalibrate)")
    for k in (1, 2, 3, 4):
        tops = [r["values"]["final"]["top"] for r in hessian if r["models"] == [f"vgg19_rfpool{k}"]]
        row = next(r for r in rows if r[0] == str(k))
        assert row[1] == str(178 * k + 2) and row[2] == "2"
        assert row[6].startswith(f"{np.mean(tops):.4g} ± ")
    for r in _table_rows(report, "RF maps: resnet50_rfpool on digits"):
        k = int(r[0])
        assert r[1] == r[2] == str(105 * k + 2)  # analytic RF = gradient-measured RF
    # the committed docs/demo/REPORT.md is this report: same verdicts, same pruning tables (fixed seeds, one thread
    # per worker); only its header's path and date differ
    committed = (Path(__file__).parents[1] / "docs" / "demo" / "REPORT.md").read_text()
    verdicts = lambda text: re.search(r"Rows: ([^.]*)\.", text).group(1)  # noqa: E731
    assert verdicts(report) == verdicts(committed)
    for family in ("resnet50_rfpool", "vgg19_rfpool"):
        for bn in ("stored", "recalibrate"):
            heading = f"Pruning: {family} on digits (BN {bn})"
            assert _table_rows(report, heading) == _table_rows(committed, heading)
    for r in store.records("prune"):
        run = load_run(r["run_dirs"][0])
        last = json.loads((run.path / "metrics.jsonl").read_text().splitlines()[-1])
        assert r["values"]["dense_acc"] == pytest.approx(last["test_acc"], abs=1e-9)


@pytest.mark.slow
def test_a_terminated_sweep_ends_its_workers(tmp_path):
    import psutil

    sweep_file = tmp_path / "long.toml"
    sweep_file.write_text('[grid]\nmodels = ["vgg19_rfpool1", "vgg19_rfpool2"]\ndatasets = ["digits"]\nseeds = [0]\n'
                          '[train]\nrecipe = "fast"\nepochs = 200\nmodel_kwargs = { width_mult = 0.125 }\n'
                          '[probes]\nsuite = "rfmap"\n')
    proc = subprocess.Popen([sys.executable, "-m", "rf_bench.cli", "sweep", str(sweep_file), "--output",
                             str(tmp_path / "out"), "--max-parallel", "2", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((tmp_path / "out" / "runs").glob("*/config.json"))) < 2:
        time.sleep(0.5)  # both workers are training
    workers = parent.children(recursive=True)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers left running: {alive}"
    assert proc.returncode != 0
