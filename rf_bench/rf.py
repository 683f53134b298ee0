"""Receptive fields: exact analytic RFs by tracing a model with torch.fx, and measured (gradient) RFs.

The analytic RF of a unit is propagated layer by layer (Araujo et al., Distill 2019): for a layer of
kernel ``k``, stride ``s``, padding ``p`` and dilation ``d`` whose input has RF ``r``, jump ``j`` and
offset ``o`` (input coordinate of the centre of unit 0's RF),

    r' = r + (d (k - 1)) j,    j' = j s,    o' = o + (d (k - 1) / 2 - p) j.

Element-wise ops keep the RF; a merge (residual add, concatenation) takes the union of its inputs.
All sizes are along the height axis (the models here are square).
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

__all__ = ["RF", "LayerRF", "receptive_field", "layer_receptive_fields", "gradient_rf", "gradient_support"]


@dataclass(frozen=True)
class RF:
    """Receptive field of the units of one feature map, in input pixels."""

    size: int  # side of the square of input pixels that can affect one unit
    stride: int  # jump: input pixels between two neighbouring units
    offset: float  # input coordinate of the centre of unit 0's RF (pixel centres at 0, 1, ...)

    def union(self, other: "RF") -> "RF":
        if self.stride != other.stride:
            raise ValueError(f"cannot merge feature maps of different strides ({self.stride} vs {other.stride})")
        lo = min(self.offset - (self.size - 1) / 2, other.offset - (other.size - 1) / 2)
        hi = max(self.offset + (self.size - 1) / 2, other.offset + (other.size - 1) / 2)
        return RF(size=int(round(hi - lo)) + 1, stride=self.stride, offset=(lo + hi) / 2)

    def window(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> "RF":
        span = dilation * (kernel - 1)
        return RF(
            size=self.size + span * self.stride,
            stride=self.stride * stride,
            offset=self.offset + (span / 2 - padding) * self.stride,
        )


@dataclass(frozen=True)
class LayerRF:
    """One traced layer: its name, output shape and receptive field."""

    name: str
    op: str
    shape: Tuple[int, ...]
    rf: RF


_GLOBAL = "global"  # marker: every output unit sees the whole input (after global pooling / flattening)


def _pair0(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


class _Tracer(fx.Tracer):
    """Traces down to convs and pools, with timm's fx conventions (its leaf modules and wrapped functions)."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f)))
        self._leaf_types = tuple(get_notrace_modules()) + (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaf_types) or super().is_leaf_module(m, qualname)


class _Features(nn.Module):
    """Makes ``forward_features`` the traced forward; submodule names gain the prefix ``model.``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _trace(model: nn.Module, input_size: Sequence[int]) -> fx.GraphModule:
    """Trace ``forward_features`` (or ``forward``) and record every node's output shape."""
    root = _Features(model) if hasattr(model, "forward_features") else nn.Sequential()
    if not hasattr(model, "forward_features"):
        root.add_module("model", model)
    tracer = _Tracer()
    graph = tracer.trace(root)
    gm = fx.GraphModule(tracer.root, graph)
    gm = gm.eval()
    # shapes only: run on the meta device so a 900x900 input costs nothing
    meta = copy.deepcopy(gm).to("meta")
    x = torch.empty(1, *input_size, device="meta")
    meta(x)  # the model's own input checks (e.g. a too-large rfpool k) raise here, untangled from ShapeProp
    ShapeProp(meta).propagate(x)
    for node, meta_node in zip(gm.graph.nodes, meta.graph.nodes):
        node.meta.update(meta_node.meta)
    return gm


