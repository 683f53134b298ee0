"""Receptive fields of every CNN in timm: rf-bench's analytic RF beside torchscan and receptivefield.

For every architecture ``timm.list_models()`` names (no pretrained weights), the analytic RF of its final feature
map, or the refusal and its reason, computed on the meta device (no weights, no memory). Then, for the smallest
variant of each timm model family (timm's module, e.g. ``efficientnet``), the gradient-measured RF
(``rf_bench.rf.measure_rf``) beside it and beside what the two libraries a user would otherwise pick answer:

- **torchscan** (``crawl_module``): it reports each module's own RF, stride and padding; the RF of the net is
  those composed in call order, as torchscan's summary composed them before 0.2 (a chain, blind to branches);
- **receptivefield** (``PytorchReceptiveField``): a gradient method, from zero inputs, on the net as timm builds
  it.

Out of scope, by rule, and listed as such: a model is a CNN when it has at least two spatial convolutions (kernel > 1
and not a patchify conv whose kernel equals its stride), no self-attention (no module class named ``*Attention*``,
nor timm's attention blocks ``HaloAttn``, ``BottleneckAttn``, ``NonLocalAttn``, ``LambdaLayer``,
``BilinearAttnTransform``, ``LiteMLA``, ``GPSA``; channel and spatial gates are not attention), and a
``forward_features`` that returns one feature map (N, C, H, W). Vision transformers, MLP-Mixers, Mamba-style and
conv-attention hybrids fall outside. Where the RF is too large to measure on this machine (``--max-side``), the
gradient check runs at the deepest block whose RF fits, named in the results.

    pip install torchscan==0.2.0 && pip install --no-deps receptivefield==0.5.0   # the two libraries compared
    python benchmarks/rf_coverage.py                  # every model: results/rf_coverage.{json,md}
    python benchmarks/rf_coverage.py --models resnet18 efficientnet_b0    # a quick look
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import multiprocessing as mp
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

MAX_SIDE = 900  # largest input side a gradient check may use (memory and time on a 2-core CPU)
INPUT_SCALE = 1.0  # the independent check's input, in [s, 2 s] (smaller inputs underflow through deep gates)


# ----------------------------------------------------------------------------------------------- scope

SELF_ATTENTION = ("HaloAttn", "BottleneckAttn", "NonLocalAttn", "LambdaLayer", "BilinearAttnTransform", "LiteMLA",
                  "GPSA")


def not_a_cnn(model: nn.Module, input_size) -> str:
    """Why ``model`` is out of scope ("" for a CNN)."""
    if spatial_convs(model) < 2:
        return "fewer than two spatial convolutions"
    attention = next((type(m).__name__ for m in model.modules() if "Attention" in type(m).__name__
                      or type(m).__name__ in SELF_ATTENTION or isinstance(m, nn.MultiheadAttention)), None)
    if attention:
        return f"self-attention ({attention})"
    try:
        out = model.forward_features(torch.empty(1, *input_size, device="meta"))
    except Exception as e:  # noqa: BLE001
        return f"forward_features fails on the meta device ({type(e).__name__})"
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return "forward_features returns no (N, C, H, W) feature map"
    return ""


def spatial_convs(model: nn.Module) -> int:
    """Convolutions that reach across space: kernel > 1, and not a patchify conv (kernel == stride, as in ViTs)."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k, s = m.kernel_size[0], m.stride[0]
            count += k > 1 and k != s
    return count


def family_of(name: str) -> str:
    import timm.models._registry as registry

    return registry._model_to_module.get(name, "?").rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------- analytic RF

