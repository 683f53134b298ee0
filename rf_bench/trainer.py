"""The trainer: one run from set-up to ``done``, one short method per job.

``Trainer(cfg, output).fit()`` builds the accelerator, data, model and optimizer (``setup``), resumes from
the last intact checkpoint (``resume``), then runs epochs of steps (``train_epoch``, ``step``), evaluates and
logs each epoch (``evaluate``, ``log_epoch``) and checkpoints after it (``save_checkpoint``). Everything a
resumed run needs is in its checkpoint, so a run killed at any point and started again ends with the same
weights, bit for bit (on CUDA with ``deterministic``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .evaluation import evaluation_sums, loss_and_accuracy
from .pruning import apply_masks, global_magnitude_masks
from .recipes import COMPILE_MODES, TrainConfig, lr_factor, run_dir_for, validate_settings
from .results import sha256_file, write_json_atomic
from .runs import (CHECKPOINTS, CONFIG, DONE, FINAL_WEIGHTS, INIT_WEIGHTS, METRICS, WARNINGS, atomic_write_text,
                   complete_checkpoints, git_sha, latest_checkpoint, read_metrics, read_warnings, replace_folder,
                   run_versions, save_weights, truncate_metrics, unreadable_checkpoint_errors, weights_intact)

if TYPE_CHECKING:
    from .models import RFPoolSizeError

__all__ = ["Trainer", "NonFiniteLossError", "check_writable", "deterministic_mode", "validate_config",
           "validate_settings", "not_learning", "read_metrics", "read_warnings"]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint is kept."""


# A run "is not learning" when, after this many epochs, its training accuracy is under this multiple of chance
# and its training loss has fallen by less than this share of the first epoch's.
NOT_LEARNING_EPOCHS = 3
NOT_LEARNING_ACCURACY = 1.5
NOT_LEARNING_LOSS_DROP = 0.05


def not_learning(metrics: List[Dict[str, Any]], num_classes: int) -> Optional[Dict[str, Any]]:
    """The evidence that a run is not learning (see `NOT_LEARNING_EPOCHS`), or None if it is learning or too young."""
    if len(metrics) < NOT_LEARNING_EPOCHS or num_classes < 2:
        return None
    first, last = metrics[0]["train_loss"], metrics[-1]
    chance = 1.0 / num_classes
    if last["train_acc"] < NOT_LEARNING_ACCURACY * chance and last["train_loss"] > (1 - NOT_LEARNING_LOSS_DROP) * first:
        return dict(epochs=len(metrics), train_acc=last["train_acc"], chance=chance, first_loss=first,
                    train_loss=last["train_loss"])
    return None


# -------------------------------------------------------------------------------------- helpers

def _save_weights(model: nn.Module, path: Path, metadata: Dict[str, str]) -> None:
    save_weights(model.state_dict(), path, metadata)


class _write_errors_explained:
    """Turn a failed write (a full disk, a lost mount: safetensors' or the OS's error) into a one-line OSError."""

    def __init__(self, what: str, run_dir: Path) -> None:
        self.what, self.run_dir = what, run_dir

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> bool:
        from safetensors import SafetensorError

        if error is None or not isinstance(error, (SafetensorError, OSError)):
            return False
        last = latest_checkpoint(self.run_dir)
        raise OSError(f"could not write {self.what} ({type(error).__name__}: {error}); free space on that disk, "
                      f"then rerun the same command: it resumes from {last.name if last else 'the start'}") from None


def _checkpoint_bytes(model: nn.Module) -> int:
    """Rough size of one checkpoint: weights + SGD momentum, float32."""
    return 2 * sum(p.numel() * 4 for p in model.parameters()) + 1_000_000


