"""Verdicts on the paper's claims from stored probe results.

A `Claim` is data: the paper's statement, the direction it predicts as ``k`` (and the RF) grows,
the probe whose results hold the evidence, and a ``measure`` that turns one stored result into values
(one per seed, or per seed pair). Probes declare their claims in a ``claims`` attribute, so a
third-party probe adds rows to ``rf-bench claims`` without touching this module.

For every claim, metric, family and data set the evidence is tested the same way: Spearman's rank
correlation of the metric with ``k`` over all (k, seed) points, a two-sided permutation p-value
(exact over every arrangement up to 8 points, Monte Carlo beyond), and the k_max - k_min difference of
means with a Welch 95% interval. The verdict is **supported** (the paper's direction, p < 0.05),
**contradicted** (the opposite direction, p < 0.05), **inconclusive** (with the reason) or **not
measured** (the results lack the metric).
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from rf_bench.reporting import mean_std
from rf_bench.runs import CONFIG

__all__ = ["Claim", "Verdict", "NotMeasured", "untrained", "never_run", "ALPHA", "collect_claims", "evaluate_claims", "evaluate_metric", "spearman_rho",
           "permutation_p_value", "welch_interval", "claims_markdown", "chance_level", "family_label"]

ALPHA = 0.05
DIRECTIONS = ("falls", "rises")
EXACT_MAX_POINTS = 8  # 8! = 40,320 arrangements: enumerated; beyond, Monte Carlo
MONTE_CARLO_RESAMPLES = 20_000

Measure = Callable[[Dict[str, Any]], Dict[str, Sequence[float]]]
Caveat = Callable[[str, List[Dict[str, Any]]], Optional[str]]


class NotMeasured(str):
    """A caveat that means the results cannot speak to the claim at all (nets that never trained): the verdict is
    "not measured", not "inconclusive"."""


def untrained(records: List[Dict[str, Any]]) -> Optional[str]:
    """Why these records cannot test a claim because their runs never trained, or None: the trainer flagged every
    run as not learning (``warnings.jsonl``)."""
    flagged = [r for r in records if r.get("not_learning")]
    if records and len(flagged) == len(records):
        return (f"the runs never trained (the trainer flagged all {len(records)} as not learning: accuracy near "
                "chance); train them with a recipe that learns")
    return None


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, tested on one probe's stored results.

    ``measure(record)`` maps metric names to the record's values (an empty list where the record
    lacks that metric: it is then reported as not measured, with ``missing`` as the reason).
    ``caveat(metric, records)`` may return why the metric cannot decide the claim in these records
    (e.g. every accuracy at chance), which makes the verdict inconclusive.

    Results of one probe under different settings are never pooled, except in the settings named in
    ``read_together``: those that do not change this claim's metrics (chunk sizes, stages it does not read)
    or that its metric names already spell out (``hessian.bn``, ``prune.rates``). Any other difference
    gives each setting its own rows, and a run counts once per metric: its newest result that has it.
    """

    id: str
    statement: str
    direction: str  # the paper's, as k grows: "falls" or "rises"
    probe: str
    measure: Measure
    caveat: Optional[Caveat] = None
    missing: str = "the results lack this metric"
    order: int = 50  # rows sort by it: the paper's claims are 1-5
    read_together: Tuple[str, ...] = ()  # probe settings whose results are read as one (see above)
    unit: str = ""  # "%": the metric's values are fractions, shown in percent (accuracies)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"claim {self.id!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")