def analytic(name: str) -> Dict[str, Any]:
    """One model on the meta device: in scope or not, its parameter count and its analytic RF (or the refusal)."""
    import timm

    import rf_bench  # noqa: F401
    from rf_bench.rf import receptive_field

    row: Dict[str, Any] = dict(model=name, family=family_of(name))
    t0 = time.perf_counter()
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001  a model timm cannot build without its weights or extras
        row.update(status="not built", reason=_one_line(e))
        return row
    row["params"] = sum(p.numel() for p in model.parameters())
    row["input_size"] = list(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    why = not_a_cnn(model.eval(), row["input_size"])
    if why:
        row.update(status="out of scope", reason=why)
        return row
    try:
        rf = receptive_field(model.eval(), row["input_size"])
        row.update(status="ok", rf=rf.size, jump=rf.stride, global_context=rf.global_context)
    except Exception as e:  # noqa: BLE001  the refusal is the result
        row.update(status="refused", reason=_one_line(e))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    return text[:300]


# ------------------------------------------------------------------------------------------ gradients

def _check_layer(model: nn.Module, input_size, max_side: int):
    """(layer or None for the whole net, its analytic RF) whose RF fits an input of at most ``max_side``."""
    from rf_bench.rf import block_receptive_fields, receptive_field

    rf = receptive_field(model, input_size)
    if rf.size + 2 * rf.stride + 8 <= max_side:
        return None, rf
    fitting = [row for row in block_receptive_fields(model, input_size)
               if row.rf.size + 2 * row.rf.stride + 8 <= max_side]
    if not fitting:
        raise ValueError(f"no block's RF fits a {max_side}x{max_side} input")
    return fitting[-1].name, fitting[-1].rf


def gradient_check(name: str, max_side: int) -> Dict[str, Any]:
    """rf-bench's analytic and gradient RF of one model, with torchscan's and receptivefield's answers."""
    import timm

    import rf_bench  # noqa: F401
    from rf_bench.rf import measure_rf

    row: Dict[str, Any] = dict(model=name, family=family_of(name))
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=0).eval()
        input_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
        layer, rf = _check_layer(model, input_size, max_side)
        side = rf.size + 2 * rf.stride + 8
        side += (-side) % max(rf.stride, 1)  # a whole number of units
        measured = measure_rf(model, (input_size[0], side, side), layer=layer, n=2)
        row.update(layer=layer or "forward_features", analytic=rf.size, gradient=measured.size,
                   agrees=measured.size == rf.size, revived=len(measured.revived), local=measured.local,
                   global_context=rf.global_context, side=side)
    except Exception as e:  # noqa: BLE001
        row.update(error=_one_line(e))
        return row
    try:
        row["independent"] = independent_rf(model, (input_size[0], side, side), layer)
    except AttentionAcrossPositions as e:
        row["independent"] = f"no local RF: attention across positions ({e})"
    except Exception as e:  # noqa: BLE001  its failure is listed beside the two that answered
        row["independent"] = f"failed: {_one_line(e)}"
    if layer is None:  # the libraries answer for the whole net only
        row["torchscan"] = _torchscan_rf(name, input_size)
        row["receptivefield"] = _receptivefield_rf(model, (input_size[0], side, side))
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _torchscan_rf(name: str, input_size) -> Dict[str, Any]:
    """torchscan's per-module RFs composed in call order over the leaf modules of the feature extractor."""
    try:
        import timm
        import torchscan
    except ImportError:
        return dict(status="not installed")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = torchscan.crawl_module(model, tuple(input_size))
        paths = [layer["path"] for layer in report["layers"]]
        leaves = [layer for layer in report["layers"]
                  if not any(p.startswith(layer["path"] + ".") for p in paths) and layer["depth"] > 0]
        rf, jump = 1.0, 1.0
        for layer in leaves:
            metrics = layer["metrics"]
            size = (metrics.get("receptive_field") or {}).get("value")
            stride = (metrics.get("effective_stride") or {}).get("value")
            if size is None or stride is None:
                return dict(status="no answer", reason=f"no RF for {layer['path']} ({layer['type']})")
            rf += (size - 1) * jump
            jump *= stride
        return dict(status="ok", rf=int(round(rf)))
    except Exception as e:  # noqa: BLE001
        return dict(status="failed", reason=_one_line(e))


