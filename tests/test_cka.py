"""Linear CKA against an independent float64 numpy implementation, its invariances, and the probe."""
import itertools

import numpy as np
import pytest
import timm
import torch
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.probes.cka import cka_matrix, default_layers, hsic1, layer_grams, linear_cka, minibatch_cka_matrix
from rf_bench.probes.base import available_probes


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
    report = write_report(tmp_path / "results", tmp_path / "report", available_probes()).read_text()
    assert "## CKA: vgg19_rfpool on digits" in report
    assert (tmp_path / "report" / "cka_vgg19_rfpool_digits.png").stat().st_size > 10_000

    # the minibatch estimator is a setting of the same probe, stored beside the exact one
    run_suite(probes, find_runs([str(d) for d in tiny_runs]), tmp_path / "results",
              {"cka": probes[0].Config(n_images=100, estimator="minibatch", batch_size=25)}, progress=False)
    minibatch = [r for r in ResultStore(tmp_path / "results").records("cka") if r["values"]["estimator"] == "minibatch"]
    assert len(minibatch) == 2
    tensors = store.tensors(__import__("pathlib").Path(minibatch[0]["_path"]))
    np.testing.assert_allclose(tensors["within_s0"].diagonal().numpy(), 1.0, atol=1e-6)
    report = write_report(tmp_path / "results", tmp_path / "report", available_probes()).read_text()
    assert report.count("## CKA: vgg19_rfpool on digits") == 2  # exact, and the minibatch estimator's own
    # two settings of one probe: each its own sections, named, with its files in its own folder
    minibatch_section = report.split("## CKA: vgg19_rfpool on digits (minibatch estimator) [")[1].split("\n## ")[0]
    assert minibatch_section.startswith("batch_size=25, estimator=minibatch]")
    (figure,) = __import__("re").findall(r"!\[[^]]*\]\((cka-batch_size=25-estimator=minibatch/cka_vgg19_rfpool_digits_minibatch\.png)\)",
                                         minibatch_section)
    assert (tmp_path / "report" / figure).stat().st_size > 10_000
    with pytest.raises(ValueError, match="cka.estimator must be 'exact' or 'minibatch'"):
        run_suite(probes, find_runs([str(d) for d in tiny_runs]), tmp_path / "results",
                  {"cka": probes[0].Config(estimator="sampled")}, progress=False)


def _u_statistic_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC straight from its definition (Song et al. 2012, Theorem 2): the mean over ordered
    4-tuples of distinct examples of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    m = len(k)
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(m), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def test_hsic1_matches_the_u_statistic():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((7, 3))
    y[:, 0] += 2 * x[:, 0]
    k, l = x @ x.T, y @ y.T
    grams_a = torch.from_numpy(np.stack([k, l]))
    got = hsic1(grams_a, torch.from_numpy(l[None]))
    assert got.shape == (2, 1)
    assert float(got[0, 0]) == pytest.approx(_u_statistic_hsic(k, l), rel=1e-10)
    assert float(got[1, 0]) == pytest.approx(_u_statistic_hsic(l, l), rel=1e-10)
    with pytest.raises(ValueError, match="at least 4"):
        hsic1(grams_a[:, :3, :3], grams_a[:, :3, :3])


def test_minibatch_cka_is_unbiased_where_batch_averages_are_not():
    """Summed unbiased HSIC over batches of 16 lands near the full-data CKA of 4096 examples; the
    average of each batch's (biased) CKA, which torch-cka reports, does not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 64, generator=g, dtype=torch.float64)
    y = x[:, :8] @ torch.randn(8, 32, generator=g, dtype=torch.float64) + 3 * torch.randn(4096, 32, generator=g,
                                                                                            dtype=torch.float64)
    model = _TwoViews(64)  # two "layers" reading the two halves of the input
    images = torch.cat([x, y], 1)
    exact = linear_cka(x, y)
    mini, names, _ = minibatch_cka_matrix(model, model, images, layers=["a", "b"], batch_size=16)
    batch_mean = np.mean([linear_cka(x[s:s + 16], y[s:s + 16]) for s in range(0, 4096, 16)])
    assert names == ["a", "b"]
    assert float(mini[0, 0]) == pytest.approx(1.0, abs=1e-12) and float(mini[1, 1]) == pytest.approx(1.0, abs=1e-12)
    assert float(mini[0, 1]) == pytest.approx(float(mini[1, 0]), abs=1e-12)
    assert abs(float(mini[0, 1]) - exact) < 0.02
    assert abs(batch_mean - exact) > 0.1  # the bias the unbiased estimator removes


class _TwoViews(nn.Module):
    def __init__(self, split: int) -> None:
        super().__init__()
        self.split = split
        self.a, self.b = nn.Identity(), nn.Identity()

    def forward(self, z):
        return self.a(z[:, : self.split]), self.b(z[:, self.split:])


def test_minibatch_cka_on_a_model_does_not_drift_with_batch_size():
    """On conv features (p >> n) the sample CKA is biased upwards and falls as n grows; the unbiased
    estimator gives the same matrix from batches of 64 as from one batch of 512."""
    torch.manual_seed(0)
    model = timm.create_model("vgg19_rfpool2", width_mult=0.125).eval()
    images = torch.randn(512, 3, 32, 32)
    small, names, _ = minibatch_cka_matrix(model, model, images, batch_size=64)
    whole, names_w, _ = minibatch_cka_matrix(model, model, images, batch_size=512)
    assert names == names_w == default_layers(model)
    np.testing.assert_allclose(small.diagonal().numpy(), 1.0, atol=1e-9)
    np.testing.assert_allclose(small.numpy(), small.numpy().T, atol=1e-12)
    assert float((small - whole).abs().max()) < 0.03
    exact_small = cka_matrix(model, model, images[:64])[0]
    exact_whole = cka_matrix(model, model, images)[0]
    assert float((exact_small - exact_whole).abs().max()) > 0.15  # the sample CKA's bias, for contrast
    # one batch of all n: the same U-statistic as summing the n x n Grams' unbiased HSIC directly
    acts = _numpy_activations(model, images, names[:2])
    grams = [torch.from_numpy((a - a.mean(0)) @ (a - a.mean(0)).T) for a in acts]
    direct = hsic1(grams[0][None], grams[1][None]) / torch.sqrt(hsic1(grams[0][None], grams[0][None])
                                                               * hsic1(grams[1][None], grams[1][None]))
    assert float(whole[0, 1]) == pytest.approx(float(direct), abs=1e-9)


def test_features_changed_in_place_later_are_copied_and_inputs_left_alone():
    """A BatchNorm followed by an in-place ReLU, an Identity handing on the same tensor, and a layer
    that returns its input: all must match numpy on their true outputs, and the images stay as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.Identity(), nn.Conv2d(8, 4, 3), nn.ReLU(inplace=True)).eval()
    model[2].running_mean.uniform_(-1, 1)
    images = torch.randn(30, 3, 12, 12)
    before = images.clone()
    names = ["0", "2", "3", "4", "6"]
    matrix, _, _ = cka_matrix(model, model, images, layers=names, batch_size=7)
    acts = _numpy_activations(model, images, names)
    ref = np.array([[numpy_cka(a, b) for b in acts] for a in acts])
    np.testing.assert_allclose(matrix.numpy(), ref, atol=1e-6)
    assert torch.equal(images, before)
    assert not np.allclose(ref[1, 2], 1.0)  # the BN output really differs from the ReLU that overwrote it