@dataclass
class Verdict:
    """The evidence on one (claim, metric, family, data set) and what it says."""

    claim: str
    statement: str
    family: str
    dataset: str
    metric: str
    direction: str
    verdict: str
    reason: str
    setting: str = ""  # the probe settings that set these results apart from others of the claim ("" if none do)
    variant: str = ""  # how these runs were trained apart from the others of the family (e.g. "width_mult=0.25")
    unit: str = ""  # the claim's unit ("%": fractions shown in percent)
    means: Dict[int, float] = field(default_factory=dict)
    stds: Dict[int, Optional[float]] = field(default_factory=dict)
    counts: Dict[int, int] = field(default_factory=dict)
    n: int = 0
    rho: Optional[float] = None
    p_value: Optional[float] = None
    p_method: Optional[str] = None
    effect: Optional[float] = None
    effect_ci: Optional[Tuple[float, float]] = None

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready (k keys as strings, NaN as None)."""
        return dict(claim=self.claim, statement=self.statement, family=self.family, dataset=self.dataset,
                    variant=self.variant, metric=self.metric, setting=self.setting, direction=self.direction,
                    unit=self.unit,
                    means={str(k): v for k, v in self.means.items()},
                    stds={str(k): v for k, v in self.stds.items()}, counts={str(k): v for k, v in self.counts.items()},
                    n=self.n, rho=_finite(self.rho), p_value=_finite(self.p_value), p_method=self.p_method,
                    effect=_finite(self.effect), effect_ci=list(self.effect_ci) if self.effect_ci else None,
                    verdict=self.verdict, reason=self.reason)


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or math.isnan(value) else value


# ----------------------------------------------------------------------------------- statistics

def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def _rho_of_ranks(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``rx`` with each row of ``ry`` (ranks, so Spearman's rho)."""
    cx = rx - rx.mean()
    cy = ry - ry.mean(axis=-1, keepdims=True)
    denom = np.sqrt((cx ** 2).sum() * (cy ** 2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (cy * cx).sum(axis=-1) / denom


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    return float(_rho_of_ranks(_ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))))


@functools.lru_cache(maxsize=None)
def _all_permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8)


