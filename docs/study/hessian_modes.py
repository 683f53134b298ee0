"""Writes hessian-modes.md: the Hessian probe's three BatchNorm modes side by side on the same runs.

    rf-bench sweep digits-hessian.toml --output OUT --max-parallel 2          # the digits study's runs, bn = recalibrate
    rf-bench probe OUT/runs --results OUT/results --suite hessian --set hessian.bn=batch  (and =stored; same settings)
    python docs/study/hessian_modes.py OUT/results > docs/study/hessian-modes.md

For each mode, family, stage and k: the top eigenvalue, top / last and trace as mean ± std over seeds with the
seed-to-seed coefficient of variation (std / |mean|); the claims verdict of each init metric; and the cost in HVPs.
"""
from __future__ import annotations

import statistics
import sys
from collections import defaultdict

from rf_bench.claims import evaluate_claims
from rf_bench.probes.hessian import BN_MODES, bn_mode
from rf_bench.results import ResultStore

METRICS = (("top", "top eigenvalue"), ("ratio_top_last", "top / last"), ("trace", "trace"))


def _cell(values):
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3g}"
    std = statistics.stdev(values)
    return f"{mean:.3g} ± {std:.2g} (CV {std / abs(mean):.2f})" if mean else f"{mean:.3g} ± {std:.2g}"


def main(results: str) -> None:
    records = ResultStore(results).records("hessian")
    verdicts = [v for v in evaluate_claims(results) if v.claim == "hessian_width"]
    groups = defaultdict(list)
    for rec in records:
        groups[(bn_mode(rec), rec["values"]["family"])].append(rec)
    print("# The Hessian probe's BatchNorm modes on the digits study's runs\n")
    for mode in BN_MODES:
        for family in sorted({f for m, f in groups if m == mode}):
            recs = groups[(mode, family)]
            stages = [s for s in ("init", "final") if all(s in r["values"] for r in recs)]
            for stage in stages:
                ks = sorted({r["values"]["k"] for r in recs})
                print(f"## BN {mode}: {family}, {stage}\n")
                print("| k | seeds | " + " | ".join(name for _, name in METRICS) +
                      " | HVPs per run (top-k + trace + density) | seconds per run |")
                print("|---|---|" + "---|" * (len(METRICS) + 2))
                for k in ks:
                    krecs = [r["values"][stage] for r in recs if r["values"]["k"] == k]
                    parts = [(v["hvps"], v["trace_hvps"], v.get("density_hvps", 0)) for v in krecs]
                    hvps = " + ".join(f"{statistics.fmean(p):.0f}" for p in zip(*parts))
                    cells = [_cell([v[key] for v in krecs]) for key, _ in METRICS]
                    seconds = statistics.fmean(v["seconds"] for v in krecs)
                    print(f"| {k} | {len(krecs)} | " + " | ".join(cells) + f" | {hvps} | {seconds:.0f} |")
                print()
            rows = [v for v in verdicts if v.family == family and v.metric.endswith(f"BN {mode})")]
            if rows:
                print(f"Claims ({family}, BN {mode}):\n")
                for v in rows:
                    print(f"- {v.metric}: **{v.verdict}** ({v.reason})")
                print()


if __name__ == "__main__":
    main(sys.argv[1])
