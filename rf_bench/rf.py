"""Receptive fields: exact analytic RFs by tracing a model with torch.fx, and measured (gradient) RFs.

The analytic RF of a unit is propagated layer by layer (Araujo et al., Distill 2019): for a layer of
kernel ``k``, stride ``s``, padding ``p`` and dilation ``d`` whose input has RF ``r``, jump ``j`` and
offset ``o`` (input coordinate of the centre of unit 0's RF),

    r' = r + (d (k - 1)) j,    j' = j s,    o' = o + (d (k - 1) / 2 - p) j.

Element-wise ops keep the RF; a merge (residual add, concatenation) takes the union of its inputs.
All sizes are along the height axis (the models here are square).

Modern CNNs add three things, each with its rule:

- **Gates by global context** (squeeze-excitation, ECA, global-context blocks): a global pool whose output
  rescales the spatial map. The local RF passes through the product unchanged; the unit also sees a summary
  of its whole input, which ``RF.global_context`` says (it is never hidden, and never an error).
- **Channels-last blocks** (ConvNeXt's LayerNorm and MLP): permutes that only move the channel axis are
  followed: the height and width axes are tracked wherever they go, and ops over channels keep the RF.
- **What cannot be followed** (upsampling, a reshape that mixes space and channels, a block timm keeps
  opaque to tracing that holds spatial convs) is refused in one line naming the module and the op.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

__all__ = ["RF", "LayerRF", "MeasuredRF", "receptive_field", "layer_receptive_fields", "block_receptive_fields",
           "receptive_fields_at", "live_weights", "dead_weight_share", "border_layer", "gradient_rf", "gradient_support",
           "measure_rf", "silenced_parameters"]


@dataclass(frozen=True)
class RF:
    """Receptive field of the units of one feature map, in input pixels.

    Attributes:
        size: side of the square of input pixels that can affect one unit (the local RF where ``global_context``).
        stride: the jump: input pixels between two neighbouring units.
        offset: input coordinate of the centre of unit 0's RF (pixel centres at 0, 1, ...).
        global_context: the unit is also rescaled by a summary of its whole input (an SE-like gate).
    """

    size: int
    stride: int
    offset: float
    global_context: bool = False

    def union(self, other: "RF") -> "RF":
        """The RF covering both inputs of a merge (residual add, concatenation)."""
        if self.stride != other.stride:
            raise ValueError(f"cannot merge feature maps of different strides ({self.stride} vs {other.stride})")
        lo = min(self.offset - (self.size - 1) / 2, other.offset - (other.size - 1) / 2)
        hi = max(self.offset + (self.size - 1) / 2, other.offset + (other.size - 1) / 2)
        return RF(size=int(round(hi - lo)) + 1, stride=self.stride, offset=(lo + hi) / 2,
                  global_context=self.global_context or other.global_context)

    def window(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> "RF":
        """The RF after a sliding window of ``kernel``, ``stride``, ``padding`` and ``dilation``."""
        span = dilation * (kernel - 1)
        return RF(
            size=self.size + span * self.stride,
            stride=self.stride * stride,
            offset=self.offset + (span / 2 - padding) * self.stride,
            global_context=self.global_context,
        )


@dataclass(frozen=True)
class LayerRF:
    """One traced layer.

    Attributes:
        name: the module's qualified name (``layer2.1``), which ``receptive_field(..., layer=name)`` accepts, or the
            traced node's name for a merge (``add_3``).
        op: the module's class (``Conv2d``) or the function (``add``).
        shape: the output's shape without the batch (C, H, W).
        rf: the RF of the output's units.
        in_shape: conv and pooling layers: the input map's (H, W); None for other rows.
        live_mask: conv and pooling layers: per kernel tap (kh rows of kw), whether it reads an input pixel (not
            padding) at one or more output positions. A weight of a tap that is not live multiplies only zero
            padding: it receives no gradient but weight decay's and changes no output.
        live_share: conv layers: the share of the layer's weights whose tap is live (pooling layers: None).
        padding_exposure: conv and pooling layers: the share of (tap, output position) pairs that read padding.
        weight: conv layers: the weight parameter's name in ``model.named_parameters()``.
    """

    name: str
    op: str
    shape: Tuple[int, ...]
    rf: RF
    in_shape: Optional[Tuple[int, int]] = None
    live_mask: Optional[Tuple[Tuple[bool, ...], ...]] = None
    live_share: Optional[float] = None
    padding_exposure: Optional[float] = None
    weight: Optional[str] = None


_GLOBAL = "global"  # marker: every output unit sees the whole input (after global pooling / flattening)


def _pair0(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _space_to_depth_types() -> Tuple[type, ...]:
    try:
        from timm.layers import SpaceToDepth
    except ImportError:  # older timm
        return ()
    return (SpaceToDepth,)


class _Tracer(fx.Tracer):
    """Traces down to convs and pools, with timm's fx conventions (its leaf modules and wrapped functions).

    ``open_blocks``: trace into timm's leaf modules too, except those that are one conv, pool or pointwise op
    (a block timm keeps opaque, such as NFNet's, may still trace; where it does not, the caller retries)."""

    def __init__(self, open_blocks: bool = False) -> None:
        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f)))
        notrace = tuple(m for m in get_notrace_modules() if not open_blocks or _is_one_op(m))
        self._leaf_types = notrace + (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d) + _space_to_depth_types()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaf_types) or super().is_leaf_module(m, qualname)