def permutation_p_value(x: Sequence[float], y: Sequence[float], resamples: int = MONTE_CARLO_RESAMPLES,
                        seed: int = 0) -> Tuple[float, str]:
    """Two-sided p-value of Spearman's rho under random pairing of ``x`` with ``y``.

    Exact (every one of the n! pairings) up to :data:`EXACT_MAX_POINTS` points; beyond, ``resamples``
    random pairings with the (1 + hits) / (1 + resamples) estimate, which never reports p = 0.
    """
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    observed = abs(float(_rho_of_ranks(rx, ry)))
    if math.isnan(observed):
        return math.nan, "none"
    n = len(rx)
    if n <= EXACT_MAX_POINTS:
        perms = _all_permutations(n)
        rhos = np.abs(_rho_of_ranks(rx, ry[perms]))
        return float((rhos >= observed - 1e-12).mean()), "exact"
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(np.arange(n), (resamples, 1)), axis=1)
    hits = int((np.abs(_rho_of_ranks(rx, ry[perms])) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + resamples), f"{resamples:,} permutations"


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Optional[Tuple[float, float]]:
    """Welch's interval for mean(b) - mean(a); None with fewer than two values on a side."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = b.mean() - a.mean()
    se = math.sqrt(va + vb)
    if se == 0:
        return (float(diff), float(diff))
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return (float(diff - half), float(diff + half))


# ------------------------------------------------------------------------------------- verdicts

def evaluate_metric(claim: Claim, metric: str, family: str, dataset: str, records: List[Dict[str, Any]]) -> Verdict:
    """The verdict on one metric of ``claim`` from the records of one (family, data set)."""
    from rf_bench.results import record_k

    points = [(record_k(rec), float(v)) for rec in records if record_k(rec) is not None
              for v in (claim.measure(rec).get(metric) or [])]
    points = [(k, v) for k, v in points if math.isfinite(v)]
    verdict = Verdict(claim=claim.id, statement=claim.statement, family=family, dataset=dataset, metric=metric,
                      direction=claim.direction, verdict="not measured", reason=claim.missing, unit=claim.unit)
    if not points:
        return verdict
    by_k: Dict[int, List[float]] = {}
    for k, v in sorted(points):
        by_k.setdefault(k, []).append(v)
    for k, vals in by_k.items():
        verdict.means[k], verdict.stds[k] = mean_std(vals)
        verdict.counts[k] = len(vals)
    verdict.n = len(points)
    ks, values = [p[0] for p in points], [p[1] for p in points]
    verdict.rho = spearman_rho(ks, values)
    lo, hi = min(by_k), max(by_k)
    verdict.effect = verdict.means[hi] - verdict.means[lo]
    verdict.effect_ci = welch_interval(by_k[lo], by_k[hi])
    never_trained = untrained(records)
    if never_trained:
        verdict.reason = never_trained
        return verdict  # "not measured"
    verdict.verdict = "inconclusive"
    if len(by_k) < 2:
        verdict.reason = f"only k = {lo} measured"
        return verdict
    caveat = claim.caveat(metric, records) if claim.caveat else None
    if isinstance(caveat, NotMeasured):
        verdict.verdict, verdict.reason = "not measured", str(caveat)
        return verdict
    if math.isnan(verdict.rho):
        verdict.reason = caveat or "the metric is constant over every k"
        return verdict
    verdict.p_value, verdict.p_method = permutation_p_value(ks, values)
    stats_text = f"rho = {verdict.rho:+.2f}, p = {verdict.p_value:.2g} ({verdict.p_method}, {verdict.n} points)"
    if caveat:
        verdict.reason = f"{caveat}; {stats_text}"
    elif verdict.p_value < ALPHA:
        agrees = (verdict.rho < 0) == (claim.direction == "falls")
        verdict.verdict = "supported" if agrees else "contradicted"
        verdict.reason = stats_text
    else:
        fewest = min(verdict.counts.values())
        seeds = f"; {fewest} point{'s' if fewest > 1 else ''} per k at the fewest" if fewest < 3 else ""
        verdict.reason = f"p = {verdict.p_value:.2g} >= {ALPHA} ({verdict.p_method}, {verdict.n} points){seeds}"
    return verdict


def collect_claims(probes: Dict[str, Any]) -> List[Claim]:
    """Every claim declared by ``probes`` (name -> probe class, e.g. ``available_probes()``; their ``claims``
    attribute), in the claims' ``order``."""
    claims: List[Claim] = []
    for probe in probes.values():
        claims += list(getattr(probe, "claims", ()) or ())
    return sorted(claims, key=lambda c: c.order)


def _families(records: Iterable[Dict[str, Any]]) -> List[Tuple[str, str]]:
    from rf_bench.results import record_family, record_k

    found = set()
    for rec in records:
        if record_family(rec) and record_k(rec) is not None and rec.get("dataset"):  # rfpool runs: k is known
            found.add((record_family(rec), rec["dataset"]))
    return sorted(found)


def evaluate_claims(results_dir: str | Path, claims: Sequence[Claim], log: Optional[Callable[[str], None]] = None,
                    records: Optional[List[Dict[str, Any]]] = None) -> List[Verdict]:
    """A verdict for every claim (``collect_claims(probes)``) and metric, in every (family, data set, variant) that
    has any result at all.

    Runs trained differently (another ``width_mult``, recipe, ...) are never pooled: each variant gets its own
    rows, named in ``Verdict.variant``. ``records`` are the results to judge (default: every usable one under
    ``results_dir``); result files that cannot be used are left out (``n`` counts only the points read) and named
    in ``log``.
    """
    from rf_bench.results import ResultStore, record_family, variant_groups

    if claims is None:
        raise TypeError("evaluate_claims needs the claims: collect_claims(available_probes()) gives the installed ones")
    if records is None:
        store = ResultStore(results_dir)
        records = store.records()
        if store.skipped and log:
            log(store.skipped_note().rstrip("\n"))
    claims = list(claims)
    verdicts: List[Verdict] = []
    for (family, dataset) in _families(records):
        rfpool = [r for r in records if r["dataset"] == dataset and record_family(r) == family]
        beside = [r for r in records if r["dataset"] == dataset and record_family(r)]  # labels say the width
        for variant, members in variant_groups(rfpool, context=beside):
            for claim in claims:
                verdicts += _claim_verdicts(claim, family, dataset, variant, members)
    order = {claim.id: i for i, claim in enumerate(claims)}
    return sorted(verdicts, key=lambda v: order.get(v.claim, len(order)))  # stable: families, variants within


def _claim_verdicts(claim: Claim, family: str, dataset: str, variant: str,
                    records: List[Dict[str, Any]]) -> List[Verdict]:
    """Every metric of ``claim`` on the records of one (family, data set, variant)."""
    from rf_bench.results import record_k, settings_groups

    mine = sorted((r for r in records if r["probe"] == claim.probe), key=lambda r: record_k(r) or 0)

    def not_measured(reason: str) -> List[Verdict]:
        return [Verdict(claim=claim.id, statement=claim.statement, family=family, dataset=dataset, variant=variant,
                        metric="-", direction=claim.direction, verdict="not measured", reason=reason, unit=claim.unit)]

    if not mine:
        return not_measured(f"no {claim.probe} results")
    verdicts = []
    try:  # a third-party metric (or caveat) that raises costs this claim one row, never the others or the report
        for setting, _, group in settings_groups(mine, claim.read_together):
            for metric in dict.fromkeys(m for r in group for m in claim.measure(r)):
                verdict = evaluate_metric(claim, metric, family, dataset, _newest_per_run(claim, metric, group))
                verdict.setting, verdict.variant = setting, variant
                verdicts.append(verdict)
    except Exception as e:
        why = f"{type(e).__name__}: {e}".splitlines()[0]
        return not_measured(f"its metric raised {why}")
    return verdicts


def _newest_per_run(claim: Claim, metric: str, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One record per run (or seed group) for ``metric``: the newest that has it, so no run counts twice."""
    newest: Dict[str, Dict[str, Any]] = {}
    for record in records:
        if not claim.measure(record).get(metric):
            continue
        run = record.get("key") or Path(record.get("_path", "")).parent.name or str(id(record))
        if run not in newest or record.get("created", "") >= newest[run].get("created", ""):
            newest[run] = record
    kept = {id(record) for record in newest.values()}
    return [record for record in records if id(record) in kept]


# -------------------------------------------------------------------------------------- helpers

def chance_level(record: Dict[str, Any]) -> Optional[float]:
    """1 / number of classes of a result's runs (from the first run's config.json), if it can be read."""
    if "num_classes" in record.get("values", {}):
        return 1.0 / record["values"]["num_classes"]
    try:
        meta = json.loads((Path(record["run_dirs"][0]) / CONFIG).read_text())
        return 1.0 / len(meta["data"]["classes"])
    except (OSError, KeyError, IndexError, ValueError, ZeroDivisionError):
        return None


def at_chance(accuracies_by_k: Dict[int, List[float]], chance: Optional[float]) -> bool:
    """True when every k's mean accuracy is within half of chance above it (10 classes: below 15%)."""
    if chance is None or not accuracies_by_k:
        return False
    return all(statistics.fmean(v) < 1.5 * chance for v in accuracies_by_k.values() if v)


def _format_value(value: float, unit: str = "") -> str:
    if unit == "%":  # accuracies: percent with two decimals, as in every other table
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"


def _cell(verdict: Verdict, k: int) -> str:
    mean, std = verdict.means[k], verdict.stds.get(k)
    return _format_value(mean, verdict.unit) + (f" ± {_format_value(std, verdict.unit)}" if std is not None else "")


def family_label(verdict: Verdict) -> str:
    """The family, with the variant that sets its runs apart where there are several (``vgg19_rfpool [width_mult=0.25]``)."""
    return verdict.family + (f" [{verdict.variant}]" if verdict.variant else "")


def never_run(verdict: Verdict) -> bool:
    """A row for a setting these results never ran (a fine-tune at a rate that was not fine-tuned): no point at all,
    and the claim's own reason for a missing metric. Tables leave such rows out and count them."""
    return verdict.verdict == "not measured" and verdict.n == 0 and verdict.metric != "-" \
        and not verdict.reason.startswith(("its metric raised", "the runs never trained"))


def _effect_cell(v: Verdict) -> str:
    effect = "-" if v.effect is None else _format_value(v.effect, v.unit)
    if v.effect_ci:
        effect += f" [{_format_value(v.effect_ci[0], v.unit)}, {_format_value(v.effect_ci[1], v.unit)}]"
    return effect


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]


