"""The GPU side of training: the capturable step, deterministic mode, packed runs; CUDA-only checks run on a GPU."""
import copy
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.capture import GraphSafeStep
from rf_bench.pruning import apply_masks, global_magnitude_masks
from rf_bench.recipes import TrainConfig, resolve_config, run_dir_for
from rf_bench.sweep import gpu_slots, load_sweep
from rf_bench.train import train
from rf_bench.trainer import _RunningStats, deterministic_mode

from conftest import TINY

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (runs on the GPU machine)")


def _tiny_model():
    import timm

    return timm.create_model("vgg19_rfpool2", width_mult=TINY, num_classes=10)


def _eager_step(model, optimizer, criterion, stats, cfg, masks, x, y, step):
    """The eager trainer's step without accelerate (which adds nothing on one CPU process)."""
    logits = model(x)
    loss = criterion(logits, y)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad) if cfg.clip_grad else None
    stats.update(loss, logits, y, grad_norm, step)
    optimizer.step()
    if masks is not None:
        apply_masks(model, masks)
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("recipe, prune", [("paper", None), ("fast", 0.5)])
def test_graph_safe_step_matches_the_eager_step(recipe, prune):
    """SGD in foreach ops with a device lr, clipping, masks and the device-side stats equal the eager step.

    Equal within rounding, not bit for bit: ``p + (u * -lr)`` rounds twice where eager SGD's
    ``p.add_(u, alpha=-lr)`` rounds once. This tiny pruned net amplifies that 1-ulp difference (at lr 0.1 to 4e-3 in
    6 steps in float32, measured; at lr 0.01 to 3.8e-5 on one thread, which failed the tolerance), so the nets run
    in float64, where the amplified rounding stays far below it, and the fast recipe at lr 0.01.
    """
    cfg = resolve_config(recipe, clip_grad=0.5, weight_decay=5e-4, prune_rate=prune, lr=0.01 if recipe == "fast" else None)
    eager_model = _tiny_model().double().train()
    masks = global_magnitude_masks(eager_model, [prune])[prune] if prune else None
    if masks:
        apply_masks(eager_model, masks)
    graph_model = copy.deepcopy(eager_model)
    make_opt = lambda m: torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=cfg.momentum,  # noqa: E731
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    eager_opt, graph_opt = make_opt(eager_model), make_opt(graph_model)
    criterion = nn.CrossEntropyLoss()
    eager_stats, graph_stats = _RunningStats(torch.device("cpu")), _RunningStats(torch.device("cpu"))
    body = GraphSafeStep(graph_model, graph_opt, criterion, graph_stats, cfg, masks)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        x, y = torch.randn(16, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g)
        lr = cfg.lr * (1.0 - step / 10)  # a schedule: the device lr must follow it
        for group in eager_opt.param_groups:
            group["lr"] = lr
        _eager_step(eager_model, eager_opt, criterion, eager_stats, cfg, masks, x, y, step)
        body.set_step(step, lr)
        for p in graph_model.parameters():
            p.grad = None
        body(x, y)
        graph_stats.seen += y.shape[0]
    moved = max(float((a.double() - b.double()).abs().max()) for a, b in zip(eager_model.state_dict().values(),
                                                                              _tiny_model().state_dict().values()))
    assert moved > 1e-3
    for (name, a), b in zip(eager_model.state_dict().items(), graph_model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    for p_eager, p_graph in zip(eager_model.parameters(), graph_model.parameters()):  # resumable: the same buffers
        torch.testing.assert_close(graph_opt.state[p_graph]["momentum_buffer"],
                                   eager_opt.state[p_eager]["momentum_buffer"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(graph_stats.sums, eager_stats.sums, rtol=1e-6, atol=0)
    if masks:
        params = dict(graph_model.named_parameters())
        assert all(bool((params[n][~m] == 0).all()) for n, m in masks.items())


def test_graph_safe_step_records_the_first_non_finite_step():
    cfg = resolve_config("fast", clip_grad=0.1)
    model = _tiny_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    stats = _RunningStats(torch.device("cpu"))
    body = GraphSafeStep(model, opt, nn.CrossEntropyLoss(), stats, cfg)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    body.set_step(7, 0.1)
    body(x, y)
    assert int(stats.first_bad) == -1
    body.set_step(8, 0.1)
    body(torch.full_like(x, float("nan")), y)
    body.set_step(9, 0.1)
    body(x, y)
    assert int(stats.first_bad) == 8


def test_cuda_graphs_and_compile_mode_are_refused_where_they_cannot_work(tmp_path):
    base = dict(model="vgg19_rfpool2", dataset="digits", epochs=1, batch_size=32, model_kwargs=dict(width_mult=TINY))
    if not CUDA:
        with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device, this process trains on cpu"):
            train(resolve_config("fast", cuda_graphs=True, **base), output=tmp_path, progress=False)
    with pytest.raises(ValueError, match="--compile-mode 'fastest' is not one of default, reduce-overhead"):
        train(resolve_config("fast", compile_mode="fastest", **base), output=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow
def test_a_compiled_run_saves_plain_timm_names_and_can_be_probed_and_pruned(tmp_path):
    from rf_bench.checkpoints import load_weights
    from rf_bench.results import find_runs

    cfg = resolve_config("fast", model="vgg19_rfpool2", dataset="digits", epochs=1, batch_size=64, compile=True,
                         prune_rate=0.5, model_kwargs=dict(width_mult=TINY))
    run_dir = train(cfg, output=tmp_path, progress=False, cpu=True)
    from safetensors import safe_open

    with safe_open(str(run_dir / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k for k in keys)
    (run,) = find_runs([str(run_dir)])
    model = run.create_model("final")  # loads into a fresh, uncompiled timm model
    load_weights(model, run_dir / "model.safetensors")
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if p.ndim > 1)
    total = sum(p.numel() for n, p in model.named_parameters() if p.ndim > 1)
    assert zeros / total >= 0.49  # the masks applied to the compiled model's weights kept them pruned


def test_a_cpu_run_does_not_pin_later_runs_of_the_process_to_the_cpu(tmp_path):
    from accelerate.state import PartialState

    from rf_bench.trainer import Trainer

    cfg = resolve_config("fast", model="vgg19_rfpool2", dataset="digits", epochs=1, batch_size=32,
                         model_kwargs=dict(width_mult=TINY))
    Trainer(cfg, tmp_path, cpu=True)
    assert PartialState()._cpu
    later = Trainer(cfg, tmp_path)  # no --cpu: accelerate's own choice (a GPU where there is one)
    assert not PartialState()._cpu
    assert later.accelerator.device.type == ("cuda" if CUDA else "cpu")
    Trainer(cfg, tmp_path, cpu=True)
    assert PartialState()._cpu and PartialState().device.type == "cpu"


def test_deterministic_mode_is_switched_on_and_restored():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG")) == before
    with deterministic_mode(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_new_fields_keep_old_run_ids_and_change_them_when_set():
    cfg = resolve_config("paper", model="resnet50_rfpool3", dataset="cifar10")
    assert not {"deterministic", "cuda_graphs", "compile_mode"} & set(cfg.identity())
    # the id an rf-bench 0.1.0 run directory of this config has: the hash of its 23 original fields
    import dataclasses

    from rf_bench.results import stable_hash
    old_fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in TrainConfig._LATER_FIELDS}
    assert len(old_fields) == 23
    assert run_dir_for(cfg, "r").name.endswith(stable_hash(old_fields))
    for change in (dict(deterministic=True), dict(cuda_graphs=True), dict(compile_mode="max-autotune")):
        other = resolve_config("paper", model="resnet50_rfpool3", dataset="cifar10", **change)
        assert run_dir_for(other, "r") != run_dir_for(cfg, "r")
        assert TrainConfig(**other.identity()) == other  # sweeps ship configs as identity() dicts


@pytest.mark.slow
def test_deterministic_training_on_cpu_is_bit_identical_to_a_rerun(tmp_path):
    cfg = resolve_config("fast", model="vgg19_rfpool2", dataset="digits", epochs=1, batch_size=64, lr=0.02,
                         deterministic=True, model_kwargs=dict(width_mult=TINY))
    a = train(cfg, output=tmp_path / "a", progress=False)
    b = train(cfg, output=tmp_path / "b", progress=False)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((a / "config.json").read_text())["config"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # the mode ended with the run


def test_packed_workers_share_gpus_in_blocks():
    assert gpu_slots(4, 0, 2) == [None] * 4
    assert gpu_slots(4, 2, 1) == [0, 1, 0, 1]
    assert gpu_slots(8, 2, 4) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert gpu_slots(6, 1, 3) == [0, 0, 0, 0, 0, 0]


def test_a_packed_worker_is_told_its_gpu_and_its_share_of_the_gpus_memory(monkeypatch):
    import queue

    from rf_bench.probes.hessian import GPU_SHARE_ENV
    from rf_bench.sweep import _init_worker

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unchanged")
    monkeypatch.setenv(GPU_SHARE_ENV, "unchanged")
    threads = torch.get_num_threads()
    try:
        slots = queue.Queue()
        slots.put(0)
        _init_worker(slots, threads, 4)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and float(os.environ[GPU_SHARE_ENV]) == 0.25
        monkeypatch.delenv(GPU_SHARE_ENV)
        slots.put(None)  # a machine without GPUs: the environment is left alone
        _init_worker(slots, threads, 4)
        assert GPU_SHARE_ENV not in os.environ
    finally:
        torch.set_num_threads(threads)


def test_runs_per_gpu_comes_from_the_sweep_file_and_is_checked():
    text = '[sweep]\nname = "p"\nruns_per_gpu = 4\n[grid]\nmodels = ["vgg19_rfpool1"]\ndatasets = ["digits"]\n'
    assert load_sweep(text=text, output="o").runs_per_gpu == 4
    assert load_sweep(text=text.replace("runs_per_gpu = 4\n", ""), output="o").runs_per_gpu == 1
    with pytest.raises(ValueError, match=r"\[sweep\] runs_per_gpu must be a whole number >= 1, got 0"):
        load_sweep(text=text.replace("= 4", "= 0"), output="o")


# ------------------------------------------------------------------------------ CUDA only (GPU machine)

def _digits_cfg(**extra):
    values = dict(model="vgg19_rfpool2", dataset="digits", epochs=1, batch_size=32, lr=0.002,
                  model_kwargs=dict(width_mult=TINY))
    return resolve_config("paper", **{**values, **extra})


def _scheduled_cfg(**extra):
    """Two epochs of a per-step schedule (warm-up, then cosine): the captured step must update the lr on the
    device at every replay, which a recipe whose lr is constant within an epoch would never check."""
    return _digits_cfg(epochs=2, schedule="cosine_step", warmup_epochs=0.5, **extra)


def test_the_captured_tests_recipe_changes_the_lr_at_every_step():
    from rf_bench import data as D
    from rf_bench.recipes import lr_factor

    cfg = _scheduled_cfg()
    steps_per_epoch = len(D.load("digits", "train")) // cfg.batch_size
    factors = [lr_factor(cfg, step, steps_per_epoch) for step in range(cfg.epochs * steps_per_epoch)]
    assert len(set(factors)) >= len(factors) - 1  # the peak is reached at the end of warm-up and held one step


@needs_cuda
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_captured_training_matches_eager_on_cuda(tmp_path, precision):
    eager = train(_scheduled_cfg(mixed_precision=precision), output=tmp_path / "eager", progress=False)
    graph = train(_scheduled_cfg(mixed_precision=precision, cuda_graphs=True), output=tmp_path / "graph",
                  progress=False)
    a, b = load_file(str(eager / "model.safetensors")), load_file(str(graph / "model.safetensors"))
    tol = dict(rtol=1e-3, atol=1e-4) if precision == "no" else dict(rtol=2e-2, atol=2e-3)
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=k, **tol)
    m_eager = json.loads((eager / "metrics.jsonl").read_text().splitlines()[-1])
    m_graph = json.loads((graph / "metrics.jsonl").read_text().splitlines()[-1])
    assert m_graph["train_loss"] == pytest.approx(m_eager["train_loss"], rel=1e-2)


@needs_cuda
def test_deterministic_cuda_training_is_bit_identical_to_a_rerun(tmp_path):
    a = train(_digits_cfg(deterministic=True), output=tmp_path / "a", progress=False)
    b = train(_digits_cfg(deterministic=True), output=tmp_path / "b", progress=False)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert Path(a).name == Path(b).name


def test_building_a_compiling_accelerator_leaves_tf32_as_it_was(tmp_path, monkeypatch, tf32_settings):
    """accelerate turns TF32 matmuls on process-wide when a dynamo plugin meets mixed_precision "no" on a GPU;
    the trainer gives the process its own setting back. (A stand-in Accelerator does that flip here.)"""
    import accelerate

    real = accelerate.Accelerator

    def flipping_accelerator(*args, **kwargs):
        torch.backends.cuda.matmul.allow_tf32 = True
        return real(*args, **kwargs)

    from rf_bench.trainer import Trainer

    monkeypatch.setattr(accelerate, "Accelerator", flipping_accelerator)
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = resolve_config("fast", model="vgg19_rfpool2", dataset="digits", epochs=1, batch_size=32, compile=True,
                         model_kwargs=dict(width_mult=TINY))
    Trainer(cfg, tmp_path, cpu=True)
    assert torch.backends.cuda.matmul.allow_tf32 is False
