"""The spectral toolbox: Hessian-vector products, top eigenvalues (thick-restart Lanczos), trace and density.

The Hessian probe (``rf_bench.probes.hessian``) measures runs with it; benchmarks and users call it directly.

Hessian-vector products (HVPs) are exact double-backward products of the mean loss over the given
batches (one HVP = one pass over all of them), for the model in whatever mode it is in (the probe
sets its BatchNorm layers by ``hessian.bn``: recalibrated on its images by default, see
``prepare_batchnorm``). Eigenvalues come from a thick-restart Lanczos
(`thick_restart_lanczos`, float64 arithmetic) whose basis is stored in float64 for small models
and in float32 for large ones: the basis is the memory (``(ncv + 1) x n_params x bytes``), 12.8 GB
instead of 34 GB for the top 90 of a full-width ResNet50. The basis lives on the model's device and
every vector stays there inside the loop (on a GPU, no host round trip per HVP); when the basis does
not fit the device's free memory, it is kept in pinned host memory instead, and a warning says so. ARPACK's implicitly restarted
Lanczos (``scipy.sparse.linalg.eigsh``) is ``method="arpack"``. HVPs may be split across processes
(`HVP`). ``which="LA"`` (default) gives the largest by value; ``"LM"`` the
largest by magnitude, which is what PyHessian's power iteration converges to on an indefinite
Hessian. Trace (Hutchinson) and spectral density (stochastic Lanczos quadrature) share the HVP.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from rf_bench._numerics import exact_matmul, slq_density

__all__ = ["HVP", "HessianSpectrum", "hessian_eigenvalues", "hessian_trace", "spectral_density", "lanczos",
           "thick_restart_lanczos", "lanczos_basis_size", "top_k_basis_dtype", "slq_density", "GPU_SHARE_ENV"]

_FLOAT64_BASIS_MAX_BYTES = 2 << 30  # "auto": a float64 Lanczos basis up to 2 GiB, float32 beyond

Batches = Sequence[Tuple[torch.Tensor, torch.Tensor]]


class HVP:
    """``v -> H v`` for the mean of ``loss_fn(model(x), y)`` over ``batches``; counts its calls.

    Under ``torch.distributed`` (``accelerate launch``, ``torchrun``) with more than one process, every
    process is given the same ``batches`` and passes over its share (``batches[rank::world]``); the
    products are summed across processes (one all-reduce per HVP), so every process gets the whole
    ``H v`` and runs the same Lanczos iteration. ``distributed=False`` keeps each process on its own.
    ``on_hvp(calls)``, if given, is called after every product (for progress displays).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, batches: Batches,
                 distributed: Optional[bool] = None, on_hvp: Optional[Callable[[int], None]] = None) -> None:
        self.model = model
        self.loss_fn = loss_fn
        batches = list(batches)
        self.total = sum(len(y) for _, y in batches)  # the mean is over every process's batches
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.distributed = world > 1 if distributed is None else distributed and world > 1
        self.batches = batches[dist.get_rank()::world] if self.distributed else batches
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n = sum(p.numel() for p in self.params)
        self.calls = 0
        self.on_hvp = on_hvp
        self.passes = 0  # batch passes this process made
        first = self.params[0]
        self.device, self.dtype = first.device, first.dtype

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """One HVP on the model's device: ``v`` (any float dtype, any device) in, ``H v`` in float64 on the
        model's device out. The product accumulates into one flat buffer, in the model's dtype."""
        self.calls += 1
        sizes = [p.numel() for p in self.params]
        vs = [t.view_as(p) for t, p in zip(v.reshape(-1).to(self.device, self.dtype).split(sizes), self.params)]
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        outs = [t.view_as(p) for t, p in zip(out.split(sizes), self.params)]
        with exact_matmul():  # every product, the trace's too: no TF32 matmuls or convolutions
            for x, y in self.batches:
                loss = self.loss_fn(self.model(x), y) * (len(y) / self.total)
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, vs))
                torch._foreach_add_(outs, torch.autograd.grad(dot, self.params))
                self.passes += 1
        if self.distributed:
            dist.all_reduce(out)
        if self.on_hvp is not None:
            self.on_hvp(self.calls)
        return out.double()

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """One HVP: a float64 host vector in, a float64 host vector out (ARPACK's interface)."""
        return self.matvec(torch.from_numpy(np.asarray(v, dtype=np.float64).ravel())).cpu().numpy()

    def loss(self) -> float:
        """The mean loss over the batches (for checks and progress)."""
        with torch.no_grad():
            total = sum(self.loss_fn(self.model(x), y).double() * len(y) for x, y in self.batches)
            total = torch.as_tensor(total, dtype=torch.float64, device=self.device)
            if self.distributed:
                dist.all_reduce(total)
            return float(total / self.total)


