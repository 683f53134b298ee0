"""Hessian eigenvalues, trace and density against the exact dense Hessian of small models."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import rf_bench  # noqa: F401
from rf_bench.models import RfPoolVGG
from rf_bench.probes.hessian import (HVP, hessian_eigenvalues, hessian_trace, prepare_batchnorm, slq_density,
                                     spectral_density, thick_restart_lanczos)
from rf_bench.probes.base import available_probes
from rf_bench.claims import collect_claims

from conftest import HANG_S

BUILTIN_CLAIMS = collect_claims(available_probes())


class SmallCNN(nn.Module):
    def __init__(self, bn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.tanh(self.conv2(x))  # smooth, so the Hessian is not dominated by ReLU kinks
        return self.fc(x.flatten(1))


def _data(n=64, c=1, size=8, classes=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[:32], y[:32]), (x[32:], y[32:])]


def dense_hessian(model, batches):
    """The exact Hessian of the mean loss over all batches, float64, by torch.autograd.functional."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()]).double()
    buffers = dict(model.named_buffers())
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def loss(flat):
        params, start = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[start:start + s.numel()].view(s)
            start += s.numel()
        return F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat0).numpy()


@pytest.fixture(scope="module", params=["plain", "batchnorm_eval", "rfpool"])
def case(request):
    torch.manual_seed(0)
    if request.param == "rfpool":  # a tiny rfpool VGG: conv6, rfpool(2), conv8, M, conv8 x2 (BN in eval mode)
        model = RfPoolVGG(cfg=(6, "R", 8, "M", 8, 8), rf_pool=2, num_classes=5, in_chans=1)
        batches = _data(n=64, size=16)
    else:
        model = SmallCNN(bn=request.param == "batchnorm_eval")
        batches = _data()
    model = model.double().eval()
    if request.param == "batchnorm_eval":  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model, batches, dense_hessian(model, batches)


@pytest.mark.parametrize("method", ["auto", "arpack"])
def test_top_eigenvalues_match_the_dense_hessian(case, method):
    model, batches, dense = case
    n = dense.shape[0]
    assert 1000 < n < 3000
    true = np.sort(np.linalg.eigvalsh(dense))[::-1]
    assert (true < 0).any()  # indefinite, so LA and LM differ
    k = 10
    spec = hessian_eigenvalues(model, F.cross_entropy, batches, k=k, which="LA", tol=1e-10, residuals=True,
                               method=method)
    np.testing.assert_allclose(spec.eigenvalues.numpy(), true[:k], rtol=1e-6)
    assert spec.hvps > 0 and spec.residuals.max() < 1e-5
    lm = hessian_eigenvalues(model, F.cross_entropy, batches, k=k, which="LM", tol=1e-10, method=method)
    by_magnitude = true[np.argsort(-np.abs(true))[:k]]
    np.testing.assert_allclose(lm.eigenvalues.numpy(), np.sort(by_magnitude)[::-1], rtol=1e-6)


def test_float32_hvps_within_1e_3(case):
    model, batches, dense = case
    true = np.sort(np.linalg.eigvalsh(dense))[::-1][:10]
    model32 = copy.deepcopy(model).float()
    batches32 = [(x.float(), y) for x, y in batches]
    spec = hessian_eigenvalues(model32, F.cross_entropy, batches32, k=10, tol=1e-6)
    np.testing.assert_allclose(spec.eigenvalues.numpy(), true, rtol=1e-3)


def test_auto_stores_the_basis_in_float32_past_its_budget(case, monkeypatch):
    from rf_bench import spectral as H

    model, batches, dense = case
    used = []
    real = H.thick_restart_lanczos
    monkeypatch.setattr(H, "thick_restart_lanczos", lambda *a, **kw: used.append(kw["basis_dtype"]) or real(*a, **kw))
    true = np.sort(np.linalg.eigvalsh(dense))[::-1][:5]
    small = hessian_eigenvalues(model, F.cross_entropy, batches, k=5, tol=1e-10)
    monkeypatch.setattr(H, "_FLOAT64_BASIS_MAX_BYTES", 1 << 10)  # as if the model were huge
    large = hessian_eigenvalues(model, F.cross_entropy, batches, k=5, tol=1e-6)
    assert used == [torch.float64, torch.float32]
    np.testing.assert_allclose(small.eigenvalues.numpy(), true, rtol=1e-8)
    np.testing.assert_allclose(large.eigenvalues.numpy(), true, rtol=1e-4)


