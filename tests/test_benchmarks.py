"""The GPU benchmark scripts run end to end (on the CPU, in their smoke mode), so they do not rot between GPU loans."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_S

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_the_gpu_suite_runs_end_to_end_in_cpu_smoke_mode(tmp_path):
    """benchmarks/gpu_suite.sh --cpu-smoke: the GPU check's own script, its parts, its limits and its files, on tiny
    sizes, so that it cannot rot while no GPU is at hand (packed runs included, in eager mode)."""
    results = sorted((BENCH / "results").glob("*"))
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(BENCH / "gpu_suite.sh"), "--out", str(out), "--cpu-smoke"], capture_output=True,
                          text=True, timeout=1500, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "suite.log").read_text()
    for part in ("CUDA tests", "gpu_train.py", "hessian_gpu.py", "gpu_headline.py"):
        assert f"== {part}: ok" in log, log
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_train.json", "gpu_train.md", "headline.json", "headline_results.tar.gz", "hessian_gpu.json",
                     "hessian_gpu.md", "parts.log", "suite.log"]  # the device tool brings back at most 8
    headline = json.loads((out / "headline.json").read_text())
    assert headline["quick"] and headline["runs"] == 4 and headline["failed"] == 0
    assert {v["metric"] for v in headline["verdicts"]} >= {"accuracy lost at 0.9, one-shot, BN stored",
                                                          "accuracy lost at 0.9, one-shot, BN recalibrate",
                                                          "accuracy lost at 0.9 of live weights, one-shot, BN stored"}
    import tarfile

    with tarfile.open(out / "headline_results.tar.gz") as tar:
        names = tar.getnames()
    assert "report/REPORT.md" in names and any(n.startswith("results/") and n.endswith(".json") for n in names)
    train = json.loads((out / "gpu_train.json").read_text())
    row = train["rows"][0]
    assert train["quick"] and row["model"] == "resnet50_rfpool1" and row["batch"] == 16
    assert row["bare"] > 0 and row["trainer"] > 0 and row["packed2"] > 0, row  # the packed path ran and finished
    assert "| resnet50_rfpool1 | 32x32 | 16 |" in (out / "gpu_train.md").read_text()
    hessian = json.loads((out / "hessian_gpu.json").read_text())["rows"][0]
    assert hessian["model"] == "resnet50_rfpool4" and hessian["converged"] and hessian["hvp_rel_error"] < 1e-5
    assert sorted((BENCH / "results").glob("*")) == results  # CPU smoke figures are never written as GPU results


def test_packed_throughput_is_all_images_over_the_whole_span():
    """Two processes, one of which started late: adding their own rates (200 + 200) would overstate the GPU's."""
    gpu_train = _load("gpu_train")
    windows = [dict(start=10.0, end=11.0, images=200), dict(start=10.5, end=11.5, images=200)]
    assert gpu_train.packed_throughput(windows) == pytest.approx(400 / 1.5)
    assert gpu_train.window_rate(windows[0]) == 200


def test_a_failed_measurement_is_recorded_and_the_budget_stops_the_rest(capsys):
    gpu_train = _load("gpu_train")
    row = dict(model="m", size=32, batch=8)
    written = []

    def boom():
        raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")

    jobs = [(row, "bare", lambda: 5.0), (row, "trainer", boom), (row, "captured", lambda: 7.0)]
    gpu_train.run_jobs(jobs, budget_s=float("inf"), after_each=lambda: written.append(dict(row)))
    assert row["bare"] == 5.0 and row["captured"] == 7.0
    assert row["failed"] == {"trainer": "RuntimeError: Tried to allocate 2 GiB"}
    assert len(written) == 3 and "captured" not in written[1]  # written after each, the failure included
    late = dict(model="m", size=32, batch=8)
    gpu_train.run_jobs([(late, "bare", lambda: 1.0)], budget_s=-1, after_each=lambda: None)
    assert late == dict(model="m", size=32, batch=8, not_measured=["bare"])


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_gpu_benchmarks_refuse_a_missing_gpu_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for script in ("gpu_train.py", "hessian_gpu.py"):
        proc = subprocess.run([sys.executable, str(BENCH / script)], capture_output=True, text=True, timeout=HANG_S)
        assert proc.returncode == 1 and proc.stderr.strip().startswith("error: no CUDA device here")
        assert "Traceback" not in proc.stderr


