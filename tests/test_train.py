"""Training: accuracy, run directory, exact resume after SIGKILL, 2 processes, bf16, failures."""
import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rf_bench
from rf_bench import train as T

from conftest import HANG_S

TRAIN_PY = str(Path(rf_bench.__file__).parent / "train.py")
BIN = Path(sys.executable).parent
TINY = ["--dataset", "digits", "--width-mult", "0.125", "--recipe", "fast", "--lr", "0.02", "--batch-size", "32",
        "--no-progress"]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=HANG_S, **kw)


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _run_dir(proc):
    """The run directory from training's last line: ``test accuracy 91.23% after 4 epochs; run directory: PATH``."""
    line = next(line for line in proc.stdout.splitlines() if "run directory: " in line)
    return Path(line.split("run directory: ", 1)[1])


def _weights(run_dir):
    return load_file(str(Path(run_dir) / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet50_rfpool2", "vgg19_rfpool2"])
def test_accelerate_launch_trains_well_above_chance(tmp_path, model):
    proc = _run([str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", TRAIN_PY, "--model", model, "--epochs", "4",
                 "--output", str(tmp_path), *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _run_dir(proc)
    metrics = _metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert f"test accuracy {100 * metrics[-1]['test_acc']:.2f}% after 4 epochs; run directory: " in proc.stdout
    assert metrics[-1]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    for name in ("config.json", "init.safetensors", "model.safetensors", "metrics.jsonl", "done"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["model"] == model and config["versions"]["torch"] == torch.__version__
    assert config["model_kwargs"]["num_classes"] == 10
    init, final = load_file(str(run_dir / "init.safetensors")), _weights(run_dir)
    assert init.keys() == final.keys() and not all(torch.equal(init[k], final[k]) for k in init)
    # the same command again: nothing to redo
    again = _run([sys.executable, TRAIN_PY, "--model", model, "--epochs", "4", "--output", str(tmp_path), *TINY])
    assert again.returncode == 0 and "already finished" in again.stdout
    assert _metrics(run_dir) == metrics


def _kill_after(cmd, checkpoint: Path):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 300
    while not checkpoint.exists():
        assert proc.poll() is None, f"training ended before {checkpoint.name}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


# on CPU as it is; on CUDA (the GPU machine) with --deterministic, which is what makes cuDNN repeatable
DEVICES = [pytest.param(["--cpu"], id="cpu"),
           pytest.param(["--deterministic"], id="cuda-deterministic",
                        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.mark.slow
@pytest.mark.parametrize("device_args", DEVICES)
def test_sigkill_then_rerun_gives_bit_identical_weights(tmp_path, device_args):
    args = ["--model", "vgg19_rfpool2", "--epochs", "3", "--checkpoint-every-steps", "10", *TINY, *device_args]
    ref = _run([sys.executable, TRAIN_PY, *args, "--output", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_dir = _run_dir(ref)
    steps_per_epoch = 1347 // 32
    for name, step in (("mid_epoch", steps_per_epoch + 10), ("epoch_end", steps_per_epoch)):
        out = tmp_path / name
        run_dir = out / ref_dir.name
        _kill_after([sys.executable, TRAIN_PY, *args, "--output", str(out)],
                    run_dir / "checkpoints" / f"step_{step:08d}")
        assert not (run_dir / "done").exists()
        resumed = _run([sys.executable, TRAIN_PY, *args, "--output", str(out)])
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"step_{step:08d}" in resumed.stdout  # it resumed, not restarted
        a, b = _weights(ref_dir), _weights(run_dir)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert [m["epoch"] for m in _metrics(run_dir)] == [0, 1, 2]
        for m_ref, m in zip(_metrics(ref_dir), _metrics(run_dir)):
            assert m_ref["train_loss"] == m["train_loss"] and m_ref["test_acc"] == m["test_acc"]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    # BatchNorm statistics are per process on CPU (SyncBatchNorm is GPU-only), so compare a BN-free variant
    # (and the paper recipe: with clipping, float rounding differences stay at rounding level; without
    # clipping at lr 0.01 this tiny net amplifies them ~6x per step)
    args = ["--model", "resnet50_rfpool2", "--epochs", "1", "--model-kwargs", "norm_layer=layernorm2d",
            "--augment", *TINY, "--recipe", "paper", "--batch-size", "64", "--lr", "0.002"]
    # both on the CPU: the two processes below use CPU gloo, so the one process must not take a visible GPU
    one = _run([sys.executable, TRAIN_PY, *args, "--cpu", "--output", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    env = _env(ACCELERATE_USE_CPU="true")
    two = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29531", TRAIN_PY, *args,
                          "--output", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=HANG_S)
    assert two.returncode == 0, two.stderr[-3000:]
    run_two = _run_dir(two)
    assert json.loads((run_two / "config.json").read_text())["num_processes"] == 2
    a, b = _weights(_run_dir(one)), _weights(run_two)
    moved = max(float((a[k] - load_file(str(run_two / "init.safetensors"))[k]).abs().max()) for k in a)
    assert moved > 5e-4  # training changed the weights, so agreeing below means something
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    m1, m2 = _metrics(_run_dir(one))[0], _metrics(run_two)[0]
    assert m1["test_acc"] == pytest.approx(m2["test_acc"], abs=2 / 450)


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    run_dir = T.train(T.resolve_config("fast", model="vgg19_rfpool2", dataset="digits", epochs=3, lr=0.02,
                                       batch_size=32, mixed_precision="bf16", model_kwargs=dict(width_mult=0.125)),
                      output=tmp_path, progress=False)
    metrics = _metrics(run_dir)
    assert json.loads((run_dir / "config.json").read_text())["config"]["mixed_precision"] == "bf16"
    assert metrics[-1]["train_loss"] < 0.8 * metrics[0]["train_loss"]


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    proc = _run([sys.executable, TRAIN_PY, "--model", "vgg19_rfpool1", "--epochs", "3", *TINY,
                 "--lr", "1e8", "--clip-grad", "0", "--output", str(tmp_path)])
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: non-finite loss or gradient at epoch") and "global step" in err
    run_dir = next(tmp_path.iterdir())
    assert not (run_dir / "done").exists() and not (run_dir / "model.safetensors").exists()
    for ckpt in (run_dir / "checkpoints").glob("step_*"):  # anything kept is finite
        weights = load_file(str(ckpt / "model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_bad_input_fails_before_training(tmp_path):
    proc = _run([sys.executable, TRAIN_PY, "--model", "vgg19_rfpool5", "--epochs", "1", *TINY,
                 "--output", str(tmp_path)])
    assert proc.returncode == 2 and "--model vgg19_rfpool4" in proc.stderr and "40x40" in proc.stderr
    assert "Traceback" not in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="pass a writable --output"):
        T.check_writable(blocker / "run", 10)
    with pytest.raises(OSError, match="MB free"):
        T.check_writable(tmp_path / "run", 1 << 60)
    with pytest.raises(ValueError, match="unknown recipe 'slow'; choose one of paper, paper-lr0.1, finetune, fast"):
        T.resolve_config("slow")


def test_recipes_and_overrides():
    paper = T.resolve_config("paper", model="resnet50_rfpool3", dataset="cifar10")
    assert (paper.epochs, paper.lr, paper.momentum, paper.weight_decay, paper.clip_grad, paper.batch_size) == (
        200, 1e-4, 0.9, 5e-5, 0.1, 128)
    tuned = T.resolve_config("paper", lr=0.05, clip_grad=0)
    assert tuned.lr == 0.05 and tuned.clip_grad is None and tuned.epochs == 200
    assert T.run_dir_for(paper, "r") == T.run_dir_for(T.resolve_config("paper", model="resnet50_rfpool3",
                                                                       dataset="cifar10"), "r")
    assert T.run_dir_for(paper, "r") != T.run_dir_for(T.resolve_config("paper", model="resnet50_rfpool3",
                                                                       dataset="cifar10", seed=1), "r")
    # the paper's recipe with its one measured correction: every other value as written
    corrected = T.resolve_config("paper-lr0.1")
    assert corrected.lr == 0.1 and dataclasses.replace(corrected, lr=1e-4, recipe="paper") == T.resolve_config("paper")
    assert T.RECIPES["paper"]["lr"] == 1e-4  # `paper` stays the draft's recipe exactly as written


def test_paper_schedule_is_torch_cosine_annealing_per_epoch():
    cfg = T.resolve_config("paper", epochs=7)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    steps_per_epoch = 5
    for epoch in range(cfg.epochs):
        for s in range(steps_per_epoch):
            assert cfg.lr * T.lr_factor(cfg, epoch * steps_per_epoch + s, steps_per_epoch) == pytest.approx(
                opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        ref.step()
    fast = T.resolve_config("fast", epochs=10)
    assert T.lr_factor(fast, 0, 10) == pytest.approx(0.1)  # warm-up
    assert T.lr_factor(fast, 10, 10) == pytest.approx(1.0)
    assert T.lr_factor(fast, 99, 10) < 0.01


def test_each_compiled_run_starts_with_dynamo_caches_empty(monkeypatch):
    """A sweep worker trains run after run in one process; past dynamo's recompile limit the later runs would run
    eager without a word. Every compiled run resets dynamo first; an eager run leaves it alone."""
    import torch._dynamo

    from rf_bench.recipes import resolve_config
    from rf_bench.trainer import Trainer

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    Trainer._make_accelerator(resolve_config("fast", model="vgg19_rfpool1", dataset="digits", compile=True), None, True)
    assert resets == [1]
    Trainer._make_accelerator(resolve_config("fast", model="vgg19_rfpool1", dataset="digits"), None, True)
    assert resets == [1]


# ------------------------------------------------------------------------------ recipes that learn, or say so

@pytest.mark.slow
def test_the_default_recipe_learns_and_the_papers_as_written_warns_that_it_does_not(tmp_path):
    base = [sys.executable, "-m", "rf_bench.cli", "train", "--model", "vgg19_rfpool1", "--dataset", "digits",
            "--width-mult", "0.0625", "--epochs", "8", "--no-progress", "--output", str(tmp_path)]
    default = _run(base)
    assert default.returncode == 0, default.stderr[-2000:]
    assert "not learning" not in default.stderr
    run = Path(_run_dir(default))
    assert json.loads((run / "config.json").read_text())["config"]["recipe"] == T.DEFAULT_RECIPE
    assert _metrics(run)[-1]["test_acc"] > 0.5 and not (run / "warnings.jsonl").exists()
    paper = _run(base + ["--recipe", "paper"])
    assert paper.returncode == 0, paper.stderr[-2000:]
    (line,) = [line for line in paper.stderr.splitlines() if "not learning" in line]
    assert "recipe 'paper' at lr 0.0001" in line and "--recipe fast" in line
    (warning,) = [json.loads(w) for w in (Path(_run_dir(paper)) / "warnings.jsonl").read_text().splitlines()]
    assert warning["kind"] == "not_learning" and warning["epochs"] == 3 and warning["train_acc"] < 0.15


def test_not_learning_needs_three_epochs_near_chance_with_a_flat_loss():
    from rf_bench.trainer import not_learning

    flat = [dict(train_loss=2.30 - 0.001 * e, train_acc=0.11) for e in range(3)]
    assert not_learning(flat[:2], 10) is None  # too young to judge
    assert not_learning(flat, 10)["chance"] == 0.1
    falling = [dict(flat[0]), dict(flat[1]), dict(train_loss=2.0, train_acc=0.11)]  # loss down 13%: learning
    assert not_learning(falling, 10) is None
    above = [dict(flat[0]), dict(flat[1]), dict(train_loss=2.29, train_acc=0.2)]  # twice chance: learning
    assert not_learning(above, 10) is None


def test_clip_by_value_bounds_every_entry_of_each_step_not_the_norm(tmp_path):
    clip, lr = 1e-4, 1.0
    args = ["--model", "vgg19_rfpool1", "--dataset", "digits", "--width-mult", "0.0625", "--recipe", "paper",
            "--epochs", "1", "--batch-size", "256", "--lr", str(lr), "--momentum", "0", "--weight-decay", "0",
            "--schedule", "constant", "--clip-grad", str(clip)]
    moved = {}
    for mode in ("value", "norm"):
        parser = argparse.ArgumentParser()
        T.add_train_args(parser)
        run = T.train(T.config_from_args(parser.parse_args(args + ["--clip-mode", mode])), output=tmp_path,
                      progress=False)
        init, final = load_file(str(run / "init.safetensors")), load_file(str(run / "model.safetensors"))
        steps = _metrics(run)[-1]["step"]
        delta = torch.cat([(final[n] - init[n]).flatten() for n in init if "running" not in n and "num_batches" not in n])
        moved[mode] = (float(delta.abs().max()), float(delta.norm()), steps)
    (v_max, v_norm, steps), (_, n_norm, _) = moved["value"], moved["norm"]
    assert v_max <= steps * lr * clip * (1 + 1e-3)  # each entry moves at most lr * clip a step
    assert v_norm > steps * lr * clip  # more than a norm clip lets the whole vector move
    assert n_norm <= steps * lr * clip * (1 + 1e-3)


def test_the_one_evaluation_loop_leaves_padding_out_and_matches_a_direct_computation():
    """rf_bench.evaluation (the trainer's and the probes' loop): labels below 0 pad a shard and count nowhere; the
    sums equal cross-entropy and accuracy computed directly on the real images."""
    from torch.nn import functional as F

    from rf_bench.evaluation import evaluation_sums, loss_and_accuracy

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    padded = [(x[:6], y[:6]), (torch.cat([x[6:], torch.zeros(2, 5)]), torch.cat([y[6:], torch.tensor([-100, -1])]))]
    totals = evaluation_sums(model, padded, "cpu")
    with torch.no_grad():
        logits = model(x)
    assert totals[2] == 10 and totals[1] == (logits.argmax(1) == y).sum()
    loss, accuracy = loss_and_accuracy(totals)
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert accuracy == float((logits.argmax(1) == y).float().mean())
    assert loss_and_accuracy(evaluation_sums(model, [], "cpu")) == (0.0, 0.0)