class _Features(nn.Module):
    """Makes ``forward_features`` the traced forward; submodule names gain the prefix ``model.``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _is_one_op(module_type: type) -> bool:
    """A timm leaf that is a single conv or pool (handled by its attributes) or pointwise (norm + activation)."""
    return issubclass(module_type, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) or "Norm" in module_type.__name__ and \
        "Block" not in module_type.__name__ or module_type.__name__ in ("CondConv2d", "ConvMlp", "InplaceAbn")


def _trace(model: nn.Module, input_size: Sequence[int]) -> fx.GraphModule:
    """Trace ``forward_features`` (or ``forward``) and record every node's output shape."""
    root = _Features(model) if hasattr(model, "forward_features") else nn.Sequential()
    if not hasattr(model, "forward_features"):
        root.add_module("model", model)
    try:  # into timm's opaque blocks where they trace; else they stay leaves (and are refused if spatial)
        tracer = _Tracer(open_blocks=True)
        graph = tracer.trace(root)
    except Exception:  # noqa: BLE001  fx raises many kinds on untraceable control flow
        tracer = _Tracer()
        graph = tracer.trace(root)
    gm = fx.GraphModule(tracer.root, graph)
    gm = gm.eval()
    # shapes only: run on the meta device so a 900x900 input costs nothing
    meta = copy.deepcopy(gm).to("meta")
    param = next(model.parameters(), None)
    x = torch.empty(1, *input_size, device="meta", dtype=param.dtype if param is not None else None)
    meta(x)  # the model's own input checks (e.g. a too-large rfpool k) raise here, untangled from ShapeProp
    ShapeProp(meta).propagate(x)
    for node, meta_node in zip(gm.graph.nodes, meta.graph.nodes):
        node.meta.update(meta_node.meta)
    return gm


_NCHW = (2, 3)  # where height and width are in a tensor that nothing has permuted
Axes = Optional[Tuple[int, int]]


def _shape(node: Any) -> Optional[Tuple[int, ...]]:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if isinstance(tm, (tuple, list)) and not hasattr(tm, "shape"):  # several outputs (split, chunk): they share a rank; the first one's shape
        tm = next((t for t in tm if hasattr(t, "shape")), None)
    if tm is None or not hasattr(tm, "shape"):
        return None
    return tuple(tm.shape)


def _spatial(node: Any, axes: Axes = _NCHW) -> Optional[Tuple[int, ...]]:
    """Height and width of a tensor node at ``axes``; ``()`` for a tensor without them, None for a non-tensor."""
    shape = _shape(node)
    if shape is None:
        return None
    if axes is None or max(axes) >= len(shape):
        return ()
    return (shape[axes[0]], shape[axes[1]])


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


def _dynamic_same(m: nn.Module) -> bool:
    """timm's TF-'SAME' layers pad at run time (Conv2dSame, MaxPool2dSame, CondConv2d(padding='same'), ...)."""
    return type(m).__name__.endswith("Same") or bool(getattr(m, "dynamic_padding", False))


def _conv_like(m: nn.Module) -> bool:
    """A conv by its attributes: nn.Conv2d, or a timm conv that is not one (CondConv2d)."""
    return isinstance(m, nn.Conv2d) or all(hasattr(m, a) for a in ("kernel_size", "stride", "padding", "dilation",
                                                                      "weight"))


def _module_rf(m: nn.Module, rf: RF, node: fx.Node, in_node: fx.Node) -> Any:
    in_hw, out_hw = _spatial(in_node), _spatial(node)
    if _conv_like(m):
        k, s, d = _pair0(m.kernel_size), _pair0(m.stride), _pair0(m.dilation)
        if _dynamic_same(m):
            return rf.window(k, s, _same_padding(in_hw[0], k, s, d), d)
        return _conv_rf(rf, k, s, m.padding, d, in_hw[0])
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s = _pair0(m.kernel_size), _pair0(m.stride or m.kernel_size)
        d = _pair0(getattr(m, "dilation", 1))
        padding = _same_padding(in_hw[0], k, s, d) if _dynamic_same(m) else _pair0(m.padding)
        return rf.window(k, s, padding, d)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and out_hw:
        return _adaptive_rf(rf, in_hw, out_hw)
    if isinstance(m, _space_to_depth_types()):  # each output unit is one bs x bs block of input units
        return rf.window(m.bs, m.bs, 0)
    if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
        return _padded(rf, m.padding)
    return None  # not a spatial op we know: let the generic rule decide


def _spatial_submodules(m: nn.Module) -> List[str]:
    """Submodules of an opaque (leaf) module that reach across space: convs wider than 1x1 or strided, pools."""
    found = []
    for name, sub in m.named_modules():
        if not name:  # the module itself: a known spatial op was handled before; others keep or change the size
            continue
        if _conv_like(sub):
            spatial = _pair0(sub.kernel_size) > 1 or _pair0(sub.stride) > 1
        else:
            spatial = isinstance(sub, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                                       nn.Upsample))
        if spatial:
            found.append(name)
    return found


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
    if fn in (F.pad, torch.nn.functional.pad, torch.constant_pad_nd):
        pads = args[1] if len(args) > 1 else kw.get("pad")
        return _padded(rf, pads)
    return None


def _padded(rf: RF, pads: Sequence[int]) -> RF:
    """Padding adds units before the first one (``pads`` is F.pad's: last axis first, so height's top is [2]):
    the RF and the jump stay, unit 0's centre moves back by the top padding."""
    top = int(pads[2]) if len(pads) >= 4 else 0
    return dataclasses.replace(rf, offset=rf.offset - top * rf.stride)


def _tensor_inputs(node: fx.Node, rfs: Dict[fx.Node, Any]) -> List[fx.Node]:
    found: List[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n in rfs else None)
    return found


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _module_name(node: fx.Node) -> str:
    """The qualified name of the module a node runs in (what a user finds in ``model.named_modules()``)."""
    if node.op == "call_module":
        return str(node.target).removeprefix("model.")
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "forward_features"
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else list(stack)[-1]
    return str(path).removeprefix("model.").removeprefix("model") or "forward_features"