def test_make_bench_covers_every_benchmark_and_says_what_it_leaves_out(capsys):
    run_all = _load("run_all")
    scripts = {p.name for p in BENCH.glob("*.py")} - {"_common.py", "run_all.py"}
    assert {b.script for b in run_all.BENCHMARKS} == scripts
    assert run_all.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for script in ("hessian_compare.py", "cka_compare.py"):
        assert f"skip {script}: slow comparison" in out
    for script in ("hessian_memory.py", "hessian_full_width.py"):
        assert f"skip {script}: full-width Hessian" in out
    assert "would run trainer_throughput.py" in out


def test_rf_coverage_rechecks_rows_in_place(tmp_path, monkeypatch):
    """`rf_coverage.py --recheck MODEL` redoes that model's gradient check in the committed results, keeps every
    other row as it was, recomputes the summary and says which rows were redone, and refuses a model it never
    checked."""
    monkeypatch.syspath_prepend(str(BENCH))
    import rf_coverage

    rf_coverage.main(["--models", "test_resnet", "test_efficientnet", "--jobs", "1", "--out", str(tmp_path)])
    quick = json.loads((tmp_path / "rf_coverage_quick.json").read_text())
    assert {c["model"] for c in quick["checks"]} == {"test_resnet", "test_efficientnet"}
    # the independent gradient (positive weights, average pools, SE's global mean detached) finds the analytic RF
    assert all(c["independent"] == c["analytic"] == c["gradient"] for c in quick["checks"]), quick["checks"]
    assert quick["summary"]["independent_agrees"] == 2 and quick["summary"]["disagreeing_families"] == []
    stale = dict(quick, checks=[dict(c, agrees=False, gradient=1) if c["model"] == "test_resnet" else c
                                for c in quick["checks"]])
    (tmp_path / "rf_coverage.json").write_text(json.dumps(stale))
    rf_coverage.main(["--recheck", "test_resnet", "--out", str(tmp_path)])
    redone = json.loads((tmp_path / "rf_coverage.json").read_text())
    rows = {c["model"]: c for c in redone["checks"]}
    assert rows["test_resnet"]["agrees"] and rows["test_resnet"]["gradient"] == rows["test_resnet"]["analytic"]
    assert "rechecked" in rows["test_resnet"] and "rechecked" not in rows["test_efficientnet"]
    assert rows["test_efficientnet"] == {c["model"]: c for c in quick["checks"]}["test_efficientnet"]
    assert redone["summary"]["gradient_agrees"] == 2 and redone["meta"]["rechecked"] == ["test_resnet"]
    assert "test_resnet" in (tmp_path / "rf_coverage.md").read_text().split("redone after it")[1]
    with pytest.raises(SystemExit, match="not among the checked models: resnet18"):
        rf_coverage.main(["--recheck", "resnet18", "--out", str(tmp_path)])


