"""Every CPU benchmark in one command (`make bench`): each script in its own process, one after the other.

Each script rewrites its ``benchmarks/results/<name>.{json,md}`` with this machine's description. The GPU
benchmarks are skipped with one line when no CUDA device is present. The comparisons that need other
libraries (PyHessian, hessian-eigenthings, torch-cka, ckatorch) are slow and install extra packages: they run
only with ``--with-comparisons``; the two full-width Hessian measurements (a converged top 90 of a 23.5M-parameter
ResNet50, and its memory) take about 35 minutes and 15 GB together: they run only with ``--with-long``. Either
kind is listed as left out otherwise.

    python benchmarks/run_all.py [--with-comparisons] [--with-long] [--only NAME ...] [--dry-run]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    script: str
    args: Tuple[str, ...] = ()
    timeout_s: int = 600
    gpu: bool = False
    comparison: Tuple[str, ...] = ()  # modules of other libraries it compares against (needs --with-comparisons)
    long: bool = False  # a full-width measurement of many minutes and ~15 GB (needs --with-long)


# every script in benchmarks/ but this one and _common.py, in the order they run (tests check the list is whole)
BENCHMARKS: Sequence[Benchmark] = (
    Benchmark("install_size.py", timeout_s=60),
    Benchmark("data_loader.py", timeout_s=300),
    Benchmark("trainer_throughput.py", timeout_s=420),
    Benchmark("prune_masks.py", timeout_s=240),
    Benchmark("live_weights.py", timeout_s=300),
    Benchmark("prune_cost.py", timeout_s=1800),
    Benchmark("rfmap_full_width.py", timeout_s=300),
    Benchmark("hessian_memory.py", ("--k", "90", "--ncv", "135"), timeout_s=900, long=True),  # the top-90 setting
    Benchmark("hessian_full_width.py", timeout_s=2400, long=True),  # a converged top-90: 27 min here
    Benchmark("grid_cost.py", timeout_s=300),
    Benchmark("cpu_training_speed.py", timeout_s=3600, long=True),  # 18 trainer runs, 6 of them compiled
    Benchmark("recipes.py", timeout_s=5400, long=True),  # 20 runs of 12 epochs on Fashion-MNIST
    Benchmark("hessian_compare.py", timeout_s=3600, comparison=("pyhessian", "hessian_eigenthings")),
    Benchmark("cka_compare.py", timeout_s=1800, comparison=("torch_cka", "ckatorch")),
    Benchmark("rf_coverage.py", timeout_s=3600, comparison=("torchscan", "receptivefield")),
    Benchmark("gpu_train.py", gpu=True),
    Benchmark("hessian_gpu.py", gpu=True),
    Benchmark("gpu_headline.py", gpu=True),
)


@dataclass
class Outcome:
    name: str
    status: str  # ok, failed, timed out, skipped
    seconds: float = 0.0
    note: str = ""
    tail: List[str] = field(default_factory=list)


def _skip_reason(bench: Benchmark, with_comparisons: bool, cuda: bool, with_long: bool = False) -> str:
    if bench.gpu and not cuda:
        return "no CUDA device here (run it on a GPU machine)"
    if bench.comparison and not with_comparisons:
        return "slow comparison against other libraries; left out without --with-comparisons"
    if bench.long and not with_long:
        return "full-width Hessian of many minutes and ~15 GB of memory; left out without --with-long"
    missing = [m for m in bench.comparison if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {', '.join(missing)} (see the script's docstring for the pip line)"
    return ""


def run_one(bench: Benchmark) -> Outcome:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(BENCH / bench.script), *bench.args], capture_output=True,
                              text=True, timeout=bench.timeout_s)
    except subprocess.TimeoutExpired:
        return Outcome(bench.script, "timed out", time.perf_counter() - start, f"after {bench.timeout_s} s")
    seconds = time.perf_counter() - start
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode:
        return Outcome(bench.script, "failed", seconds, lines[-1] if lines else f"exit {proc.returncode}", lines[-20:])
    return Outcome(bench.script, "ok", seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--with-comparisons", action="store_true",
                        help="also run the slow comparisons against PyHessian, hessian-eigenthings and torch-cka")
    parser.add_argument("--with-long", action="store_true",
                        help="also run the full-width Hessian measurements (~35 min and ~15 GB together)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts (e.g. prune_masks)")
    parser.add_argument("--dry-run", action="store_true", help="say what would run or be skipped, run nothing")
    args = parser.parse_args(argv)
    import torch
    from rich.console import Console

    console = Console(soft_wrap=True)
    cuda = torch.cuda.is_available()
    chosen = [b for b in BENCHMARKS if not args.only or b.script.removesuffix(".py") in
              {name.removesuffix(".py") for name in args.only}]
    if args.only and not chosen:
        console.print(f"error: no benchmark named {', '.join(args.only)}; "
                      f"known: {', '.join(b.script for b in BENCHMARKS)}")
        return 2
    outcomes = []
    total = time.perf_counter()
    for bench in chosen:
        reason = _skip_reason(bench, args.with_comparisons, cuda, args.with_long)
        if reason:
            console.print(f"skip {bench.script}: {reason}")
            outcomes.append(Outcome(bench.script, "skipped", note=reason))
            continue
        if args.dry_run:
            console.print(f"would run {bench.script} {' '.join(bench.args)} (at most {bench.timeout_s} s)")
            continue
        console.print(f"run  {bench.script} ...")
        outcome = run_one(bench)
        console.print(f"     {outcome.status} in {outcome.seconds:.0f} s {outcome.note}")
        for line in outcome.tail:
            console.print(f"     | {line}", markup=False)
        outcomes.append(outcome)
    failed = [o for o in outcomes if o.status in ("failed", "timed out")]
    ran = [o for o in outcomes if o.status == "ok"]
    console.print(f"{len(ran)} ran, {len(failed)} failed, {len(outcomes) - len(ran) - len(failed)} skipped in "
                  f"{time.perf_counter() - total:.0f} s; results in {BENCH / 'results'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