def _why(verdict: Verdict) -> str:
    """The reason in a table cell beside the rho and p columns: what they do not already say."""
    if verdict.p_value is None or math.isnan(verdict.p_value):
        return verdict.reason
    points = f"{verdict.n} points"
    if verdict.verdict == "supported":
        return f"{verdict.direction} with k, as the paper says ({points})"
    if verdict.verdict == "contradicted":
        return f"the paper: {verdict.direction} with k ({points})"
    caveat = verdict.reason.split("; rho = ", 1)[0] if "; rho = " in verdict.reason else ""
    if caveat:
        return f"{caveat} ({points})"
    fewest = verdict.reason.partition("; ")[2]
    return f"p >= {ALPHA} ({points}{'; ' + fewest if fewest else ''})"


def claims_markdown(verdicts: Sequence[Verdict]) -> str:
    """The claims table for REPORT.md: what a reader came for first (claim, group, verdict, why, rho, p, the effect),
    then the values per k in a second table that opens on a click; rows for settings never run are counted."""
    shown = [v for v in verdicts if not never_run(v)]
    left_out = len(verdicts) - len(shown)
    ks = sorted({k for v in shown for k in v.means})

    def label(v: Verdict) -> List[str]:
        return [v.claim, family_label(v), v.dataset, v.metric + (f" [{v.setting}]" if v.setting else "")]

    main = _table(["claim", "family", "data", "metric", "verdict", "why", "rho", "p", "k_max - k_min [95% CI]"],
                  (label(v) + [f"**{v.verdict}**", _why(v),
                               f"{v.rho:+.2f}" if v.rho is not None and not math.isnan(v.rho) else "-",
                               f"{v.p_value:.2g}" if v.p_value is not None and not math.isnan(v.p_value) else "-",
                               _effect_cell(v)] for v in shown))
    per_k = _table(["claim", "family", "data", "metric", "paper"] + [f"k={k}" for k in ks],
                   (label(v) + [v.direction] + [_cell(v, k) if k in v.means else "-" for k in ks] for v in shown))
    counts = {name: sum(v.verdict == name for v in shown)
              for name in ("supported", "contradicted", "inconclusive", "not measured")}
    summary = ", ".join(f"{n} {name}" for name, n in counts.items())
    never = (f" {left_out} row(s) for settings these results never ran (e.g. a fine-tune at a rate that was not "
             "fine-tuned) are left out." if left_out else "")
    return ("Each row tests one claim of the paper on one metric: rho is Spearman's rank correlation with k over all "
            f"points; p is two-sided, by permutation (all of them up to {EXACT_MAX_POINTS} points, else "
            f"{MONTE_CARLO_RESAMPLES:,} random ones); a verdict needs p < {ALPHA}. Rows: {summary}.{never}\n\n"
            + "\n".join(main) + "\n\n<details><summary>Values per k (mean ± std over seeds; seed pairs for CKA)"
            "</summary>\n\n" + "\n".join(per_k) + "\n\n</details>\n")