def test_the_independent_rf_keeps_branches_and_cuts_only_global_summaries(monkeypatch):
    """rf_coverage.independent_rf against RFs worked out by hand: a max-pool counts its whole window, a
    squeeze-excitation gate's global mean does not make the RF global, and a TF-"same" max-pool's -inf padding
    does not poison the gradient."""
    import torch
    from torch import nn

    monkeypatch.syspath_prepend(str(BENCH))
    import rf_coverage

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.pool = nn.MaxPool2d(3, stride=1, padding=1)
            self.fc = nn.Conv2d(2, 2, 1)

        def forward_features(self, x):
            x = self.pool(self.conv(x))  # RF 3, then 5
            gate = torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))  # a global summary: detached
            x = x * gate
            return nn.functional.max_pool2d(nn.functional.pad(x, (1, 1, 1, 1), value=float("-inf")), 3, 1)  # 7

    assert rf_coverage.independent_rf(Gated(), (1, 15, 15), None) == 7
    assert rf_coverage.independent_rf(Gated(), (1, 15, 15), "pool") == 5
    with pytest.raises(ValueError, match="reaches the border of the 7 px input"):
        rf_coverage.independent_rf(Gated(), (1, 7, 7), None)

    class Normed(nn.Module):  # PoolFormer's GroupNorm(1): statistics over every position; MambaOut's NHWC output
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.norm = nn.GroupNorm(1, 4)

        def forward_features(self, x):
            return nn.functional.relu6(self.norm(self.conv(x))).permute(0, 2, 3, 1)

    assert rf_coverage.independent_rf(Normed(), (1, 15, 15), None) == 3

    class Attending(nn.Module):
        def forward_features(self, x):
            tokens = x.flatten(2)  # (N, C, HW): every position attends to every other
            weights = torch.softmax(tokens.transpose(1, 2) @ tokens, dim=-1)
            return (tokens @ weights.transpose(1, 2)).reshape(x.shape)

    with pytest.raises(rf_coverage.AttentionAcrossPositions):
        rf_coverage.independent_rf(Attending(), (1, 15, 15), None)


def test_the_recipe_benchmark_runs_every_variant_and_measures_how_far_weights_moved(tmp_path):
    """benchmarks/recipes.py --quick: every recipe variant trains; the paper's recipe as written moves the weights
    by a sliver of what fast moves them (its clip of 0.1 at lr 1e-4 bounds every step); weights_moved is the
    relative L2 distance, checked on weights written by hand."""
    import torch
    from safetensors.torch import save_file

    recipes = _load("recipes")
    run = tmp_path / "run"
    run.mkdir()
    save_file({"w": torch.tensor([3.0, 4.0]), "bn.running_var": torch.ones(2)}, str(run / "init.safetensors"))
    save_file({"w": torch.tensor([3.0, 4.5]), "bn.running_var": torch.full((2,), 9.0)}, str(run / "model.safetensors"))
    assert recipes.weights_moved(run) == pytest.approx(0.5 / 5.0)  # running statistics are not weights
    assert recipes.main(["--quick", "--jobs", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "recipes_quick.json").read_text())
    rows = {r["recipe"]: r for r in result["rows"]}
    assert set(rows) == set(recipes.VARIANTS)
    assert rows["paper (as written)"]["lr"] == 1e-4 and rows["paper, no clip"]["clip_grad"] is None
    assert rows["paper, clip by value 0.1"]["clip_mode"] == "value"
    assert rows["paper (as written)"]["weights_moved"] < 0.01 * rows["fast"]["weights_moved"]
    assert "| paper (as written) | 1 |" in (tmp_path / "recipes_quick.md").read_text()


def test_the_headline_sizes_its_seeds_from_the_measured_rate_and_skips_without_data(tmp_path):
    headline = _load("gpu_headline")
    assert headline.seeds_that_fit(240, None, 12)["seeds"] == [0]
    fast = headline.seeds_that_fit(240, 20_000, 12)  # 10,000 images x 12 epochs x 1.5 / 20,000 + 10 = 19 s a run
    assert fast["seeds"] == [0, 1] and fast["estimate_s"] == 8 * 19
    assert headline.seeds_that_fit(240, 4_000, 12)["seeds"] == [0]  # 55 s a run: 8 runs would not fit
    assert headline.main(["--out", str(tmp_path), "--device", "cpu", "--data-dir", str(tmp_path / "none")]) == 0
    assert json.loads((tmp_path / "headline.json").read_text())["skipped"]