def check_writable(run_dir: Path, need_bytes: int) -> None:
    """Refuse to start when the run could not be saved (unwritable dir, disk too full)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write to {run_dir} ({e.strerror}); pass a writable --output") from None
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise OSError(f"only {free / 1e6:.0f} MB free at {run_dir}, a run needs about {need_bytes / 1e6:.0f} MB; "
                      "free some space or pass another --output")


def _param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Weight decay on every parameter, as in the paper's plain SGD (and PyTorch's default)."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


class deterministic_mode:
    """Deterministic kernels while training (as Lightning's ``deterministic=True``), restored afterwards.

    ``torch.use_deterministic_algorithms``, cuDNN's deterministic algorithms without benchmarking, and the cuBLAS
    workspace setting that deterministic cuBLAS needs (it must be set before cuBLAS starts: the trainer sets it
    before building the model).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> "deterministic_mode":
        self._saved = (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.deterministic,
                       torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        if self.enabled:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        return self

    def __exit__(self, *exc: Any) -> None:
        algorithms, warn_only, cudnn_deterministic, cudnn_benchmark, workspace = self._saved
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


CUBLAS_DETERMINISTIC = ":4096:8"


def prepare_deterministic_process() -> None:
    """Call at start-up, before any cuBLAS call: PyTorch reads CUBLAS_WORKSPACE_CONFIG once, at the first one,
    so `deterministic_mode` setting it later works only in a fresh process."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)


class _RunningStats:
    """Loss/accuracy sums and the first non-finite step, kept on the device: read only every few steps.

    The tensors are reset in place between epochs, so a captured CUDA graph that writes them stays valid.
    """

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.seen = 0.0

    def reset(self, loss_sum: float = 0.0, correct: float = 0.0, seen: float = 0.0) -> "_RunningStats":
        self.loss_sum.fill_(loss_sum)
        self.correct.fill_(correct)
        self.first_bad.fill_(-1)
        self.seen = seen
        return self

    def record(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, grad_norm: Optional[torch.Tensor],
               global_step: torch.Tensor | int) -> None:
        """The device half of an update (no host sync, so it can be captured in a CUDA graph)."""
        loss = loss.detach()
        finite = torch.isfinite(loss) if grad_norm is None else torch.isfinite(loss + grad_norm)
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~finite, global_step, self.first_bad))
        self.loss_sum.add_(loss * y.shape[0])
        self.correct.add_((logits.detach().argmax(1) == y).sum())

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, grad_norm: Optional[torch.Tensor],
               global_step: int) -> None:
        self.record(loss, logits, y, grad_norm, global_step)
        self.seen += y.shape[0]

    @property
    def sums(self) -> torch.Tensor:
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=self.loss_sum.device)
        return torch.stack([self.loss_sum, self.correct, seen])

    def as_dict(self) -> Dict[str, float]:
        return dict(loss_sum=self.loss_sum.item(), correct=self.correct.item(), seen=float(self.seen))


def _progress_bar(show: bool, epoch: int, epochs: int, steps: int, done: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} {task.fields[ips]:.0f} img/s"),
                   TimeRemainingColumn(), disable=not show, transient=True)
    bar.add_task("train", total=steps, completed=done, loss=float("nan"), acc=0.0, ips=0.0)
    return bar


def _too_large_k_hint(cfg: TrainConfig, input_size: Tuple[int, ...], e: "RFPoolSizeError") -> str:
    """The rfpool size error in `train`'s terms: a smaller k, or a data set whose images are large enough."""
    from .data.sources import DATASETS, dataset_key

    family = cfg.model[: -len(str(e.k))]
    smaller = f"--model {family}{e.largest_k}" + (" or a smaller k" if e.largest_k > 1 else "")
    big_enough = [name for name, spec in DATASETS.items() if (spec.side or 0) >= e.min_input
                  and name != dataset_key(cfg.dataset)]
    other = (f", or a data set with images of at least {e.min_input}x{e.min_input} ({', '.join(big_enough)})"
             if big_enough else "")
    return (f"--model {cfg.model}: k={e.k} pools the {input_size[-2]}x{input_size[-1]} images of {cfg.dataset} below "
            f"what the rest of the net needs; train {smaller if e.largest_k >= 1 else 'a smaller k'}{other}")


def validate_config(cfg: TrainConfig, world: int, device: torch.device) -> None:
    """Refuse settings that cannot work together, in one line each, before any work."""
    validate_settings(cfg)
    if cfg.compile_mode is not None and cfg.compile_mode not in COMPILE_MODES:
        raise ValueError(f"--compile-mode {cfg.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by {world} processes; pick a multiple")
    if not cfg.cuda_graphs:
        return
    if device.type != "cuda":
        raise ValueError(f"--cuda-graphs needs a CUDA device, this process trains on {device.type}; drop the flag")
    if world > 1:
        raise ValueError("--cuda-graphs captures one process's step; train several runs per GPU "
                         "(rf-bench sweep --runs-per-gpu) instead of one run on several")
    if cfg.compile or cfg.compile_mode:
        raise ValueError("--cuda-graphs and --compile/--compile-mode both capture the step; choose one")
    if cfg.mixed_precision == "fp16":
        raise ValueError("--cuda-graphs does not capture fp16's loss scaler; use --mixed-precision bf16")


def _release_device_choice(cpu: bool) -> None:
    """Let this run train where it asks to: accelerate's PartialState keeps the first Accelerator's CPU-or-GPU
    choice for the whole process, so a `cpu=True` run would pin every later run of the process to the CPU (and
    the reverse). Reset it when the choice differs; in a launched process group, refuse in one line instead."""
    from accelerate.state import PartialState

    if not PartialState._shared_state or bool(PartialState._shared_state.get("_cpu")) == bool(cpu):
        return
    if PartialState().num_processes > 1:
        raise ValueError(f"this process group was launched to train on "
                         f"{'the CPU' if PartialState().device.type == 'cpu' else PartialState().device}; "
                         f"{'drop' if not cpu else 'add'} --cpu, or launch a new group for the other device")
    PartialState._reset_state()


# ------------------------------------------------------------------------------------- the trainer

class Trainer:
    """Train (or resume, or skip if finished) the run of ``cfg`` under ``output``."""

    sync_every = 10  # host syncs (progress, NaN check) every few steps, so GPUs are not stalled each step

    def __init__(self, cfg: TrainConfig, output: str | os.PathLike = "runs", data_dir: Optional[str] = None,
                 checkpoint_every_steps: int = 0, log_with: Optional[str] = None, keep_checkpoints: int = 2,
                 progress: bool = True, cpu: bool = False, eval_every: int = 1) -> None:
        if eval_every < 0:
            raise ValueError(f"--eval-every {eval_every} is invalid; give a number of epochs, or 0 for the last only")
        self.data_dir, self.log_with, self.progress = data_dir, log_with, progress
        self.eval_every = eval_every
        self.checkpoint_every_steps, self.keep_checkpoints = checkpoint_every_steps, keep_checkpoints
        self.accelerator = self._make_accelerator(cfg, log_with, cpu)
        self.cfg = self._complete(cfg)
        self.world = self.accelerator.num_processes
        validate_config(self.cfg, self.world, self.accelerator.device)
        self.run_dir = run_dir_for(self.cfg, output)

    @staticmethod
    def _make_accelerator(cfg: TrainConfig, log_with: Optional[str], cpu: bool):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import TorchDynamoPlugin

        # a second train() in one process (a probe's fine-tunes, a notebook) may want other settings: start the
        # accelerator state afresh (the process group, in PartialState, is kept unless the device must change)
        AcceleratorState._reset_state()
        _release_device_choice(cpu)
        dynamo = None
        if cfg.compile or cfg.compile_mode:
            dynamo = TorchDynamoPlugin(backend="inductor", mode=cfg.compile_mode or "default")
            # a sweep worker trains model after model in one process: past dynamo's recompile limit (8 graphs
            # per frame) it would silently run the rest eager, so each run starts with dynamo's caches empty
            torch._dynamo.reset()
        # accelerate turns TF32 matmuls on for the whole process when it compiles without mixed precision: a
        # precision nobody asked for, which would leak into the Hessian and CKA probes run after it
        tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            return Accelerator(
                mixed_precision=None if cfg.mixed_precision in (None, "no") else cfg.mixed_precision,
                step_scheduler_with_optimizer=False, log_with=log_with, dynamo_plugin=dynamo, cpu=cpu,
            )
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def _complete(self, cfg: TrainConfig) -> TrainConfig:
        """Fill in what the launch decided (mixed precision) and the init weights' hash."""
        cfg = dataclasses.replace(cfg, mixed_precision=self.accelerator.mixed_precision)
        if cfg.init_from and not cfg.init_sha256:
            if not Path(cfg.init_from).is_file():
                raise FileNotFoundError(f"--init-from {cfg.init_from} does not exist")
            cfg = dataclasses.replace(cfg, init_sha256=sha256_file(cfg.init_from))
        return cfg

    @property
    def finished(self) -> bool:
        """Whether the run directory holds a ``done`` marker (`fit` checks the weights against it)."""
        return (self.run_dir / DONE).is_file()

    # ------------------------------------------------------------------------------- the whole run

    def fit(self) -> Path:
        """Train to the last epoch, resuming from the newest checkpoint; returns the run directory."""
        if self.finished and weights_intact(self.run_dir):
            self.accelerator.print(f"{self.run_dir} is already finished; nothing to do")
            return self.run_dir
        if self.finished:
            self.accelerator.print(f"warning: {self.run_dir}/model.safetensors is missing or damaged; rebuilding it "
                                   "from the last checkpoint")
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                (self.run_dir / DONE).unlink()
        with deterministic_mode(self.cfg.deterministic):
            self.setup()
            start_epoch, start_step, resumed = self.resume()
            for epoch in range(start_epoch, self.cfg.epochs):
                first_step = start_step if epoch == start_epoch else 0
                seconds, images = self.train_epoch(epoch, first_step, resumed if epoch == start_epoch else {})
                record = self.evaluate(epoch, seconds, images)
                self.log_epoch(record)
                self.warn_if_not_learning(record)
                self.save_checkpoint(epoch + 1, 0, self.stats.reset())
            self.finish()
        return self.run_dir

    # ------------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Build the model, optimizer, schedule and loaders, and restore a checkpoint if there is one."""
        from accelerate.utils import set_seed

        accel, cfg = self.accelerator, self.cfg
        self._load_data()
        set_seed(cfg.seed)
        model, masks = self._build_model()
        if accel.is_main_process:
            check_writable(self.run_dir, need_bytes=(self.keep_checkpoints + 2) * _checkpoint_bytes(model))
        accel.wait_for_everyone()
        self._build_loaders()
        optimizer = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                                    nesterov=cfg.nesterov)
        steps = self.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps))
        if accel.is_main_process and not (self.run_dir / INIT_WEIGHTS).is_file():
            self._write_run_header(model)
        self.model, self.optimizer, self.scheduler = accel.prepare(model, optimizer, scheduler)
        # accelerate's optimizer wrapper looks for an optional package (importlib's find_spec, file-system stats) twice
        # per step; with no loss scaler (fp16) and no gradient accumulation its step is the plain optimizer's
        plain = self.optimizer.scaler is None and accel.gradient_accumulation_steps == 1
        self._optimizer_step = self.optimizer.optimizer.step if plain else self.optimizer.step
        self.masks = None if masks is None else {name: m.to(accel.device) for name, m in masks.items()}
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.stats = _RunningStats(accel.device)
        self.captured = None
        if cfg.cuda_graphs:
            from .capture import CapturedStep

            self.captured = CapturedStep(self.bare_model(), self.optimizer, self.criterion, self.stats,
                                         cfg, self.masks)

    def _load_data(self) -> None:
        from . import data as rf_data

        # the main process decodes/caches first, the others then read the cache
        with self.accelerator.main_process_first():
            self.train_set = rf_data.load(self.cfg.dataset, "train", data_dir=self.data_dir).resized(self.cfg.image_size)
            self.test_set = rf_data.load(self.cfg.dataset, "test", data_dir=self.data_dir).resized(self.cfg.image_size)
        if self.cfg.train_per_class:  # the mean and std stay the whole train split's
            self.train_set = self.train_set.per_class(self.cfg.train_per_class, self.cfg.subset_seed)

    def _build_model(self) -> Tuple[nn.Module, Optional[Dict[str, torch.Tensor]]]:
        import timm

        import rf_bench.models  # noqa: F401  (registers the rfpool models)
        from .models import RFPoolSizeError
        from .results import load_weights

        cfg = self.cfg
        self.model_kwargs = dict(num_classes=self.train_set.num_classes, in_chans=self.train_set.input_size[0],
                                 **cfg.model_kwargs)
        try:
            model = timm.create_model(cfg.model, **self.model_kwargs)
        except TypeError as e:  # an unknown keyword reaches the model's constructor
            raise ValueError(f"--model-kwargs {cfg.model_kwargs} do not fit {cfg.model}: {e}") from None
        with torch.no_grad():  # a k too large for the images fails here, said in what `train` can change
            try:
                model.eval()(torch.zeros(1, *self.train_set.input_size))
            except RFPoolSizeError as e:
                raise ValueError(_too_large_k_hint(cfg, self.train_set.input_size, e)) from None
        model.train()
        if cfg.init_from:
            load_weights(model, cfg.init_from)
        masks = None
        if cfg.prune_rate:
            masks = global_magnitude_masks(model, [cfg.prune_rate])[cfg.prune_rate]
            apply_masks(model, masks)
        if self.world > 1 and cfg.sync_bn and self.accelerator.device.type != "cpu":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, masks

    def _build_loaders(self) -> None:
        from .data import TensorLoader

        accel, cfg = self.accelerator, self.cfg
        local_batch = cfg.batch_size // self.world
        kwargs = dict(device=accel.device, num_replicas=self.world, rank=accel.process_index,
                      channels_last=cfg.channels_last)
        self.train_loader = TensorLoader(self.train_set, local_batch, train=True, seed=cfg.seed, augment=cfg.augment,
                                         **kwargs)
        self.test_loader = TensorLoader(self.test_set, max(local_batch, 256), train=False, **kwargs)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} training images make no batch of {cfg.batch_size}; "
                             "lower --batch-size")

    def _write_run_header(self, model: nn.Module) -> None:
        import rf_bench

        cfg, train_set, test_set = self.cfg, self.train_set, self.test_set
        meta = dict(model=cfg.model, stage="init", rf_bench=rf_bench.__version__)
        _save_weights(model, self.run_dir / INIT_WEIGHTS, meta)
        write_json_atomic(self.run_dir / CONFIG, dict(
            config=cfg.identity(), run_id=self.run_dir.name, model_kwargs=self.model_kwargs, num_processes=self.world,
            data=dict(name=cfg.dataset, classes=train_set.classes, mean=train_set.mean, std=train_set.std,
                      input_size=train_set.input_size, train_size=len(train_set), test_size=len(test_set)),
            versions=run_versions(), git_sha=git_sha(), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        ))

    def resume(self) -> Tuple[int, int, Dict[str, float]]:
        """Load the last complete checkpoint, if any: ``(epoch, step in epoch, partial-epoch sums)``."""
        accel = self.accelerator
        start_epoch, start_step, partial = 0, 0, {}
        unreadable = []
        for ckpt in reversed(complete_checkpoints(self.run_dir)):
            try:
                accel.load_state(str(ckpt))
                state = json.loads((ckpt / "trainer_state.json").read_text())
                start_epoch, start_step = state["epoch"], state["step_in_epoch"]
                partial = state["partial_epoch"][accel.process_index]
            except unreadable_checkpoint_errors() as e:
                unreadable.append(ckpt)
                accel.print(f"warning: checkpoint {ckpt} is unreadable ({type(e).__name__}: {str(e)[:120]}); "
                          "moving it aside and trying the one before it")
                continue
            accel.print(f"resuming {self.run_dir.name} from {ckpt.name} (epoch {start_epoch}, step {start_step})")
            break
        else:
            if unreadable:  # the model may hold part of a corrupt state: do not train on from it
                self._move_aside(unreadable)
                raise ValueError(f"every checkpoint of {self.run_dir} is unreadable (moved to corrupt_*); "
                                 f"delete {self.run_dir} to train the run from the start")
        self._move_aside(unreadable)
        if accel.is_main_process:
            truncate_metrics(self.run_dir / METRICS, start_epoch)
        if self.log_with:
            accel.init_trackers(self.run_dir.name, config={k: str(v) for k, v in self.cfg.identity().items()})
        return start_epoch, start_step, partial

    def _move_aside(self, checkpoints: List[Path]) -> None:
        """Keep unreadable checkpoints for inspection, out of the resume order."""
        accel = self.accelerator
        accel.wait_for_everyone()
        if accel.is_main_process:
            for ckpt in checkpoints:
                ckpt.rename(ckpt.with_name(f"corrupt_{ckpt.name}"))
        accel.wait_for_everyone()

    # ------------------------------------------------------------------------------------ training

    def train_epoch(self, epoch: int, first_step: int, resumed: Dict[str, float]) -> Tuple[float, int]:
        """Steps ``first_step..`` of ``epoch``; returns (seconds, images seen by all processes)."""
        self.train_loader.set_epoch(epoch)
        self.model.train()
        self.stats.reset(**resumed)
        show = self.progress and self.accelerator.is_main_process
        t0, images = time.perf_counter(), 0
        with _progress_bar(show, epoch, self.cfg.epochs, self.steps_per_epoch, first_step) as bar:
            for step, (x, y) in enumerate(self.train_loader.iter_from(first_step), start=first_step):
                self.step(x, y, epoch * self.steps_per_epoch + step)
                images += y.shape[0] * self.world
                if (step + 1) % self.sync_every == 0 or step + 1 == self.steps_per_epoch:
                    self.check_finite()
                    if show:
                        loss_sum, correct, seen = self.stats.sums.tolist()
                        bar.update(bar.task_ids[0], completed=step + 1, loss=loss_sum / seen, acc=correct / seen,
                                   ips=images / max(time.perf_counter() - t0, 1e-9))
                every = self.checkpoint_every_steps
                if every and (step + 1) % every == 0 and step + 1 < self.steps_per_epoch:
                    self.save_checkpoint(epoch, step + 1, self.stats)
        return time.perf_counter() - t0, images

    def step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> None:
        """One optimizer step on one batch; its loss and accuracy go to the running stats on the device."""
        if self.captured is not None:
            self.captured(x, y, global_step, lr=self.optimizer.param_groups[0]["lr"])  # what the scheduler set
            self.scheduler.step()
            return
        accel, cfg = self.accelerator, self.cfg
        with accel.autocast():
            logits = self.model(x)
            loss = self.criterion(logits, y)
        accel.backward(loss)
        grad_norm = None
        if cfg.clip_grad and cfg.clip_mode == "value":
            accel.clip_grad_value_(self.model.parameters(), cfg.clip_grad)
        elif cfg.clip_grad:
            grad_norm = accel.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.stats.update(loss, logits, y, grad_norm, global_step)
        self._optimizer_step()
        if self.masks is not None:  # pruned weights stay exactly zero
            apply_masks(self.bare_model(), self.masks)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def bare_model(self) -> nn.Module:
        """The model without DDP's or torch.compile's wrapper: its parameter names are the timm model's, so
        masks apply and saved weights load into a fresh model (a compiled one would prefix them `_orig_mod.`)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def check_finite(self) -> None:
        """Stop at the first non-finite loss or gradient; every rank takes the same verdict (a collective)."""
        first_bad = self.accelerator.gather(self.stats.first_bad.reshape(1))
        bad = first_bad[first_bad >= 0]
        if bad.numel():
            step = int(bad.min())
            last = latest_checkpoint(self.run_dir)
            kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"
            spe = self.steps_per_epoch
            raise NonFiniteLossError(
                f"non-finite loss or gradient at epoch {step // spe} step {step % spe} (global step {step}); "
                f"{kept}; lower --lr or enable --clip-grad")

    # --------------------------------------------------------------------------- evaluate and log

    def _evaluates(self, epoch: int) -> bool:
        """The last epoch is always tested; others every ``eval_every`` epochs (never with 0)."""
        last = epoch + 1 == self.cfg.epochs
        return last or (self.eval_every > 0 and (epoch + 1) % self.eval_every == 0)

    def evaluate(self, epoch: int, seconds: float, images: int) -> Dict[str, float]:
        """The epoch's record: train sums over all processes, then test loss and accuracy (None when skipped)."""
        accel = self.accelerator
        self.check_finite()
        loss_sum, correct, seen = accel.reduce(self.stats.sums.clone(), reduction="sum").tolist()
        test_loss, test_acc = _evaluate(self.model, self.test_loader, accel) if self._evaluates(epoch) else (None, None)
        return dict(epoch=epoch, step=(epoch + 1) * self.steps_per_epoch, train_loss=loss_sum / seen,
                    train_acc=correct / seen, test_loss=test_loss, test_acc=test_acc,
                    lr=self.optimizer.param_groups[0]["lr"], images_per_s=images / seconds, seconds=seconds)

    def warn_if_not_learning(self, record: Dict[str, float]) -> None:
        """Once per run, after `NOT_LEARNING_EPOCHS` epochs: one line, and a line in ``warnings.jsonl``, when the
        training accuracy is still near chance and the loss has barely fallen (a recipe that moves the weights too
        little, such as the paper's lr 1e-4 with a 0.1 gradient clip on a short schedule)."""
        if record["epoch"] + 1 < NOT_LEARNING_EPOCHS or not self.accelerator.is_main_process:
            return
        if any(w.get("kind") == "not_learning" for w in read_warnings(self.run_dir)):
            return
        verdict = not_learning(read_metrics(self.run_dir), self.train_set.num_classes)
        if verdict is None:
            return
        cfg = self.cfg
        verdict.update(kind="not_learning", recipe=cfg.recipe, lr=cfg.lr, clip_grad=cfg.clip_grad)
        with open(self.run_dir / WARNINGS, "a") as f:
            f.write(json.dumps(verdict) + "\n")
        print(f"warning: {self.run_dir.name} is not learning after {verdict['epochs']} epochs (train accuracy "
              f"{100 * verdict['train_acc']:.1f}%, chance {100 * verdict['chance']:.1f}%; train loss "
              f"{verdict['first_loss']:.4f} -> {verdict['train_loss']:.4f}) with recipe {cfg.recipe!r} at lr {cfg.lr:g}; "
              "see the recipes section of docs/howto/training.md, or train with --recipe fast", file=sys.stderr)

    def log_epoch(self, record: Dict[str, float]) -> None:
        """Append the epoch's line to ``metrics.jsonl``, print it, and hand it to the trackers."""
        accel = self.accelerator
        if accel.is_main_process:
            with open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.progress:
            tested = (f"test loss {record['test_loss']:.4f} acc {record['test_acc']:.4f}"
                      if record["test_acc"] is not None else "not tested")
            accel.print(f"epoch {record['epoch'] + 1}/{self.cfg.epochs}  train loss {record['train_loss']:.4f} "
                      f"acc {record['train_acc']:.4f}  {tested}  {record['images_per_s']:.0f} img/s")
        if self.log_with:
            accel.log({k: v for k, v in record.items() if k != "epoch" and v is not None}, step=record["epoch"])

    # -------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, epoch: int, step_in_epoch: int, stats: _RunningStats) -> None:
        """``checkpoints/step_<global step>``, complete or absent (written aside, then renamed)."""
        accel = self.accelerator
        self.check_finite()
        global_step = epoch * self.steps_per_epoch + step_in_epoch
        folder = self.run_dir / CHECKPOINTS
        final, tmp = folder / f"step_{global_step:08d}", folder / f".tmp_step_{global_step:08d}"
        partial = [None] * self.world
        if self.world > 1:
            torch.distributed.all_gather_object(partial, stats.as_dict())
        else:
            partial = [stats.as_dict()]
        if accel.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accel.wait_for_everyone()
        with _write_errors_explained(f"checkpoint {final}", self.run_dir):
            accel.save_state(str(tmp), safe_serialization=True)
        accel.wait_for_everyone()
        if accel.is_main_process:
            write_json_atomic(tmp / "trainer_state.json", dict(epoch=epoch, step_in_epoch=step_in_epoch,
                                                               global_step=global_step, partial_epoch=partial))
            if final.exists():
                shutil.rmtree(final)
            replace_folder(tmp, final)  # a checkpoint is either complete or absent
            for old in sorted(folder.glob("step_*"))[:-self.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accel.wait_for_everyone()

    def finish(self) -> None:
        """Write ``model.safetensors`` and the ``done`` marker with its sha256."""
        import rf_bench

        accel = self.accelerator
        if accel.is_main_process:
            meta = dict(model=self.cfg.model, stage="final", rf_bench=rf_bench.__version__)
            weights = self.run_dir / FINAL_WEIGHTS
            with _write_errors_explained(f"the final weights {weights}", self.run_dir):
                _save_weights(self.bare_model(), weights, meta)
            # the sha256 lets a rerun tell intact final weights from damaged ones
            atomic_write_text(self.run_dir / DONE, f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\nsha256 {sha256_file(weights)}\n")
        if self.log_with:
            accel.end_training()
        accel.wait_for_everyone()


def _evaluate(model: nn.Module, loader, accelerator) -> Tuple[float, float]:
    totals = evaluation_sums(model, loader, accelerator.device, accelerator.autocast)
    return loss_and_accuracy(accelerator.reduce(totals, reduction="sum"))
