"""Measured figures for the README and the docs, rendered from committed results files.

Hand-written pages carry no measurement. Where one belongs they hold a marker, ``<!-- rendered: NAME -->``,
which the docs build (``docs/hooks.py``) replaces with a table rendered from a results file: a benchmark's
``benchmarks/results/*.md``, a study's ``REPORT.md`` (its claims table) or ``study.json`` (its wall time).
The README, which GitHub shows as written, keeps the rendered text between the marker and
``<!-- /rendered -->``; ``python docs/render.py README.md`` refreshes it and a test checks it is fresh.

Names: ``benchmark:<file>``, ``file:<repo path>``, ``verdicts``, ``claims:<study folder>``,
``study:<study folder>``, ``width:<study folder>``, ``headline:<study folder>``, ``finetune:<study folder>``,
``live:<study folder>``.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

FAMILY_LABELS = {"resnet50_rfpool": "ResNet50", "vgg19_rfpool": "VGG19"}
CLAIM_LABELS = {
    "dense_accuracy": "1. dense accuracy falls (Table 1)",
    "prune_robustness": "2. accuracy lost to pruning shrinks (Tables 1-2)",
    "critical_live_sparsity": "2b. critical live sparsity rises (not in the paper)",
    "hessian_width": "3. the Hessian at init gets wider (Figs 1-2)",
    "cka_divergence": "4. the deeper half's cross-seed CKA falls (Fig 3)",
    "rfmap_maxima": "5. RF-map maxima at init fall (Tables 3-4)",
    "saturation_falls": "6. the deeper half's saturation falls (the thesis, not in the paper)",
}
# The studies the README's verdict table reads: (label, folder under docs/).
VERDICT_STUDIES = (("digits", "study"), ("Fashion-MNIST", "study-fashion"))
VERDICTS = ("supported", "contradicted", "inconclusive", "not measured")


# ----------------------------------------------------------------------------------------------- sources
def claims_rows(study: str) -> List[Dict[str, str]]:
    """The claims table of ``docs/<study>/REPORT.md`` ("Does the paper hold?") as one dict per row."""
    text = (DOCS / study / "REPORT.md").read_text()
    section = text.split("## Does the paper hold?", 1)[1].split("\n## ", 1)[0].split("<details>", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        row = dict(zip(header, cells))
        row["verdict"] = row["verdict"].strip("*")
        rows.append(row)
    return rows


def report_date(study: str) -> str:
    """The date line REPORT.md opens with (``From `...`, DATE.``)."""
    match = re.search(r"^From `[^`]*`, ([^.\n]+)\.", (DOCS / study / "REPORT.md").read_text(), re.M)
    return match.group(1) if match else "date not recorded"


def study_facts(study: str) -> Dict[str, object]:
    """``docs/<study>/study.json``, written by ``rf-bench study`` (wall time, runs, machine); {} if absent."""
    path = DOCS / study / "study.json"
    return json.loads(path.read_text()) if path.exists() else {}


# --------------------------------------------------------------------------------------------- renderers
def _verdict_cell(rows: List[Dict[str, str]]) -> str:
    if not rows:
        return "not measured"
    if len(rows) == 1:
        verdict, rho = rows[0]["verdict"], rows[0]["rho"]
        shown = f"**{verdict}**" if verdict in ("supported", "contradicted") else verdict
        return f"{shown} (rho {rho})" if rho not in ("", "-") else shown
    counts = Counter(row["verdict"] for row in rows)
    return ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])


def _protocol(row: Dict[str, str]) -> str:
    """The BatchNorm protocol and basis a pruning row's metric names (rows from before the protocols: the stored
    one; from before the bases: all weights)."""
    bn = "recalibrate" if row["metric"].endswith("BN recalibrate") else "stored"
    live = "of live weights" in row["metric"] or "rate over live weights" in row["metric"]
    return f"{bn}, {'live' if live else 'all'}"


_PRUNE_ROWS = (("stored, all", "BN stored"), ("recalibrate, all", "BN recalibrated"),
               ("stored, live", "BN stored, rate over live weights"),
               ("recalibrate, live", "BN recalibrated, rate over live weights"))


def _verdict_rows() -> List[Tuple[str, str, Optional[str]]]:
    """(claim, label, BatchNorm protocol and basis, or None): the pruning claims get a row per protocol and basis,
    never pooled."""
    out: List[Tuple[str, str, Optional[str]]] = []
    for claim, label in CLAIM_LABELS.items():
        if claim in ("prune_robustness", "critical_live_sparsity"):
            out += [(claim, f"{label}, {words}", protocol) for protocol, words in _PRUNE_ROWS]
        else:
            out.append((claim, label, None))
    return out


def render_verdicts() -> str:
    """The README's "does the paper hold?" table: one row per claim, one column per (study, family)."""
    columns: List[Tuple[str, str, List[Dict[str, str]]]] = []
    for label, study in VERDICT_STUDIES:
        rows = claims_rows(study)
        for family in sorted({row["family"] for row in rows}):
            columns.append((f"{label}: {FAMILY_LABELS.get(family, family)}", family, rows))
    lines = ["| claim (paper) | " + " | ".join(c[0] for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for claim, label, protocol in _verdict_rows():
        cells = [_verdict_cell([r for r in rows if r["claim"] == claim and r["family"] == family
                                and (protocol is None or _protocol(r) == protocol)])
                 for _, family, rows in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sources = ", ".join(f"`docs/{study}/REPORT.md` ({report_date(study)})" for _, study in VERDICT_STUDIES)
    return "\n".join(lines) + f"\n\nFrom the claims tables of {sources}."


def render_claims(study: str) -> str:
    """One study's verdict counts per (family, variant): how many rows of each verdict."""
    rows = claims_rows(study)
    groups: Dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        groups[row["family"]][row["verdict"]] += 1
    lines = ["| family | " + " | ".join(VERDICTS) + " |", "|---" * (len(VERDICTS) + 1) + "|"]
    for family, counts in groups.items():
        lines.append(f"| {family} | " + " | ".join(str(counts[v]) for v in VERDICTS) + " |")
    total = Counter(row["verdict"] for row in rows)
    lines.append("| all | " + " | ".join(f"**{total[v]}**" for v in VERDICTS) + " |")
    return "\n".join(lines) + f"\n\nFrom the claims table of `docs/{study}/REPORT.md` ({report_date(study)})."


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:,.0f} s ({minutes:.1f} min)" if minutes < 120 else f"{seconds:,.0f} s ({minutes / 60:.2f} h)"


def _cpu_time(facts: dict) -> str:
    """CPU time and the cores it kept busy on average: fewer than its workers means the study shared the machine."""
    if "cpu_s" not in facts or not facts.get("wall_s"):
        return "not measured"
    return f"{_duration(facts['cpu_s'])}, {facts['cpu_s'] / facts['wall_s']:.2f} cores busy on average"


def _timed_runs(facts: dict) -> str:
    """Which runs the times cover: all of them, or those left when the first timed invocation began."""
    invocations, runs = facts.get("invocations", []), facts.get("runs")
    untimed = invocations[0].get("runs_done_before", 0) if invocations else 0
    return "" if not untimed or not runs else f", for {runs - untimed} of the {runs} runs ({untimed} ran untimed)"


def render_study(study: str) -> str:
    """A study's measured facts from its ``study.json``: wall time, runs, jobs, machine and date."""
    facts = study_facts(study)
    wall = _duration(facts["wall_s"]) + _timed_runs(facts) if "wall_s" in facts else "not measured"
    rows = [("runs", facts.get("runs", "not recorded")), ("worker processes", facts.get("jobs", "not recorded")),
            ("wall time, first run to report", wall),
            ("CPU time of its processes", _cpu_time(facts)),
            ("machine", facts.get("machine", "not recorded")), ("finished", facts.get("finished", "not recorded"))]
    return "| what | measured |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows)


def render_benchmark(name: str) -> str:
    """``benchmarks/results/<name>.md`` with its title turned into a bold line (the page has its own)."""
    text = (ROOT / "benchmarks" / "results" / f"{name}.md").read_text().strip()
    return re.sub(r"^#+ (.*)$", r"**\1**", text, flags=re.M)


def render_file(path: str) -> str:
    """A repository file shown whole, as a code block named after it."""
    language = {".toml": "toml", ".py": "python", ".json": "json"}.get(Path(path).suffix, "")
    return f"`{path}`:\n\n```{language}\n{(ROOT / path).read_text().strip()}\n```"


def render_width(study: str) -> str:
    """Accuracy kept after one-shot pruning at 0.9 (and dense), per family, width and k, from ``width.csv``."""
    path = DOCS / study / "width.csv"
    if not path.exists():
        return "not measured"
    with path.open() as f:
        rows = [row for row in csv.DictReader(f) if float(row["rate"]) in (0.0, 0.9)]
    ks = sorted({int(row["k"]) for row in rows})
    cells: Dict[Tuple[str, float, str], Dict[int, Tuple[float, float]]] = defaultdict(dict)
    for row in rows:
        bn = row.get("bn") or "stored"  # width.csv from before the BatchNorm protocols: the stored statistics
        if row["metric"] == "dense" and bn != "stored":
            continue  # dense accuracy does not depend on the protocol: one row
        label = "dense" if row["metric"] == "dense" else f"pruned 0.9, one-shot, BN {bn}"
        cells[(row["family"], float(row["width_mult"]), label)][int(row["k"])] = (
            100 * float(row["mean"]), 100 * float(row["std"] or 0))
    lines = ["| family | width | accuracy (%) | " + " | ".join(f"k={k}" for k in ks) + " | k=3-4 minus k=1 |",
             "|---" * (len(ks) + 4) + "|"]
    for (family, width, label), per_k in sorted(cells.items()):
        # from the unrounded means, as in the table of gains below
        gain = (f"{(per_k[3][0] + per_k[4][0]) / 2 - per_k[1][0]:+.1f} points"
                if all(k in per_k for k in (1, 3, 4)) else "-")
        lines.append(f"| {FAMILY_LABELS.get(family, family)} | {width:g} | {label} | "
                     + " | ".join(f"{per_k[k][0]:.1f} ± {per_k[k][1]:.1f}" if k in per_k else "-" for k in ks)
                     + f" | {gain} |")
    return ("\n".join(lines) + "\n\n" + _width_gains(path)
            + f"\n\nMean ± std over seeds, from `docs/{study}/width.csv` ({report_date(study)}).")


def _width_gains(path: Path) -> str:
    """Points of accuracy that k = 3-4 keep above k = 1 (their mean minus k = 1's), per family, width and rate."""
    means: Dict[Tuple[str, float, str, float], Dict[int, float]] = defaultdict(dict)
    with path.open() as f:
        for row in csv.DictReader(f):
            key = (row["family"], float(row["width_mult"]), row.get("bn") or "stored", float(row["rate"]))
            means[key][int(row["k"])] = float(row["mean"])
    rates = sorted({rate for *_, rate in means})
    head = ["family", "width", "BN"] + ["dense" if r == 0 else f"pruned {r:g}" for r in rates]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for family, width, bn in sorted({(f, w, b) for f, w, b, _ in means}):
        cells = []
        for rate in rates:
            by_k = means.get((family, width, bn, rate), {})
            ok = all(k in by_k for k in (1, 3, 4))
            cells.append(f"{100 * ((by_k[3] + by_k[4]) / 2 - by_k[1]):+.1f}" if ok else "-")
        lines.append(f"| {FAMILY_LABELS.get(family, family)} | {width:g} | {bn} | " + " | ".join(cells) + " |")
    return ("Points of test accuracy that k = 3-4 keep above k = 1, one-shot, per width, BatchNorm protocol and "
            "rate:\n\n" + "\n".join(lines))


def render_headline(study: str) -> str:
    """The headline, at the highest rate up to 0.9, per family and BatchNorm protocol: one-shot and fine-tuned
    accuracy per k, and how many points k = 3-4 keep above k = 1, from ``prune.csv``."""
    path = DOCS / study / "prune.csv"
    if not path.exists():
        return "not measured"
    with path.open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("basis", "all") in ("all", "")]  # the paper's basis
    rate = max(float(r["rate"]) for r in rows if 0 < float(r["rate"]) <= 0.9)
    cells: Dict[Tuple[str, str, str], Dict[int, Tuple[float, float]]] = defaultdict(dict)
    for row in rows:
        if float(row["rate"]) == rate or row["metric"] == "dense":
            stage = {"dense": "dense", "pruned": "one-shot", "finetuned": "fine-tuned"}[row["metric"]]
            cells[(row["family"], row.get("bn") or "stored", stage)][int(row["k"])] = (
                100 * float(row["mean"]), 100 * float(row["std"] or 0))
    ks = sorted({k for per_k in cells.values() for k in per_k})
    lines = ["| family | BN | accuracy (%) | " + " | ".join(f"k={k}" for k in ks) + " | k=3-4 minus k=1 |",
             "|---" * (len(ks) + 4) + "|"]
    order = {"dense": 0, "one-shot": 1, "fine-tuned": 2}
    rows_in_order = sorted(cells.items(), key=lambda item: (item[0][0], item[0][2] != "dense", item[0][1] != "stored",
                                                            order[item[0][2]]))
    for (family, bn, stage), per_k in rows_in_order:
        if stage == "dense" and bn != "stored":
            continue
        gain = (f"{(per_k[3][0] + per_k[4][0]) / 2 - per_k[1][0]:+.1f} points"
                if all(k in per_k for k in (1, 3, 4)) else "-")
        label = "dense" if stage == "dense" else f"{stage} {rate:g}"
        lines.append(f"| {FAMILY_LABELS.get(family, family)} | {'-' if stage == 'dense' else bn} | {label} | "
                     + " | ".join(f"{per_k[k][0]:.1f} ± {per_k[k][1]:.1f}" if k in per_k else "-" for k in ks)
                     + f" | {gain} |")
    return ("\n".join(lines) + f"\n\nMean ± std over seeds, from `docs/{study}/prune.csv` ({report_date(study)}).")


def _prune_tables(study: str) -> List[Tuple[str, Path]]:
    """A study's pruning CSVs with the width each holds: ``prune.csv``, or one ``prune-width_mult=W/prune.csv`` per
    width."""
    found = [("-", path) for path in [DOCS / study / "prune.csv"] if path.exists()]
    found += [(path.parent.name.partition("=")[2], path) for path in sorted((DOCS / study).glob("prune-*/prune.csv"))]
    return sorted(found, key=lambda item: float(item[0]) if item[0] != "-" else 0.0)


def render_finetune(study: str) -> str:
    """At each fine-tuned rate: the recalibrated one-shot accuracy beside the fine-tuned accuracy under both
    BatchNorm protocols, per family, width and k, from the pruning CSVs: how much of what the fine-tune recovers
    re-estimated statistics alone recover."""
    means: Dict[Tuple[str, str, float, int], Dict[str, float]] = defaultdict(dict)
    for width, path in _prune_tables(study):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("basis", "all") not in ("all", ""):  # the fine-tune runs on the paper's basis
                    continue
                means[(row["family"], width, float(row["rate"]), int(row["k"]))][
                    f"{row['metric']} {row.get('bn') or 'stored'}"] = 100 * float(row["mean"])
    columns = ("pruned recalibrate", "finetuned stored", "finetuned recalibrate")
    rows = [(key, cells) for key, cells in sorted(means.items()) if all(c in cells for c in columns)]
    if not rows:
        return "not measured"
    lines = ["| family | width | rate | k | one-shot, BN recalibrate | fine-tuned, BN stored | "
             "fine-tuned, BN recalibrate |", "|---" * 7 + "|"]
    for (family, width, rate, k), cells in rows:
        lines.append(f"| {FAMILY_LABELS.get(family, family)} | {width} | {rate:g} | {k} | "
                     + " | ".join(f"{cells[c]:.1f}" for c in columns) + " |")
    gap = {c: max(abs(cells[c] - cells["pruned recalibrate"]) for _, cells in rows) for c in columns[1:]}
    return ("\n".join(lines) + "\n\nLargest difference from the recalibrated one-shot accuracy: "
            f"{gap['finetuned stored']:.1f} points fine-tuned with the statistics the fine-tune left, "
            f"{gap['finetuned recalibrate']:.1f} points fine-tuned and recalibrated. Test accuracy (%), mean over "
            f"seeds, from the pruning CSVs of `docs/{study}/` ({report_date(study)}).")


def render_live(study: str) -> str:
    """Rate 0.9 over all weights and over live ones: one-shot accuracy per k and protocol, how many points k = 3-4
    keep above k = 1, and the critical live sparsity, from ``prune.csv`` and ``prune_live.csv``."""
    path, live_path = DOCS / study / "prune.csv", DOCS / study / "prune_live.csv"
    if not path.exists() or not live_path.exists():
        return "not measured"
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "pruned" and float(r["rate"]) == 0.9]
    with live_path.open() as f:
        critical = {(r["family"], r["basis"], r["bn"], int(r["k"])): r for r in csv.DictReader(f)}
    cells: Dict[Tuple[str, str, str], Dict[int, Tuple[float, float]]] = defaultdict(dict)
    for row in rows:
        cells[(row["family"], row.get("basis") or "all", row["bn"])][int(row["k"])] = (
            100 * float(row["mean"]), 100 * float(row["std"] or 0))
    ks = sorted({k for per_k in cells.values() for k in per_k})
    lines = ["| family | rate over | BN | " + " | ".join(f"k={k}" for k in ks) + " | k=3-4 minus k=1 | "
             + " | ".join(f"critical, k={k}" for k in ks) + " |", "|---" * (2 * len(ks) + 4) + "|"]
    for (family, basis, bn), per_k in sorted(cells.items()):
        gain = (f"{(per_k[3][0] + per_k[4][0]) / 2 - per_k[1][0]:+.1f} points"
                if all(k in per_k for k in (1, 3, 4)) else "-")
        lines.append(f"| {FAMILY_LABELS.get(family, family)} | {basis} weights | {bn} | "
                     + " | ".join(f"{per_k[k][0]:.1f} ± {per_k[k][1]:.1f}" if k in per_k else "-" for k in ks)
                     + f" | {gain} | " + " | ".join(_critical_cell(critical.get((family, basis, bn, k))) for k in ks)
                     + " |")
    dead = {(r["family"], int(r["k"])): r for r in critical.values()}
    share = "; ".join(f"{FAMILY_LABELS.get(f, f)} k={k}: {100 * float(r['dead_share']):.1f}% of the weights dead, "
                      f"{100 * float(r['dead_of_pruned'] or 0):.1f}% of those pruned at 0.9 (all) dead"
                      for (f, k), r in sorted(dead.items()) if float(r["dead_share"]) > 0)
    return ("\n".join(lines) + f"\n\nOne-shot test accuracy (%) at rate 0.9, mean ± std over seeds; critical live "
            "sparsity (%) where accuracy has fallen halfway from dense to chance (\"n never fell\": seeds still above "
            f"halfway at every rate, left out of the mean). {share}. From `docs/{study}/prune.csv` and `prune_live.csv` "
            f"({report_date(study)}).")


