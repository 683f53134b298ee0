"""``rf-bench report``: the paper's tables (markdown + CSV) and figures (PNG) from stored results.

Every probe adds its part through one mechanism: an optional ``report(records, store, out_dir)``
on the probe class returning `~rf_bench.probes.base.ReportSection` objects; this module
collects them into ``REPORT.md`` and holds the shared table/figure helpers.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import statistics
import time
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from rf_bench.paper import MEASURED_RF, PRUNE_09

__all__ = ["write_report", "mean_std", "fmt_pct", "prune_sections", "analytic_rf", "width_sections", "scalar_sections",
           "line_colors", "integer_ticks"]


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_pct(values: Sequence[float]) -> str:
    """Accuracies (fractions) as ``mean ± std`` in percent, two decimals."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


@lru_cache(maxsize=None)
def _rf_cached(model_name: str, kwargs_items: Tuple[Tuple[str, Any], ...], input_size: Tuple[int, ...]) -> int:
    import timm

    import rf_bench  # noqa: F401
    from rf_bench.rf import receptive_field

    model = timm.create_model(model_name, **dict(kwargs_items))
    return receptive_field(model, input_size).size


def analytic_rf(run_dir: str | os.PathLike) -> Optional[int]:
    """Exact analytic RF of a run's model (None if its run directory is gone)."""
    import json

    meta_path = Path(run_dir) / "config.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    kwargs = tuple(sorted((k, v) for k, v in meta["model_kwargs"].items() if not isinstance(v, (dict, list))))
    size = tuple(meta["data"]["input_size"])
    # the RF does not depend on the image size, but the trace needs one the model accepts
    size = (size[0], max(size[1], 256), max(size[2], 256))
    return _rf_cached(meta["config"]["model"], kwargs, size)


