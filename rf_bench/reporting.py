"""The pieces every probe's report is made of: sections, mean ± std, percent cells, CSVs, figures, grouping.

This module sits below the probes (each renders its own tables and figures with these helpers) and below
``report.py`` (which only assembles REPORT.md from the sections the probes return); it imports neither.
"""
from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from rf_bench.files import atomic_write

__all__ = ["ReportSection", "mean_std", "fmt_pct", "paper_cell", "write_csv", "savefig", "pyplot", "LINE_COLORS",
           "line_colors", "integer_ticks", "group_by", "by_family", "by_k", "record_rf", "model_rf", "markdown_table"]


@dataclass
class ReportSection:
    """A part of REPORT.md: markdown, plus files it refers to (written by the probe into ``out_dir``)."""

    title: str
    markdown: str
    order: int = 50


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


def paper_cell(entry: Optional[Tuple[float, Optional[float]]]) -> str:
    """A figure of the paper's (already in percent) as ``mean ± std``, or "-"."""
    if entry is None:
        return "-"
    mean, std = entry
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    """``rows`` as a CSV (columns from the first row), written atomically; nothing for no rows."""
    if not rows:
        return

    def write(f):
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write, newline="")


def savefig(fig, path: str | Path) -> None:
    """Save a matplotlib figure as a PNG, atomically (a reader never sees half a file)."""
    atomic_write(Path(path), lambda f: fig.savefig(f, dpi=120, bbox_inches="tight", format="png"), binary=True)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
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


def group_by(records: Iterable[Dict[str, Any]], key: Callable[[Dict[str, Any]], Any]) -> Dict[Any, List[Dict[str, Any]]]:
    """Records by ``key(record)``, keys in sorted order."""
    groups: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[key(rec)].append(rec)
    return dict(sorted(groups.items()))


def by_family(records: Iterable[Dict[str, Any]]) -> Dict[Tuple[str, str], List[Dict[str, Any]]]:
    """Records by (family, data set)."""
    return group_by(records, lambda r: (r["values"]["family"], r["dataset"]))


def by_k(records: Iterable[Dict[str, Any]]) -> Dict[int, List[Dict[str, Any]]]:
    """Records by the rfpool k of their runs."""
    return group_by(records, lambda r: r["values"]["k"])


@lru_cache(maxsize=None)
def _model_rf(model_name: str, kwargs_items: Tuple[Tuple[str, Any], ...]) -> int:
    import timm

    import rf_bench  # noqa: F401  (registers the rfpool models)
    from rf_bench.rf import receptive_field

    # the RF does not depend on the image size, but the trace needs one every model accepts
    return receptive_field(timm.create_model(model_name, **dict(kwargs_items)), (3, 256, 256)).size


def model_rf(model_name: str, model_kwargs: Dict[str, Any]) -> int:
    """Exact analytic RF of a timm model built with ``model_kwargs`` (cached; class count and channels left out,
    as the RF depends on neither)."""
    kwargs = tuple(sorted((k, v) for k, v in (model_kwargs or {}).items()
                          if k not in ("num_classes", "in_chans") and not isinstance(v, (dict, list))))
    return _model_rf(model_name, kwargs)


def record_rf(record: Dict[str, Any]) -> Optional[int]:
    """Exact analytic RF of a result's model, from the record alone (no run directory needed); None if the record
    does not say how its model was built (results stored before the harness recorded it)."""
    train = record.get("train")
    models = record.get("models") or []
    if not train or not models:
        return None
    return model_rf(models[0], train.get("model_kwargs") or {})