@dataclass
class HessianSpectrum:
    """Top-``k`` eigenvalues (descending by value), the HVPs spent, and residuals ``||Hv - lv|| / |l|``."""

    eigenvalues: torch.Tensor
    hvps: int
    residuals: Optional[torch.Tensor] = None
    which: str = "LA"
    seconds: float = 0.0
    eigenvectors: Optional[torch.Tensor] = None


def hessian_eigenvalues(model: nn.Module, loss_fn: Callable, batches: Batches, k: int = 90, *,
                        which: str = "LA", tol: float = 1e-6, max_hvps: Optional[int] = None,
                        ncv: Optional[int] = None, seed: int = 0, residuals: bool = False,
                        eigenvectors: bool = False, method: str = "auto",
                        basis_dtype: Optional[torch.dtype] = None, distributed: Optional[bool] = None,
                        on_hvp: Optional[Callable[[int], None]] = None) -> HessianSpectrum:
    """The ``k`` largest (``LA``: by value; ``LM``: by magnitude) eigenvalues of the loss Hessian.

    ``tol`` is the relative accuracy (ARPACK's criterion: residual <= tol * |eigenvalue|); ``max_hvps`` caps
    the work. ``method``: ``"arpack"`` (scipy's eigsh, float64 basis, ``ncv`` default ``max(2k + 1, 20)``),
    ``"lanczos"`` (`thick_restart_lanczos`, ``ncv`` default ``k + max(20, k // 2)``, basis in
    ``basis_dtype``, float64 unless given), or ``"auto"``: the thick restart, with a float64 basis while
    it fits in 2 GiB, else float32 (it needed no more HVPs than ARPACK in every benchmark, and is faster:
    ``benchmarks/results/hessian_compare.md``). ``residuals=True`` spends ``k`` more HVPs to report each pair's
    relative residual. ``distributed``: see `HVP` (default: split when launched on several processes);
    ``on_hvp(calls)`` is called after every product.
    """
    if which not in ("LA", "LM"):
        raise ValueError(f"which must be 'LA' (largest by value) or 'LM' (by magnitude), got {which!r}")
    if method not in ("auto", "arpack", "lanczos"):
        raise ValueError(f"method must be 'auto', 'arpack' or 'lanczos', got {method!r}")
    hvp = HVP(model, loss_fn, batches, distributed, on_hvp)
    if not 0 < k < hvp.n:
        raise ValueError(f"k={k} must be between 1 and the parameter count - 1 ({hvp.n - 1})")
    if method == "auto":
        method = "lanczos"
        basis_dtype = basis_dtype or top_k_basis_dtype(hvp.n, k, ncv)
    t0 = time.perf_counter()
    if method == "arpack":
        values, vectors = _arpack(hvp, k, which, tol, ncv, max_hvps, seed)
    else:
        values, vectors, _ = thick_restart_lanczos(
            hvp.matvec, hvp.n, k, which=which, tol=tol, ncv=ncv, max_matvecs=max_hvps, seed=seed,
            basis_dtype=basis_dtype or torch.float64, eigenvectors=eigenvectors or residuals, device=hvp.device)
        values, vectors = values.numpy(), None if vectors is None else vectors.numpy()
    hvps = hvp.calls
    res = None
    if residuals:
        res = torch.tensor([np.linalg.norm(hvp(vectors[:, i]) - values[i] * vectors[:, i]) / max(abs(values[i]), 1e-30)
                            for i in range(k)])
    return HessianSpectrum(eigenvalues=torch.from_numpy(values.copy()), hvps=hvps, residuals=res, which=which,
                           seconds=time.perf_counter() - t0,
                           eigenvectors=torch.from_numpy(vectors.copy()) if eigenvectors else None)


