"""Mistakes and faults a user meets: each ends in exit status 2 and one line that names the file or flag and
the fix, with no traceback, and no finished work lost."""
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from rf_bench import cli
from rf_bench import train as train_module
from rf_bench.results import ResultStore
from rf_bench.train import resolve_config, train

from fakedata import cifar_arrays, write_cifar_batches

TINY_RUN = ["--model", "vgg19_rfpool2", "--dataset", "digits", "--recipe", "fast", "--lr", "0.02",
            "--batch-size", "64", "--width-mult", "0.0625", "--no-progress", "--cpu"]


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.strip().count("\n") == 0 and err.startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _train_cli(capsys, tmp_path, *args):
    rc = train_module.main([*TINY_RUN, "--output", str(tmp_path / "runs"), *args])
    return rc


# ------------------------------------------------------------------------------------ train settings

@pytest.mark.parametrize("args, needle", [
    (["--epochs", "-3"], "--epochs -3"),
    (["--epochs", "0"], "--epochs 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--lr", "0"], "--lr 0"),
    (["--lr", "-0.1"], "--lr -0.1"),
    (["--momentum", "1.5"], "--momentum 1.5"),
    (["--prune-rate", "1.0"], "--prune-rate 1.0"),
    (["--label-smoothing", "-0.2"], "--label-smoothing -0.2"),
    (["--model", "vgg19_rfpol2"], "did you mean vgg19_rfpool2"),
    (["--dataset", "digit"], "did you mean digits"),
    (["--model-kwargs", "widht_mult=0.5"], "widht_mult"),
])
def test_bad_training_settings_are_refused_before_any_work(capsys, tmp_path, args, needle):
    rc = _train_cli(capsys, tmp_path, "--epochs", "1", *args)
    _one_line_error(capsys, rc, needle)
    finished = list((tmp_path / "runs").glob("*/done")) if (tmp_path / "runs").exists() else []
    assert not finished  # in particular, --epochs -3 no longer marks untrained weights as a finished run


def test_rf_bench_train_refuses_an_unknown_model_and_debug_shows_the_traceback(capsys, tmp_path):
    args = ["train", "--model", "resnet50_rfpol3", "--dataset", "digits", "--output", str(tmp_path / "runs")]
    _one_line_error(capsys, cli.main(args), "--model 'resnet50_rfpol3'", "did you mean resnet50_rfpool3")
    with pytest.raises(ValueError, match="resnet50_rfpol3"):
        cli.main(["--debug", *args])


def test_garbled_and_unknown_config_files(capsys, tmp_path):
    garbled = tmp_path / "config.json"
    garbled.write_text('{"model": "vgg19_rfpool2", ')
    _one_line_error(capsys, train_module.main(["--config", str(garbled)]), str(garbled), "not valid JSON")
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"model": "vgg19_rfpool2", "dataset": "digits", "epoch": 2}))
    _one_line_error(capsys, train_module.main(["--config", str(typo)]), "unknown field 'epoch'", "did you mean 'epochs'")


# ------------------------------------------------------------------------------------- checkpoints

