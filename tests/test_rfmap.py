"""RF maps: batched = per sample, linear nets against the analytic kernel, support = RF, maxima fall with k."""
import numpy as np
import pytest
import timm
import torch
from scipy.signal import convolve2d
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.probes.rfmap import effective_rf, gradient_map, last_conv_name
from rf_bench.rf import gradient_rf, receptive_field
from rf_bench.probes.base import available_probes


def test_batched_map_equals_separate_passes():
    model = timm.create_model("resnet50_rfpool2", width_mult=0.125)
    batched = gradient_map(model, (3, 48, 48), n=6, batch_size=6)
    single = gradient_map(model, (3, 48, 48), n=6, batch_size=1)
    torch.testing.assert_close(batched.mean_map, single.mean_map, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(batched.maxima, single.maxima, rtol=1e-5, atol=1e-9)
    assert batched.layer == "layer4.2.conv3" == last_conv_name(model)


class _LinearStack(nn.Module):
    def __init__(self, kernels=(3, 5, 3)):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(1, 1, k, padding=k // 2, bias=False) for k in kernels])

    def forward_features(self, x):
        return self.convs(x)


def test_linear_conv_stack_map_is_the_convolution_of_its_kernels():
    model = _LinearStack()
    kernel = np.ones((1, 1))
    for conv in model.convs:
        kernel = convolve2d(kernel, conv.weight.detach().double().numpy()[0, 0], mode="full")
    size, centre = 32, 16
    pad = sum(c.padding[0] for c in model.convs)
    expected = np.zeros((size, size))
    expected[centre - pad:centre - pad + kernel.shape[0], centre - pad:centre - pad + kernel.shape[1]] = np.abs(kernel)
    rfmap = gradient_map(model, (1, size, size), n=3)
    np.testing.assert_allclose(rfmap.mean_map.numpy(), expected, rtol=1e-5, atol=1e-7)
    # a linear net's map does not depend on the input
    np.testing.assert_allclose(rfmap.maxima.numpy(), np.abs(kernel).max(), rtol=1e-5)


def test_map_support_is_the_receptive_field():
    model = timm.create_model("vgg19_rfpool2", width_mult=0.125)
    layer = last_conv_name(model)
    rf = receptive_field(model, (3, 64, 64), layer=layer)
    size = rf.size + 2 * rf.stride + 8
    rfmap = gradient_map(model, (3, size, size), n=4)
    rows = torch.nonzero(rfmap.mean_map.sum(1) > 0).flatten()
    cols = torch.nonzero(rfmap.mean_map.sum(0) > 0).flatten()
    assert int(rows[-1] - rows[0] + 1) == int(cols[-1] - cols[0] + 1) == rf.size == 358
    assert gradient_rf(model, (3, size, size), layer=layer) == rf.size


@pytest.mark.parametrize("family", ["resnet50_rfpool", "vgg19_rfpool"])
def test_maxima_fall_as_k_grows(family):
    maxima = []
    for k in (1, 2, 3, 4):
        torch.manual_seed(0)
        model = timm.create_model(f"{family}{k}", width_mult=0.25)
        maxima.append(gradient_map(model, (3, 64, 64), n=10).mean_max)
    assert maxima == sorted(maxima, reverse=True) and maxima[0] > 2 * maxima[-1], maxima


def test_effective_rf_radii_on_a_known_mass():
    mass = torch.zeros(21, 21)
    mass[10, 10] = 50.0  # half the mass at the centre
    mass[10, 13] = 40.0  # 40% at radius 3
    mass[0, 0] = 10.0  # 10% at radius 10
    assert effective_rf(mass, (10.0, 10.0)) == dict(r50=0, r90=3, r99=10)


@pytest.mark.slow
def test_rfmap_probe_and_report(tmp_path, tiny_runs):
    from rf_bench.probes.base import resolve_suite, run_suite
    from rf_bench.report import write_report
    from rf_bench.results import ResultStore, find_runs

    probes = resolve_suite("rfmap")
    config = probes[0].Config(n=4)
    run_suite(probes, find_runs([str(d) for d in tiny_runs]), tmp_path / "results", {"rfmap": config},
              progress=False)
    records = ResultStore(tmp_path / "results").records("rfmap")
    assert len(records) == 4
    for rec in records:
        k = rec["values"]["k"]
        for stage in ("init", "final"):
            v = rec["values"][stage]
            assert v["analytic_rf"] == v["gradient_rf"] == 178 * k + 2
            assert len(v["maxima"]) == 4 and v["mean_max"] == pytest.approx(np.mean(v["maxima"]))
            assert 0 <= v["r50"] <= v["r90"] <= v["r99"]
    report = write_report(tmp_path / "results", tmp_path / "report", available_probes()).read_text()
    assert "## RF maps: vgg19_rfpool on digits" in report and "1.24e-05" in report
    assert (tmp_path / "report" / "rfmap_vgg19_rfpool_digits.png").stat().st_size > 10_000
