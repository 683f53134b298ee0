import os

# before any cuBLAS call of the session: a deterministic CUDA test after any other CUDA test needs it set already
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# the tests see rf-bench's own probes and the ones they register, never a plugin the user installed
# (inherited by every subprocess a test starts)
os.environ["RF_BENCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.pop("RF_BENCH_PLUGINS", None)

import pytest  # noqa: E402
import torch  # noqa: E402

# The CI machine has 2 cores. Under pytest-xdist each worker gets one thread (torch and BLAS alike):
# two workers with two threads each oversubscribe the cores and run several times slower.
_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1)
torch.set_num_threads(_THREADS)
try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(_THREADS)
except ImportError:  # scikit-learn brings threadpoolctl; without it BLAS keeps its default
    pass

TINY = 0.125  # width multiplier for tiny rfpool models (8 stem channels)
# A subprocess's time limit is a hang detector, far above its normal time (a busy machine must not fail a test).
HANG_S = 3600


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test starts with no Accelerator chosen: one test's --cpu must not decide where the next one trains."""
    yield
    from accelerate.state import AcceleratorState, PartialState

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        AcceleratorState._reset_state()
        PartialState._reset_state()


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Four finished runs on digits: vgg19_rfpool{1,2} x seeds {0,1}, two quick epochs each."""
    from rf_bench.train import resolve_config, train

    out = tmp_path_factory.mktemp("runs")
    dirs = []
    for k in (1, 2):
        for seed in (0, 1):
            cfg = resolve_config("fast", model=f"vgg19_rfpool{k}", dataset="digits", seed=seed, epochs=2, lr=0.02,
                                 batch_size=32, model_kwargs=dict(width_mult=0.125))
            dirs.append(train(cfg, output=out, progress=False))
    return dirs


@pytest.fixture
def tf32_settings():
    """Gives the process back its TF32 switches (monkeypatch cannot undo torch's cuBLAS settings object)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
