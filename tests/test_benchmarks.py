"""The GPU benchmark scripts run end to end (on the CPU, in their smoke mode), so they do not rot between GPU loans."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script, expect", [("gpu_train.py", "| resnet50_rfpool1 | 32x32 |"),
                                            ("hessian_gpu.py", "| resnet50_rfpool4 |")])
def test_gpu_benchmark_scripts_run_in_smoke_mode(script, expect):
    results = sorted((BENCH / "results").glob("*"))
    proc = subprocess.run([sys.executable, str(BENCH / script), "--device", "cpu", "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout
    assert sorted((BENCH / "results").glob("*")) == results  # CPU smoke figures are never written as GPU results


def test_gpu_benchmarks_refuse_a_missing_gpu_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for script in ("gpu_train.py", "hessian_gpu.py"):
        proc = subprocess.run([sys.executable, str(BENCH / script)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.strip().startswith("error: no CUDA device here")
        assert "Traceback" not in proc.stderr
