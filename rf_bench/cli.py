"""The ``rf-bench`` command line; each sub-command is a thin layer over one module (the user-facing text is
``DESCRIPTION`` and each command's description)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from rich.console import Console
from rich.table import Table

from . import __version__
from .models import RFPOOL_KS, unknown_model_hint
from .paper import MEASURED_RF
from .rf import (block_receptive_fields, border_layer, dead_weight_share, gradient_rf, layer_receptive_fields,
                 receptive_field)
from .hub import HubError
from .train import HelpFormatter, NonFiniteLossError, add_train_args

console = Console()
err_console = Console(stderr=True)




def _plain(message: str) -> None:
    """Print library text as is: its brackets ([train], [grid]) are not rich markup."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    err_console.print(message, markup=False, highlight=False, style="yellow", soft_wrap=True)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class Interrupted(Exception):
    """Ctrl-C: one line saying what was kept, exit status 130."""




def create_model_checked(name: str, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model`` with a one-line error that suggests close names for an unknown model."""
    hint = unknown_model_hint(name)
    if hint:
        raise CliError(f"unknown model {name!r}; {hint}")
    return timm.create_model(name, **kwargs)


def _measure_size(rf_size: int, stride: int, min_size: int) -> int:
    """An input large enough to hold the centre unit's whole RF with a margin on every side."""
    return max(rf_size + 2 * stride + 8, min_size)


def _cmd_rf(args: argparse.Namespace) -> None:
    torch.set_grad_enabled(True)
    model_kwargs = dict(width_mult=args.width_mult) if args.width_mult is not None else {}
    if args.family:
        _rf_family_table(args.family, args.ks, model_kwargs, measure=not args.no_gradient)
        return
    if not args.model:
        raise CliError("name a MODEL (e.g. resnet50_rfpool3) or a --family (resnet50_rfpool, vgg19_rfpool)")
    model = create_model_checked(args.model, **model_kwargs).eval()
    input_size = tuple(args.input_size) if args.input_size else None
    if args.map:
        _draw_map(model, args.model, input_size or (3, 64, 64), args.layer, args.map)
        return
    rows = layer_receptive_fields(model, input_size)
    summary = not args.all_layers and len(rows) > _SUMMARY_ROWS
    if summary:
        rows = block_receptive_fields(model, input_size)
    what = "at the end of each block (--all-layers: every layer)" if summary else "per layer"
    size = input_size or tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    border = border_layer(layer_receptive_fields(model, size) if summary else rows, size)
    table = Table(title=f"{args.model}: receptive field {what}, input {'x'.join(map(str, size))}")
    for col in ("layer", "op", "output", "RF", "jump", "offset", "global", "input map", "live", "exposure"):
        table.add_column(col, justify="right" if col not in ("layer", "op") else "left",
                         no_wrap=True, overflow="ellipsis" if col == "op" else "fold")  # names stay whole: users copy them
    for row in rows:
        marked = f"{row.name} [bold](border)[/]" if row.name == border else row.name
        table.add_row(marked, row.op, "x".join(map(str, row.shape[1:])), str(row.rf.size), str(row.rf.stride),
                      f"{row.rf.offset:g}", "yes" if row.rf.global_context else "-", *_live_cells(row))
    console.print(table)
    final = receptive_field(model, input_size, layer=args.layer)
    gated = ("; each unit is also rescaled by a summary of its whole input (global-context gates)"
             if final.global_context else "")
    console.print(f"[bold]{args.layer or 'forward_features'}[/]: RF {final.size} px, jump {final.stride}, "
                  f"offset {final.offset:g}{gated}")
    console.print(_dead_line(model, size, border))


def _live_cells(row) -> Tuple[str, str, str]:
    """A window's input map, live share of weights and padding exposure (blank for other rows)."""
    if row.in_shape is None:
        return "", "", ""
    live = f"{100 * row.live_share:.0f}%" if row.live_share is not None else "-"
    return "x".join(map(str, row.in_shape)), live, f"{100 * row.padding_exposure:.0f}%"


def _dead_line(model: torch.nn.Module, size: Sequence[int], border: Optional[str]) -> str:
    """One line: how much of the net's conv weights never see the image at this input size, and its border layer."""
    dead = dead_weight_share(model, size)
    where = (f"; the border layer (the first whose RF exceeds the {size[-2]} px input) is {border}" if border
             else f"; no layer's RF exceeds the {size[-2]} px input")
    return (f"{100 * dead:.1f}% of the conv weights never see the image at {'x'.join(map(str, size))} "
            f"(they only multiply zero padding){where}")


_SUMMARY_ROWS = 80  # more layers than this: one row per block


def _draw_map(model: torch.nn.Module, name: str, input_size, layer: Optional[str], path: str) -> None:
    from .probes.rfmap import gradient_map, plot_map

    with console.status(f"gradient map of {name} on {input_size}"):
        rfmap = gradient_map(model, input_size, n=50, layer=layer)
    plot_map(rfmap, path, title=f"{name}: mean |grad| at {rfmap.layer}, max {rfmap.mean_max:.3g} ± {rfmap.std_max:.2g}")
    console.print(f"map of {name} ({rfmap.layer}): maxima {rfmap.mean_max:.4g} ± {rfmap.std_max:.2g} -> {path}")


def _rf_family_table(family: str, ks: Sequence[int], model_kwargs: Dict[str, Any], measure: bool) -> None:
    family = family.rstrip("0123456789")
    if family not in MEASURED_RF:
        raise CliError(f"unknown family {family!r}; choose one of {', '.join(MEASURED_RF)}")
    table = Table(title=f"{family}{{k}}: receptive field vs k")
    for col in ("k", "analytic RF", "gradient RF", "paper (measured)", "jump", "params"):
        table.add_column(col, justify="right")
    for k in ks:
        model = create_model_checked(f"{family}{k}", **model_kwargs).eval()
        rf = receptive_field(model, (3, 256, 256))
        grad = "-"
        if measure:
            size = _measure_size(rf.size, rf.stride, k * getattr(model, "min_size_after_pool", 1))
            with console.status(f"measuring {family}{k} on a {size}x{size} input"):
                grad = str(gradient_rf(model, (3, size, size), n=2))
        params = sum(p.numel() for p in model.parameters())
        table.add_row(str(k), str(rf.size), grad, str(MEASURED_RF[family].get(k, "-")), str(rf.stride), f"{params / 1e6:.2f}M")
    console.print(table)


def _cmd_train(args: argparse.Namespace) -> None:
    from .train import finished_line, run_from_args

    _plain(finished_line(run_from_args(args)))


def _cmd_probe(args: argparse.Namespace) -> None:
    from .probes.base import apply_overrides, available_probes, load_settings, resolve_suite, run_suite
    from .results import ResultStore, find_runs

    file_suite, file_tables = load_settings(args.settings) if args.settings else (None, {})
    probes = resolve_suite(args.suite or file_suite or "all")
    if args.list_settings:
        _print_settings(probes)
        return
    if not args.runs:
        raise CliError("name the run directories to probe (e.g. `rf-bench probe runs/`), or ask for --list-settings")
    chosen = {p.name for p in probes}
    for name in file_tables:  # a settings file may size probes this suite leaves out: those are not an error
        if name not in available_probes():
            raise CliError(f"{args.settings}: [probes.{name}]: no probe {name!r} is installed; "
                           f"available: {', '.join(available_probes())}")
    configs = apply_overrides(probes, args.set, tables={n: t for n, t in file_tables.items() if n in chosen})
    runs = find_runs(args.runs)
    try:
        written = run_suite(probes, runs, args.results, configs, force=args.force, data_dir=args.data_dir,
                            progress=not args.no_progress, log=_plain)
    except KeyboardInterrupt:
        kept = len(ResultStore(args.results).records()) if os.path.isdir(args.results) else 0
        raise Interrupted(f"interrupted: {kept} finished result(s) in {args.results} kept; "
                          "the same command resumes from them") from None
    console.print(f"{len(written)} results in {args.results}")


def _print_settings(probes) -> None:
    from .probes.base import describe_settings

    table = Table(title=r"probe settings: --set PROBE.NAME=VALUE, or \[probes.PROBE] tables in a --settings file")
    for col in ("probe", "setting", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for probe, name, default, meaning in describe_settings(probes):
        value = list(default) if isinstance(default, tuple) else default
        table.add_row(probe, name, json.dumps(value), meaning)
    out = console if console.is_terminal else Console(width=120)
    out.print(table)


def _cmd_report(args: argparse.Namespace) -> None:
    from .probes.base import available_probes
    from .report import write_report
    from .results import ResultStore

    ResultStore(args.results).check_folder()
    path = write_report(args.results, args.out, available_probes(), log=_warn)
    console.print(f"report: {path}")


_VERDICT_STYLE = {"supported": "green", "contradicted": "red", "inconclusive": "yellow", "not measured": "dim"}


def _cmd_claims(args: argparse.Namespace) -> None:
    from .claims import collect_claims, evaluate_claims
    from .probes.base import available_probes

    from .results import ResultStore

    ResultStore(args.results).check_folder()
    verdicts = evaluate_claims(args.results, collect_claims(available_probes()), log=_warn)
    if args.json:
        print(json.dumps([v.as_dict() for v in verdicts], indent=2))
        return
    if not verdicts:
        from .results import ResultStore

        store = ResultStore(args.results)
        store.records()
        raise store.nothing_usable()
    _print_claims(verdicts, args.results)


def _print_claims(verdicts, results: str) -> None:
    """A terminal gets the whole table at its width; piped output a compact one at ``COLUMNS`` (100 if unset).
    Both say why each verdict is what it is; rows for settings the results never ran are counted, not shown."""
    import shutil

    from .claims import never_run

    shown = [v for v in verdicts if not never_run(v)]
    if console.is_terminal:
        console.print(_claims_table(shown, results, compact=console.width < 180, width=console.width))
    else:
        width = shutil.get_terminal_size((100, 24)).columns
        Console(width=width, color_system=None).print(_claims_table(shown, results, compact=width < 180, width=width))
    if len(shown) < len(verdicts):
        console.print(f"{len(verdicts) - len(shown)} row(s) for settings these results never ran left out")


def _mean_cell(verdict, k: int) -> str:
    if k not in verdict.means:
        return "-"
    mean = verdict.means[k]
    return f"{100 * mean:.1f}%" if verdict.unit == "%" else f"{mean:.3g}"


def _claims_table(verdicts, results: str, compact: bool = False, width: int = 100) -> Table:
    """One row per verdict, its reason in the last column; ``compact`` joins the labels into one column."""
    from rich.markup import escape

    from .claims import family_label

    ks = sorted({k for v in verdicts for k in v.means})
    table = Table(title=f"Does the paper hold? ({results})", show_lines=False, padding=(0, 1) if not compact else 0)
    head = ["claim / family / data / metric"] if compact else ["claim", "family", "data", "metric", "paper"]
    tail = ["rho", "p", "verdict", "why"]
    for col in head + [f"k={k}" for k in ks] + tail:
        table.add_column(col, overflow="fold", no_wrap=col.startswith("k=") or col in ("rho", "p", "verdict"),
                         min_width=max(20, width // 4) if col == "why" else None)
    for v in verdicts:
        means = [_mean_cell(v, k) for k in ks]
        rho = "-" if v.rho is None or v.rho != v.rho else f"{v.rho:+.2f}"
        p = "-" if v.p_value is None or v.p_value != v.p_value else f"{v.p_value:.2g}"
        style = _VERDICT_STYLE.get(v.verdict, "")
        metric = v.metric + (f" [{v.setting}]" if v.setting else "")
        if compact:
            labels = [f"{v.claim} / {family_label(v)} / {v.dataset} / {metric} ({v.direction})"]
        else:
            labels = [v.claim, family_label(v), v.dataset, metric, v.direction]
        row = [escape(x) for x in labels] + means + [rho, p, f"[{style}]{v.verdict}[/]", escape(v.reason)]
        table.add_row(*row)
    return table


def _cmd_publish(args: argparse.Namespace) -> None:
    from .hub import publish

    published = publish(args.runs, args.namespace, staging=args.staging, registry_dir=args.registry,
                        dry_run=args.dry_run, private=args.private, results_dir=args.results,
                        progress=not args.no_progress)
    for p in published:
        where = f"folder {p.folder}" if args.dry_run else f"{p.repo_id}@{p.entry['revision'][:10]}"
        console.print(f"{p.name}: {where} (sha256 {p.entry['sha256'][:12]}..., "
                      f"test acc {p.entry['metrics'].get('test_acc', float('nan')):.4f})")
    if not args.dry_run:
        console.print(f"manifests updated in {args.registry or 'the registry'}; commit them so users get the tags")


def _cmd_pull(args: argparse.Namespace) -> None:
    from .hub import pull

    for name, path in pull(args.tags, all_tags=args.all, progress=not args.no_progress).items():
        console.print(f"{name}: {path} (sha256 verified)")


def _sweep_status_table(sweep) -> Table:
    from .sweep import sweep_status

    colours = {"done": "green", "running": "cyan", "failed": "red", "pending": "yellow"}
    table = Table(title=f"sweep {sweep.name}: {sweep.output}")
    for col in ("model", "model kwargs", "dataset", "seed", "status", "epochs", "last error"):
        table.add_column(col, overflow="fold")
    rows = sweep_status(sweep)
    for r in rows:
        table.add_row(r["model"], r["model_kwargs"], r["dataset"], str(r["seed"]),
                      f"[{colours[r['status']]}]{r['status']}[/]", r["epochs"], r["error"])
    counts = {s: sum(r["status"] == s for r in rows) for s in colours}
    table.caption = ", ".join(f"{n} {s}" for s, n in counts.items())
    return table


def _cmd_sweep(args: argparse.Namespace) -> None:
    from .sweep import load_sweep, run_sweep

    sweep = load_sweep(args.file, output=args.output)
    if args.status:
        console.print(_sweep_status_table(sweep))
        return
    outcome = run_sweep(sweep, args.launcher, max_parallel=args.max_parallel, dry_run=args.dry_run,
                        wait=not args.no_wait, progress=not args.no_progress, log=_plain,
                        runs_per_gpu=args.runs_per_gpu)
    if outcome["failed"]:
        console.print(_sweep_status_table(sweep))
        raise CliError(f"{len(outcome['failed'])} run(s) failed (see the table); fix and rerun the same command")


def _run_shipped_sweep(text: str, out: str, jobs: int, progress: bool, banner: str) -> None:
    """Run a sweep file shipped in the package (the demo, a study), then print the report and the claims."""
    import time

    from .claims import collect_claims, evaluate_claims
    from .probes.base import available_probes
    from .studies import cpu_seconds, record_study_time
    from .sweep import load_sweep, pending_runs, run_sweep

    sweep = load_sweep(text=text, output=out)
    start, wall_start, cpu_start = time.perf_counter(), time.time(), cpu_seconds()
    console.print(banner.format(runs=len(sweep.runs), out=out))
    done_before = len(sweep.runs) - len(pending_runs(sweep))
    outcome = run_sweep(sweep, "local", max_parallel=jobs, progress=progress, log=_plain)
    if outcome["failed"]:
        raise CliError(f"{len(outcome['failed'])} run(s) failed: {outcome['failed'][0]['error']}")
    if outcome.get("report"):  # the study's cost, kept beside its report (study.json)
        record_study_time(Path(sweep.report) / "study.json", name=sweep.name, runs=len(sweep.runs),
                          done_before=done_before, jobs=jobs, started=wall_start,
                          finished=wall_start + time.perf_counter() - start,
                          cpu_s=None if cpu_start is None else cpu_seconds() - cpu_start)
    verdicts = evaluate_claims(sweep.results, collect_claims(available_probes()), records=outcome.get("records"))
    _print_claims(verdicts, str(sweep.results))
    console.print(f"[bold green]done[/] in {time.perf_counter() - start:.0f} s; the report is {outcome['report']}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from importlib import resources

    text = resources.files("rf_bench").joinpath("demo.toml").read_text()
    _run_shipped_sweep(text, args.out, args.jobs, not args.no_progress,
                       "[bold]rf-bench demo[/]: {runs} tiny runs on digits (both families, k = 1..4, 2 seeds), "
                       "every probe, then the report; results in {out}/")


def _cmd_study(args: argparse.Namespace) -> None:
    from .studies import study_text

    out = args.out or f"study_{args.name}"
    _run_shipped_sweep(study_text(args.name), out, args.jobs, not args.no_progress,
                       f"[bold]rf-bench study {args.name}[/]: {{runs}} runs, every probe, the report and the "
                       "paper's claims; results in {out}/ (a rerun resumes)")


DESCRIPTION = """\
rf-bench studies how a CNN's receptive field (RF) shapes what it learns. Its models (timm's
vgg19_rfpool{k} and resnet50_rfpool{k}) differ only by one max-pool of size k after the first
convolution; rf-bench trains them, probes them (pruning, Hessian spectrum, CKA, RF maps), writes
the paper's tables and figures, and says which of the paper's claims the results support.

Three ways to start a study:
  1. rf-bench demo                                  the whole study in miniature, sized for a CPU
  2. rf-bench train --model resnet50_rfpool2 --dataset fashion-mnist --recipe fast --epochs 10
     rf-bench probe runs/ && rf-bench report        one run, trained, probed, reported (REPORT.md)
  3. rf-bench sweep grid.toml --max-parallel 2      a grid of runs, probes and the report from one file
"""


def _command(sub, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose --help says what it does for a user and shows one example."""
    return sub.add_parser(name, help=summary, description=description, epilog=f"example:\n  {example}",
                          formatter_class=HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    """The ``rf-bench`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="rf-bench", description=DESCRIPTION, formatter_class=HelpFormatter,
                                     epilog="`rf-bench COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"rf-bench {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the whole traceback")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_model_commands(sub)
    _add_training_commands(sub)
    _add_result_commands(sub)
    _add_hub_commands(sub)
    _add_study_commands(sub)
    return parser


def _add_model_commands(sub) -> None:
    """rf: receptive fields of a model or a family."""
    p = _command(sub, "rf", "receptive fields: per layer of one model, or k vs RF for a family",
                 "The exact receptive field of every layer of a timm CNN (traced with torch.fx), or, for an rfpool\n"
                 "family, k against the analytic RF, the RF measured with gradients and the paper's figures.",
                 "rf-bench rf --family resnet50_rfpool --ks 1 2 3 4")
    p.add_argument("model", nargs="?", help="any timm CNN, e.g. resnet50_rfpool3 or resnet18")
    p.add_argument("--family", help="resnet50_rfpool or vgg19_rfpool: table of k vs RF next to the paper's")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4], choices=RFPOOL_KS, metavar="K",
                   help="family table: the k values")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape the trace sees (default: the model's pretrained config)")
    p.add_argument("--layer", help="module name whose output's RF to report (default: forward_features)")
    p.add_argument("--width-mult", type=float, help="rfpool models only: channel width multiplier")
    p.add_argument("--no-gradient", action="store_true", help="family table: skip the gradient measurement")
    p.add_argument("--all-layers", action="store_true",
                   help=f"one row per layer even for nets of more than {_SUMMARY_ROWS} (default: one row per block)")
    p.add_argument("--map", metavar="PNG", help="draw the paper's gradient map (n=50, default input 3x64x64)")
    p.set_defaults(func=_cmd_rf)


def _add_training_commands(sub) -> None:
    """train: one run."""
    p = _command(sub, "train", "train one run (same as `accelerate launch rf_bench/train.py`)",
                 "Train one model on one data set with a named recipe (fast, the default; paper; paper-lr0.1; finetune) "
                 "and any override.\n"
                 "The run directory is named after the settings, so the same command resumes an unfinished run.",
                 "rf-bench train --model vgg19_rfpool2 --dataset fashion-mnist --recipe fast --epochs 10 "
                 "--train-per-class 1000")
    add_train_args(p)
    p.set_defaults(func=_cmd_train)


def _add_result_commands(sub) -> None:
    """probe, report, claims: from runs to results to tables and verdicts."""
    p = _command(sub, "probe", "run a suite of probes over finished runs",
                 "Measure finished runs: prune (one-shot pruning over all or live weights, masked fine-tune),\n"
                 "hessian (top eigenvalues, trace, spectral density), cka (layer similarity within and across\n"
                 "seeds), rfmap (gradient maps), saturation (channel directions each layer uses). Results are\n"
                 "stored per run and settings; a rerun skips what is already measured.",
                 "rf-bench probe runs/ --settings demo --set hessian.k=20 --results results")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories, globs, or folders of runs")
    p.add_argument("--suite", help="all, or probe names separated by commas (default: the --settings file's suite, "
                                   "else all)")
    p.add_argument("--results", default="results", help="results folder (shared by many runs)")
    p.add_argument("--settings", metavar="FILE",
                   help="probe settings from the [probes.<name>] tables of a TOML file (a sweep file works), or of a "
                        "shipped one: demo (sized for a CPU), digits, fashion-cpu, fashion; --set overrides it")
    p.add_argument("--set", action="append", default=[], metavar="[PROBE.]KEY=VALUE",
                   help="probe setting (JSON value); repeat for more")
    p.add_argument("--list-settings", action="store_true", help="print every probe's settings, defaults and meaning")
    p.add_argument("--force", action="store_true", help="recompute results that exist")
    p.add_argument("--data-dir", help="local copy of the runs' data set")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=_cmd_probe)

    p = _command(sub, "report", "REPORT.md with the paper's tables and figures from a results folder",
                 "Write REPORT.md, its figures (PNG) and CSV tables from the probe results in a folder, with\n"
                 "the verdict on each of the paper's claims first.",
                 "rf-bench report results --out report")
    p.add_argument("results", nargs="?", default="results", help="results folder (default: results)")
    p.add_argument("--out", default="report", help="folder for REPORT.md, figures and CSVs (default: report)")
    p.set_defaults(func=_cmd_report)

    p = _command(sub, "claims", "a verdict on each of the paper's claims from a results folder",
                 "For each claim, metric, family and data set: the per-k means, Spearman's rho with k, a\n"
                 "permutation p-value and a verdict (supported, contradicted, inconclusive, not measured).",
                 "rf-bench claims study_digits/results --json")
    p.add_argument("results", nargs="?", default="results", help="results folder (default: results)")
    p.add_argument("--json", action="store_true", help="print the verdicts as a JSON list instead of a table")
    p.set_defaults(func=_cmd_claims)


def _add_hub_commands(sub) -> None:
    """publish, pull: checkpoints on the Hugging Face Hub."""
    p = _command(sub, "publish", "publish finished runs to the Hub as timm checkpoints (same as hub_upload.py)",
                 "Upload finished runs to the Hugging Face Hub with a model card, and write the registry\n"
                 "manifest that lets timm.create_model(..., pretrained=True) find and verify them.",
                 "rf-bench publish runs/resnet50_rfpool3-cifar10-s0-* --namespace my-hub-user")
    add_publish_args(p)
    p.set_defaults(func=_cmd_publish)

    p = _command(sub, "pull", "download published checkpoints into the Hub cache (for offline clusters)",
                 "Download published checkpoints into the Hub cache, each checked against its sha256, so that\n"
                 "pretrained=True works later without a network.",
                 "rf-bench pull resnet50_rfpool3.cifar10_s0")
    p.add_argument("tags", nargs="*", metavar="TAG", help="e.g. resnet50_rfpool3.cifar10_s0")
    p.add_argument("--all", action="store_true", help="every published tag")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=_cmd_pull)


def _add_study_commands(sub) -> None:
    """sweep, demo, study: whole grids of runs, probes and the report."""
    p = _command(sub, "sweep", "train and probe a grid of runs from a TOML file, locally or on SLURM",
                 "Train every run of a grid (families x k x data sets x seeds), probe each, then write the\n"
                 "report. A rerun skips finished work and resumes the rest; a failed run does not stop the others.",
                 "rf-bench sweep benchmarks/configs/paper.toml --launcher slurm")
    p.add_argument("file", help="sweep file, e.g. benchmarks/configs/paper.toml")
    p.add_argument("--launcher", default="local", choices=("local", "slurm", "submitit-local"),
                   help="where runs execute: this machine, SLURM, or submitit's local executor")
    p.add_argument("--max-parallel", "--jobs", dest="max_parallel", type=int, default=1,
                   help="local: runs at once (one GPU each, or packed); --jobs as in `rf-bench study`")
    p.add_argument("--runs-per-gpu", type=int,
                   help="local: runs that share one GPU (packed; default the file's [sweep] runs_per_gpu, else 1)")
    p.add_argument("--output", help="put runs/, results/ and report/ under this folder instead of the file's paths")
    p.add_argument("--status", action="store_true", help="print done / running / failed / pending per run")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would be started")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return (rerun later to finish)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=_cmd_sweep)

    p = _command(sub, "demo", "the whole study in miniature on digits, sized for a CPU: REPORT.md",
                 "16 tiny runs on the embedded digits data, every probe, the report and the claims table:\n"
                 "the same code path as the paper's grid, sized for a 2-core CPU.",
                 "rf-bench demo --out demo_out")
    p.add_argument("--out", default="demo_out", help="folder for runs/, results/ and report/")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs at once (worker processes; default: 2, tiny models use one core best)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=_cmd_demo)

    p = _command(sub, "study", "a shipped study that can reach verdicts on the paper's claims (e.g. digits)",
                 "Run a study shipped with rf-bench: its grid, every probe, the report and the claims table.\n"
                 "A rerun resumes.",
                 "rf-bench study fashion-cpu --out study_fashion")
    p.add_argument("name", help="digits: scikit-learn's digits, 48 runs, sized for a 2-core CPU; fashion-cpu: "
                                "Fashion-MNIST photos, 32 runs, sized for a 2-core CPU; fashion-width: fashion-cpu at "
                                "three widths, 60 runs; fashion-resolution: fashion-cpu at 32 and 64 px, 48 runs; "
                                "fashion: Fashion-MNIST at full width on the whole "
                                "training split, for GPUs")
    p.add_argument("--out", help="folder for runs/, results/ and report/ (default: study_<name>)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once (worker processes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=_cmd_study)

def add_publish_args(p: argparse.ArgumentParser) -> None:
    """The options ``rf-bench publish`` and ``hub_upload.py`` share."""
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories, globs, or folders of runs")
    p.add_argument("--namespace", required=True, help="Hub user or organisation that will own the repos")
    p.add_argument("--registry", help="manifest folder to update (default: $RF_BENCH_REGISTRY or the repo's registry/)")
    p.add_argument("--staging", default="hub-staging", help="where the repo folders are written before upload")
    p.add_argument("--results", help="results folder whose probe values go into the model cards")
    p.add_argument("--private", action="store_true", help="create private repos")
    p.add_argument("--dry-run", action="store_true", help="write the repo folders only; no token, no upload")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``rf-bench``; a library error becomes one line on stderr and exit status 2."""
    from safetensors import SafetensorError

    args = build_parser().parse_args(argv)
    if getattr(args, "deterministic", False):
        from .trainer import prepare_deterministic_process

        prepare_deterministic_process()
    try:
        args.func(args)
    except KeyboardInterrupt:  # one line, never a traceback: what was finished is on disk
        err_console.print("interrupted: finished work is kept; the same command resumes it", highlight=False,
                          markup=False, soft_wrap=True)
        return 130
    except Interrupted as e:
        err_console.print(str(e), highlight=False, markup=False, soft_wrap=True)
        return 130
    except (CliError, ValueError, OSError, NotImplementedError, NonFiniteLossError, HubError, SafetensorError) as e:
        if args.debug:
            raise
        from rich.markup import escape

        err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
