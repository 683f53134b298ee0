"""Linear CKA against an independent float64 numpy implementation, its invariances, and the probe."""
import numpy as np
import pytest
import timm
import torch

import rf_bench  # noqa: F401
from rf_bench.probes.cka import cka_matrix, default_layers, layer_grams, linear_cka


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, feature space: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), centred, float64;
    for wide layers its dual (Gram) form, tr(K L) / (||K||_F ||L||_F) with K = X X^T, which is cheaper."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    if x.shape[1] * y.shape[1] <= 1_000_000:
        return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    k, l = x @ x.T, y @ y.T
    return float((k * l).sum() / (np.linalg.norm(k) * np.linalg.norm(l)))


def test_matches_numpy_on_random_data():
    rng = np.random.default_rng(0)
    for n, p, q in ((50, 10, 30), (40, 200, 7), (64, 3, 3)):
        x = rng.standard_normal((n, p))
        y = x[:, :min(p, q)] @ rng.standard_normal((min(p, q), q)) + 0.5 * rng.standard_normal((n, q))
        got = linear_cka(torch.from_numpy(x).float(), torch.from_numpy(y).float())
        assert got == pytest.approx(numpy_cka(x.astype(np.float32), y.astype(np.float32)), abs=1e-6)


def test_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 20, generator=g, dtype=torch.float64)
    y = torch.randn(60, 12, generator=g, dtype=torch.float64) + x[:, :12]
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)  # symmetric
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), abs=1e-10)  # orthogonal transform
    assert linear_cka(3.7 * x, y) == pytest.approx(linear_cka(x, y), abs=1e-12)  # isotropic scaling
    assert linear_cka(x + 5.0, y) == pytest.approx(linear_cka(x, y), abs=1e-10)  # centring
    assert 0.0 <= linear_cka(x, torch.randn(60, 5, generator=g, dtype=torch.float64)) < 0.5


def _numpy_activations(model, images, names):
    acts = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: acts.__setitem__(n, o.detach().reshape(len(o), -1).double().numpy().copy()))
        for n in names]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return [acts[n] for n in names]


@pytest.mark.parametrize("name", ["resnet50_rfpool2", "vgg19_rfpool2"])
def test_matrix_matches_numpy_on_real_activations(name):
    torch.manual_seed(0)
    a = timm.create_model(name, width_mult=0.125).eval()
    torch.manual_seed(1)
    b = timm.create_model(name, width_mult=0.125).eval()
    images = torch.randn(40, 3, 32, 32)
    names = default_layers(a)
    assert len(names) == {"resnet50_rfpool2": 50, "vgg19_rfpool2": 17}[name]
    # small budget: several groups, several forward passes; batches that do not divide n
    matrix, names_a, names_b = cka_matrix(a, b, images, batch_size=16, budget_bytes=200_000)
    acts_a, acts_b = _numpy_activations(a, images, names), _numpy_activations(b, images, names)
    ref = np.array([[numpy_cka(x, y) for y in acts_b] for x in acts_a])
    np.testing.assert_allclose(matrix.numpy(), ref, atol=1e-6)
    within, _, _ = cka_matrix(a, a, images)
    np.testing.assert_allclose(within.diagonal().numpy(), 1.0, atol=1e-9)
    np.testing.assert_allclose(within.numpy(), within.numpy().T, atol=1e-12)


def test_layer_options():
    model = timm.create_model("resnet50_rfpool1", width_mult=0.125)
    assert default_layers(model)[:4] == ["rfpool", "layer1.0.act1", "layer1.0.act2", "layer1.0"]
    assert default_layers(model)[-1] == "fc"
    assert len(default_layers(model, "blocks")) == 1 + 16 + 1
    assert len(default_layers(model, "shortcut")) == 50 + 4
    assert default_layers(model, r"layer4\.\d$") == ["layer4.0", "layer4.1", "layer4.2"]
    with pytest.raises(ValueError, match="matches no module"):
        default_layers(model, r"^nope")
    vgg = timm.create_model("vgg19_rfpool2", width_mult=0.125)
    names = default_layers(vgg)
    assert names[0] == "features.3"  # the first conv's representation is what the rfpool hands on
    grams = layer_grams(vgg, torch.randn(10, 3, 32, 32), names)
    assert grams.shape == (17, 10, 10)


@pytest.mark.slow
def test_cka_probe_and_report(tmp_path, tiny_runs):
    from rf_bench.probes.base import resolve_suite, run_suite
    from rf_bench.report import write_report
    from rf_bench.results import ResultStore, find_runs

    probes = resolve_suite("cka")
    run_suite(probes, find_runs([str(d) for d in tiny_runs]), tmp_path / "results",
              {"cka": probes[0].Config(n_images=100)}, progress=False)
    store = ResultStore(tmp_path / "results")
    records = store.records("cka")
    assert len(records) == 2  # one per group of seeds
    for rec in records:
        tensors = store.tensors(__import__("pathlib").Path(rec["_path"]))
        assert set(tensors) == {"within_s0", "within_s1", "cross_s0_s1"}
        cross = tensors["cross_s0_s1"]
        (pair,) = rec["values"]["pairs"]
        assert pair["deeper_half_diagonal"] == pytest.approx(float(cross.diagonal()[8:].double().mean()), abs=1e-6)
    report = write_report(tmp_path / "results", tmp_path / "report").read_text()
    assert "## CKA: vgg19_rfpool on digits" in report
    assert (tmp_path / "report" / "cka_vgg19_rfpool_digits.png").stat().st_size > 10_000