def _critical_cell(row: Optional[Dict[str, str]]) -> str:
    if row is None or not row["critical_mean"]:
        return "-" if row is None else f"{row['never_fell']}/{row['never_fell']} never fell"
    cell = f"{100 * float(row['critical_mean']):.1f}"
    cell += f" ± {100 * float(row['critical_std']):.1f}" if row["critical_std"] else ""
    return cell + (f" ({row['never_fell']} never fell)" if int(row["never_fell"]) else "")


RENDERERS: Dict[str, Callable[..., str]] = {
    "verdicts": render_verdicts, "claims": render_claims, "study": render_study, "benchmark": render_benchmark,
    "file": render_file, "width": render_width, "headline": render_headline, "finetune": render_finetune,
    "live": render_live,
}


# A marker names a known kind (a page may mention ``<!-- rendered: NAME -->`` itself without being filled).
MARKER = re.compile(r"<!-- rendered: (?P<name>(?:" + "|".join(RENDERERS) + r")(?::[\w./-]+)?) -->"
                    r"(?:\n(?P<body>.*?)\n<!-- /rendered -->)?", re.S)


def render(name: str) -> str:
    """The text for the marker ``<!-- rendered: NAME -->``."""
    kind, _, argument = name.partition(":")
    if kind not in RENDERERS:
        raise ValueError(f"unknown rendered part {name!r}; known: {', '.join(sorted(RENDERERS))}")
    return RENDERERS[kind](argument) if argument else RENDERERS[kind]()


# ------------------------------------------------------------------------------------------------- pages
def fill(markdown: str, keep_markers: bool = False) -> str:
    """Every marker replaced by its rendering; ``keep_markers`` keeps them around it (the README's form)."""
    def replace(match: re.Match) -> str:
        body = render(match.group("name"))
        return f"<!-- rendered: {match.group('name')} -->\n{body}\n<!-- /rendered -->" if keep_markers else body

    return MARKER.sub(replace, markdown)


def strip_rendered(markdown: str) -> str:
    """The hand-written part of a page: the text with every rendered part removed."""
    return MARKER.sub("", markdown)


def main(argv: List[str]) -> int:
    """``python docs/render.py FILE...`` refreshes the rendered parts of each file in place."""
    for name in argv or ["README.md"]:
        path = ROOT / name
        path.write_text(fill(path.read_text(), keep_markers=True))
        print(f"rendered {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