def _spatial(node: Any) -> Optional[Tuple[int, int]]:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if tm is None or not hasattr(tm, "shape"):
        return None
    shape = tuple(tm.shape)
    return (shape[-2], shape[-1]) if len(shape) == 4 else ()


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Left padding of TF 'SAME' (timm's Conv2dSame / pad_same)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2


def _conv_rf(rf: RF, kernel: int, stride: int, padding: Any, dilation: int, in_size: int) -> RF:
    if padding == "same":
        padding = dilation * (kernel - 1) // 2
    elif padding == "valid":
        padding = 0
    return rf.window(kernel, stride, _pair0(padding), dilation)


def _adaptive_rf(rf: RF, in_hw: Tuple[int, int], out_hw: Tuple[int, int]) -> Any:
    if out_hw == in_hw:
        return rf
    if in_hw[0] % out_hw[0] == 0:  # uniform bins: a plain pool
        k = in_hw[0] // out_hw[0]
        return _GLOBAL if out_hw[0] == 1 else rf.window(k, k, 0)
    raise NotImplementedError(f"adaptive pooling {in_hw} -> {out_hw} has non-uniform bins")


def _module_rf(m: nn.Module, rf: RF, node: fx.Node, in_node: fx.Node) -> Any:
    in_hw, out_hw = _spatial(in_node), _spatial(node)
    if isinstance(m, nn.Conv2d):
        k, s, d = _pair0(m.kernel_size), _pair0(m.stride), _pair0(m.dilation)
        if type(m).__name__.endswith("Same"):  # timm's dynamic TF-same padding
            return rf.window(k, s, _same_padding(in_hw[0], k, s, d), d)
        return _conv_rf(rf, k, s, m.padding, d, in_hw[0])
    if isinstance(m, nn.MaxPool2d):
        return rf.window(_pair0(m.kernel_size), _pair0(m.stride or m.kernel_size), _pair0(m.padding), _pair0(m.dilation))
    if isinstance(m, nn.AvgPool2d):
        return rf.window(_pair0(m.kernel_size), _pair0(m.stride or m.kernel_size), _pair0(m.padding))
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and out_hw:
        return _adaptive_rf(rf, in_hw, out_hw)
    return None  # not a spatial op we know: let the generic rule decide


def _function_rf(fn: Any, node: fx.Node, rf: RF, gm: fx.GraphModule) -> Any:
    args = list(node.args)
    kw = node.kwargs
    if fn in (F.conv2d, torch.conv2d):
        weight = args[1]
        k = weight.meta["tensor_meta"].shape[-2]
        get = lambda i, name, default: args[i] if len(args) > i else kw.get(name, default)  # noqa: E731
        return _conv_rf(rf, k, _pair0(get(3, "stride", 1)), get(4, "padding", 0), _pair0(get(5, "dilation", 1)),
                        _spatial(args[0])[0])
    if fn in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d):
        get = lambda i, name, default: args[i] if len(args) > i else kw.get(name, default)  # noqa: E731
        k = _pair0(get(1, "kernel_size", None))
        s = get(2, "stride", None)
        s = k if s in (None, [], ()) else _pair0(s)
        d = _pair0(get(4, "dilation", 1)) if fn in (F.max_pool2d, torch.max_pool2d) else 1
        return rf.window(k, s, _pair0(get(3, "padding", 0)), d)
    if fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch._C._nn.adaptive_avg_pool2d):
        return _adaptive_rf(rf, _spatial(args[0]), _spatial(node))
    return None


def _tensor_inputs(node: fx.Node, rfs: Dict[fx.Node, Any]) -> List[fx.Node]:
    found: List[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n in rfs else None)
    return found


def _propagate(gm: fx.GraphModule) -> Dict[fx.Node, Any]:
    """Receptive field of every tensor-valued node (``_GLOBAL`` once spatial structure is gone)."""
    modules = dict(gm.named_modules())
    rfs: Dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            rfs[node] = RF(size=1, stride=1, offset=0.0)
            continue
        if node.op in ("output", "get_attr") or _spatial(node) is None:
            continue
        inputs = _tensor_inputs(node, rfs)
        if not inputs:
            continue
        if any(rfs[n] == _GLOBAL for n in inputs):
            rfs[node] = _GLOBAL
            continue
        rf_in = inputs[0]
        known = None
        if node.op == "call_module":
            known = _module_rf(modules[node.target], rfs[rf_in], node, rf_in)
        elif node.op == "call_function":
            known = _function_rf(node.target, node, rfs[rf_in], gm)
        if known is not None:
            rfs[node] = known
            continue
        rfs[node] = _generic_rf(node, inputs, rfs)
    return rfs


def _generic_rf(node: fx.Node, inputs: List[fx.Node], rfs: Dict[fx.Node, Any]) -> Any:
    """Ops that keep the spatial size are element-wise (union of inputs); ones that drop it are global."""
    out_hw = _spatial(node)
    in_hws = {_spatial(n) for n in inputs}
    if out_hw and in_hws == {out_hw}:
        merged = rfs[inputs[0]]
        for n in inputs[1:]:
            merged = merged.union(rfs[n])
        return merged
    if not out_hw or out_hw == (1, 1):
        return _GLOBAL
    raise NotImplementedError(
        f"receptive_field: {node.format_node()} changes the spatial size {sorted(in_hws)} -> {out_hw} "
        "in a way rf_bench does not know; only convs and pools may"
    )


def _node_for_layer(gm: fx.GraphModule, layer: str) -> fx.Node:
    """The last node executed inside module ``layer`` (its output)."""
    qualname = f"model.{layer}"
    last = None
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack", {})
        paths = {v[0] if isinstance(v, tuple) else k for k, v in stack.items()}
        if node.op == "call_module" and node.target == qualname or qualname in paths:
            last = node
    if last is None:
        names = [n for n, _ in gm.get_submodule("model").named_modules() if n]
        hint = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"no layer {layer!r} in the model's forward_features; pick one of: {hint}")
    return last