def _tiny_cfg(epochs=2):
    return resolve_config("fast", model="vgg19_rfpool2", dataset="digits", seed=0, epochs=epochs, lr=0.02,
                          batch_size=64, model_kwargs=dict(width_mult=0.0625))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-epoch run (checkpoints after epochs 1 and 2 kept) and a copy of its final weights."""
    run_dir = train(_tiny_cfg(), output=tmp_path_factory.mktemp("runs"), progress=False, cpu=True)
    return run_dir, load_file(str(run_dir / "model.safetensors"))


def _copy_run(run_dir, tmp_path):
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def _corrupt(path):
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 3]))  # a torn write


def _assert_same_weights(run_dir, reference):
    rebuilt = load_file(str(run_dir / "model.safetensors"))
    assert rebuilt.keys() == reference.keys()
    assert all(torch.equal(rebuilt[k], reference[k]) for k in reference)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, finished_run):
    original, reference = finished_run
    run_dir = _copy_run(original, tmp_path)
    (run_dir / "done").unlink()
    (run_dir / "model.safetensors").unlink()  # as if killed after the last checkpoint
    older, latest = sorted((run_dir / "checkpoints").glob("step_*"))
    _corrupt(latest / "model.safetensors")
    train(_tiny_cfg(), output=tmp_path / "runs", progress=False, cpu=True)
    assert (run_dir / "done").is_file()
    _assert_same_weights(run_dir, reference)  # epoch 2 retrained from epoch 1's checkpoint: the same weights
    assert (run_dir / "checkpoints" / f"corrupt_{latest.name}").is_dir()  # kept for inspection, never retried


def test_every_checkpoint_corrupt_is_one_line(capsys, tmp_path, finished_run):
    original, _ = finished_run
    run_dir = _copy_run(original, tmp_path)
    (run_dir / "done").unlink()
    for ckpt in (run_dir / "checkpoints").glob("step_*"):
        _corrupt(ckpt / "model.safetensors")
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(_tiny_cfg().identity()))
    rc = train_module.main(["--config", str(cfg_file), "--output", str(tmp_path / "runs"), "--no-progress", "--cpu"])
    _one_line_error(capsys, rc, "every checkpoint", f"delete {run_dir}")


def test_damaged_final_weights_of_a_finished_run_are_rebuilt(tmp_path, finished_run):
    original, reference = finished_run
    run_dir = _copy_run(original, tmp_path)
    weights = run_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit in a tensor: it still loads, only the sha256 tells
    weights.write_bytes(bytes(data))
    train(_tiny_cfg(), output=tmp_path / "runs", progress=False, cpu=True)
    _assert_same_weights(run_dir, reference)
    assert "sha256" in (run_dir / "done").read_text()


def test_a_full_disk_while_checkpointing_is_one_line(capsys, tmp_path, monkeypatch):
    from accelerate import Accelerator

    def no_space(self, *args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(Accelerator, "save_state", no_space)
    rc = _train_cli(capsys, tmp_path, "--epochs", "1")
    _one_line_error(capsys, rc, "could not write checkpoint", "No space left", "free space", "resumes from the start")


# ---------------------------------------------------------------------------------- results store

def _cli_main(*args):
    return cli.main(list(args))


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny_runs):
    results = tmp_path_factory.mktemp("results")
    assert _cli_main("probe", *map(str, tiny_runs), "--suite", "prune", "--results", str(results), "--no-progress",
                     "--set", "finetune_epochs=0", "--set", "rates=[0.5]") == 0
    return results


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_text(p.read_text()[:40]), "unreadable"),            # half-written
    (lambda p: p.write_text("[1, 2, 3]"), "not a result object"),          # valid JSON, not an object
    (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "unreadable"),       # not UTF-8
    (lambda p: p.write_text(json.dumps({"probe": "prune", "dataset": "digits"})), "lacks values"),
])
def test_a_bad_result_file_is_named_skipped_counted_and_recomputed(capsys, tmp_path, probed, tiny_runs, damage,
                                                                    reason):
    results = tmp_path / "results"
    shutil.copytree(probed, results)
    victim = sorted(results.glob("*/prune-*.json"))[0]
    damage(victim)
    capsys.readouterr()
    assert _cli_main("report", str(results), "--out", str(tmp_path / "report")) == 0
    err = capsys.readouterr().err
    assert str(victim) in err and reason in err
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert "1 result file(s) left out" in report and victim.name in report
    assert _cli_main("claims", str(results), "--json") == 0
    out = capsys.readouterr()
    assert str(victim) in out.err
    dense = next(v for v in json.loads(out.out) if v["claim"] == "dense_accuracy")
    assert dense["n"] == len(tiny_runs) - 1  # the table counts what it read
    assert _cli_main("probe", *map(str, tiny_runs), "--suite", "prune", "--results", str(results), "--no-progress",
                     "--set", "finetune_epochs=0", "--set", "rates=[0.5]") == 0
    assert "recomputing" in capsys.readouterr().out
    store = ResultStore(results)
    assert len(store.records("prune")) == len(tiny_runs) and not store.skipped


@pytest.mark.parametrize("command", ["report", "claims"])
def test_a_store_of_only_unusable_files_names_each_and_why(capsys, tmp_path, command):
    results = tmp_path / "results"
    (results / "run-a").mkdir(parents=True)
    (results / "run-b").mkdir()
    torn, listed = results / "run-a" / "prune-1.json", results / "run-b" / "cka-2.json"
    torn.write_text('{"probe": "prune", "val')
    listed.write_text("[1, 2]")
    rc = _cli_main(command, str(results), *(["--out", str(tmp_path / "report")] if command == "report" else []))
    err = capsys.readouterr().err
    assert rc == 2
    error_line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert str(torn) in error_line and "unreadable" in error_line
    assert str(listed) in error_line and "not a result object" in error_line
    assert "run `rf-bench probe` first" not in err


def test_a_garbled_run_config_names_the_file(capsys, tmp_path, tiny_runs):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs[0], run_dir)
    (run_dir / "config.json").write_text("{not json")
    rc = _cli_main("probe", str(run_dir), "--suite", "prune", "--results", str(tmp_path / "results"))
    _one_line_error(capsys, rc, str(run_dir / "config.json"), "damaged", "rerun its training command")


# ----------------------------------------------------------------------------------------- sweeps

SWEEP_HEAD = '[grid]\nmodels = ["vgg19_rfpool1"]\ndatasets = ["digits"]\n'


@pytest.mark.parametrize("body, needles", [
    ('[grid]\nmodels = ["vgg19_rfpool1"]\nseed = [0, 1, 2]\n', ["[grid] has no key 'seed'", "did you mean 'seeds'"]),
    ('[sweep]\nnmae = "x"\n' + SWEEP_HEAD, ["[sweep] has no key 'nmae'", "'name'"]),
    (SWEEP_HEAD + "[train]\nseed = [0, 1, 2]\n", ["[train] seed is set per run by [grid] seeds"]),
    (SWEEP_HEAD + "[train]\nepocs = 3\n", ["[train] has no key 'epocs'", "'epochs'"]),
    (SWEEP_HEAD + '[train]\nepochs = "3"\n', ["[train] epochs = '3' should be a whole number"]),
    (SWEEP_HEAD + "[train]\nepochs = 3.5\n", ["[train] epochs = 3.5 should be a whole number"]),
    (SWEEP_HEAD + "[train]\nnesterov = 1\n", ["[train] nesterov = 1 should be true or false"]),
    (SWEEP_HEAD + "[train]\nepochs = -3\n", ["--epochs -3"]),
    (SWEEP_HEAD + "[probes.hesian]\nk = 3\n", ["has no probe 'hesian'", "'hessian'"]),
    (SWEEP_HEAD + "[probes.hessian]\nkk = 3\n", ["[probes.hessian] has no key 'kk'", "'k'"]),
    (SWEEP_HEAD + '[probes]\nsuite = "prune,cak"\n', ["unknown probe 'cak'"]),
    (SWEEP_HEAD + '[probes]\nsuite = "prune"\n[probes.cka]\nn_images = 8\n', ["has no probe 'cka'"]),
    ('[grid]\nmodels = ["vgg19_rfpool1"]\ndatasets = ["digit"]\n', ["did you mean digits"]),
    ('[grid]\nfamilies = ["vgg19_rfpool"]\nks = [1, "2"]\n', ["[grid] ks must be a non-empty list of ints"]),
    ("[grids]\n", ["has no section 'grids'", "'grid'"]),
])
def test_sweep_files_are_validated_whole_before_any_work(capsys, tmp_path, body, needles):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    rc = _cli_main("sweep", str(path), "--dry-run", "--output", str(tmp_path / "out"))
    _one_line_error(capsys, rc, str(path), *needles)  # "[grid]" etc. survive: text, not rich markup
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ data

def _cifar_dir(tmp_path, mutate):
    folder = write_cifar_batches(tmp_path / "data", cifar_arrays(n_train=10, n_test=5))
    mutate(folder)
    return tmp_path / "data"


def _rewrite(folder, name, transform):
    path = folder / name
    obj = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps(transform(obj)))


@pytest.mark.parametrize("mutate, needle", [
    (lambda f: _rewrite(f, "test_batch", lambda b: {b"data": b[b"data"]}), "no 'labels' entry"),
    (lambda f: _rewrite(f, "test_batch", lambda b: [b]), "is not a CIFAR-10 python batch"),
    (lambda f: _rewrite(f, "test_batch", lambda b: {**b, b"labels": [12] * len(b[b"labels"])}),
     "outside the 10 classes"),
    (lambda f: _rewrite(f, "test_batch", lambda b: {**b, b"labels": b[b"labels"][:-1]}), "labels"),
    (lambda f: _rewrite(f, "batches.meta", lambda m: {b"num_vis": 3072}), "no 'label_names' entry"),
])
def test_malformed_cifar_is_one_line_and_never_cached(tmp_path, mutate, needle):
    from rf_bench import data as rf_data

    data_dir = _cifar_dir(tmp_path, mutate)
    cache = tmp_path / "cache"
    for _ in range(2):  # the second load must fail the same way: nothing bad was cached
        with pytest.raises(ValueError, match=needle) as info:
            rf_data.load("cifar10", "test", data_dir=data_dir, cache_dir=cache)
        assert "\n" not in str(info.value) and ("re-download" in str(info.value) or "rebuild" in str(info.value))
    assert not list(cache.rglob("*.safetensors"))  # the bad split was not cached


@pytest.mark.parametrize("setting, needles", [
    ("hessian.k=abc", ["hessian.k takes a whole number", "--set 'hessian.k=90'", "got 'abc'"]),
    ("prune.rates=0.5,0.9", ["prune.rates takes a list of numbers", "prune.rates=[0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.97, 0.98]"]),
    ("prune.rates=[0.5,1.5]", ["prune.rates [1.5] outside [0, 1)"]),
    ("prune.bn=[\"adaptive\"]", ["prune.bn ['adaptive'] must list one or more of stored, recalibrate"]),
])
def test_every_setting_is_checked_before_any_probe_runs(capsys, tmp_path, tiny_runs, setting, needles):
    results = tmp_path / "results"
    rc = _cli_main("probe", str(tiny_runs[0]), "--suite", "rfmap,prune,hessian", "--results", str(results),
                   "--no-progress", "--set", setting)
    _one_line_error(capsys, rc, f"--set {setting}", *needles)
    assert not results.exists() or not list(results.rglob("*.json"))  # rfmap, first in the suite, never ran


def test_missing_paths_and_a_runs_folder_given_as_results_point_the_right_way(capsys, tmp_path, tiny_runs):
    rc = _cli_main("probe", str(tmp_path / "no-such-run"), "--suite", "prune", "--results", str(tmp_path / "r"))
    _one_line_error(capsys, rc, "no such run directory", "does not exist")
    runs = str(Path(tiny_runs[0]).parent)
    for command in ("report", "claims"):
        rc = _cli_main(command, runs, *(["--out", str(tmp_path / "report")] if command == "report" else []))
        _one_line_error(capsys, rc, "holds run directories, not probe results", f"rf-bench probe {runs} --results")
    worded = []
    for command in ("report", "claims"):
        rc = _cli_main(command, str(tmp_path / "none"), *(["--out", str(tmp_path / "report")] if command == "report" else []))
        worded.append(_one_line_error(capsys, rc, "no results folder"))
    assert worded[0] == worded[1]  # the same missing folder, worded the same way
