"""rf_bench.runs: the run directory, read and written by hand here (no training), against what each function
promises: byte-stable weights, the JSON-lines readers, checkpoint lookup, the intact-weights check, metric
truncation on resume, and the one-line errors of ``load_run`` / ``find_runs``."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save

from rf_bench.runs import (CHECKPOINTS, CONFIG, DONE, FINAL_WEIGHTS, METRICS, WARNINGS, canonical_safetensors,
                           complete_checkpoints, find_runs, group_runs, latest_checkpoint, load_run, read_metrics,
                           read_warnings, recorded_finish_time, save_weights, truncate_metrics, weights_intact)


def _reordered_metadata(data: bytes) -> bytes:
    """The same safetensors file with its metadata keys in reverse order (what another process may write)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    text = json.dumps(header, separators=(",", ":")).encode()
    return data[:8] + text.ljust(size, b" ") + data[8 + size:]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_run(root, name="vgg19_rfpool2-digits-s0-abc", seed=0, width=0.0625, done=True):
    """A run directory as the trainer leaves it: config.json, weights, metrics and the `done` marker."""
    run = root / name
    run.mkdir(parents=True)
    config = dict(model="vgg19_rfpool2", dataset="digits", seed=seed, epochs=2, model_kwargs=dict(width_mult=width))
    (run / CONFIG).write_text(json.dumps(dict(config=config, run_id=name, data=dict(input_size=[3, 32, 32]))))
    weights = save_weights({"w": torch.arange(6.0).reshape(2, 3)}, run / FINAL_WEIGHTS, {"step": "2"})
    if done:
        (run / DONE).write_text(f"2026-01-01T00:00:00\nsha256 {_sha(weights)}\n")
    return run


def test_canonical_safetensors_makes_metadata_order_irrelevant():
    tensors = {"a": torch.ones(3), "b": torch.zeros(2, 2)}
    data = save(tensors, metadata={"x": "1", "y": "2", "z": "3"})
    other = _reordered_metadata(data)
    assert other != data  # three keys reversed: another order whatever order save wrote them in
    assert canonical_safetensors(other) == canonical_safetensors(data)
    assert len(canonical_safetensors(other)) == len(data)


def test_save_weights_is_byte_stable_and_loadable(tmp_path):
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "fc.bias": torch.randn(10)}
    first = save_weights(state, tmp_path / "a.safetensors", {"epoch": "3", "model": "m", "seed": "0"})
    second = save_weights(dict(reversed(list(state.items()))), tmp_path / "b.safetensors",
                          {"seed": "0", "model": "m", "epoch": "3"})
    assert _sha(first) == _sha(second)
    loaded = load_file(str(first))
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_json_lines_readers_skip_blank_lines_and_missing_files(tmp_path):
    assert read_metrics(tmp_path) == [] and read_warnings(tmp_path) == []
    (tmp_path / METRICS).write_text('{"epoch": 0, "test_acc": 0.5}\n\n{"epoch": 1, "test_acc": 0.75}\n')
    (tmp_path / WARNINGS).write_text('{"kind": "not_learning"}\n')
    assert [m["epoch"] for m in read_metrics(tmp_path)] == [0, 1]
    assert read_warnings(str(tmp_path)) == [{"kind": "not_learning"}]


def test_truncate_metrics_drops_epochs_the_checkpoint_did_not_finish(tmp_path):
    path = tmp_path / METRICS
    truncate_metrics(path, 1)  # no file yet: nothing to do
    assert not path.exists()
    path.write_text("".join(json.dumps(dict(epoch=e, loss=1.0 / (e + 1))) + "\n" for e in range(5)))
    truncate_metrics(path, 3)
    assert [m["epoch"] for m in read_metrics(tmp_path)] == [0, 1, 2]
    truncate_metrics(path, 0)
    assert read_metrics(tmp_path) == []