def _refuse(node: fx.Node, gm: fx.GraphModule, what: str) -> NotImplementedError:
    return NotImplementedError(f"receptive_field: module {_module_name(node)!r} ({_op_name(node, gm)}) {what}")


_REDUCTIONS = ("sum", "mean", "amax", "amin")


def _moved_axes(node: fx.Node, axes: Optional[Tuple[int, int]], first: fx.Node) -> Optional[Tuple[int, int]]:
    """Where height and width go through an op that only moves or adds or removes other axes (None if ``node`` is
    no such op): a permute or transpose; a stack or unsqueeze that adds an axis (a selective-kernel block stacks
    its branches); a reshape that splits or merges the channels in front of height and width (split attention's
    radix); a sum or mean over an axis that is neither (the branches' weighted sum)."""
    if axes is None or node.op not in ("call_method", "call_function"):
        return None
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    out, src = _shape(node), _shape(first)
    if out is None or src is None:
        return None
    spatial = tuple(a % len(src) for a in axes)
    if name in ("stack", "unsqueeze"):
        dim = _dim_argument(node, 1)
        if dim is None or len(out) != len(src) + 1:
            return None
        dim %= len(out)
        return tuple(a + 1 if a >= dim else a for a in spatial)
    if name in ("reshape", "view") and spatial == (len(src) - 2, len(src) - 1) and len(out) >= 3 \
            and out[-2:] == src[-2:] and out[0] == src[0]:
        return len(out) - 2, len(out) - 1  # only the axes between batch and height changed
    if name in _REDUCTIONS:
        dims = _dim_argument(node, 1)
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        dims = [d % len(src) for d in dims]
        if not dims or any(d in spatial or d == 0 for d in dims) or len(out) != len(src) - len(dims):
            return None  # over the whole tensor, over height or width (global), or keepdim: not a move
        return tuple(a - sum(d < a for d in dims) for a in spatial)
    return _permuted_axes(node, axes)


def _dim_argument(node: fx.Node, position: int) -> Any:
    """The ``dim`` of a call, given by keyword or at ``position``."""
    if "dim" in node.kwargs:
        return node.kwargs["dim"]
    return node.args[position] if len(node.args) > position else None


