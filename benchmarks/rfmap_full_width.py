"""Full-width rfpool maps (n = 50, 64x64, random init, the paper's method): time and maxima vs the paper.

    python benchmarks/rfmap_full_width.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, write_result  # noqa: E402

import rf_bench  # noqa: E402,F401
from rf_bench.paper import RFMAP_MAXIMA  # noqa: E402
from rf_bench.probes.rfmap import gradient_map  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for family in ("resnet50_rfpool", "vgg19_rfpool"):
        for k in (1, 2, 3, 4):
            torch.manual_seed(0)
            model = timm.create_model(f"{family}{k}")
            with Timer() as t:
                rfmap = gradient_map(model, (3, 64, 64), n=50, batch_size=25)
            rows.append(dict(model=f"{family}{k}", seconds=round(t.seconds, 1), mean_max=rfmap.mean_max,
                             std_max=rfmap.std_max, paper_max=RFMAP_MAXIMA[family][k]))
            print(rows[-1], flush=True)
    md = ["# Full-width RF maps, n = 50, 3x64x64, random init (seed 0), 2 CPU threads\n",
          "| model | seconds | max (mean ± std) | paper |", "|---|---|---|---|"]
    md += [f"| {r['model']} | {r['seconds']} | {r['mean_max']:.3g} ± {r['std_max']:.2g} | {r['paper_max']:.3g} |"
           for r in rows]
    write_result("rfmap_full_width", dict(rows=rows), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