# ------------------------------------------------------------------- an independent gradient measurement

class AttentionAcrossPositions(Exception):
    """The net mixes positions by attention (softmax over positions), a path no local RF describes."""


class _PathsKept(torch.overrides.TorchFunctionMode):
    """Every op of the net runs through here: a max-pool averages instead (every tap carries gradient), the -inf
    padding of TF-"same" max-pools becomes 0, a global summary (an output with no spatial extent computed from a
    map that has one: a global pool, a squeeze-excitation mean, the pooled input of an attention over branches) is
    detached, so only the gates it feeds lose their gradient, never a branch, and so are the statistics of a
    GroupNorm, which span all positions; ReLU6 and hardtanh lose their ceiling. Attention across positions cannot be
    made local: it is refused."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("max_pool2d", "_max_pool2d", "max_pool2d_with_indices"):
            return _average_pool(*args, **kwargs)
        if name in ("relu6", "hardtanh"):  # no ceiling: a saturated unit would cut its paths
            return nn.functional.relu(args[0] if args else kwargs["input"])
        if name == "group_norm":
            return _group_norm_local_statistics(*args, **kwargs)
        if name == "scaled_dot_product_attention" or (name == "softmax" and _over_positions(args, kwargs)):
            raise AttentionAcrossPositions(name)
        if name == "pad" and kwargs.get("value", args[3] if len(args) > 3 else None) == float("-inf"):
            args, kwargs = args[:3], {"value": 0.0}
        out = func(*args, **kwargs)
        source = next((a for a in args if isinstance(a, torch.Tensor)), None)
        return out.detach() if _global_summary(source, out) else out


def _group_norm_local_statistics(input, num_groups, weight=None, bias=None, eps=1e-5):
    grouped = input.reshape(input.shape[0], num_groups, -1)
    mean = grouped.mean(-1, keepdim=True).detach()
    var = grouped.var(-1, unbiased=False, keepdim=True).detach()
    out = ((grouped - mean) / torch.sqrt(var + eps)).reshape(input.shape)
    shape = (1, input.shape[1]) + (1,) * (input.dim() - 2)
    out = out * weight.reshape(shape) if weight is not None else out
    return out + bias.reshape(shape) if bias is not None else out


def _over_positions(args, kwargs) -> bool:
    """A softmax whose axis is long enough to be positions (an attention map), not a few branches or heads."""
    x = args[0] if args else kwargs.get("input")
    dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
    return isinstance(x, torch.Tensor) and x.dim() >= 3 and dim is not None and x.shape[dim] > 16


def _average_pool(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if dilation not in (1, (1, 1), [1, 1]) or return_indices:
        raise ValueError("a dilated or index-returning max-pool has no average-pool equivalent here")
    return nn.functional.avg_pool2d(input, kernel_size, stride, padding, ceil_mode)


def _global_summary(source: Optional[torch.Tensor], out: Any) -> bool:
    """``out`` summarises all of ``source``'s positions: a 4-D map reduced to size 1 along two of its non-batch
    dimensions that had more (NCHW or NHWC), or to at most (N, C)."""
    if not isinstance(out, torch.Tensor) or source is None or source.dim() != 4 or out.numel() >= source.numel():
        return False
    if out.dim() == 4:
        return sum(source.shape[d] > 1 and out.shape[d] == 1 for d in (1, 2, 3)) >= 2
    return out.dim() <= 2


def _positive_copy(model: nn.Module) -> nn.Module:
    """A float64 copy in which no path can cancel or be silenced: every weight tensor is made positive (zero ones
    1) and scaled so each output averages its inputs (no ReLU6 saturates), biases are 0, and other parameters (norm
    scales, layer scales) are made positive."""
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
                continue
            positive = p.abs() if bool(p.abs().max() > 0) else torch.ones_like(p)
            if p.dim() >= 2:
                positive = positive / positive.sum(dim=tuple(range(1, p.dim())), keepdim=True).clamp_min(1e-12)
            p.copy_(positive)
    return model


def independent_rf(model: nn.Module, input_size, layer: Optional[str]) -> int:
    """The RF of ``layer``'s centre unit (``None``: ``forward_features``) by a gradient that shares no code with
    ``rf_bench.rf``: on a positive copy of the net, from a positive input, through `_PathsKept`; the extent along
    the height of the input pixels with non-zero gradient. Raises if it reaches the input's border."""
    positive = _positive_copy(model)
    captured: Dict[str, torch.Tensor] = {}
    if layer is not None:
        positive.get_submodule(layer).register_forward_hook(lambda m, i, out: captured.update(out=out))
    x = (INPUT_SCALE * (1 + torch.rand(1, *input_size, dtype=torch.float64))).requires_grad_()
    with _PathsKept():
        out = positive.forward_features(x)
    out = captured["out"] if layer is not None else out
    if out.shape[1] == out.shape[2] != out.shape[3]:  # (N, H, W, C), as MambaOut's stages keep it
        out = out.permute(0, 3, 1, 2)
    (grad,) = torch.autograd.grad(out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum(), x)
    rows = torch.nonzero(grad[0].abs().sum(dim=(0, 2)) > 0).flatten()
    if len(rows) == 0:
        raise ValueError("no input pixel reaches the unit")
    if rows.min() == 0 or rows.max() == input_size[1] - 1:
        raise ValueError(f"reaches the border of the {input_size[1]} px input")
    return int(rows.max() - rows.min() + 1)