def test_hvp_is_the_dense_product(case):
    model, batches, dense = case
    hvp = HVP(model, F.cross_entropy, batches)
    v = np.random.default_rng(1).standard_normal(hvp.n)
    np.testing.assert_allclose(hvp(v), dense @ v, rtol=1e-8, atol=1e-10)
    assert hvp.calls == 1


def test_hutchinson_trace_within_three_standard_errors(case):
    model, batches, dense = case
    trace, se, hvps = hessian_trace(model, F.cross_entropy, batches, samples=60)
    assert hvps == 60 and se > 0
    assert abs(trace - np.trace(dense)) < 3 * se


def test_slq_moments_match_the_spectrum(case):
    model, batches, dense = case
    eig = np.linalg.eigvalsh(dense)
    grid, density, nodes, weights, hvps = spectral_density(model, F.cross_entropy, batches, steps=60, runs=8)
    w = np.concatenate(weights) / len(weights)
    th = np.concatenate(nodes)
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    # E[v^T H^j v] / n = tr(H^j) / n; Rademacher probes make the estimate exact in expectation, with variance
    # 2 sum_{a != b} (H^j)_ab^2 / n^2 per probe (Hutchinson): the 8-probe mean is within 3 standard errors
    n = dense.shape[0]
    for j in (1, 2):
        power = np.linalg.matrix_power(dense, j)
        off_diagonal = (power ** 2).sum() - (np.diag(power) ** 2).sum()
        stderr = math.sqrt(2 * off_diagonal) / n / math.sqrt(len(weights))
        assert abs((w * th ** j).sum() - (eig ** j).mean()) < 3 * stderr
    # the Gaussian-smoothed density integrates to one and covers the extreme eigenvalues
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=0.02)
    assert grid[0] <= eig.min() and grid[-1] >= eig.max() * 0.99
    assert hvps == 8 * 60


def test_errors():
    model = SmallCNN().double()
    with pytest.raises(ValueError, match="which must be 'LA'"):
        hessian_eigenvalues(model, F.cross_entropy, _data(), k=3, which="SA")