def _write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    if not rows:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _savefig(fig, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Okabe & Ito's colour-blind-safe palette less its light colours (yellow, orange, sky blue: under 3:1 on white),
# then a dark gold, Tol's indigo, black and grey: every line keeps WCAG's 3:1 contrast for graphics on white
LINE_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#A6761D", "#332288", "#000000", "#7F7F7F")


def line_colors(n: int) -> List[str]:
    """``n`` line colours with 3:1 contrast on white (one per k); the first four are Okabe & Ito's colour-blind-safe
    set."""
    return [LINE_COLORS[i % len(LINE_COLORS)] for i in range(n)]


def integer_ticks(axis) -> None:
    """Whole-number ticks only, for axes that count (k, a layer index, an eigenvalue's rank)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _group(records: Iterable[Dict[str, Any]], key) -> Dict[Any, List[Dict[str, Any]]]:
    """Records by ``key(record)``, keys in sorted order."""
    groups: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[key(rec)].append(rec)
    return dict(sorted(groups.items()))


def _by_family(records):
    return _group(records, lambda r: (r["values"]["family"], r["dataset"]))


def _by_k(records):
    return _group(records, lambda r: r["values"]["k"])


# ----------------------------------------------------------------------------------------- prune

def prune_sections(records: List[Dict[str, Any]], out_dir: Path):
    """Tables 1-2 of the paper (per architecture and data set) and accuracy-vs-rate plots."""
    from rf_bench.probes.base import ReportSection

    sections, csv_rows = [], []
    for (family, dataset), recs in _by_family(records).items():
        rates = sorted({row["rate"] for rec in recs for row in rec["values"]["rates"]})
        by_k = _by_k(recs)
        header = ["k", "RF (analytic)", "RF (paper)", "seeds", "dense"]
        for rate in rates:
            header += [f"pruned {rate:g}", f"fine-tuned {rate:g}"]
        header += ["paper dense", "paper pruned 0.9"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        curves = {}
        for k, krecs in by_k.items():
            rf = analytic_rf(krecs[0]["run_dirs"][0])
            dense = [r["values"]["dense_acc"] for r in krecs]
            cells = [str(k), str(rf or "-"), str(MEASURED_RF.get(family, {}).get(k, "-")), str(len(krecs)),
                     fmt_pct(dense)]
            pruned_curve, tuned_curve = [], []
            for rate in rates:
                rows = [row for r in krecs for row in r["values"]["rates"] if row["rate"] == rate]
                pruned = [row["pruned_acc"] for row in rows]
                tuned = [row["finetuned_acc"] for row in rows if "finetuned_acc" in row]
                cells += [fmt_pct(pruned), fmt_pct(tuned)]
                pruned_curve.append(statistics.fmean(pruned))
                tuned_curve.append(statistics.fmean(tuned) if tuned else math.nan)
                for metric, vals in (("pruned", pruned), ("finetuned", tuned)):
                    if vals:
                        m, s = mean_std(vals)
                        csv_rows.append(dict(family=family, dataset=dataset, k=k, rf_analytic=rf,
                                             rf_paper=MEASURED_RF.get(family, {}).get(k), rate=rate, metric=metric,
                                             mean=m, std=s, n=len(vals)))
            m, s = mean_std(dense)
            csv_rows.append(dict(family=family, dataset=dataset, k=k, rf_analytic=rf,
                                 rf_paper=MEASURED_RF.get(family, {}).get(k), rate=0.0, metric="dense",
                                 mean=m, std=s, n=len(dense)))
            paper = PRUNE_09.get((family, dataset), {}).get(k)
            cells += [_paper_cell(paper[0]) if paper else "-", _paper_cell(paper[1]) if paper else "-"]
            lines.append("| " + " | ".join(cells) + " |")
            curves[(k, rf)] = ([0.0] + rates, [statistics.fmean(dense)] + pruned_curve,
                               [statistics.fmean(dense)] + tuned_curve)
        figure = out_dir / f"prune_{family}_{dataset}.png"
        _plot_prune(curves, f"{family}{{k}} on {dataset}", figure)
        md = ("Test accuracy (%) of the dense net, after one-shot global magnitude pruning, and after a "
              "masked fine-tune, mean ± std over seeds.\n\n" + "\n".join(lines) + f"\n\n![{family} {dataset}]"
              f"({figure.name})\n")
        sections.append(ReportSection(title=f"Pruning: {family} on {dataset}", markdown=md, order=10))
    _write_csv(out_dir / "prune.csv", csv_rows)
    return sections


def _paper_cell(entry: Tuple[float, Optional[float]]) -> str:
    mean, std = entry
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _plot_prune(curves, title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for color, ((k, rf), (rates, pruned, tuned)) in zip(line_colors(len(curves)), sorted(curves.items())):
        ax.plot(rates, [100 * v for v in pruned], "o-", color=color, label=f"k={k}, RF {rf} (pruned)")
        if not all(math.isnan(v) for v in tuned):
            ax.plot(rates, [100 * v for v in tuned], "s--", color=color, label=f"k={k} (fine-tuned)")
    ax.set_xlabel("pruning rate")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _savefig(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- width

def _width(record: Dict[str, Any]) -> Optional[float]:
    from rf_bench.results import record_variant

    width = record_variant(record).get("width_mult")
    return None if width is None else float(width)


def width_sections(records: List[Dict[str, Any]], out_dir: Path):
    """Does the RF effect need wide nets? Per (family, data set) with runs at several widths: accuracy kept after
    one-shot pruning at each rate against k, one line per width, beside the paper's CIFAR10 full-width values;
    and dense accuracy against k, one line per width. Each width's runs are its own (never pooled)."""
    from rf_bench.probes.base import ReportSection
    from rf_bench.results import record_family, record_k

    from rf_bench.results import record_variant

    def rest(record):  # everything else that sets runs apart stays apart: one figure per such group
        return json.dumps({k: v for k, v in record_variant(record).items() if k != "width_mult"}, sort_keys=True,
                          default=str)

    sections, csv_rows = [], []
    by_family = _group((r for r in records if _width(r) is not None and record_k(r) is not None),
                       lambda r: (record_family(r), r["dataset"], rest(r)))
    several = len({key[:2] for key in by_family}) < len(by_family)
    for index, ((family, dataset, other), recs) in enumerate(by_family.items()):
        widths = sorted({_width(r) for r in recs})
        if len(widths) < 2:
            continue
        rates = sorted({row["rate"] for r in recs for row in r["values"]["rates"]})
        curves = {}  # (width, rate or "dense") -> {k: [accuracies]}
        for r in recs:
            k, width = record_k(r), _width(r)
            curves.setdefault((width, "dense"), {}).setdefault(k, []).append(r["values"]["dense_acc"])
            for row in r["values"]["rates"]:
                curves.setdefault((width, row["rate"]), {}).setdefault(k, []).append(row["pruned_acc"])
        ks = sorted({record_k(r) for r in recs})
        head = ["width", "accuracy"] + [f"k={k}" for k in ks]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for width in widths:
            for rate in ["dense"] + rates:
                by_k = curves.get((width, rate), {})
                label = "dense" if rate == "dense" else f"pruned {rate:g}, one-shot"
                lines.append("| " + " | ".join([f"{width:g}", label] + [fmt_pct(by_k.get(k, [])) for k in ks]) + " |")
                for k, values in sorted(by_k.items()):
                    m, s = mean_std(values)
                    csv_rows.append(dict(family=family, dataset=dataset, width_mult=width, k=k,
                                         rate=0.0 if rate == "dense" else rate, metric="dense" if rate == "dense"
                                         else "pruned", mean=m, std=s, n=len(values)))
        figure = out_dir / (f"width_{family}_{dataset}" + (f"_{index}" if several else "") + ".png")
        _plot_widths(curves, widths, rates, ks, PRUNE_09.get((family, "cifar10"), {}),
                     f"{family} on {dataset}: accuracy against k, per width", figure)
        md = ("Test accuracy (%) at each width (`width_mult`), mean ± std over seeds: dense, and after one-shot "
              "global magnitude pruning at each rate. The dashed grey line is the paper's CIFAR10 result at full "
              "width (another data set, for reference).\n\n" + "\n".join(lines) + f"\n\n![{family} widths]({figure.name})\n")
        title = f"Width: {family} on {dataset}" + (f" [{other}]" if several else "")
        sections.append(ReportSection(title=title, markdown=md, order=9))
    _write_csv(out_dir / "width.csv", csv_rows)
    return sections


def _plot_widths(curves, widths, rates, ks, paper, title: str, path: Path) -> None:
    """One panel per rate (dense first): accuracy against k, a line per width, the paper's CIFAR10 beside it."""
    plt = _pyplot()
    panels = ["dense"] + rates
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, rate in zip(axes[0], panels):
        for color, width in zip(line_colors(len(widths)), widths):
            by_k = curves.get((width, rate), {})
            xs = [k for k in ks if k in by_k]
            ax.plot(xs, [100 * statistics.fmean(by_k[k]) for k in xs], "o-", color=color, label=f"width {width:g}")
        reference = {k: entry[0 if rate == "dense" else 1][0] for k, entry in paper.items()}
        if reference and rate in ("dense", 0.9):
            ax.plot(sorted(reference), [reference[k] for k in sorted(reference)], "s--", color="#7F7F7F",
                    label="paper, CIFAR10, full width")
        ax.set_title("dense" if rate == "dense" else f"pruned {rate:g}, one-shot", fontsize=9)
        ax.set_xlabel("k")
        integer_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _savefig(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- report

def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike, log=None) -> Path:
    """Collect every probe's sections into ``out_dir/REPORT.md`` (tables, CSVs and PNGs beside it).

    Result files that cannot be used are left out, named in ``log`` and counted at the top of the report.
    """
    from rf_bench.probes.base import ReportSection, available_probes
    from rf_bench.results import ResultStore

    store = ResultStore(results_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    installed = available_probes()
    by_probe = _group(store.records(), lambda r: r["probe"])
    if not by_probe:
        raise store.nothing_usable()
    sections = width_sections(by_probe.get("prune", []), out)
    for name, records in by_probe.items():
        try:
            sections += _probe_sections(installed.get(name), name, records, store, out)
        except Exception as e:  # one probe's failing report must not cost the others theirs
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            if log:
                log(f"report: the {name} probe's report failed ({why}); its section says so")
            sections.append(ReportSection(title=f"{name}: report failed", order=90, markdown=(
                f"The `{name}` probe's report raised `{why}`. Its {len(records)} results are in "
                f"`{results_dir}`; the rest of this report is complete.\n")))
    sections.append(claims_section(results_dir))
    sections.sort(key=lambda s: (s.order, s.title))
    body = [f"# rf-bench report\n\nFrom `{results_dir}`, {time.strftime('%Y-%m-%d %H:%M')}.\n"]
    if store.skipped:
        note = store.skipped_note()
        if log:
            log(note.rstrip("\n"))
        body.append(f"**{len(store.skipped)} result file(s) left out** (the tables count only what was read):\n\n"
                    + "".join(f"- `{p}`: {why}\n" for p, why in sorted(store.skipped.items())))
    body += [f"## {s.title}\n\n{s.markdown}" for s in sections]
    path = out / "REPORT.md"
    tmp = path.with_name(".REPORT.md.tmp")
    tmp.write_text("\n".join(body))
    os.replace(tmp, path)
    return path


def _probe_sections(probe, name: str, records: List[Dict[str, Any]], store, out: Path) -> list:
    """A probe's sections. Runs trained differently (``width_mult``, recipe, ...) and results of different settings
    are never pooled: each gets its own sections, titled with what sets it apart, and its files in a sub-folder of
    ``out`` named after that (``_section_folder``). A probe without a ``report()`` (or not installed) gets its
    scalar values."""
    from rf_bench.results import config_hash, settings_groups, variant_groups

    def sections_of(group, folder):
        if probe is not None and hasattr(probe, "report"):
            return probe.report(group, store, folder)
        return scalar_sections(name, group, folder)

    sections, taken = [], set()
    for variant, members in variant_groups(records):
        for label, setting, group in settings_groups(members):
            tag = ", ".join(part for part in (variant, label) if part)
            if not tag:
                sections += sections_of(group, out)
                continue
            digest = config_hash(dict(setting, variant=variant) if variant else setting)
            folder = _section_folder(name, tag, digest)
            sub = out / (folder if folder not in taken else f"{name}-{digest}")  # two tags that read alike
            taken.add(sub.name)
            sub.mkdir(parents=True, exist_ok=True)
            for section in sections_of(group, sub):
                markdown = re.sub(r"\]\(([^)/]+)\)",  # links to the files written beside it
                                  lambda m, sub=sub: f"]({sub.name}/{m.group(1)})" if (sub / m.group(1)).is_file() else m.group(0),
                                  section.markdown)
                sections.append(dataclasses.replace(section, title=f"{section.title} [{tag}]", markdown=markdown))
    return sections


_FOLDER_CHARS = re.compile(r"[^A-Za-z0-9_.=+-]+")
_FOLDER_MAX = 60


def _section_folder(probe: str, tag: str, digest: str) -> str:
    """The sub-folder of a group's files, named after what sets the group apart (``prune-width_mult=0.25``); a tag
    too long for a folder name is cut and the setting's hash added, which keeps the name unique."""
    readable = _FOLDER_CHARS.sub("_", tag.replace(", ", "-")).strip("_")
    if len(readable) > _FOLDER_MAX:
        readable = f"{readable[:_FOLDER_MAX - 11].rstrip('_-')}-{digest}"
    return f"{probe}-{readable}"


def _scalars(values: Dict[str, Any]) -> Dict[str, float]:
    return {key: value for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def scalar_sections(name: str, records: List[Dict[str, Any]], out_dir: Path):
    """The report of a probe that writes none of its own: its scalar values per result, then mean ± std per group
    (model and data set), and a CSV of the first table."""
    from rf_bench.probes.base import ReportSection

    columns = list(dict.fromkeys(key for rec in records for key in _scalars(rec["values"])))
    rows = []
    for rec in sorted(records, key=lambda r: (",".join(r.get("models") or []), r["dataset"], r.get("seeds") or [])):
        scalars = _scalars(rec["values"])
        rows.append(dict(model=",".join(sorted(set(rec.get("models") or ["-"]))), dataset=rec["dataset"],
                         seeds=",".join(map(str, rec.get("seeds") or [])),
                         **{c: scalars.get(c, "") for c in columns}))
    _write_csv(out_dir / f"{name}.csv", rows)
    if not columns:
        return [ReportSection(title=f"{name}", order=80, markdown=(
            f"{len(records)} results; the `{name}` probe stores no scalar values to tabulate.\n"))]
    head = ["model", "data", "seeds"] + columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], row["dataset"], row["seeds"]] + [_format_scalar(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    groups = _group(rows, lambda r: (r["model"], r["dataset"]))
    mean_lines = ["| " + " | ".join(["model", "data", "results"] + columns) + " |", "|" + "---|" * (3 + len(columns))]
    for (model, dataset), members in groups.items():
        cells = [model, dataset, str(len(members))]
        for c in columns:
            values = [m[c] for m in members if m[c] != ""]
            mean, std = mean_std(values) if values else (None, None)
            cells.append("-" if mean is None else _format_scalar(mean) + (f" ± {_format_scalar(std)}" if std is not None else ""))
        mean_lines.append("| " + " | ".join(cells) + " |")
    markdown = (f"The `{name}` probe's scalar values per result ([{name}.csv]({name}.csv)), then their mean ± std "
                f"(sample) per model and data set.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(mean_lines) + "\n")
    return [ReportSection(title=f"{name}", order=80, markdown=markdown)]


def _format_scalar(value: Any) -> str:
    if value == "" or value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:  # counts stay whole, however large
        return str(int(value))
    return f"{value:.4g}"


def claims_section(results_dir: str | os.PathLike):
    """The verdict on each of the paper's claims: the report's first section."""
    from rf_bench.claims import claims_markdown, evaluate_claims
    from rf_bench.probes.base import ReportSection

    return ReportSection(title="Does the paper hold?", markdown=claims_markdown(evaluate_claims(results_dir)), order=0)


# ----------------------------------------------------------------------------------------- rfmap

def rfmap_sections(records: List[Dict[str, Any]], store, out_dir: Path):
    """Figures 4-5 (maps per RF, per architecture) and Tables 3-4 (map maxima beside the paper's)."""
    from rf_bench.paper import RFMAP_MAXIMA
    from rf_bench.probes.base import ReportSection

    sections, csv_rows = [], []
    for (family, dataset), recs in _by_family(records).items():
        stages = [s for s in ("init", "final") if all(s in r["values"] for r in recs)]
        by_k = _by_k(recs)
        header = ["k", "RF (analytic)", "RF (gradient)", "RF (paper)"]
        for stage in stages:
            header += [f"max ({stage})", f"ERF r50/r90/r99 ({stage})"]
        header += ["paper max"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        panels = {}
        for k, krecs in by_k.items():
            first = krecs[0]["values"][stages[0]] if stages else {}
            cells = [str(k), str(first.get("analytic_rf", "-")), str(first.get("gradient_rf", "-")),
                     str(MEASURED_RF.get(family, {}).get(k, "-"))]
            for stage in stages:
                maxima = [m for r in krecs for m in r["values"][stage]["maxima"]]
                mean, std = mean_std(maxima)
                cells.append(f"{mean:.3g} ± {std:.2g}" if std is not None else f"{mean:.3g}")
                erf = krecs[0]["values"][stage]
                cells.append(f"{erf['r50']}/{erf['r90']}/{erf['r99']}")
                csv_rows.append(dict(family=family, dataset=dataset, k=k, stage=stage,
                                     rf_analytic=first.get("analytic_rf"), rf_gradient=first.get("gradient_rf"),
                                     max_mean=mean, max_std=std, n=len(maxima), r50=erf["r50"], r90=erf["r90"],
                                     r99=erf["r99"], paper_max=RFMAP_MAXIMA.get(family, {}).get(k)))
                tensors = store.tensors(Path(krecs[0]["_path"]))
                panels[(stage, k)] = (tensors[f"{stage}_map"], first.get("analytic_rf"))
            paper = RFMAP_MAXIMA.get(family, {}).get(k)
            cells.append(f"{paper:.3g}" if paper is not None else "-")
            lines.append("| " + " | ".join(cells) + " |")
        figure = out_dir / f"rfmap_{family}_{dataset}.png"
        _plot_maps(panels, stages, sorted(by_k), f"{family}{{k}} ({dataset} runs)", figure)
        md = ("Gradient maps (the paper's method: |d centre units of the last conv / d input|, mean over "
              f"{recs[0]['config']['n']} random inputs, eval mode); maxima are mean ± std over all inputs and "
              "seeds; ERF radii hold 50/90/99% of the gradient mass (half-side of a square, px).\n\n"
              + "\n".join(lines) + f"\n\n![{family} maps]({figure.name})\n")
        sections.append(ReportSection(title=f"RF maps: {family} on {dataset}", markdown=md, order=40))
    _write_csv(out_dir / "rfmap.csv", csv_rows)
    return sections


def _plot_maps(panels, stages, ks, title: str, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(len(stages), len(ks), figsize=(3.0 * len(ks), 2.8 * len(stages)), squeeze=False)
    for i, stage in enumerate(stages):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            image, rf = panels[(stage, k)]
            im = ax.imshow(image.numpy(), cmap="viridis")  # per-panel scale: maxima differ by orders of magnitude
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format="%.1e").ax.tick_params(labelsize=6)
            ax.set_title(f"k={k}, RF {rf} ({stage})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    _savefig(fig, path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- cka

def cka_sections(records: List[Dict[str, Any]], store, out_dir: Path):
    """Figure 3 (within-model and cross-seed CKA heatmaps per RF, red line at the middle layer) and the
    summary table (mean ± std over seed pairs of the deeper half's cross-seed diagonal)."""
    from rf_bench.probes.base import ReportSection

    sections, csv_rows = [], []
    by_estimator = _group(records, lambda r: (r["values"]["family"], r["dataset"], r["values"].get("estimator", "exact")))
    for (family, dataset, estimator), recs in by_estimator.items():
        recs = sorted(recs, key=lambda r: r["values"]["k"])
        suffix = "" if estimator == "exact" else f"_{estimator}"
        lines = ["| k | RF (analytic) | seeds | layers | deeper-half cross-seed CKA |", "|---|---|---|---|---|"]
        panels = []
        for rec in recs:
            v = rec["values"]
            rf = analytic_rf(rec["run_dirs"][0])
            diag = [p["deeper_half_diagonal"] for p in v["pairs"]]
            if diag:
                mean, std = mean_std(diag)
                cell = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
            else:
                mean, std, cell = None, None, "- (one seed)"
            lines.append(f"| {v['k']} | {rf} | {len(v['seeds'])} | {len(v['layers'])} | {cell} |")
            csv_rows.append(dict(family=family, dataset=dataset, estimator=estimator, k=v["k"], rf_analytic=rf,
                                 seeds=len(v["seeds"]),
                                 deeper_half_cross_seed_cka_mean=mean, deeper_half_cross_seed_cka_std=std))
            tensors = store.tensors(Path(rec["_path"]))
            s0 = v["seeds"][0]
            cross = next((t for name, t in sorted(tensors.items()) if name.startswith("cross_")), None)
            panels.append((v["k"], rf, tensors[f"within_s{s0}"], cross))
        figure = out_dir / f"cka_{family}_{dataset}{suffix}.png"
        _plot_cka(panels, f"{family}{{k}} on {dataset}: linear CKA ({estimator})", figure)
        how = ("Exact linear CKA on the first test images" if estimator == "exact" else
               "Linear CKA estimated from unbiased HSIC summed over minibatches of the first test images "
               "(Nguyen et al. 2021; it estimates the population CKA, which the exact sample CKA overstates "
               "for wide layers)")
        md = (how + " between every pair of layers (the activation each "
              "weight layer hands on, then the logits): top row within one model, bottom row between two "
              "seeds; the red lines mark the middle layer. The table averages the cross-seed diagonal over "
              "the deeper half of the layers, mean ± std over seed pairs.\n\n" + "\n".join(lines)
              + f"\n\n![{family} CKA]({figure.name})\n")
        title = f"CKA: {family} on {dataset}" + ("" if estimator == "exact" else f" ({estimator} estimator)")
        sections.append(ReportSection(title=title, markdown=md, order=30))
    _write_csv(out_dir / "cka.csv", csv_rows)
    return sections


def _plot_cka(panels, title: str, path: Path) -> None:
    plt = _pyplot()
    rows = 2 if any(p[3] is not None for p in panels) else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(3.0 * len(panels), 2.9 * rows), squeeze=False)
    for j, (k, rf, within, cross) in enumerate(panels):
        for i, (matrix, label) in enumerate(((within, "within"), (cross, "cross-seed"))[:rows]):
            ax = axes[i][j]
            if matrix is None:
                ax.axis("off")
                continue
            im = ax.imshow(matrix.numpy(), cmap="magma", vmin=0, vmax=1, origin="lower")
            mid = matrix.shape[0] / 2 - 0.5
            ax.axhline(mid, color="red", lw=1)
            ax.axvline(mid, color="red", lw=1)
            ax.set_title(f"k={k}, RF {rf} ({label})", fontsize=8)
            ax.set_xlabel("layer", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            integer_ticks(ax.xaxis)
            integer_ticks(ax.yaxis)
            ax.tick_params(labelsize=6)
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="CKA")
    fig.suptitle(title, fontsize=10)
    _savefig(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------------------- hessian

def _hessian_groups(records, bn_mode: Callable[[Dict[str, Any]], str]):
    """Records by (family, data set, BatchNorm protocol): protocols never share a table or a figure."""
    return _group(records, lambda r: (r["values"]["family"], r["dataset"], bn_mode(r)))


_BN_WORDS = {"recalibrate": "BatchNorm statistics recalibrated on these images, eval mode",
             "batch": "BatchNorm with each batch's statistics (train mode), the loss SGD minimises",
             "stored": "eval mode with the stored BatchNorm statistics (at initialisation: mean 0, variance 1)"}


def _mean_std_cv(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    if std is None:
        return f"{mean:.4g}"
    cv = f", CV {std / abs(mean):.2f}" if mean else ""
    return f"{mean:.4g} ± {std:.2g}{cv}"


def hessian_sections(records: List[Dict[str, Any]], out_dir: Path, bn_mode: Callable[[Dict[str, Any]], str]):
    """Figures 1-2 (top eigenvalues vs index, one line per RF, init and trained panels), the SLQ spectral density
    per k, and a table of the top eigenvalue, the trace and largest/k-th, mean ± std and the seed-to-seed
    coefficient of variation; one section per BatchNorm protocol, as the probe's ``bn_mode(record)`` reads it
    (passed in: this module cannot import the probe, whose report() imports it)."""
    from rf_bench.probes.base import ReportSection

    sections, csv_rows = [], []
    for (family, dataset, mode), recs in _hessian_groups(records, bn_mode).items():
        stages = [s for s in ("init", "final") if all(s in r["values"] for r in recs)]
        by_k = _by_k(recs)
        header = ["k", "RF (analytic)", "seeds"]
        for stage in stages:
            header += [f"top ({stage})", f"trace ({stage})", f"top / last ({stage})"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        curves, densities = defaultdict(dict), defaultdict(dict)
        for k, krecs in by_k.items():
            rf = analytic_rf(krecs[0]["run_dirs"][0])
            cells = [str(k), str(rf), str(len(krecs))]
            for stage in stages:
                for key in ("top", "trace", "ratio_top_last"):
                    vals = [r["values"][stage][key] for r in krecs]
                    mean, std = mean_std(vals)
                    cells.append(_mean_std_cv(vals))
                    csv_rows.append(dict(family=family, dataset=dataset, bn=mode, k=k, rf_analytic=rf, stage=stage,
                                         metric=key, mean=mean, std=std,
                                         cv=(std / abs(mean) if std is not None and mean else None), n=len(vals)))
                spectra = np.asarray([r["values"][stage]["eigenvalues"] for r in krecs])
                curves[stage][(k, rf)] = spectra.mean(0)
                if all("slq_nodes" in r["values"][stage] for r in krecs):
                    densities[stage][(k, rf)] = ([n for r in krecs for n in r["values"][stage]["slq_nodes"]],
                                                 [w for r in krecs for w in r["values"][stage]["slq_weights"]])
            lines.append("| " + " | ".join(cells) + " |")
        stem = f"{family}_{dataset}_{mode}"
        figure = out_dir / f"hessian_{stem}.png"
        _plot_spectra(curves, stages, f"{family}{{k}} on {dataset}, BN {mode}: top Hessian eigenvalues", figure)
        which = recs[0]["values"]["which"]
        md = (f"Top {len(next(iter(curves[stages[0]].values())))} eigenvalues (largest by "
              f"{'value' if which == 'LA' else 'magnitude'}) of the training-loss Hessian on "
              f"{recs[0]['values']['n_images']} fixed training images, {_BN_WORDS[mode]}, by Lanczos; the trace by "
              "Hutchinson. Mean ± std over seeds, and the seed-to-seed coefficient of variation (CV = std / |mean|)."
              "\n\n" + "\n".join(lines) + f"\n\n![{family} spectra]({figure.name})\n")
        if densities and all(densities[stage] for stage in stages):
            density_figure = out_dir / f"hessian_density_{stem}.png"
            _plot_densities(densities, stages, f"{family}{{k}} on {dataset}, BN {mode}: spectral density (SLQ)",
                            density_figure)
            md += (f"\nThe spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019, as PyHessian "
                   f"plots it), every seed's probe vectors pooled, smoothed by a Gaussian of 1% of the range:\n\n"
                   f"![{family} densities]({density_figure.name})\n")
        sections.append(ReportSection(title=f"Hessian: {family} on {dataset} (BN {mode})", markdown=md, order=20))
    _write_csv(out_dir / "hessian.csv", csv_rows)
    return sections


def _plot_densities(densities, stages, title: str, path: Path) -> None:
    """One panel per (stage, k): density against eigenvalue on a log axis, PyHessian's style."""
    from rf_bench.probes._numerics import slq_density

    plt = _pyplot()
    ks = sorted({key for stage in stages for key in densities[stage]})
    fig, axes = plt.subplots(len(stages), len(ks), figsize=(3.0 * len(ks), 2.6 * len(stages)), squeeze=False)
    for row, stage in enumerate(stages):
        for col, (k, rf) in enumerate(ks):
            ax = axes[row][col]
            nodes, weights = densities[stage][(k, rf)]
            grid, density = slq_density(nodes, weights)
            # outlying eigenvalues carry weights many decades below the bulk: show 12 decades, as PyHessian does
            floor = density.max() * 1e-12
            ax.semilogy(grid, np.maximum(density, floor), color="C0")
            ax.set_ylim(bottom=floor)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            ax.set_title(f"{'init' if stage == 'init' else 'trained'}: k={k}, RF {rf}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("density", fontsize=8)
            if row == len(stages) - 1:
                ax.set_xlabel("eigenvalue", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _plot_spectra(curves, stages, title: str, path: Path) -> None:
    plt = _pyplot()
    # constrained layout keeps the right panel's y label clear of the left panel
    fig, axes = plt.subplots(1, len(stages), figsize=(5.0 * len(stages), 3.8), squeeze=False, layout="constrained")
    for ax, stage in zip(axes[0], stages):
        items = sorted(curves[stage].items())
        for color, ((k, rf), ev) in zip(line_colors(len(items)), items):
            ax.plot(np.arange(1, len(ev) + 1), ev, color=color, label=f"k={k}, RF {rf}")
        positive = all((ev > 0).all() for _, ev in items)
        ax.set_yscale("log" if positive else "symlog")
        integer_ticks(ax.xaxis)
        ax.set_xlabel("eigenvalue rank")
        ax.set_ylabel("eigenvalue")
        ax.set_title({"init": "at initialisation", "final": "after training"}[stage], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _savefig(fig, path)
    plt.close(fig)