def test_checkpoints_in_step_order_and_only_finished_ones(tmp_path):
    for step, finished in ((9, True), (10, True), (100, False), (2, True)):
        ckpt = tmp_path / CHECKPOINTS / f"step_{step:d}"
        ckpt.mkdir(parents=True)
        if finished:
            (ckpt / "trainer_state.json").write_text("{}")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_2", "step_9", "step_10"]  # numeric, not text
    assert latest_checkpoint(tmp_path).name == "step_10"  # step_100 never finished writing
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_weights_intact_checks_the_recorded_sha256(tmp_path):
    run = _make_run(tmp_path)
    assert weights_intact(run)
    data = bytearray((run / FINAL_WEIGHTS).read_bytes())
    data[-1] ^= 0xFF  # one bit of one weight: still loads, but is not what training finished with
    (run / FINAL_WEIGHTS).write_bytes(bytes(data))
    assert load_file(str(run / FINAL_WEIGHTS)) and not weights_intact(run)
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_run(run).verify_weights()


def test_weights_intact_without_a_recorded_sha256_means_it_loads(tmp_path):
    run = _make_run(tmp_path)
    (run / DONE).write_text("2026-01-01T00:00:00\n")  # a run from before the sha256 was recorded
    assert weights_intact(run)
    (run / FINAL_WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert not weights_intact(run)
    (run / FINAL_WEIGHTS).unlink()
    assert not weights_intact(run)


def test_run_reads_its_directory(tmp_path):
    run_dir = _make_run(tmp_path)
    (run_dir / METRICS).write_text('{"epoch": 0, "test_acc": 0.25, "lr": 0.1}\n{"epoch": 1, "test_acc": 0.5, '
                                   '"train_loss": 1.5, "lr": 0.0}\n')
    (run_dir / WARNINGS).write_text('{"kind": "not_learning", "message": "..."}\n')
    run = load_run(run_dir)
    assert (run.model_name, run.dataset, run.seed, run.k, run.family) == ("vgg19_rfpool2", "digits", 0, 2,
                                                                          "vgg19_rfpool")
    assert run.final_metrics() == {"epoch": 1, "test_acc": 0.5, "train_loss": 1.5}
    assert run.not_learning and run.weights_sha256 == _sha(run_dir / FINAL_WEIGHTS)


def test_group_runs_puts_seeds_together_and_widths_apart(tmp_path):
    for name, seed, width in (("r-s1", 1, 0.0625), ("r-s0", 0, 0.0625), ("w-s0", 0, 0.125)):
        _make_run(tmp_path, name, seed, width)
    groups = group_runs(find_runs([str(tmp_path)]))
    assert sorted([r.run_id for r in g] for g in groups.values()) == [["r-s0", "r-s1"], ["w-s0"]]


def test_find_runs_expands_folders_and_globs_once(tmp_path):
    for name in ("a-s0", "b-s0"):
        _make_run(tmp_path, name)
    runs = find_runs([str(tmp_path), str(tmp_path / "a-*"), str(tmp_path / "a-s0")])
    assert [r.run_id for r in runs] == ["a-s0", "b-s0"]
    with pytest.raises(FileNotFoundError, match="no path matches"):
        find_runs([str(tmp_path / "z-*")])


def test_load_run_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="not finished"):
        load_run(_make_run(tmp_path, "unfinished", done=False))
    damaged = _make_run(tmp_path, "damaged")
    (damaged / CONFIG).write_text('{"config": {"model": ')
    with pytest.raises(ValueError, match="is damaged"):
        load_run(damaged)


def test_recorded_finish_time_reads_the_done_marker(tmp_path):
    run = _make_run(tmp_path)
    assert recorded_finish_time(run) == "2026-01-01T00:00:00"
    (run / DONE).write_text("finished\n")  # an older marker without a time
    assert recorded_finish_time(run) is None
    assert recorded_finish_time(_make_run(tmp_path, "unfinished", done=False)) is None
