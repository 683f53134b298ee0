"""``rf-bench report``: REPORT.md assembled from the sections each probe renders of its own results.

Every probe adds its part through one mechanism: an optional ``report(records, store, out_dir)`` on the probe
class returning `~rf_bench.reporting.ReportSection` objects (tables, CSVs and figures written beside them), called
once per group of runs trained alike; a probe without one gets a table of its scalar values. An optional
``report_across_variants(records, store, out_dir)`` gets all of a probe's records at once, for views that put
variants side by side (the prune probe's widths). This module only groups the records (runs trained differently and
results of different settings never share a section), calls the probes it is handed, and writes REPORT.md with the
claims table first. It imports no probe: the caller hands it the installed ones (``available_probes()``).
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from rf_bench.reporting import ReportSection, group_by, mean_std, write_csv
from rf_bench.files import atomic_write_text

__all__ = ["write_report", "scalar_sections", "claims_section"]


# ---------------------------------------------------------------------------------------- report

def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike, probes: Mapping[str, Any],
                 log=None, records: Optional[List[Dict[str, Any]]] = None) -> Path:
    """Collect the sections of every probe in ``probes`` (name -> probe class, e.g. ``available_probes()``) into
    ``out_dir/REPORT.md``, with tables, CSVs and PNGs beside it.

    ``records`` are the results to report (default: every usable one under ``results_dir``, read once; a study
    passes the records it already read). Result files that cannot be used are left out, named in ``log`` and
    counted at the top of the report.
    """
    from rf_bench.claims import collect_claims
    from rf_bench.results import ResultStore

    store = ResultStore(results_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = store.records() if records is None else records
    by_probe = group_by(records, lambda r: r["probe"])
    if not by_probe:
        raise store.nothing_usable()
    sections: List[ReportSection] = []
    for name, records_of_probe in by_probe.items():
        try:
            probe = probes.get(name)
            sections += _probe_sections(probe, name, records_of_probe, store, out)
            if hasattr(probe, "report_across_variants"):  # views that set trained variants side by side (widths)
                sections += probe.report_across_variants(records_of_probe, store, out)
        except Exception as e:  # one probe's failing report must not cost the others theirs
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            if log:
                log(f"report: the {name} probe's report failed ({why}); its section says so")
            sections.append(ReportSection(title=f"{name}: report failed", order=90, markdown=(
                f"The `{name}` probe's report raised `{why}`. Its {len(records_of_probe)} results are in "
                f"`{results_dir}`; the rest of this report is complete.\n")))
    sections.append(claims_section(results_dir, collect_claims(probes), records))
    sections.sort(key=lambda s: (s.order, s.title))
    body = [f"# rf-bench report\n\nFrom `{results_dir}`, {time.strftime('%Y-%m-%d %H:%M')}.\n"]
    if store.skipped:
        note = store.skipped_note()
        if log:
            log(note.rstrip("\n"))
        body.append(f"**{len(store.skipped)} result file(s) left out** (the tables count only what was read):\n\n"
                    + "".join(f"- `{p}`: {why}\n" for p, why in sorted(store.skipped.items())))
    body += [f"## {s.title}\n\n{s.markdown}" for s in sections]
    return atomic_write_text(out / "REPORT.md", "\n".join(body))


def _probe_sections(probe, name: str, records: List[Dict[str, Any]], store, out: Path) -> list:
    """A probe's sections. Runs trained differently (``width_mult``, recipe, ...) and results of different settings
    are never pooled: each gets its own sections, titled with what sets it apart, and its files in a sub-folder of
    ``out`` named after that (``_section_folder``). A probe without a ``report()`` (or not installed) gets its
    scalar values."""
    from rf_bench.results import settings_groups, stable_hash, variant_groups

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
            digest = stable_hash(dict(setting, variant=variant) if variant else setting)
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
    columns = list(dict.fromkeys(key for rec in records for key in _scalars(rec["values"])))
    rows = []
    for rec in sorted(records, key=lambda r: (",".join(r.get("models") or []), r["dataset"], r.get("seeds") or [])):
        scalars = _scalars(rec["values"])
        rows.append(dict(model=",".join(sorted(set(rec.get("models") or ["-"]))), dataset=rec["dataset"],
                         seeds=",".join(map(str, rec.get("seeds") or [])),
                         **{c: scalars.get(c, "") for c in columns}))
    write_csv(out_dir / f"{name}.csv", rows)
    if not columns:
        return [ReportSection(title=f"{name}", order=80, markdown=(
            f"{len(records)} results; the `{name}` probe stores no scalar values to tabulate.\n"))]
    head = ["model", "data", "seeds"] + columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], row["dataset"], row["seeds"]] + [_format_scalar(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    groups = group_by(rows, lambda r: (r["model"], r["dataset"]))
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


def claims_section(results_dir: str | os.PathLike, claims: Sequence[Any],
                   records: Optional[List[Dict[str, Any]]] = None) -> ReportSection:
    """The verdict on each of ``claims`` (``collect_claims(probes)``): the report's first section."""
    from rf_bench.claims import claims_markdown, evaluate_claims

    verdicts = evaluate_claims(results_dir, claims, records=records)
    return ReportSection(title="Does the paper hold?", markdown=claims_markdown(verdicts), order=0)