def _permuted_axes(node: fx.Node, axes: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """Where height and width go through a permute / transpose (None if ``node`` is neither)."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    rest = [a for a in node.args[1:]] + list(node.kwargs.values())
    if name == "permute":
        dims = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)
        ndim = len(dims)
        dims = [d % ndim for d in dims]
        return dims.index(axes[0] % ndim), dims.index(axes[1] % ndim)
    if name in ("transpose", "swapaxes", "swapdims"):
        ndim = len(_shape(node))
        a, b = (int(d) % ndim for d in rest[:2])
        swap = {a: b, b: a}
        return swap.get(axes[0] % ndim, axes[0] % ndim), swap.get(axes[1] % ndim, axes[1] % ndim)
    return None


def _propagate(gm: fx.GraphModule) -> Dict[fx.Node, Any]:
    """Receptive field of every tensor-valued node (``_GLOBAL`` once spatial structure is gone)."""
    modules = dict(gm.named_modules())
    rfs: Dict[fx.Node, Any] = {}
    axes: Dict[fx.Node, Axes] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            rfs[node], axes[node] = RF(size=1, stride=1, offset=0.0), _NCHW
            continue
        if node.op in ("output", "get_attr") or _shape(node) is None:
            continue
        inputs = _tensor_inputs(node, rfs)
        if not inputs:
            continue
        local = [n for n in inputs if rfs[n] != _GLOBAL]
        if not local:
            rfs[node] = _GLOBAL
            continue
        first = local[0]
        moved = _moved_axes(node, axes[first], first) if len(local) == len(inputs) else None
        if moved is not None:  # every unit keeps its RF (stacked branches: their union); height and width move
            merged = rfs[first]
            for other in local[1:]:
                merged = merged.union(rfs[other])
            rfs[node], axes[node] = merged, moved
            node.meta["rf_axes"] = moved
            continue
        same_rank = len(_shape(node)) == len(_shape(first))
        axes[node] = axes[first] if same_rank else (_NCHW if len(_shape(node)) == 4 else None)
        node.meta["rf_axes"] = axes[node]
        known = None
        if node.op in ("call_module", "call_function") and axes[first] == _NCHW:
            if node.op == "call_module":
                known = _module_rf(modules[node.target], rfs[first], node, first)
            else:
                known = _function_rf(node.target, node, rfs[first], gm)
        gated = len(local) < len(inputs)
        if gated:  # a global summary rescales (or shifts) the local map, or picks a conv's weights (CondConv)
            rfs[node] = _gated_rf(node, local, rfs, axes) if known is None or known == _GLOBAL else \
                dataclasses.replace(known, global_context=True)
            if rfs[node] != _GLOBAL:
                node.meta["rf_global_inputs"] = [n for n in inputs if n not in local]
            continue
        if known is not None:
            rfs[node] = known
            continue
        if _normalises_over_space(node, modules, axes[first]):  # GroupNorm and kin: statistics of the whole map
            rfs[node] = dataclasses.replace(rfs[first], global_context=True)
            node.meta["rf_spatial_statistics"] = True
            continue
        if node.op == "call_module":
            hidden = _spatial_submodules(modules[node.target])
            if hidden:
                raise _refuse(node, gm, f"is traced as one opaque call but holds spatial layers "
                                        f"({', '.join(hidden[:3])}); rf_bench cannot follow its RF")
        rfs[node] = _generic_rf(node, local, rfs, axes, gm)
    return rfs


def _normalises_over_space(node: fx.Node, modules: Dict[str, nn.Module], axes: Axes) -> bool:
    """A norm whose statistics span height and width (GroupNorm, InstanceNorm without running statistics, a
    LayerNorm over C, H, W): every unit then depends on the whole map, as through a gate."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.GroupNorm):
            return True
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            return not (m.track_running_stats and not m.training)
        if isinstance(m, nn.LayerNorm):
            return _spans_axes(len(m.normalized_shape), node, axes)
        return False
    if node.op == "call_function":
        if node.target in (F.group_norm, F.instance_norm):
            return True
        if node.target is F.layer_norm:
            shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("normalized_shape")
            return _spans_axes(len(shape) if isinstance(shape, (list, tuple)) else 1, node, axes)
    return False


def _spans_axes(normalised: int, node: fx.Node, axes: Axes) -> bool:
    """Whether the last ``normalised`` axes of ``node``'s output hold height or width."""
    ndim = len(_shape(node))
    return axes is not None and any(a % ndim >= ndim - normalised for a in axes)


def _gated_rf(node: fx.Node, local: List[fx.Node], rfs: Dict[fx.Node, Any], axes: Dict[fx.Node, Axes]) -> Any:
    """An op mixing local maps with a global summary (an SE gate's product, a GC block's sum): the local RF, flagged;
    global if the output has no spatial map of the local inputs' size."""
    out_hw = _spatial(node, axes[node])
    if not out_hw or any(_spatial(n, axes[n]) != out_hw for n in local):
        return _GLOBAL
    merged = rfs[local[0]]
    for n in local[1:]:
        merged = merged.union(rfs[n])
    return dataclasses.replace(merged, global_context=True)


def _generic_rf(node: fx.Node, inputs: List[fx.Node], rfs: Dict[fx.Node, Any], axes: Dict[fx.Node, Axes],
                gm: fx.GraphModule) -> Any:
    """Ops that keep the spatial size are element-wise (union of inputs); ones that drop it are global."""
    out_hw = _spatial(node, axes[node])
    in_hws = {_spatial(n, axes[n]) for n in inputs}
    if out_hw and in_hws == {out_hw}:
        merged = rfs[inputs[0]]
        for n in inputs[1:]:
            merged = merged.union(rfs[n])
        return merged
    if not out_hw or out_hw == (1, 1):
        return _GLOBAL
    raise _refuse(node, gm, f"changes the spatial size {' / '.join(map(str, sorted(in_hws)))} -> {out_hw}; rf_bench "
                            "follows convolutions, pools and ops that keep the size, not this one")


# ------------------------------------------------------------------------------ live taps: weights that see the image
#
# A tap of a sliding window is live if, at some output position, it reads a value that is not zero padding. The trace
# tracks, per tensor and axis, the interval of indices that are not padding: a conv or pool output is taken as
# not padding everywhere (a window over padding alone still holds a bias, which a later tap multiplies), a zero pad
# shifts the interval in, and an op that keeps the size keeps the hull of its inputs' intervals. A padding mode that
# copies pixels (reflect, replicate, circular) or a non-zero constant counts as reading the image.

_Interval = Tuple[int, int]  # first and last index that is not zero padding
_EVERYWHERE: _Interval = (-(1 << 30), 1 << 30)  # what a window that pads with pixels reads


@dataclass(frozen=True)
class _Window:
    """A sliding window's geometry along height and width: kernel, stride, top/left padding, dilation."""

    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    pads_with_pixels: bool = False  # a padding mode that copies pixels: every tap reads the image


@dataclass(frozen=True)
class _Taps:
    """One window's live taps: per axis, how many output positions each tap reads the image at."""

    in_hw: Tuple[int, int]
    out_hw: Tuple[int, int]
    reads: Tuple[Tuple[int, ...], Tuple[int, ...]]

    @property
    def mask(self) -> torch.Tensor:
        rows, cols = (torch.tensor(r) > 0 for r in self.reads)
        return rows[:, None] & cols[None, :]

    @property
    def exposure(self) -> float:
        pairs = len(self.reads[0]) * len(self.reads[1]) * self.out_hw[0] * self.out_hw[1]
        return 1.0 - sum(self.reads[0]) * sum(self.reads[1]) / pairs if pairs else 0.0


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v[0]), int(v[-1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _reads_along(out_size: int, kernel: int, stride: int, padding: int, dilation: int, image: _Interval) -> Tuple[int, ...]:
    """Per tap, the number of output positions ``o`` whose read index ``o * stride - padding + tap * dilation`` lies
    in ``image`` (closed form: an arithmetic progression cut by an interval)."""
    lo, hi = image
    counts = []
    for tap in range(kernel):
        first = tap * dilation - padding  # index that output 0 reads
        start = max(0, -((first - lo) // stride))  # ceil((lo - first) / stride)
        stop = min(out_size - 1, (hi - first) // stride)
        counts.append(max(0, stop - start + 1))
    return tuple(counts)


def _window_of(m: nn.Module, in_hw: Tuple[int, int]) -> _Window:
    """The geometry of a conv or pool module at an input of ``in_hw``."""
    kernel, dilation = _pair(m.kernel_size), _pair(getattr(m, "dilation", 1))
    stride = _pair(m.stride or m.kernel_size)
    if _dynamic_same(m):
        padding = tuple(_same_padding(in_hw[a], kernel[a], stride[a], dilation[a]) for a in range(2))
    elif m.padding == "same":
        padding = tuple(dilation[a] * (kernel[a] - 1) // 2 for a in range(2))
    elif m.padding == "valid":
        padding = (0, 0)
    else:
        padding = _pair(m.padding)
    return _Window(kernel, stride, padding, dilation, pads_with_pixels=getattr(m, "padding_mode", "zeros") != "zeros")


def _function_window(node: fx.Node) -> Optional[_Window]:
    """The geometry of a functional conv or pool call (None for other calls)."""
    args, kw = list(node.args), node.kwargs
    get = lambda i, name, default: args[i] if len(args) > i else kw.get(name, default)  # noqa: E731
    if node.target in (F.conv2d, torch.conv2d):
        shape = args[1].meta["tensor_meta"].shape
        padding = get(4, "padding", 0)
        kernel, dilation = (int(shape[-2]), int(shape[-1])), _pair(get(5, "dilation", 1))
        if padding == "same":
            padding = tuple(dilation[a] * (kernel[a] - 1) // 2 for a in range(2))
        return _Window(kernel, _pair(get(3, "stride", 1)), (0, 0) if padding == "valid" else _pair(padding), dilation)
    if node.target in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d):
        kernel = _pair(get(1, "kernel_size", None))
        stride = get(2, "stride", None)
        dilation = _pair(get(4, "dilation", 1)) if node.target in (F.max_pool2d, torch.max_pool2d) else (1, 1)
        return _Window(kernel, kernel if stride in (None, [], ()) else _pair(stride), _pair(get(3, "padding", 0)),
                       dilation)
    return None


def _whole(hw: Sequence[int]) -> Tuple[_Interval, _Interval]:
    """Every index of a map of ``hw``: nothing in it is padding."""
    return (0, int(hw[0]) - 1), (0, int(hw[1]) - 1)


def _padded_interval(image: Tuple[_Interval, _Interval], out_hw: Sequence[int], pads: Sequence[int],
                     zero: bool) -> Tuple[_Interval, _Interval]:
    """The image's intervals after F.pad-style ``pads`` (last axis first): shifted in by the top and left pads
    where the padding is zeros, the whole padded map where it holds pixels or a non-zero constant."""
    if not zero:
        return _whole(out_hw)
    left = int(pads[0]) if len(pads) >= 2 else 0
    top = int(pads[2]) if len(pads) >= 4 else 0
    (h0, h1), (w0, w1) = image
    return (h0 + top, h1 + top), (w0 + left, w1 + left)


def _pad_of(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[Tuple[Sequence[int], bool]]:
    """``(pads, zero)`` of a padding op (None for other ops): F.pad's pads, and whether it pads with zeros."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
            pads = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding,) * 4
            return pads, float(getattr(m, "value", 0.0)) == 0.0
        if isinstance(m, (nn.ReflectionPad2d, nn.ReplicationPad2d)):
            return m.padding, False
        return None
    if node.op == "call_function" and node.target in (F.pad, torch.constant_pad_nd):
        pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0)
        return pads, node.target is torch.constant_pad_nd and not value or mode == "constant" and not value
    return None


def _live_taps(gm: fx.GraphModule) -> Dict[fx.Node, _Taps]:
    """The live taps of every conv and pooling node of a traced model whose height and width are in place."""
    modules = dict(gm.named_modules())
    image: Dict[fx.Node, Tuple[_Interval, _Interval]] = {}
    taps: Dict[fx.Node, _Taps] = {}
    for node in gm.graph.nodes:
        hw = _spatial(node)
        if node.op == "placeholder" or not hw or len(hw) != 2 or node.meta.get("rf_axes", _NCHW) != _NCHW:
            if hw and len(hw) == 2:
                image[node] = _whole(hw)
            continue
        inputs = [n for n in _tensor_inputs(node, image)]
        source = inputs[0] if inputs else None
        window = None
        if source is not None and _spatial(source) and len(_spatial(source)) == 2:
            if node.op == "call_module" and (_conv_like(modules[node.target]) or
                                             isinstance(modules[node.target], (nn.MaxPool2d, nn.AvgPool2d))):
                window = _window_of(modules[node.target], _spatial(source))
            elif node.op == "call_function":
                window = _function_window(node)
        pad = _pad_of(node, modules) if source is not None else None
        if window is not None:
            seen = (_EVERYWHERE, _EVERYWHERE) if window.pads_with_pixels else image[source]
            reads = tuple(_reads_along(hw[a], window.kernel[a], window.stride[a], window.padding[a],
                                       window.dilation[a], seen[a]) for a in range(2))
            taps[node] = _Taps(in_hw=tuple(_spatial(source)), out_hw=tuple(hw), reads=reads)
            image[node] = _whole(hw)
        elif pad is not None:
            image[node] = _padded_interval(image[source], hw, *pad)
        else:
            same = [image[n] for n in inputs if _spatial(n) == hw]
            image[node] = (tuple(_hull(i[a] for i in same) for a in range(2)) if same  # type: ignore[assignment]
                           else _whole(hw))
    return taps


def _hull(intervals: Any) -> _Interval:
    intervals = list(intervals)
    return min(i[0] for i in intervals), max(i[1] for i in intervals)


def _weight_name(node: fx.Node, gm: fx.GraphModule) -> Optional[str]:
    """The weight parameter a conv node multiplies, by its name in the user's model (None for pools)."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if _conv_like(m) and isinstance(getattr(m, "weight", None), nn.Parameter):
            return f"{node.target}.weight".removeprefix("model.")
        return None
    weight = node.args[1] if node.target in (F.conv2d, torch.conv2d) and len(node.args) > 1 else None
    return str(weight.target).removeprefix("model.") if isinstance(weight, fx.Node) and weight.op == "get_attr" else None


def _tap_mask_for(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A weight-shaped mask from a (kh, kw) tap mask: a conv weight's last two axes are its taps (CondConv's
    flattened experts too, once viewed as (-1, kh, kw))."""
    kh, kw = mask.shape
    return mask.expand(weight.numel() // (kh * kw), kh, kw).reshape(weight.shape).clone()


def live_weights(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> Dict[str, torch.Tensor]:
    """A bool mask per weight parameter (``named_parameters`` names ending in ``weight``, each of the weight's shape):
    True where the weight reads an input pixel at ``input_size`` ``(C, H, W)`` at some output position.

    A conv weight's tap that only ever multiplies zero padding is False; every other weight (norms, linear layers,
    convs after global pooling) is all True. Zeroing the False weights changes no output.
    """
    input_size = tuple(input_size or _default_input_size(model))
    gm = _trace(model, input_size)
    _propagate(gm)
    masks = {name: torch.ones(p.shape, dtype=torch.bool) for name, p in model.named_parameters()
             if name.rsplit(".", 1)[-1] == "weight"}
    params = dict(model.named_parameters())
    seen: Dict[str, torch.Tensor] = {}
    for node, found in _live_taps(gm).items():
        name = _weight_name(node, gm)
        if name in params:  # a weight used by several calls is live where any call reads the image
            mask = _tap_mask_for(params[name], found.mask)
            seen[name] = seen[name] | mask if name in seen else mask
    masks.update(seen)
    return masks


def dead_weight_share(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> float:
    """The share of the model's conv weights that never see the image at ``input_size`` (linear layers, which all
    see it, are left out so that the share says what the geometry does to the convs)."""
    wanted = [name for name, m in model.named_modules() if _conv_like(m) and isinstance(getattr(m, "weight", None),
                                                                                        nn.Parameter)]
    live = live_weights(model, input_size)
    keys = [f"{name}.weight" if name else "weight" for name in wanted]
    masks = [live[key] for key in keys if key in live]
    total = sum(m.numel() for m in masks)
    return sum(int((~m).sum()) for m in masks) / total if total else 0.0


def border_layer(rows: Sequence[LayerRF], input_size: Sequence[int]) -> Optional[str]:
    """The border layer (Richter et al., "Receptive Field Analysis", 2021): the first conv or pooling layer whose
    RF exceeds the input's height, after which layers add no new image to what a unit sees; None if none does."""
    height = int(input_size[-2])
    return next((row.name for row in rows if row.in_shape is not None and row.rf.size > height), None)


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


def receptive_fields_at(model: nn.Module, input_size: Sequence[int], layers: Sequence[str]) -> Dict[str, Optional[RF]]:
    """The analytic RF of each of ``layers``' outputs from one trace (None for a layer after global pooling, or one
    the trace does not reach, such as the classifier)."""
    gm = _trace(model, tuple(input_size))
    rfs = _propagate(gm)
    found: Dict[str, Optional[RF]] = {}
    for layer in layers:
        try:
            rf = rfs.get(_node_for_layer(gm, layer))
        except ValueError:  # not in forward_features
            rf = None
        found[layer] = rf if isinstance(rf, RF) else None
    return found


def _block_name(qualname: str, is_leaf: Callable[[str], bool] = lambda path: False) -> str:
    """The block a module belongs to: its path up to the second numbered part (``stages.2.blocks.0``,
    ``features.denseblock1.denselayer3``) unless that names a leaf module (``layer2.0.downsample.0``, a conv of a
    block's shortcut), else to the first (``layer2.0``, ``blocks.3``), else its first part (``conv_stem``). Only in
    a path without index parts does a name ending in a number count as numbered (DenseNet's ``denseblock1``):
    ResNet's ``layer1.0.conv1`` is in block ``layer1.0``."""
    parts = qualname.split(".")
    numbered = [i for i, p in enumerate(parts) if p.isdigit()]
    numbered = numbered or [i for i, p in enumerate(parts) if i > 0 and p[-1:].isdigit()]
    if len(numbered) > 1 and not is_leaf(".".join(parts[:numbered[1] + 1])):
        return ".".join(parts[:numbered[1] + 1])
    return ".".join(parts[:numbered[0] + 1 if numbered else 1])


def _module_ending_at(gm: fx.GraphModule, node: fx.Node, block: str) -> str:
    """A name for ``node`` that `receptive_field` (``layer=``) resolves back to it: ``block`` itself when the module's
    output is ``node``, else the outermost module inside it that ends there. A stage that starts with a downsample
    (``layers.1``: its downsample, then its blocks) otherwise names its downsample's output after the whole stage."""
    if _node_for_layer(gm, block) is node:
        return block
    stack = node.meta.get("nn_module_stack") or {}
    paths = [str(v[0] if isinstance(v, tuple) else k).removeprefix("model.") for k, v in stack.items()]
    if node.op == "call_module":
        paths.append(str(node.target).removeprefix("model."))
    for path in paths:
        if path.startswith(block + ".") and _node_for_layer(gm, path) is node:
            return path
    return block


def block_receptive_fields(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> List[LayerRF]:
    """RF at the output of each block of ``forward_features`` (its last node, residual add included), in
    execution order: a readable summary of a net with hundreds of layers."""
    input_size = tuple(input_size or _default_input_size(model))
    gm = _trace(model, input_size)
    rfs = _propagate(gm)
    modules = dict(gm.named_modules())
    is_leaf = lambda path: not any(True for _ in modules.get("model." + path, gm).children())  # noqa: E731
    last: Dict[str, fx.Node] = {}
    for node, rf in rfs.items():
        stack = node.meta.get("nn_module_stack") or {}
        paths = [(v[0] if isinstance(v, tuple) else k) for k, v in stack.items()]
        if node.op == "call_module":
            paths.append(node.target)
        paths = [str(p).removeprefix("model.") for p in paths if str(p).startswith("model.")]
        if paths and rf != _GLOBAL:
            last[_block_name(paths[-1], is_leaf)] = node
    rows = []
    for name, node in sorted(last.items(), key=lambda item: list(rfs).index(item[1])):
        name = _module_ending_at(gm, node, name)
        op = type(gm.get_submodule(node.target)).__name__ if node.op == "call_module" else _op_name(node, gm)
        rows.append(LayerRF(name=name, op=op, shape=tuple(node.meta["tensor_meta"].shape), rf=rfs[node]))
    return rows


def layer_receptive_fields(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> List[LayerRF]:
    """RF after every leaf module and merge of ``forward_features``, in execution order."""
    input_size = tuple(input_size or _default_input_size(model))
    gm = _trace(model, input_size)
    rfs = _propagate(gm)
    taps = _live_taps(gm)
    params = dict(model.named_parameters())
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
        row = LayerRF(name=name, op=op, shape=tuple(node.meta["tensor_meta"].shape), rf=rf)
        rows.append(_with_taps(row, taps.get(node), _weight_name(node, gm), params))
    return rows


def _with_taps(row: LayerRF, taps: Optional[_Taps], weight: Optional[str], params: Dict[str, nn.Parameter]) -> LayerRF:
    """``row`` with its window's input size, live taps and padding exposure (and, for a conv, its live share)."""
    if taps is None:
        return row
    mask = taps.mask
    weight = weight if weight in params else None
    share = float(_tap_mask_for(params[weight], mask).double().mean()) if weight else None
    return dataclasses.replace(row, in_shape=taps.in_hw, live_mask=tuple(tuple(bool(v) for v in r) for r in mask.tolist()),
                               live_share=share, padding_exposure=taps.exposure, weight=weight)


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


# parameters that add rather than multiply: zero is their ordinary value, and it silences nothing
_ADDITIVE = ("bias", "beta", "shift", "embed", "token")


# a multiplicative tensor this small silences its path: ConvNeXt's layer scales start at 1e-6, and the product of
# a dozen of them underflows float32, so the gradient of the RF's edge, which crosses every branch, is exactly zero
SILENT_MAX = 1e-4


def silenced_parameters(model: nn.Module) -> List[str]:
    """Multiplicative parameters that are zero or nearly (``max |p| < SILENT_MAX``), which block the gradient.

    timm zero-initialises the last norm of each residual branch (``zero_init_last``) and some gates, and starts
    layer scales at 1e-6; a gradient measurement on such a net sees only the shortcut paths."""
    return [name for name, p in model.named_parameters()
            if p.is_floating_point() and not p.is_meta and not any(word in name.rsplit(".", 1)[-1] for word in _ADDITIVE)
            and float(p.detach().abs().max()) < SILENT_MAX]


def _revived_copy(model: nn.Module, names: Sequence[str], dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy of ``model`` in ``dtype`` whose zero tensors ``names`` are re-initialised: norm weights and scales to
    1, conv and linear weights as PyTorch initialises them. The copy is made in the measurement's dtype so that
    `gradient_support` need not copy it again."""
    copy_ = copy.deepcopy(model).to(dtype)
    params = dict(copy_.named_parameters())
    with torch.no_grad():
        for name in names:
            p = params[name]
            if p.dim() <= 1:
                p.fill_(1.0)
            else:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
    return copy_


@dataclass(frozen=True)
class MeasuredRF:
    """A gradient-measured RF.

    Attributes:
        size: the extent along the height of the input pixels with non-zero gradient.
        rows: the first and last input row it covers.
        cols: the first and last input column it covers.
        unit: the (row, column) of the output unit measured, the centre one.
        revived: the zero tensors re-initialised (on a copy) so that the measurement saw every path.
        local: global-context gates were detached; the gradient then shows the local RF, as the analytic one is.
    """

    size: int
    rows: Tuple[int, int]
    cols: Tuple[int, int]
    unit: Tuple[int, int]
    revived: Tuple[str, ...] = ()
    local: bool = False


class _LocalPaths(nn.Module):
    """``forward_features`` (or ``layer``'s output) with the global inputs of every gate detached: the gradient of
    a unit then flows only along the local paths, whose extent the analytic RF is."""

    def __init__(self, gm: fx.GraphModule, target: fx.Node) -> None:
        super().__init__()
        graph = gm.graph
        for node in list(graph.nodes):
            for source in node.meta.get("rf_global_inputs", ()):
                with graph.inserting_before(node):
                    detached = graph.call_method("detach", (source,))
                node.replace_input_with(source, detached)
            if node.meta.get("rf_spatial_statistics"):  # the norm's statistics, not its input, are detached
                with graph.inserting_after(node):
                    local = graph.call_function(_with_detached_statistics, (node.args[0], node))
                node.replace_all_uses_with(local, delete_user_cb=lambda user, local=local: user is not local)
        output = next(n for n in graph.nodes if n.op == "output")
        output.args = (target,)
        graph.eliminate_dead_code()
        gm.recompile()
        self.gm = gm

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)


def _with_detached_statistics(x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
    """``normed``'s values, with the gradient of a norm whose statistics are constants: unit to unit (a straight
    through; the norm's own per-channel scale is non-zero and would not change where the gradient is non-zero)."""
    return normed.detach() + (x - x.detach())


def _has_global_inputs(gm: fx.GraphModule) -> bool:
    return any("rf_global_inputs" in node.meta or "rf_spatial_statistics" in node.meta for node in gm.graph.nodes)


def _axes_and_local_paths(model: nn.Module, input_size: Tuple[int, ...],
                          layer: Optional[str]) -> Tuple[Tuple[int, int], Optional[nn.Module]]:
    """From one trace: the height and width dimensions of ``layer``'s output (of ``forward_features`` without one),
    as the trace tracks them through permutes, and the model with its gates' global inputs and its norms' spatial
    statistics detached (None if it has neither). A model that does not trace is measured as it is, its output's
    last two dimensions taken for height and width."""
    try:
        gm = _trace(model, input_size)
        _propagate(gm)
        # a layer inside a block the trace kept opaque has no node; the forward hook still finds it
        target = _node_for_layer(gm, layer) if layer else _output_node(gm)
    except (NotImplementedError, ValueError, TypeError, RuntimeError):
        return (-2, -1), None
    axes = tuple(target.meta.get("rf_axes") or (-2, -1))
    return axes, _LocalPaths(gm, target) if _has_global_inputs(gm) else None


def gradient_support(
        model: nn.Module,
        input_size: Optional[Sequence[int]] = None,
        layer: Optional[str] = None,
        n: int = 4,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        spatial_axes: Tuple[int, int] = (-2, -1),
) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """Input rows and columns (inclusive) with non-zero gradient from the centre unit, and that unit.

    A gradient (of 1, times a seeded weight in [0.5, 1.5] per channel) is put on the centre unit of every channel of
    ``layer``'s output (default: the output of ``forward_features``) and back-propagated, in eval mode, to ``n`` random inputs; the
    support of ``|grad|`` is the union over them, so that no edge pixel is missed because a ReLU was
    off or a max-pool picked another pixel. Returns ``((row_lo, row_hi), (col_lo, col_hi), (i, j))``.
    The model is measured as it is (see `measure_rf` for nets with zero-initialised tensors).

    The gradient is taken in ``dtype``, float64 by default, on a copy of the model when its own dtype differs:
    at the edge of a deep net's RF it is a product of many small weights, which in float32 underflows to
    exactly zero (legacy_xception: about 1e-44 at its outermost rows) and would make the RF look smaller.
    ``spatial_axes`` are the output's height and width dimensions (a channels-last block's output is N, H, W, C;
    `measure_rf` finds them by tracing).
    """
    input_size = tuple(input_size or _default_input_size(model))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if param is not None and param.dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, *input_size, generator=generator).to(device, dtype).requires_grad_(True)
        with torch.enable_grad():
            out = _layer_output(model, x, layer).movedim(spatial_axes, (-2, -1))
            h, w = out.shape[-2:]
            centre = out[..., h // 2, w // 2]
            # each channel's gradient weighted in [0.5, 1.5]: a plain sum over the channels of a LayerNorm's output
            # is constant, and its gradient zero everywhere
            weights = torch.rand(centre.shape[1:], generator=generator).to(centre) + 0.5
            (centre * weights).sum().backward()
    finally:
        model.train(was_training)
    support = (x.grad.abs().sum(dim=(0, 1)) > 0).cpu()
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ValueError("the centre unit has zero gradient for every input; cannot measure its RF")
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])), (h // 2, w // 2)


def measure_rf(
        model: nn.Module,
        input_size: Optional[Sequence[int]] = None,
        layer: Optional[str] = None,
        n: int = 4,
        seed: int = 0,
) -> MeasuredRF:
    """The gradient-measured RF of ``layer``'s centre unit, never of a silenced network.

    Where `silenced_parameters` finds zero tensors (timm's ``zero_init_last``, zero-initialised gates), the
    measurement runs on a copy with them re-initialised, and ``revived`` names them. In a net with global-context
    gates (squeeze-excitation and kin) every input pixel reaches every unit through the gates' global pools; the
    gradient is then taken with the gates' global inputs detached (``local``), which measures the local RF that
    `receptive_field` reports beside its ``global_context`` flag. Raises ``ValueError`` if the support
    reaches the border, i.e. the input is too small to measure.
    """
    input_size = tuple(input_size or _default_input_size(model))
    revived = tuple(silenced_parameters(model))
    measured = _revived_copy(model, revived) if revived else model
    spatial_axes, local = _axes_and_local_paths(measured, input_size, layer)
    if local is not None:
        measured, layer = local, None
    (top, bottom), (left, right), unit = gradient_support(measured, input_size, layer, n, seed,
                                                          spatial_axes=spatial_axes)
    height, width = input_size[-2:]
    if top == 0 or bottom == height - 1:  # the size is the height's; a (1, 7) kernel may take the width further
        raise ValueError(
            f"the measured RF reaches the border of the {height}x{width} input (>= {bottom - top + 1} px); "
            "use an input larger than the analytic RF (receptive_field(...).size) plus a margin"
        )
    return MeasuredRF(size=bottom - top + 1, rows=(top, bottom), cols=(left, right), unit=unit, revived=revived,
                      local=local is not None)


def gradient_rf(
        model: nn.Module,
        input_size: Optional[Sequence[int]] = None,
        layer: Optional[str] = None,
        n: int = 4,
        seed: int = 0,
) -> int:
    """Measured RF: the extent (along the height) of non-zero input gradient of the centre unit.

    This is how the paper measured RFs (see ``gradient_support``). A net with zero-initialised tensors (timm's
    ``zero_init_last``) is measured on a copy with them re-initialised, with a warning that names them
    (`measure_rf` returns them): a silenced branch would otherwise hide its part of the RF.
    Raises ``ValueError`` if the support reaches the border, i.e. the input is too small to measure.
    """
    measured = measure_rf(model, input_size, layer, n, seed)
    if measured.revived:
        shown = ", ".join(measured.revived[:3]) + (f" and {len(measured.revived) - 3} more" if len(measured.revived) > 3 else "")
        warnings.warn(f"gradient_rf: {len(measured.revived)} zero-initialised tensor(s) ({shown}) would silence their "
                      "paths; measured on a copy with them re-initialised", stacklevel=2)
    return measured.size
