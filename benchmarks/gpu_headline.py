"""The paper's headline at full width on a GPU: one-shot pruning of full-width nets under both BatchNorm protocols.

The fashion-cpu study's data and training settings (Fashion-MNIST, 1,000 training images per class, batch 64, the
``fast`` recipe for 12 epochs) at **full width**, both families at k = 1 and 4, then the prune probe at 0.5-0.9
with the stored and the recalibrated statistics, each rate counted over all weights and over the live ones (no
fine-tune: the GPU time goes to the dense nets). Everything
goes through ``rf-bench``'s own sweep, probe and report code; the GPU is named in the result.

The number of seeds is sized to the time left: from the trainer's measured images/s (``--images-per-s``, e.g. from
``gpu_train.json`` of the same suite) an estimate per run, and as many seeds (1 or 2) as fit ``--budget-s``. With
no Fashion-MNIST files in ``--data-dir`` the part is skipped in one line (copy Debian's
``/usr/share/datasets/fashion-mnist/*.gz`` into that folder, which git ignores).

    python benchmarks/gpu_headline.py --out DIR --data-dir .data/fashion-mnist --budget-s 240
    python benchmarks/gpu_headline.py --out DIR --device cpu --quick        # tiny widths on digits: the script itself

Writes ``headline.json`` (sizing, wall time, device, the verdict rows) and ``headline_results.tar.gz`` (the result
files, and the report with its figures, under ``results/`` and ``report/``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import benchmark_device  # noqa: E402

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
TRAIN_IMAGES = 10_000  # 1,000 per class
EPOCHS = 12
# full width costs more per image than the batch-128 throughput measures (batch 64 here): a safety factor
BATCH_64_SLOWDOWN = 1.5


def sweep_text(quick: bool, seeds: List[int], epochs: int, data_dir: Optional[Path] = None) -> str:
    """The sweep file: the fashion-cpu study's settings at full width (tiny widths on digits for ``quick``)."""
    data = '"digits"' if quick else '"fashion_mnist"'
    per_class = "" if quick else "train_per_class = 1000\n"
    width = "model_kwargs = { width_mult = 0.0625 }\n" if quick else ""
    rates = "[0.5, 0.9]" if quick else "[0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98]"
    bn_images = 64 if quick else 2048
    where = "" if quick or data_dir is None else f"data_dir = {json.dumps(str(data_dir.resolve()))}\n"
    return f"""[sweep]
name = "headline-full-width"
eval_every = 0
{where}
[grid]
families = ["vgg19_rfpool", "resnet50_rfpool"]
ks = [1, 4]
datasets = [{data}]
seeds = {json.dumps(seeds)}

[train]
recipe = "fast"
epochs = {epochs}
batch_size = 64
lr = 0.1
{per_class}{width}
[probes]
suite = "prune"

[probes.prune]
rates = {rates}
finetune_epochs = 0
bn = ["stored", "recalibrate"]
basis = ["all", "live"]
bn_images = {bn_images}
"""


def seeds_that_fit(budget_s: float, images_per_s: Optional[float], epochs: int) -> Dict[str, Any]:
    """How many seeds (2, else 1) fit the budget at the measured rate; 8 runs a seed pair (2 families x 2 k)."""
    if not images_per_s:
        return dict(seeds=[0], estimate_s=None, why="no measured rate: one seed")
    per_run = TRAIN_IMAGES * epochs / images_per_s * BATCH_64_SLOWDOWN + 10  # + the probe and start-up
    runs_per_seed = 4
    fits = 2 if per_run * runs_per_seed * 2 <= budget_s else 1
    return dict(seeds=list(range(fits)), estimate_s=round(per_run * runs_per_seed * fits),
                why=f"{per_run:.0f} s a run at {images_per_s:,.0f} img/s (x{BATCH_64_SLOWDOWN} for batch 64)")


def have_data(data_dir: Path) -> bool:
    return all((data_dir / name).is_file() for name in IDX_FILES)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path(".data/fashion-mnist"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=240.0, help="wall time the training may take")
    parser.add_argument("--images-per-s", type=float, help="the trainer's measured rate (resnet50_rfpool1, batch 128)")
    parser.add_argument("--quick", action="store_true", help="digits, 1/16 width, 1 epoch: checks the script")
    parser.add_argument("--work", type=Path, help="where runs and results go (default: a temporary folder, so that "
                                                  "--out holds only the three files that come back)")
    args = parser.parse_args(argv)
    device, device_name = benchmark_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.quick and not have_data(args.data_dir):
        print(f"skipped: no Fashion-MNIST IDX files in {args.data_dir}; copy /usr/share/datasets/fashion-mnist/*.gz "
              "there (Debian's dataset-fashion-mnist) and carry the folder")
        (args.out / "headline.json").write_text(json.dumps(dict(skipped=True, data_dir=str(args.data_dir))) + "\n")
        return 0
    epochs = 1 if args.quick else EPOCHS
    sizing = seeds_that_fit(args.budget_s, args.images_per_s, epochs)
    with tempfile.TemporaryDirectory() as scratch:
        result = run(args, sizing, epochs, device_name, args.work or Path(scratch))
    (args.out / "headline.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "verdicts"}, indent=2))
    return 0


def run(args, sizing: Dict[str, Any], epochs: int, device_name: str, work: Path) -> Dict[str, Any]:
    """Train, probe and report through the sweep in ``work``; pack the results and the report into --out."""
    from rf_bench.claims import collect_claims, evaluate_claims
    from rf_bench.probes.base import available_probes
    from rf_bench.sweep import load_sweep, run_sweep

    sweep = load_sweep(text=sweep_text(args.quick, sizing["seeds"], epochs, args.data_dir), output=str(work))
    start = time.perf_counter()
    outcome = run_sweep(sweep, "local", max_parallel=1, progress=False, log=print)
    wall = time.perf_counter() - start
    report = Path(outcome["report"]) if outcome.get("report") else None
    report = report.parent if report is not None and report.is_file() else report  # the folder REPORT.md is in

    def kept(info):  # results and figures; no fine-tune runs, no lock files
        name = Path(info.name).name
        return None if "prune-finetune" in info.name or name.startswith(".") else info

    with tarfile.open(args.out / "headline_results.tar.gz", "w:gz") as tar:
        tar.add(str(sweep.results), arcname="results", filter=kept)
        if report is not None:
            tar.add(str(report), arcname="report", filter=kept)
    verdicts = evaluate_claims(sweep.results, collect_claims(available_probes()))
    return dict(device=device_name, quick=args.quick, epochs=epochs, sizing=sizing, wall_s=round(wall, 1),
                runs=len(sweep.runs), failed=len(outcome["failed"]), torch=torch.__version__,
                verdicts=[v.as_dict() for v in verdicts
                          if v.claim in ("dense_accuracy", "prune_robustness", "critical_live_sparsity")])


if __name__ == "__main__":
    raise SystemExit(main())
