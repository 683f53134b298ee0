"""The saturation probe against exact cases and an independent numpy computation."""
import numpy as np
import pytest
import torch
from torch import nn

import rf_bench  # noqa: F401
from rf_bench.probes.base import ProbeContext, available_probes
from rf_bench.probes.saturation import (SaturationConfig, SaturationProbe, channel_covariances, layer_saturation,
                                        saturation_of, saturation_sections)
from rf_bench.results import load_run
from rf_bench.rf import receptive_field


def _spanning(d: int, c: int, seed: int = 0):
    """A 1x1 conv that embeds d equal-variance directions in c channels, and inputs that use all d equally."""
    q, _ = torch.linalg.qr(torch.randn(c, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    conv = nn.Conv2d(d, c, 1, bias=False).double()
    conv.weight.data = q.reshape(c, d, 1, 1)
    eye = torch.eye(d, dtype=torch.float64)
    images = torch.cat([eye, -eye]).reshape(2 * d, d, 1, 1).repeat(1, 1, 3, 2)  # +-e_i at every position
    return nn.Sequential(conv), images


@pytest.mark.parametrize("d, c", [(1, 4), (3, 8), (5, 5), (7, 64)])
def test_features_spanning_d_of_c_channels_have_saturation_d_over_c(d, c):
    model, images = _spanning(d, c)
    assert layer_saturation(model, images, ["0"], threshold=0.99) == {"0": d / c}


def test_covariances_and_saturation_equal_numpy_on_a_small_conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 9, 3, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.LazyLinear(4)).double()
    images = torch.randn(40, 2, 8, 8, dtype=torch.float64)
    model(images[:1])
    layers = ["1", "3", "5"]
    captured = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: captured.setdefault(n, o.detach()))
               for n in layers]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    covariances = channel_covariances(model, images, layers, batch_size=7)  # batches that do not divide 40
    for name in layers:
        out = captured[name].numpy()
        samples = np.moveaxis(out, 1, -1).reshape(-1, out.shape[1]) if out.ndim == 4 else out
        reference = np.cov(samples, rowvar=False)
        assert np.allclose(covariances[name].numpy(), reference, rtol=1e-10, atol=1e-12)
        for threshold in (0.5, 0.9, 0.99):
            eig = np.sort(np.clip(np.linalg.eigvalsh(reference), 0, None))[::-1]
            needed = int(np.argmax(np.cumsum(eig) / eig.sum() >= threshold - 1e-12)) + 1
            assert saturation_of(covariances[name], threshold) == needed / len(eig)


def test_a_layer_without_variance_has_saturation_zero():
    assert saturation_of(torch.zeros(3, 3, dtype=torch.float64), 0.99) == 0.0


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="threshold"):
        SaturationConfig(threshold=1.5)
    with pytest.raises(ValueError, match="stage"):
        SaturationConfig(stage="middle")


def test_the_probe_records_each_layers_rf_over_the_image_and_reports_saturation_by_depth(tiny_runs, tmp_path):
    assert "saturation" in available_probes()
    run = load_run(tiny_runs[2])  # vgg19_rfpool2
    config = SaturationConfig(n_images=64, batch_size=32)
    values = SaturationProbe().run(run, config, ProbeContext(results_dir=tmp_path)).values
    layers = values["layers"]
    assert len(values["saturation"]) == len(layers) and all(0 < s <= 1 for s in values["saturation"])
    model = run.create_model()
    side = values["image_size"]
    middle = layers[len(layers) // 2]
    assert values["rf_over_image"][len(layers) // 2] == receptive_field(model, (3, side, side), layer=middle).size / side
    assert values["rf_over_image"][-1] is None and values["past_border"][-1]  # the classifier sees everything
    assert values["past_border"] == [r is None or r > 1 for r in values["rf_over_image"]]
    assert values["deeper_half"] == pytest.approx(np.mean(values["saturation"][len(layers) // 2:]))
    record = dict(probe="saturation", dataset="digits", values=values)
    (section,) = saturation_sections([record], tmp_path)
    assert "deeper-half saturation" in section.markdown
    assert (tmp_path / "saturation_vgg19_rfpool_digits.png").stat().st_size > 10_000
