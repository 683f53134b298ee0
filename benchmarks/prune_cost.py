"""What counting both bases costs: the prune probe with its defaults beside the defaults it had before the bases.

Before: rates 0.5-0.9 over all weights (``basis = ["all"]``). Now: rates 0.5-0.98 over all weights and over the live
ones. Both with both BatchNorm protocols, on the same runs (digits, 1/16 width, trained here for a few epochs):
VGG19 at k = 1 (no dead weights: the two bases share their masks and are evaluated once) and k = 3 (78% of its conv
weights dead at 32 px), one-shot by default (the part the bases change: the live basis adds no fine-tune) and, with
``--finetune-epochs N``, with the masked fine-tune too. Wall time per probe run, side by side in one process, after a
warm-up run (one-shot: each twice, in both orders, the faster kept).

    python benchmarks/prune_cost.py                        # results/prune_cost.{json,md}, one-shot
    python benchmarks/prune_cost.py --finetune-epochs 10   # with the probe's default fine-tune (slow)
    python benchmarks/prune_cost.py --quick                # 1 epoch of training: the script itself, writes nothing
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rf_bench  # noqa: E402,F401
from _common import write_result  # noqa: E402
from rf_bench.probes.base import ProbeContext  # noqa: E402
from rf_bench.probes.prune import PruneConfig, PruneProbe  # noqa: E402
from rf_bench.recipes import resolve_config  # noqa: E402
from rf_bench.runs import load_run  # noqa: E402
from rf_bench.train import train  # noqa: E402

BEFORE = dict(rates=(0.5, 0.6, 0.7, 0.8, 0.9), basis=("all",))  # the defaults before prune.basis


def seconds(run, config: PruneConfig, scratch: Path) -> float:
    start = time.perf_counter()
    PruneProbe().run(run, config, ProbeContext(results_dir=Path(tempfile.mkdtemp(dir=scratch)), progress=False))
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch of training; writes nothing")
    parser.add_argument("--finetune-epochs", type=int, default=0, help="masked fine-tune length (0: one-shot)")
    args = parser.parse_args(argv)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for k in (1, 3):
            cfg = resolve_config("fast", model=f"vgg19_rfpool{k}", dataset="digits", seed=0, epochs=1 if args.quick else 6,
                                 lr=0.05, batch_size=64, model_kwargs=dict(width_mult=0.0625))
            run = load_run(train(cfg, output=scratch / "runs", progress=False))
            for finetune in sorted({0, args.finetune_epochs}):
                before = PruneConfig(finetune_epochs=finetune, **BEFORE)
                now = PruneConfig(finetune_epochs=finetune)
                seconds(run, PruneConfig(rates=(0.5,), finetune_epochs=0, basis=("all",)), scratch)  # warm caches
                times = {"before": seconds(run, before, scratch), "now": seconds(run, now, scratch)}
                if not finetune:  # cheap: each again, in the other order, the faster of the two kept
                    times = {"now": min(times["now"], seconds(run, now, scratch)),
                             "before": min(times["before"], seconds(run, before, scratch))}
                rows.append(dict(model=cfg.model, finetune_epochs=finetune, before_s=round(times["before"], 2),
                                 now_s=round(times["now"], 2), ratio=round(times["now"] / times["before"], 3)))
                print(rows[-1])
    if args.quick:
        return 0
    lines = ["**Prune probe cost: the defaults with both bases against the defaults before them** (wall s per run)",
             "", "| model | fine-tune epochs | before (0.5-0.9, all) | now (0.5-0.98, all and live) | now / before |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['finetune_epochs']} | {r['before_s']:.1f} | {r['now_s']:.1f} | {r['ratio']:.2f} |"
              for r in rows]
    lines += ["", "Digits, 1/16 width, both BatchNorm protocols; a fine-tune runs on the paper's basis only, so it "
              "costs the same before and now."]
    print(f"wrote {write_result('prune_cost', dict(rows=rows), chr(10).join(lines))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