def _output_node(gm: fx.GraphModule) -> fx.Node:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    arg = out.args[0]
    if not isinstance(arg, fx.Node):
        raise ValueError("receptive_field needs a model whose forward_features returns one tensor; pass layer=")
    return arg


def _default_input_size(model: nn.Module) -> Tuple[int, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))


def receptive_field(model: nn.Module, input_size: Optional[Sequence[int]] = None, layer: Optional[str] = None) -> RF:
    """Exact analytic RF of ``layer``'s output (default: the output of ``forward_features``).

    ``input_size`` is ``(C, H, W)``; it only sets the shapes the trace sees (default: the model's
    pretrained cfg). Raises ``ValueError`` if the layer's units see the whole input (after global pooling).
    """
    input_size = tuple(input_size or _default_input_size(model))
    gm = _trace(model, input_size)
    rfs = _propagate(gm)
    node = _node_for_layer(gm, layer) if layer else _output_node(gm)
    rf = rfs.get(node)
    if rf is None or rf == _GLOBAL:
        raise ValueError(f"layer {layer or 'forward_features'!r} has no spatial map (global pooling or flattening); "
                         "pick a conv layer before it")
    return rf


def layer_receptive_fields(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> List[LayerRF]:
    """RF after every leaf module and merge of ``forward_features``, in execution order."""
    input_size = tuple(input_size or _default_input_size(model))
    gm = _trace(model, input_size)
    rfs = _propagate(gm)
    rows = []
    for node, rf in rfs.items():
        if node.op == "placeholder" or rf == _GLOBAL:
            continue
        if node.op == "call_module":
            name, op = node.target.removeprefix("model."), type(gm.get_submodule(node.target)).__name__
        elif node.target in (operator.add, torch.add, torch.cat, operator.iadd):
            name, op = node.name, getattr(node.target, "__name__", str(node.target))
        else:
            continue
        rows.append(LayerRF(name=name, op=op, shape=tuple(node.meta["tensor_meta"].shape), rf=rf))
    return rows


def _layer_output(model: nn.Module, x: torch.Tensor, layer: Optional[str]) -> torch.Tensor:
    if layer is None:
        return model.forward_features(x)
    captured: List[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(x) if not hasattr(model, "forward_features") else model.forward_features(x)
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"layer {layer!r} did not run in forward_features")
    return captured[-1]


def gradient_support(
        model: nn.Module,
        input_size: Optional[Sequence[int]] = None,
        layer: Optional[str] = None,
        n: int = 4,
        seed: int = 0,
) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """Input rows and columns (inclusive) with non-zero gradient from the centre unit, and that unit.

    A gradient of 1 is put on the centre unit of every channel of ``layer``'s output (default: the
    output of ``forward_features``) and back-propagated, in eval mode, to ``n`` random inputs; the
    support of ``|grad|`` is the union over them, so that no edge pixel is missed because a ReLU was
    off or a max-pool picked another pixel. Returns ``((row_lo, row_hi), (col_lo, col_hi), (i, j))``.
    """
    input_size = tuple(input_size or _default_input_size(model))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, *input_size, generator=generator).to(device).requires_grad_(True)
        with torch.enable_grad():
            out = _layer_output(model, x, layer)
            h, w = out.shape[-2:]
            out[..., h // 2, w // 2].sum().backward()
    finally:
        model.train(was_training)
    support = (x.grad.abs().sum(dim=(0, 1)) > 0).cpu()
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ValueError("the centre unit has zero gradient for every input; cannot measure its RF")
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])), (h // 2, w // 2)


def gradient_rf(
        model: nn.Module,
        input_size: Optional[Sequence[int]] = None,
        layer: Optional[str] = None,
        n: int = 4,
        seed: int = 0,
) -> int:
    """Measured RF: the extent (along the height) of non-zero input gradient of the centre unit.

    This is how the paper measured RFs (see ``gradient_support``). Branches initialised to zero
    (timm's ``zero_init_last``) contribute no gradient, so their part of the RF is not seen.
    Raises ``ValueError`` if the support reaches the border, i.e. the input is too small to measure.
    """
    input_size = tuple(input_size or _default_input_size(model))
    (top, bottom), (left, right), _ = gradient_support(model, input_size, layer, n, seed)
    height, width = input_size[-2:]
    if top == 0 or bottom == height - 1 or left == 0 or right == width - 1:
        raise ValueError(
            f"the measured RF reaches the border of the {height}x{width} input (>= {bottom - top + 1} px); "
            "use an input larger than the analytic RF (receptive_field(...).size) plus a margin"
        )
    return bottom - top + 1