@pytest.mark.slow
def test_hessian_probe_and_report(tmp_path, tiny_runs):
    from rf_bench.probes.base import resolve_suite, run_suite
    from rf_bench.report import write_report
    from rf_bench.results import ResultStore, find_runs

    probes = resolve_suite("hessian")
    config = probes[0].Config(k=3, n_images=32, trace_samples=2)
    run_suite(probes, find_runs([str(tiny_runs[0])]), tmp_path / "results", {"hessian": config}, progress=False)
    (record,) = ResultStore(tmp_path / "results").records("hessian")
    for stage in ("init", "final"):
        v = record["values"][stage]
        assert len(v["eigenvalues"]) == 3 and v["eigenvalues"] == sorted(v["eigenvalues"], reverse=True)
        assert v["hvps"] > 3 and v["top"] == v["eigenvalues"][0]
    assert record["values"]["which"] == "LA" and record["values"]["n_images"] == 32
    assert record["values"]["bn"] == "recalibrate" and record["version"] == 3
    # the SLQ quadrature of each stage: density_runs rows of density_steps nodes, weights summing to one per row
    for stage in ("init", "final"):
        v = record["values"][stage]
        assert np.asarray(v["slq_nodes"]).shape == (2, 30) and v["density_hvps"] == 60
        assert np.allclose(np.asarray(v["slq_weights"]).sum(1), 1.0)
    report = write_report(tmp_path / "results", tmp_path / "report", available_probes()).read_text()
    assert "## Hessian: vgg19_rfpool on digits (BN recalibrate)" in report and "CV " in report
    assert (tmp_path / "report" / "hessian_vgg19_rfpool_digits_recalibrate.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "hessian_density_vgg19_rfpool_digits_recalibrate.png").stat().st_size > 10_000


def _file_digests(folder):
    import hashlib

    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_every_bn_mode_is_its_own_result_and_row_and_run_files_never_change(tmp_path, tiny_runs):
    from rf_bench.claims import evaluate_claims
    from rf_bench.probes.base import resolve_suite, run_suite
    from rf_bench.results import ResultStore, find_runs

    before = {run: _file_digests(run) for run in tiny_runs}
    probes = resolve_suite("hessian")
    runs = find_runs([str(r) for r in tiny_runs])
    for mode in ("recalibrate", "batch", "stored"):
        config = probes[0].Config(k=2, n_images=16, trace_samples=2, bn=mode, density_steps=4, density_runs=1,
                                  stages=("init",))
        run_suite(probes, runs, tmp_path / "results", {"hessian": config}, progress=False)
    assert {run: _file_digests(run) for run in tiny_runs} == before  # byte-identical run directories
    records = ResultStore(tmp_path / "results").records("hessian")
    assert sorted(r["values"]["bn"] for r in records) == sorted(["recalibrate", "batch", "stored"] * len(tiny_runs))
    tops = {mode: sorted(r["values"]["init"]["top"] for r in records if r["values"]["bn"] == mode)
            for mode in ("recalibrate", "batch", "stored")}
    assert tops["recalibrate"] != tops["stored"]  # the protocol changes what is measured at init
    rows = [v for v in evaluate_claims(tmp_path / "results", BUILTIN_CLAIMS) if v.claim == "hessian_width"]
    for mode in ("recalibrate", "batch", "stored"):
        mine = [v for v in rows if f"BN {mode})" in v.metric]
        assert len(mine) == 3 and all(sum(v.counts.values()) == len(tiny_runs) for v in mine)


# -------------------------------------------------------------------------------------- BatchNorm modes

def test_recalibrated_statistics_are_the_exact_statistics_of_the_probe_images():
    torch.manual_seed(0)
    model = SmallCNN(bn=True).double()
    with torch.no_grad():  # stored statistics far from the truth, to see them replaced
        model.bn.running_mean.fill_(5.0)
        model.bn.running_var.fill_(9.0)
        model.bn.momentum = 0.3
    x = torch.randn(48, 1, 8, 8, dtype=torch.float64) * 2 + 1
    prepared = prepare_batchnorm(copy.deepcopy(model), "recalibrate", x)
    with torch.no_grad():
        inputs = model.conv1(x).numpy()  # what the one BatchNorm sees, by hand
    n = inputs.shape[0] * inputs.shape[2] * inputs.shape[3]
    mean = inputs.sum(axis=(0, 2, 3)) / n
    var = ((inputs - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / (n - 1)  # unbiased, as BatchNorm keeps it
    assert np.allclose(prepared.bn.running_mean.numpy(), mean, rtol=1e-12, atol=1e-12)
    assert np.allclose(prepared.bn.running_var.numpy(), var, rtol=1e-12, atol=1e-12)
    assert not prepared.training and not prepared.bn.training and prepared.bn.momentum == 0.3
    assert model.bn.running_mean[0] == 5.0  # the copy was changed, not the original


def test_batch_mode_leaves_running_statistics_alone_and_stored_mode_is_eval():
    model = SmallCNN(bn=True).double()
    batch = prepare_batchnorm(copy.deepcopy(model), "batch", torch.zeros(1))
    assert batch.bn.training and not batch.conv1.training and batch.bn.momentum == 0.0
    before = batch.bn.running_mean.clone(), batch.bn.running_var.clone()
    batch(torch.randn(16, 1, 8, 8, dtype=torch.float64) + 3)
    assert torch.equal(batch.bn.running_mean, before[0]) and torch.equal(batch.bn.running_var, before[1])
    stored = prepare_batchnorm(copy.deepcopy(model), "stored", torch.zeros(1))
    assert not stored.training and torch.equal(stored.bn.running_var, model.bn.running_var)
    with pytest.raises(ValueError, match="BatchNorm protocol 'train' is not one of recalibrate, batch, stored"):
        prepare_batchnorm(model, "train", torch.zeros(1))


def dense_hessian_per_batch(model, batches):
    """The exact Hessian of ``sum_b |b| / N * loss(model(x_b), y_b)``, each batch its own forward (so a train-mode
    BatchNorm normalises by that batch's statistics), by torch.autograd.functional."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()]).double()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    total = sum(len(y) for _, y in batches)

    def loss(flat):
        params, start = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[start:start + s.numel()].view(s)
            start += s.numel()
        return sum(F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y) * len(y) / total
                   for x, y in batches)

    return torch.autograd.functional.hessian(loss, flat0).numpy()


def test_batch_mode_matches_the_dense_hessian_of_the_train_mode_loss():
    torch.manual_seed(0)
    model = SmallCNN(bn=True).double()
    batches = _data(n=48)
    model.train()  # the reference: every layer in train mode (SmallCNN has no dropout), batch statistics
    dense = dense_hessian_per_batch(model, batches)
    prepared = prepare_batchnorm(model, "batch", torch.zeros(1))
    true = np.sort(np.linalg.eigvalsh(dense))[::-1]
    spec = hessian_eigenvalues(prepared, F.cross_entropy, batches, k=5, tol=1e-10)
    assert np.allclose(spec.eigenvalues.numpy(), true[:5], rtol=1e-6)
    # and it is not the eval-mode Hessian
    eval_dense = dense_hessian(prepare_batchnorm(copy.deepcopy(model), "stored", torch.zeros(1)), batches)
    assert abs(np.linalg.eigvalsh(eval_dense).max() - true[0]) > 1e-3 * abs(true[0])


class _Quadratic(nn.Module):
    """``loss = sum_i d_i w_i^2 / 2``: its Hessian is ``diag(d)``, a spectrum known exactly."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.w = nn.Parameter(torch.ones(len(d), dtype=torch.float64))

    def forward(self, x):
        return self.w


def test_slq_density_integrates_to_one_and_matches_a_known_spectrum():
    d = torch.tensor([-1.0, 0.5, 0.5, 2.0, 3.0, 3.0, 3.0, 8.0], dtype=torch.float64)
    model = _Quadratic(d)
    loss = lambda w, y: 0.5 * (model.d * w ** 2).sum()  # noqa: E731
    batches = [(torch.zeros(1), torch.zeros(1))]
    grid, density, nodes, weights, hvps = spectral_density(model, loss, batches, steps=8, runs=3, sigma=0.1)
    # Rademacher probes on a diagonal matrix weigh each eigenvalue 1/n: the quadrature is the spectrum itself
    for n_row, w_row in zip(nodes, weights):
        recovered = {round(float(t), 8): 0.0 for t in n_row}
        for t, w in zip(n_row, w_row):
            recovered[round(float(t), 8)] += w
        truth = {v: float((d == v).sum()) / len(d) for v in d.tolist()}
        assert {k: v for k, v in recovered.items() if v > 1e-10} == pytest.approx(truth, abs=1e-8)
    exact = sum(np.exp(-(grid - v) ** 2 / (2 * 0.1 ** 2)) for v in d.tolist()) / (len(d) * math.sqrt(2 * math.pi) * 0.1)
    assert np.allclose(density, exact, atol=1e-6)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    # the report's density from the stored quadrature is the same function
    assert np.allclose(slq_density(nodes, weights, sigma=0.1, grid=grid)[1], density)


@pytest.mark.parametrize("basis_dtype, tol, rtol", [(torch.float64, 1e-10, 1e-6), (torch.float32, 1e-6, 1e-4)])
def test_thick_restart_lanczos_matches_the_dense_hessian(case, basis_dtype, tol, rtol):
    model, batches, dense = case
    true = np.sort(np.linalg.eigvalsh(dense))[::-1]
    by_magnitude = np.sort(true[np.argsort(-np.abs(true))[:10]])[::-1]
    for which, expected in (("LA", true[:10]), ("LM", by_magnitude)):
        spec = hessian_eigenvalues(model, F.cross_entropy, batches, k=10, which=which, tol=tol, method="lanczos",
                                   ncv=24, basis_dtype=basis_dtype, residuals=True)
        np.testing.assert_allclose(spec.eigenvalues.numpy(), expected, rtol=rtol)
        assert spec.hvps > 24 + 10  # it had to restart (the last 10 are the residual check)
        assert spec.residuals.max() < (1e-6 if basis_dtype == torch.float64 else 1e-3)


def test_thick_restart_lanczos_on_a_known_spectrum():
    """A symmetric matrix with a cluster and an indefinite tail; the float32 basis stays accurate."""
    rng = np.random.default_rng(0)
    n = 400
    eig = np.concatenate([[50.0, 49.9, 49.8, 20.0, 10.0], rng.uniform(-30.0, 5.0, n - 5)])
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = torch.from_numpy((q * eig) @ q.T)
    values, vectors, matvecs = thick_restart_lanczos(lambda v: a @ v, n, 5, tol=1e-5, ncv=15,
                                                     basis_dtype=torch.float32, eigenvectors=True)
    np.testing.assert_allclose(values.numpy(), [50.0, 49.9, 49.8, 20.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose((a @ vectors).numpy(), (vectors * values).numpy(), atol=1e-4)
    assert matvecs > 15
    lm, _, lm_matvecs = thick_restart_lanczos(lambda v: a @ v, n, 8, which="LM", tol=1e-10, ncv=30)
    np.testing.assert_allclose(lm.numpy(), np.sort(eig[np.argsort(-np.abs(eig))[:8]])[::-1], rtol=1e-8)
    with pytest.raises(RuntimeError, match=r"did not converge within \d+ HVPs"):
        thick_restart_lanczos(lambda v: a @ v, n, 8, which="LM", tol=1e-10, ncv=30, max_matvecs=40)


def test_float32_basis_across_many_column_blocks():
    """A 1.5M-dimensional operator (23 float32 product blocks per basis row, each added up in float64):
    the eigenvalues still come out to 1e-6 and the eigenvectors are those of the operator."""
    from rf_bench import spectral as H

    rng = np.random.default_rng(0)
    n = 1_500_000
    assert n > 20 * H._LOW_PRECISION_BLOCK
    diag = torch.from_numpy(np.concatenate([[50.0, 49.9, 49.8, 20.0, 10.0], rng.uniform(-30.0, 5.0, n - 5)]))
    perm = torch.from_numpy(rng.permutation(n))
    diag = diag[perm]  # the wanted directions are scattered over the blocks
    values, vectors, _ = thick_restart_lanczos(lambda v: diag * v, n, 5, tol=1e-5, ncv=15,
                                               basis_dtype=torch.float32, eigenvectors=True)
    np.testing.assert_allclose(values.numpy(), [50.0, 49.9, 49.8, 20.0, 10.0], rtol=1e-6)
    where = torch.argsort(perm)[:5]  # positions of the five largest entries
    np.testing.assert_allclose(vectors[where].abs().diagonal().numpy(), 1.0, atol=1e-4)


_TWO_PROCESS_SCRIPT = '''
import json, os, sys
import numpy as np, torch
from accelerate import PartialState
from torch.nn import functional as F
from rf_bench.models import RfPoolVGG
from rf_bench.probes.hessian import HVP, hessian_eigenvalues, hessian_trace

PartialState()  # what accelerate sets up under a launcher: here a gloo process group on the CPU
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
torch.manual_seed(0)
model = RfPoolVGG(cfg=(6, "R", 8, "M", 8, 8), rf_pool=2, num_classes=5, in_chans=1).double().eval()
g = torch.Generator().manual_seed(0)
x, y = torch.randn(80, 1, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 5, (80,), generator=g)
batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 80, 16)]  # 5 batches: 3 on rank 0, 2 on rank 1
hvp = HVP(model, F.cross_entropy, batches)
v = np.random.default_rng(1).standard_normal(hvp.n)
product = hvp(v)
spectrum = hessian_eigenvalues(model, F.cross_entropy, batches, k=4, tol=1e-10)
trace = hessian_trace(model, F.cross_entropy, batches, samples=4)
alone = HVP(model, F.cross_entropy, batches, distributed=False)  # what the probe harness asks for
alone_product = alone(v)
out = dict(world=world, distributed=hvp.distributed, passes=hvp.passes, loss=hvp.loss(), alone_passes=alone.passes,
           alone_product=alone_product.tolist(),
           product=product.tolist(), eigenvalues=spectrum.eigenvalues.tolist(), trace=trace[0])
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
torch.distributed.barrier()
torch.distributed.destroy_process_group()  # gloo's threads can abort the exit ("terminate called") otherwise
'''


@pytest.mark.slow
def test_hvps_split_across_two_processes_match_one(tmp_path):
    """Two processes (torchrun + accelerate's PartialState, gloo) each pass over their share of the
    batches; the all-reduced products, eigenvalues and trace equal one process's."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), str(script),
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=HANG_S)
    assert two.returncode == 0, two.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    torch.manual_seed(0)
    model = RfPoolVGG(cfg=(6, "R", 8, "M", 8, 8), rf_pool=2, num_classes=5, in_chans=1).double().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 1, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 5, (80,), generator=g)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 80, 16)]
    hvp = HVP(model, F.cross_entropy, batches)
    assert not hvp.distributed
    product = hvp(np.random.default_rng(1).standard_normal(hvp.n))
    spectrum = hessian_eigenvalues(model, F.cross_entropy, batches, k=4, tol=1e-10)
    trace = hessian_trace(model, F.cross_entropy, batches, samples=4)[0]

    assert [r["world"] for r in ranks] == [2, 2] and all(r["distributed"] for r in ranks)
    assert [r["passes"] for r in ranks] == [3, 2] and hvp.passes == 5  # each process did its share only
    assert [r["alone_passes"] for r in ranks] == [5, 5]
    for r in ranks:
        np.testing.assert_allclose(r["product"], product, rtol=1e-10, atol=1e-12 * np.abs(product).max())
        np.testing.assert_allclose(r["alone_product"], product, rtol=1e-12, atol=1e-14 * np.abs(product).max())
        np.testing.assert_allclose(r["eigenvalues"], spectrum.eigenvalues.numpy(), rtol=1e-9)
        assert r["trace"] == pytest.approx(trace, rel=1e-10)
        assert r["loss"] == pytest.approx(hvp.loss(), rel=1e-12)
    assert ranks[0]["eigenvalues"] == ranks[1]["eigenvalues"]  # the same iteration on both, bit for bit


# ------------------------------------------------------------------ the basis's device (GPU machine for CUDA)

def test_basis_falls_back_to_the_host_when_the_device_is_full(monkeypatch):
    """A basis larger than the device's free memory stays on the host, says so, and gives the same answer."""
    from rf_bench import spectral as H

    rng = np.random.default_rng(0)
    n = 3000
    diag = torch.from_numpy(np.concatenate([[9.0, 8.0, 7.0], rng.uniform(-3.0, 3.0, n - 3)]))
    assert H._basis_device("cpu", 10, n, torch.float64) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 18, 1 << 30))  # 256 KiB free
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    with pytest.warns(UserWarning, match=r"does not fit in the memory this process may take on cuda:0 .* pinned host"):
        assert H._basis_device("cuda:0", 30, n, torch.float64) == torch.device("cpu")
    assert H._basis_device("cuda:0", 2, 100, torch.float32) == torch.device("cuda:0")  # 800 bytes fit
    values, _, _ = thick_restart_lanczos(lambda v: diag * v, n, 3, tol=1e-10, ncv=20, device="cpu")
    np.testing.assert_allclose(values.numpy(), [9.0, 8.0, 7.0], rtol=1e-10)


def test_basis_budget_counts_the_process_cache_and_a_packed_workers_share(monkeypatch):
    """mem_get_info counts this process's own cached blocks as used; a packed worker may take only its share."""
    from rf_bench import spectral as H

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 12 * gib)  # 10 GiB cached, unused
    monkeypatch.delenv(H.GPU_SHARE_ENV, raising=False)
    assert H._device_budget(torch.device("cuda:0")) == 11 * gib
    rows, n = 4, (8 * gib) // 32  # an 8 GiB float64 basis: fits 0.8 x 11 GiB, not the 1 GiB mem_get_info calls free
    assert H._basis_device("cuda:0", rows, n, torch.float64) == torch.device("cuda:0")
    monkeypatch.setenv(H.GPU_SHARE_ENV, "0.125")  # one of 8 packed workers: 10 GiB of the 80, 2 already held
    assert H._device_budget(torch.device("cuda:0")) == 8 * gib
    with pytest.warns(UserWarning, match="pinned host memory"):
        assert H._basis_device("cuda:0", rows, n, torch.float64) == torch.device("cpu")


def test_a_host_basis_is_pinned_only_as_the_fallback_of_a_gpu_run(monkeypatch):
    """A CPU probe on a machine with CUDA gets pageable memory: pinning took a CUDA context per process and up to
    12.8 GB of locked host memory. (Here, without a driver, pinning would raise.)"""
    from rf_bench import spectral as H

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    basis = H._new_basis(3, 100, torch.float64, "cpu")
    assert basis.device.type == "cpu" and not basis.is_pinned()


def test_hvp_turns_tf32_off_for_matmuls_and_convolutions(tf32_settings):
    """cuDNN convolutions stay TF32 under torch's defaults (1e-3 relative on a GPU): every HVP turns both off,
    and gives the process its settings back."""
    seen = []

    def loss_fn(out, y):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return F.cross_entropy(out, y)

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    batches = [(torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))] * 2
    HVP(model, loss_fn, batches).matvec(torch.ones(sum(p.numel() for p in model.parameters())))
    assert seen == [(False, False)] * 2
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_lanczos_takes_numpy_or_tensor_operators_alike():
    from rf_bench.probes.hessian import lanczos

    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 50))
    a = a + a.T
    v0 = rng.standard_normal(50)
    alpha_np, beta_np = lanczos(lambda v: a @ v, 50, 20, v0)
    at = torch.from_numpy(a)
    alpha_t, beta_t = lanczos(lambda v: at @ v, 50, 20, torch.from_numpy(v0))
    np.testing.assert_allclose(alpha_t, alpha_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(beta_t, beta_np, rtol=1e-12)
    # the tridiagonal's extreme eigenvalues converge to the matrix's
    from scipy.linalg import eigh_tridiagonal
    full = lanczos(lambda v: a @ v, 50, 50, v0)
    np.testing.assert_allclose(eigh_tridiagonal(*full)[0][[0, -1]], np.linalg.eigvalsh(a)[[0, -1]], rtol=1e-8)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")


@needs_cuda
@pytest.mark.parametrize("basis_dtype, tol, rtol", [(torch.float64, 1e-10, 1e-6), (torch.float32, 1e-6, 1e-4)])
def test_device_resident_lanczos_matches_the_dense_hessian_on_cuda(case, basis_dtype, tol, rtol):
    model, batches, dense = case
    true = np.sort(np.linalg.eigvalsh(dense))[::-1][:10]
    cuda_model = copy.deepcopy(model).cuda()
    cuda_batches = [(x.cuda(), y.cuda()) for x, y in batches]
    spec = hessian_eigenvalues(cuda_model, F.cross_entropy, cuda_batches, k=10, tol=tol, method="lanczos",
                               ncv=24, basis_dtype=basis_dtype)
    np.testing.assert_allclose(spec.eigenvalues.numpy(), true, rtol=rtol)
    cpu = hessian_eigenvalues(model, F.cross_entropy, batches, k=10, tol=tol, method="lanczos", ncv=24,
                              basis_dtype=basis_dtype)
    assert abs(spec.hvps - cpu.hvps) <= 0.05 * cpu.hvps  # the same iteration, within rounding
    trace, se, _ = hessian_trace(cuda_model, F.cross_entropy, cuda_batches, samples=60)
    assert abs(trace - np.trace(dense)) < 3 * se


@needs_cuda
def test_hvp_on_cuda_is_the_dense_product(case):
    model, batches, dense = case
    hvp = HVP(copy.deepcopy(model).cuda(), F.cross_entropy, [(x.cuda(), y.cuda()) for x, y in batches])
    v = torch.from_numpy(np.random.default_rng(1).standard_normal(hvp.n)).cuda()
    out = hvp.matvec(v)
    assert out.device.type == "cuda" and out.dtype == torch.float64
    np.testing.assert_allclose(out.cpu().numpy(), dense @ v.cpu().numpy(), rtol=1e-8, atol=1e-10)
