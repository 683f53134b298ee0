#!/usr/bin/env bash
# The whole GPU check in one command, from a bare GPU machine with no package registry, in under 9 minutes:
#
#   bash benchmarks/gpu_suite.sh --out DIR            # on the GPU machine
#   bash benchmarks/gpu_suite.sh --out DIR --cpu-smoke  # the same script on a CPU, tiny sizes (tests/test_benchmarks.py)
#
# 1. the CUDA tests (captured vs eager, deterministic kill -9 resume, device Lanczos vs a dense Hessian, HVPs on
#    CUDA) and the two-process tests;
# 2. benchmarks/gpu_train.py: resnet50_rfpool1, resnet50_rfpool4, vgg19_rfpool1 at batch 128 (bare, trainer,
#    captured, packed 1/2/4/8) and resnet50_rfpool1 at batch 512;
# 3. benchmarks/hessian_gpu.py: full-width resnet50_rfpool4, 2,048 images, top-90 within a time budget;
# 4. benchmarks/gpu_headline.py: the headline at full width (both families, k = 1 and 4, one-shot pruning under both
#    BatchNorm protocols), its seeds sized from part 2's measured rate; skipped in one line unless the Fashion-MNIST
#    IDX files are in .data/fashion-mnist (git ignores it: copy Debian's files there and carry it).
#
# Each part runs under its own `timeout`, so one that hangs cannot take the others with it; the benchmarks write
# their results after every measurement. DIR receives at most 8 files: suite.log, parts.log (every part's output),
# gpu_train.{json,md}, hessian_gpu.{json,md}, headline.json, headline_results.tar.gz. The project is used from this checkout (PYTHONPATH), with no install; packages the
# GPU image lacks, and timm at the version tested here (rf_bench uses some of its private modules; the image's
# version is unknown), are installed from wheels in .whl/ (made where a registry is reachable; README, "GPU"):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 timm==1.0.31
set -u -o pipefail

OUT=""
SMOKE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        --cpu-smoke) SMOKE=1; shift ;;
        *) echo "error: unknown argument $1; usage: gpu_suite.sh --out DIR [--cpu-smoke]" >&2; exit 2 ;;
    esac
done
if [ -z "$OUT" ]; then
    echo "error: give the results folder: gpu_suite.sh --out DIR [--cpu-smoke]" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
REPO="$(pwd)"
PY="${PYTHON:-python3}"
LOG="$OUT/suite.log"
: > "$LOG"

say() { echo "$*" | tee -a "$LOG"; }

# A part: its own time limit; its status and seconds go to suite.log, and a failure does not stop the next part.
part() {
    local name="$1" limit="$2" log="$3"; shift 3
    local start=$SECONDS status
    say "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
    status=$?
    case $status in
        0) say "== $name: ok in $((SECONDS - start)) s" ;;
        124|137) say "== $name: TIMED OUT after $((SECONDS - start)) s (kept what it wrote)" ;;
        *) say "== $name: FAILED (exit $status) in $((SECONDS - start)) s" ;;
    esac
    return 0
}

if [ $SMOKE = 0 ] && ls .whl/*.whl > /dev/null 2>&1; then  # Python 3.12 wheels, for the GPU image only
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rf_bench_site \
        .whl/*.whl >> "$LOG" 2>&1 || say "warning: the wheels in .whl/ did not install"
    export PYTHONPATH="/tmp/rf_bench_site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

say "rf-bench GPU suite, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), mode $([ $SMOKE = 1 ] && echo cpu-smoke || echo gpu)"
"$PY" - >> "$LOG" 2>&1 <<'EOF'
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("timm", "accelerate", "datasets", "safetensors", "scikit-learn", "rich", "pytest", "numpy", "scipy"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} MISSING")
EOF
if [ $SMOKE = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        say "error: no CUDA device visible to $PY; on a CPU run: gpu_suite.sh --out DIR --cpu-smoke"; exit 1; }
fi

if [ $SMOKE = 1 ]; then
    # one thread per process unless told otherwise: the packed workers and a parallel test run share few cores
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    # the CUDA tests skip here: this checks that the selection exists and pytest starts
    TESTS=(tests/test_gpu_training.py::test_captured_training_matches_eager_on_cuda
           tests/test_hessian.py::test_hvp_on_cuda_is_the_dense_product)
    TRAIN=(--device cpu --quick)
    HESSIAN=(--device cpu --quick)
    HEADLINE=(--device cpu --quick)
    T_TESTS=300; T_TRAIN=300; T_HESSIAN=300; T_HEADLINE=600
else
    # in order of what only a GPU can show, so a time limit cuts the least telling ones; the CPU-only tests of
    # these files pass in CI and stay out
    TESTS=(tests/test_gpu_training.py::test_captured_training_matches_eager_on_cuda
           tests/test_hessian.py::test_device_resident_lanczos_matches_the_dense_hessian_on_cuda
           tests/test_hessian.py::test_hvp_on_cuda_is_the_dense_product
           tests/test_gpu_training.py::test_deterministic_cuda_training_is_bit_identical_to_a_rerun
           tests/test_gpu_training.py::test_a_cpu_run_does_not_pin_later_runs_of_the_process_to_the_cpu
           tests/test_gpu_training.py::test_cuda_graphs_and_compile_mode_are_refused_where_they_cannot_work
           "tests/test_train.py::test_sigkill_then_rerun_gives_bit_identical_weights[cuda-deterministic]"
           tests/test_hessian.py::test_hvps_split_across_two_processes_match_one
           tests/test_train.py::test_two_processes_match_one_with_the_same_global_batch)
    TRAIN=(--budget-s 150 --packed-timeout-s 60)
    HESSIAN=(--models resnet50_rfpool4 --budget-s 75)
    HEADLINE=(--budget-s 180)
    T_TESTS=130; T_TRAIN=210; T_HESSIAN=150; T_HEADLINE=240
fi

# -v: each test's outcome is in parts.log as it ends, so a time limit keeps what finished; with pytest-timeout (the
# GPU image has it) a test that hangs fails alone
PER_TEST=()
"$PY" -c "import pytest_timeout" 2> /dev/null && PER_TEST=(--timeout 100)
part "CUDA tests" $T_TESTS "$OUT/parts.log" "$PY" -m pytest -p no:cacheprovider -o addopts="" -rA -v "${PER_TEST[@]}" \
    "${TESTS[@]}"
part "gpu_train.py" $T_TRAIN "$OUT/parts.log" "$PY" benchmarks/gpu_train.py --out "$OUT" "${TRAIN[@]}"
part "hessian_gpu.py" $T_HESSIAN "$OUT/parts.log" "$PY" benchmarks/hessian_gpu.py --out "$OUT" "${HESSIAN[@]}"
# the trainer's measured rate (resnet50_rfpool1, batch 128) sizes the headline's seeds
RATE=$("$PY" -c "import json, sys; rows = json.load(open(sys.argv[1]))['rows']; print(rows[0].get('trainer') or '')" \
    "$OUT/gpu_train.json" 2> /dev/null)
part "gpu_headline.py" $T_HEADLINE "$OUT/parts.log" "$PY" benchmarks/gpu_headline.py --out "$OUT" \
    --data-dir .data/fashion-mnist ${RATE:+--images-per-s "$RATE"} "${HEADLINE[@]}"
say "== done in $SECONDS s"