def _arpack(hvp: "HVP", k: int, which: str, tol: float, ncv: Optional[int], max_hvps: Optional[int],
            seed: int) -> Tuple[np.ndarray, np.ndarray]:
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    ncv = min(hvp.n, ncv or max(2 * k + 1, 20))
    op = LinearOperator((hvp.n, hvp.n), matvec=hvp, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(hvp.n)
    maxiter = None if max_hvps is None else max(1, max_hvps // max(1, ncv - k))
    try:
        values, vectors = eigsh(op, k=k, which=which, tol=tol, ncv=ncv, v0=v0, maxiter=maxiter,
                                return_eigenvectors=True)
    except ArpackNoConvergence as e:
        raise RuntimeError(f"Lanczos did not converge within {hvp.calls} HVPs ({len(e.eigenvalues)} of {k} "
                           "eigenvalues); raise max_hvps or tol") from None
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


_LOW_PRECISION_BLOCK = 1 << 16  # columns per float32 product of a float32 basis on a CPU, added up in float64
_LOW_PRECISION_BLOCK_GPU = 1 << 22  # on a GPU: fewer, larger products (each one sums in a tree; launches cost)
_DEVICE_HEADROOM = 0.8  # share of the device's free memory a basis may take (the HVP needs the rest)


def _auto_basis_dtype(rows: int, n: int) -> torch.dtype:
    return torch.float64 if rows * n * 8 <= _FLOAT64_BASIS_MAX_BYTES else torch.float32


def top_k_basis_dtype(n: int, k: int, ncv: Optional[int] = None) -> torch.dtype:
    """The basis precision ``method="auto"`` gives a top-``k`` solve: float64 while the thick restart's basis
    (``lanczos_basis_size`` + 1 rows) fits in 2 GiB, float32 beyond."""
    return _auto_basis_dtype(lanczos_basis_size(n, k, ncv) + 1, n)


GPU_SHARE_ENV = "RF_BENCH_GPU_SHARE"  # a packed worker's share of its GPU's memory (set by `rf-bench sweep`)


def _device_budget(device: torch.device) -> int:
    """Bytes a new basis may take on ``device``: its free memory plus what this process's allocator holds unused
    (``mem_get_info`` counts that cache as used), and for a packed worker no more than its share of the device
    (``RF_BENCH_GPU_SHARE``) less what it already holds, so that one worker's basis cannot starve the others."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    budget = free + torch.cuda.memory_reserved(device) - allocated
    share = float(os.environ.get(GPU_SHARE_ENV, "1"))
    if share < 1:
        budget = min(budget, int(share * total) - allocated)
    return max(budget, 0)


def _basis_device(device: Optional[torch.device | str], rows: int, n: int, dtype: torch.dtype) -> torch.device:
    """Where a ``rows x n`` basis goes: ``device`` when it fits in its budget, else the host (with a warning)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type != "cuda":
        return device
    need = rows * n * torch.finfo(dtype).bits // 8
    budget = _device_budget(device)
    if need <= _DEVICE_HEADROOM * budget:
        return device
    warnings.warn(f"the Lanczos basis ({need / 2**30:.1f} GiB) does not fit in the memory this process may take "
                  f"on {device} ({budget / 2**30:.1f} GiB): it stays in pinned host memory, one host round trip "
                  "per HVP (slower)", stacklevel=4)
    return torch.device("cpu")


def _new_basis(rows: int, n: int, dtype: torch.dtype, device: Optional[torch.device | str]) -> torch.Tensor:
    """An empty ``rows x n`` basis on ``device``, or in pinned host memory when it does not fit there."""
    wanted = torch.device(device if device is not None else "cpu")
    placed = _basis_device(wanted, rows, n, dtype)
    pin = wanted.type == "cuda" and placed.type == "cpu"  # only the host fallback of a GPU run: fast copies
    return torch.empty(rows, n, dtype=dtype, device=placed, pin_memory=pin)


def _column_block(basis: torch.Tensor) -> int:
    return _LOW_PRECISION_BLOCK if basis.device.type == "cpu" else _LOW_PRECISION_BLOCK_GPU


def _project(basis: torch.Tensor, rows: int, w: torch.Tensor) -> torch.Tensor:
    """``basis[:rows] @ w`` in float64, on the basis's device. A float32 basis is multiplied in place, a block
    of columns at a time, each block's float32 products added up in float64: about 2e-7 relative on a
    23.5M-vector, the order of the basis's own float32 rounding, which the second Gram-Schmidt pass and
    the solver's tolerance floor (50 eps of float32) allow for. No float64 copy of the basis: converting
    it cost 5x the memory traffic."""
    if basis.dtype == torch.float64:
        return basis[:rows] @ w
    out = torch.zeros(rows, dtype=torch.float64, device=basis.device)
    step = _column_block(basis)
    for c in range(0, w.numel(), step):
        out += basis[:rows, c:c + step] @ w[c:c + step].to(basis.dtype)
    return out


def _block(rows: int, chunk: int) -> int:
    """Columns per block, so that a float64 copy of ``rows`` basis rows stays within ``chunk`` x 8 bytes x 32."""
    return max(1 << 12, (chunk * 32) // max(rows, 1))


def _subtract_span(basis: torch.Tensor, rows: int, coef: torch.Tensor, w: torch.Tensor) -> None:
    """``w -= basis[:rows].T @ coef`` in place, ``w`` in float64 (a float32 basis's correction in float32:
    the second Gram-Schmidt pass removes what its rounding leaves)."""
    if basis.dtype == torch.float64:
        w -= basis[:rows].T @ coef
        return
    coef = coef.to(basis.dtype)
    step = _column_block(basis)
    for c in range(0, w.numel(), step):
        w[c:c + step] -= basis[:rows, c:c + step].T @ coef


def _orthogonalise(basis: torch.Tensor, rows: int, w: torch.Tensor) -> torch.Tensor:
    """Remove ``w``'s components along ``basis[:rows]`` (two Gram-Schmidt passes: twice is enough, Parlett);
    returns the coefficients, float64 on the host."""
    h = _project(basis, rows, w)
    _subtract_span(basis, rows, h, w)
    h2 = _project(basis, rows, w)
    _subtract_span(basis, rows, h2, w)
    return (h + h2).cpu()


def _next_vector(matvec: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``matvec(v)`` as a fresh float64 vector on the basis's device (never a view of the basis)."""
    w = matvec(v)
    return w.to(basis.device, torch.float64, copy=True)


def lanczos_basis_size(n: int, k: int, ncv: Optional[int] = None) -> int:
    """The thick restart's basis size for the top ``k`` of an ``n``-dimensional operator: ``ncv``, by default
    ``k + max(20, k // 2)``, at most ``n - 1``."""
    return min(n - 1, ncv or k + max(20, k // 2))


def thick_restart_lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, k: int, *, which: str = "LA",
                          tol: float = 1e-6, ncv: Optional[int] = None, max_matvecs: Optional[int] = None,
                          seed: int = 0, basis_dtype: torch.dtype = torch.float64, eigenvectors: bool = False,
                          chunk: int = 1 << 20, device: Optional[torch.device | str] = None
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """Top-``k`` eigenpairs of a symmetric operator by thick-restart Lanczos (Wu & Simon 2000).

    A basis of ``ncv`` vectors (stored in ``basis_dtype``; all arithmetic in float64) is built with full
    reorthogonalisation (two Gram-Schmidt passes); when it is full, the ``k + (ncv - k) // 2`` wanted Ritz
    vectors are kept, rotated into place column block by column block (no second copy of the basis), and
    the Krylov space grows again from the residual. The basis and every vector live on ``device`` (default
    the CPU; pass the model's device: ``matvec`` gets and returns vectors there), or on the host when the
    basis does not fit the device. Converged when every wanted residual is at most ``tol * |eigenvalue|``
    (``tol`` is at least ``50 eps`` of the basis dtype: 6e-6 for float32); float64 temporaries are kept to
    ``chunk x 32`` elements (256 MB by default) whatever ``ncv`` is; gives up with ``RuntimeError`` after
    ``max_matvecs`` (default ``max(1000, 50 ncv)``). Returns ``(eigenvalues descending, eigenvectors (n x k,
    on the host) or None, matvecs)``.
    """
    if which not in ("LA", "LM"):
        raise ValueError(f"which must be 'LA' or 'LM', got {which!r}")
    m = lanczos_basis_size(n, k, ncv)
    if not 0 < k < m:
        raise ValueError(f"need 0 < k < ncv < n, got k={k}, ncv={m}, n={n}")
    # a float32 basis cannot resolve residuals much below its rounding: hold it to what it can reach
    tol = max(tol, 50 * torch.finfo(basis_dtype).eps)
    max_matvecs = max_matvecs or max(1000, 50 * m)
    basis = _new_basis(m + 1, n, basis_dtype, device)
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    basis[0] = (v / v.norm()).to(basis.device, basis_dtype)
    proj = np.zeros((m, m))
    start, matvecs = 0, 0
    with exact_matmul():
        while True:
            beta, m_eff = _extend(matvec, basis, proj, start, m)
            matvecs += m_eff - start
            theta, ritz = np.linalg.eigh(proj[:m_eff, :m_eff])
            order = np.argsort(-theta if which == "LA" else -np.abs(theta), kind="stable")
            wanted = order[:k]
            residual = np.abs(beta * ritz[m_eff - 1, wanted])
            converged = (residual <= tol * np.maximum(np.abs(theta[wanted]), 1e-300)).all() or m_eff < m
            if converged or matvecs >= max_matvecs:
                if not converged:
                    raise RuntimeError(f"Lanczos did not converge within {matvecs} HVPs "
                                       f"({int((residual <= tol * np.abs(theta[wanted])).sum())} of {k} eigenvalues); "
                                       "raise max_hvps or tol")
                break
            keep = order[: min(m - 1, k + (m - k) // 2)]
            _restart(basis, ritz[:, keep], m, chunk)
            proj = np.zeros((m, m))
            proj[np.arange(len(keep)), np.arange(len(keep))] = theta[keep]
            start = len(keep)
        final = wanted[np.argsort(-theta[wanted], kind="stable")]  # descending by value
        vectors = _ritz_vectors(basis, ritz[:, final], m_eff, chunk) if eigenvectors else None
    return torch.from_numpy(theta[final].copy()), vectors, matvecs


def _extend(matvec: Callable, basis: torch.Tensor, proj: np.ndarray, start: int, m: int) -> Tuple[float, int]:
    """Grow the Krylov basis from row ``start`` to ``m`` (filling ``proj``); returns (last beta, rows built),
    fewer rows when the space became invariant."""
    beta = 0.0
    for j in range(start, m):
        w = _next_vector(matvec, basis[j].double(), basis)
        h = _orthogonalise(basis, j + 1, w).numpy()
        proj[: j + 1, j] = h
        proj[j, : j + 1] = h
        beta = float(w.norm())
        if beta <= 1e-14 * max(1.0, float(np.abs(h).max())):  # invariant subspace: nothing more to find
            return beta, j + 1
        if j + 1 < m:
            proj[j + 1, j] = proj[j, j + 1] = beta
        basis[j + 1] = (w / beta).to(basis.dtype)
    return beta, m


def _restart(basis: torch.Tensor, keep: np.ndarray, m: int, chunk: int) -> None:
    """``V[:l] = S_keep^T V[:m]`` block by block, in place, then the residual vector moves to row ``l``."""
    rotation = torch.from_numpy(np.ascontiguousarray(keep.T)).to(basis.device)  # l x m
    kept = rotation.shape[0]
    step = _block(m, chunk)
    for c in range(0, basis.shape[1], step):
        basis[:kept, c:c + step] = (rotation @ basis[:m, c:c + step].double()).to(basis.dtype)
    basis[kept] = basis[m]


def _ritz_vectors(basis: torch.Tensor, coef: np.ndarray, rows: int, chunk: int) -> torch.Tensor:
    """``V[:rows]^T coef`` (n x k, float64), computed on the basis's device a block at a time, kept on the host."""
    n, k = basis.shape[1], coef.shape[1]
    coef_t = torch.from_numpy(np.ascontiguousarray(coef)).to(basis.device)
    vectors = torch.zeros(n, k, dtype=torch.float64)
    for c in range(0, n, chunk):
        vectors[c:c + chunk] = (basis[:rows, c:c + chunk].double().T @ coef_t).cpu()
    return vectors


def _rademacher(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A +-1 vector drawn on the host (the same draws whatever the device), then moved to ``device``."""
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
    return (signs.to(device) * 2 - 1).to(torch.float64)


def hessian_trace(model: nn.Module, loss_fn: Callable, batches: Batches, samples: int = 100,
                  seed: int = 0, distributed: Optional[bool] = None,
                  on_hvp: Optional[Callable[[int], None]] = None) -> Tuple[float, float, int]:
    """Hutchinson's estimate of ``tr(H)`` with Rademacher vectors: ``(trace, standard error, hvps)``.

    Vectors and products stay on the model's device; one scalar per sample comes back."""
    hvp = HVP(model, loss_fn, batches, distributed, on_hvp)
    g = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(samples):
        v = _rademacher(hvp.n, g, hvp.device)
        estimates.append(float(v @ hvp.matvec(v)))
    est = np.asarray(estimates)
    return float(est.mean()), float(est.std(ddof=1) / math.sqrt(samples)), hvp.calls


def lanczos(matvec: Callable, n: int, steps: int, v0, *, device: Optional[torch.device | str] = None,
            basis_dtype: Optional[torch.dtype] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``steps`` Lanczos steps with full reorthogonalisation: the tridiagonal's ``(alpha, beta)`` (numpy).

    With a tensor ``v0``, ``matvec`` takes and returns tensors, and the basis lives on ``device`` (default
    ``v0``'s; the host when it does not fit), in ``basis_dtype`` (default float64 while it fits in 2 GiB, else
    float32). With a numpy ``v0``, ``matvec`` is a numpy function, as before.
    """
    if isinstance(v0, np.ndarray):
        host_matvec = matvec
        matvec = lambda t: torch.from_numpy(np.asarray(host_matvec(t.cpu().numpy()), dtype=np.float64))  # noqa: E731
        v0 = torch.from_numpy(v0)
    dtype = basis_dtype or _auto_basis_dtype(steps, n)
    basis = _new_basis(steps, n, dtype, device or v0.device)
    v = v0.to(basis.device, torch.float64)
    v = v / v.norm()
    alpha, beta = np.zeros(steps), np.zeros(max(steps - 1, 0))
    with exact_matmul():
        for j in range(steps):
            basis[j] = v.to(dtype)
            w = _next_vector(matvec, v, basis)
            alpha[j] = float(w @ v)
            _orthogonalise(basis, j + 1, w)
            if j == steps - 1:
                break
            beta[j] = float(w.norm())
            if beta[j] < 1e-12:  # invariant subspace: the spectrum seen from v0 is complete
                return alpha[: j + 1], beta[:j]
            v = w / beta[j]
    return alpha, beta


def spectral_density(model: nn.Module, loss_fn: Callable, batches: Batches, steps: int = 80, runs: int = 4,
                     grid_points: int = 1000, sigma: Optional[float] = None, seed: int = 0,
                     distributed: Optional[bool] = None, on_hvp: Optional[Callable[[int], None]] = None):
    """Stochastic Lanczos quadrature (Ghorbani et al. 2019): ``(grid, density, nodes, weights, hvps)``.

    ``nodes``/``weights`` (runs x steps) are the quadrature: ``E_v[v^T f(H) v] ~ sum_i w_i f(node_i)``.
    The density is those nodes smoothed by a Gaussian of width ``sigma`` (default 1% of the range).
    """
    from scipy.linalg import eigh_tridiagonal

    hvp = HVP(model, loss_fn, batches, distributed, on_hvp)
    steps = min(steps, hvp.n)
    g = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(runs):
        alpha, beta = lanczos(hvp.matvec, hvp.n, steps, _rademacher(hvp.n, g, hvp.device))
        theta, vecs = eigh_tridiagonal(alpha, beta)
        nodes.append(theta)
        weights.append(vecs[0] ** 2)
    grid, density = slq_density(nodes, weights, grid_points, sigma)
    return grid, density, nodes, weights, hvp.calls