class _FeatureMaps(nn.Module):
    """receptivefield's contract: a module whose forward leaves its feature maps in ``self.feature_maps``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model.forward_features(x)
        self.feature_maps = [out]
        return out


def _receptivefield_rf(model: nn.Module, input_size) -> Dict[str, Any]:
    try:
        from receptivefield.pytorch import PytorchReceptiveField
    except ImportError:
        return dict(status="not installed")
    logging.disable(logging.INFO)  # receptivefield logs every step at INFO
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (desc,) = PytorchReceptiveField(lambda: _FeatureMaps(model)).compute(
                input_shape=(input_size[1], input_size[2], input_size[0]))
        return dict(status="ok", rf=int(desc.rf.size.h))
    except Exception as e:  # noqa: BLE001
        return dict(status="failed", reason=_one_line(e))


# --------------------------------------------------------------------------------------------- report

def _worker_init() -> None:
    torch.set_num_threads(1)


def _smallest_per_family(rows: List[Dict[str, Any]]) -> List[str]:
    best: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        if row.get("status") == "ok" and (row["family"] not in best or row["params"] < best[row["family"]]["params"]):
            best[row["family"]] = row
    return [row["model"] for _, row in sorted(best.items())]


def summarise(rows: List[Dict[str, Any]], checks: List[Dict[str, Any]]) -> Dict[str, Any]:
    cnn = [r for r in rows if r["status"] in ("ok", "refused")]
    measured = [c for c in checks if "gradient" in c]
    whole = [c for c in measured if c["layer"] == "forward_features"]

    def library(key: str) -> Dict[str, int]:
        answers = [c for c in whole if c.get(key, {}).get("status") == "ok"]
        return dict(answered=len(answers), agree=sum(c[key]["rf"] == c["gradient"] for c in answers), of=len(whole))

    refusals: Dict[str, List[str]] = {}
    for r in cnn:
        if r["status"] == "refused":
            refusals.setdefault(r["family"], []).append(f"{r['model']}: {r['reason']}")
    reasons: Dict[str, int] = {}
    for r in rows:
        if r["status"] == "out of scope":
            kind = r["reason"].split(" (")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
    independent = [c for c in measured if isinstance(c.get("independent"), int)]
    return dict(models=len(rows), cnns=len(cnn), analytic=sum(r["status"] == "ok" for r in cnn),
                independent_measured=len(independent),
                independent_agrees=sum(c["independent"] == c["analytic"] == c["gradient"] for c in independent),
                disagreeing_families=sorted(c["family"] for c in measured if not _all_agree(c)),
                attention_families=sorted(c["family"] for c in measured if _no_local_rf(c)),
                out_of_scope=sum(r["status"] == "out of scope" for r in rows), out_of_scope_by_rule=reasons,
                not_built=sum(r["status"] == "not built" for r in rows),
                families_checked=len(checks), gradient_measured=len(measured),
                gradient_agrees=sum(c["agrees"] for c in measured), whole_net_checks=len(whole),
                torchscan=library("torchscan"), receptivefield=library("receptivefield"), refused_families=refusals)


def _all_agree(check: Dict[str, Any]) -> bool:
    """Analytic, measured and independent RF are one number (a check without the independent column: the two)."""
    answers = {check["analytic"], check["gradient"]}
    if "independent" in check and not _no_local_rf(check):
        answers.add(check["independent"])
    return len(answers) == 1


def _no_local_rf(check: Dict[str, Any]) -> bool:
    return str(check.get("independent", "")).startswith("no local RF")


def markdown(summary: Dict[str, Any], checks: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    s = summary
    pct = 100 * s["analytic"] / max(s["cnns"], 1)
    scope = ", ".join(f"{n} {why}" for why, n in sorted(s["out_of_scope_by_rule"].items(), key=lambda i: -i[1]))
    workers = f"{meta['jobs']} worker{'s' if meta['jobs'] != 1 else ''}"
    lines = [f"# RF coverage of timm's CNNs (timm {meta['timm']}, {meta['seconds']} s with {workers})", "",
             f"- {s['models']} models listed; {s['out_of_scope']} out of scope, not CNNs by the rule in the script's "
             f"docstring ({scope}); {s['not_built']} not built without weights; **{s['cnns']} CNNs**.",
             f"- **rf-bench's analytic RF: {s['analytic']} of {s['cnns']} CNNs ({pct:.1f}%)**; the rest refused in one "
             "line each (below).",
             f"- Gradient check, smallest model of each family: {s['gradient_measured']} of {s['families_checked']} "
             f"measured, **{s['gradient_agrees']} agree** with the analytic RF "
             f"({s['whole_net_checks']} on the whole net, the rest at the deepest block that fits a "
             f"{meta['max_side']} px input).",
             f"- Independent gradient (shares no code with `measure_rf`: weights made positive, max-pools as "
             f"average pools, global summaries detached; `independent_rf` in the script): an answer for "
             f"{s.get('independent_measured', 0)} of {s['gradient_measured']}, **{s.get('independent_agrees', 0)} "
             f"equal to both**. Families where any two of the three disagree: "
             f"{', '.join(s.get('disagreeing_families', [])) or 'none'}. Without a local answer (attention "
             f"across positions, which no local RF describes; their analytic RF is the local paths' and flags the "
             f"global context): {', '.join(s.get('attention_families', [])) or 'none'}.",
             f"- torchscan (per-module RFs chained in call order): an answer for {s['torchscan']['answered']} of "
             f"{s['torchscan']['of']} whole nets, {s['torchscan']['agree']} equal to the gradient RF.",
             f"- receptivefield (gradient from zero inputs): an answer for {s['receptivefield']['answered']} of "
             f"{s['receptivefield']['of']}, {s['receptivefield']['agree']} equal to the gradient RF.",
             "", "| family | model | layer | analytic | gradient | independent | agree | global context | revived | "
             "torchscan | receptivefield |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in checks:
        if "gradient" not in c:
            lines.append(f"| {c['family']} | {c['model']} | - | - | - | - | error: {c['error']} | | | | |")
            continue
        lib = lambda key, c=c: (str(c[key]["rf"]) if c.get(key, {}).get("status") == "ok"  # noqa: E731
                           else c.get(key, {}).get("status", "-"))
        lines.append(f"| {c['family']} | {c['model']} | {c['layer']} | {c['analytic']} | {c['gradient']} | "
                     f"{c.get('independent', 'not run')} | {'yes' if _all_agree(c) else '**no**'} | "
                     f"{'yes' if c['global_context'] else '-'} | "
                     f"{c['revived']} | {lib('torchscan')} | {lib('receptivefield')} |")
    if meta.get("rechecked"):
        lines += ["", f"The full run is of {meta['full_run_date']}; these gradient checks were redone after it, each "
                      f"on the date its row gives in the JSON: {', '.join(meta['rechecked'])}."]
    if s["refused_families"]:
        lines += ["", "## Refused", ""]
        for family, reasons in sorted(s["refused_families"].items()):
            lines.append(f"- **{family}** ({len(reasons)}): {reasons[0]}")
    return "\n".join(lines) + "\n"


def recheck(models: List[str], max_side: int, out: Path) -> int:
    """Redo the gradient checks of ``models`` in ``out/rf_coverage.json``, one fresh process each, and rewrite it."""
    path = out / "rf_coverage.json"
    result = json.loads(path.read_text())
    checks = {c["model"]: c for c in result["checks"]}
    unknown = [m for m in models if m not in checks]
    if unknown:
        raise SystemExit(f"not among the checked models: {', '.join(unknown)}; a recheck redoes rows that exist")
    ctx = mp.get_context("spawn")
    for name in models:
        with ctx.Pool(1, initializer=_worker_init) as pool:
            checks[name] = dict(pool.apply(gradient_check, (name, max_side)),
                                rechecked=time.strftime("%Y-%m-%d %H:%M"))
    result["meta"].setdefault("full_run_date", result["date"])
    result["checks"] = [checks[c["model"]] for c in result["checks"]]
    result["summary"] = summarise(result["models"], result["checks"])
    result["meta"]["rechecked"] = sorted(set(result["meta"].get("rechecked", [])) | set(models))
    text = markdown(result["summary"], result["checks"], result["meta"])
    write_result("rf_coverage", {k: v for k, v in result.items() if k not in ("machine", "date")}, text, out)
    print(text)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="only the first N models (a quick look)")
    parser.add_argument("--models", nargs="+", help="only these models (a quick look)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE, help="largest input side of a gradient check")
    parser.add_argument("--check-timeout", type=int, default=240, help="seconds a gradient check may take")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results folder")
    parser.add_argument("--recheck", nargs="+", metavar="MODEL",
                        help="redo only these models' gradient checks in the committed results (after a fix), "
                             "keeping every other row; the results say which rows were rechecked and when")
    args = parser.parse_args(argv)
    if args.recheck:
        return recheck(args.recheck, args.max_side, Path(args.out))
    import timm

    names = args.models or timm.list_models()[: args.limit]
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_worker_init, maxtasksperchild=25) as pool:
        rows = pool.map(analytic, names, chunksize=4)
    smallest = _smallest_per_family(rows)
    with ctx.Pool(args.jobs, initializer=_worker_init, maxtasksperchild=1) as pool:  # a fresh process per check
        pending = [(name, pool.apply_async(gradient_check, (name, args.max_side))) for name in smallest]
        checks = []
        for name, result in pending:  # a check that hangs or thrashes is recorded, not waited for
            try:
                checks.append(result.get(timeout=args.check_timeout))
            except mp.TimeoutError:
                checks.append(dict(model=name, family=family_of(name), error=f"no answer in {args.check_timeout} s"))
        pool.terminate()
    summary = summarise(rows, checks)
    meta = dict(timm=timm.__version__, max_side=args.max_side, seconds=round(time.perf_counter() - start),
                limit=args.limit, jobs=args.jobs)
    text = markdown(summary, checks, meta)
    write_result("rf_coverage" if args.limit is None and not args.models else "rf_coverage_quick",
                 dict(meta=meta, summary=summary, checks=checks, models=rows), text, Path(args.out))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
