"""A training step captured in one CUDA graph: forward, backward, clipping, SGD and masks, replayed per batch.

At the paper's batch 128 a GPU step is launch-bound (hundreds of small kernels); a replayed graph launches them
all at once. ``GraphSafeStep`` is the step written for capture: tensor ops only, no host sync, the lr and the
step number read from device tensors, SGD (momentum, nesterov, weight decay) in ``torch._foreach`` ops on the
optimizer's own momentum buffers, so checkpoints and resumes are the eager trainer's. It runs eagerly on any
device (that is how the CPU tests check it against the eager step); ``CapturedStep`` records it on CUDA after a
few eager warm-up steps on real batches, so no batch is trained twice.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

__all__ = ["GraphSafeStep", "CapturedStep"]


class GraphSafeStep:
    """One SGD step of ``model`` on ``(x, y)``, with the same arithmetic as the eager trainer's step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable, stats,
                 cfg, masks: Optional[Dict[str, torch.Tensor]] = None) -> None:
        self.model, self.optimizer, self.criterion, self.stats = model, optimizer, criterion, stats
        group = optimizer.param_groups[0]
        if len(optimizer.param_groups) != 1:
            raise ValueError("the captured step takes one SGD parameter group")
        self.params: List[nn.Parameter] = list(group["params"])
        self.momentum, self.nesterov, self.weight_decay = group["momentum"], group["nesterov"], group["weight_decay"]
        self.clip_grad, self.clip_mode = cfg.clip_grad, cfg.clip_mode
        device = self.params[0].device
        self.lr = torch.tensor(float(cfg.lr), dtype=torch.float32, device=device)
        self.global_step = torch.zeros((), dtype=torch.int64, device=device)
        by_name = dict(model.named_parameters())
        self.masked = [(by_name[n], m.to(by_name[n].device, by_name[n].dtype)) for n, m in (masks or {}).items()]
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
                         if cfg.mixed_precision == "bf16" else contextlib.nullcontext())

    def set_step(self, global_step: int, lr: float) -> None:
        """Two tiny fills, no sync: the values the next call (or replay) reads."""
        self.global_step.fill_(global_step)
        self.lr.fill_(lr)

    def _momentum_buffers(self) -> List[torch.Tensor]:
        """The optimizer's own buffers (created as zeros: 0 * momentum + grad is eager SGD's first buffer)."""
        bufs = []
        for p in self.params:
            state = self.optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        return bufs

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self.autocast:
            logits = self.model(x)
            loss = self.criterion(logits, y)
        loss.backward()
        grads = [p.grad for p in self.params]
        grad_norm = None
        if self.clip_grad and self.clip_mode == "value":
            torch.nn.utils.clip_grad_value_(self.params, self.clip_grad, foreach=True)
        elif self.clip_grad:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad, foreach=True)
        self.stats.record(loss, logits, y, grad_norm, self.global_step)
        self._sgd(grads)

    @torch.no_grad()
    def _sgd(self, grads: List[torch.Tensor]) -> None:
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        update = grads
        if self.momentum:
            bufs = self._momentum_buffers()
            torch._foreach_mul_(bufs, self.momentum)
            torch._foreach_add_(bufs, grads)
            update = torch._foreach_add(grads, bufs, alpha=self.momentum) if self.nesterov else bufs
        torch._foreach_add_(self.params, torch._foreach_mul(update, -self.lr))
        if self.masked:  # pruned weights stay exactly zero
            torch._foreach_mul_([p for p, _ in self.masked], [m for _, m in self.masked])


class CapturedStep:
    """``GraphSafeStep`` on CUDA: eager for ``warmup_steps`` real batches, then captured once and replayed."""

    warmup_steps = 3

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable, stats, cfg,
                 masks: Optional[Dict[str, torch.Tensor]] = None) -> None:
        if not torch.cuda.is_available() or next(model.parameters()).device.type != "cuda":
            raise ValueError("--cuda-graphs needs the model on a CUDA device; drop the flag on this machine")
        self.body = GraphSafeStep(model, optimizer, criterion, stats, cfg, masks)
        self.stats = stats
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.calls = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, global_step: int, lr: float) -> None:
        self.body.set_step(global_step, lr)
        if self.graph is not None:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
        elif self.calls < self.warmup_steps:
            self._on_side_stream(lambda: self._eager(x, y))
        else:
            self._capture(x, y)
            self.graph.replay()
        self.stats.seen += y.shape[0]
        self.calls += 1

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for p in self.body.params:
            p.grad = None
        self.body(x, y)

    @staticmethod
    def _on_side_stream(fn: Callable[[], None]) -> None:
        # warm-up (cuDNN/cuBLAS workspaces, lazy state) off the capture stream, as torch.cuda.graphs advises
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the step on static copies of this batch (recording runs nothing: the caller replays it)."""
        self.static_x, self.static_y = x.clone(), y.clone()
        self.body._momentum_buffers()  # exist before capture, so the graph updates the optimizer's own tensors
        for p in self.body.params:
            p.grad = None  # backward allocates the grads inside the graph's pool and overwrites them each replay
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.body(self.static_x, self.static_y)
