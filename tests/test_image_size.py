"""The image size as a training setting and a grid axis: resized once, antialiased, part of a run's identity only
where it differs from the data set's own size."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rf_bench  # noqa: F401
from rf_bench.data import ImageSet
from rf_bench.probes.base import ProbeContext
from rf_bench.probes.prune import PruneConfig, PruneProbe
from rf_bench.recipes import config_hash, resolve_config, validate_settings
from rf_bench.runs import load_run
from rf_bench.studies import study_text
from rf_bench.sweep import load_sweep
from rf_bench.train import train

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _images(n=3, channels=1, side=32, seed=0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, side, side), generator=gen, dtype=torch.uint8)
    return ImageSet(images, torch.zeros(n, dtype=torch.long), ["a"], (0.5,) * channels, (0.25,) * channels)


def test_a_split_at_its_own_size_is_unchanged():
    data = _images()
    assert data.resized(None) is data and data.resized(32) is data


@pytest.mark.parametrize("side", [64, 20])
def test_resizing_is_antialiased_bilinear_as_pil_does_it(side):
    data = _images(channels=1)
    resized = data.resized(side)
    assert resized.images.shape == (3, 1, side, side) and resized.images.dtype == torch.uint8
    for image, ours in zip(data.images, resized.images):
        pil = Image.fromarray(image[0].numpy()).resize((side, side), Image.BILINEAR)  # PIL's filter is antialiased
        diff = np.abs(np.asarray(pil, dtype=np.int16) - ours[0].numpy().astype(np.int16))
        assert diff.max() <= 1, diff.max()  # rounding apart
    assert resized.mean == data.mean and resized.std == data.std  # normalised as the native split


def test_the_image_size_joins_a_runs_identity_only_where_it_differs_from_the_data_sets_own():
    base = dict(model="vgg19_rfpool1", dataset="fashion-mnist", model_kwargs=dict(width_mult=0.0625))
    native = resolve_config("fast", **base)
    assert config_hash(resolve_config("fast", image_size=32, **base)) == config_hash(native)
    assert config_hash(resolve_config("fast", image_size=64, **base)) != config_hash(native)
    # Tiny ImageNet's own size is 64: 64 names its runs as they were, 32 is another run
    tiny = dict(base, dataset="tiny-imagenet")
    assert config_hash(resolve_config("fast", image_size=64, **tiny)) == config_hash(resolve_config("fast", **tiny))
    assert config_hash(resolve_config("fast", image_size=32, **tiny)) != config_hash(resolve_config("fast", **tiny))
    with pytest.raises(ValueError, match="--image-size 4 is invalid"):
        validate_settings(resolve_config("fast", image_size=4, **base))


def test_a_grid_of_image_sizes_keeps_the_32_px_runs_of_the_shipped_study():
    text = study_text("fashion-cpu").replace("[grid]", "[grid]\nimage_sizes = [32, 64]", 1)
    sweep = load_sweep(text=text)
    committed = {p.name for p in (DOCS / "study-fashion" / "results").iterdir() if not p.name.startswith("group-")}
    at_32 = {f"{c.model}-{c.dataset}-s{c.seed}-{config_hash(c)}" for c in sweep.runs if c.image_size is None}
    assert at_32 == committed  # the study's 32 px runs, by the ids its committed results carry
    assert sorted({c.image_size for c in sweep.runs}, key=str) == [64, None]
    with pytest.raises(ValueError, match="not both"):
        load_sweep(text=text.replace("[train]", "[train]\nimage_size = 64", 1))


def test_a_run_trained_at_64_px_is_probed_at_64_px(tmp_path):
    cfg = resolve_config("fast", model="vgg19_rfpool3", dataset="digits", seed=0, epochs=1, lr=0.02, batch_size=64,
                         model_kwargs=dict(width_mult=0.0625), image_size=64)
    run = load_run(train(cfg, output=tmp_path / "runs", progress=False))
    assert json.loads((run.path / "config.json").read_text())["config"]["image_size"] == 64
    assert run.load_data("test").images.shape[-2:] == (64, 64) and run.load_data("train").input_size == (3, 64, 64)
    config = PruneConfig(rates=(0.9,), finetune_epochs=0, bn_images=64, signal_images=16)
    values = PruneProbe().run(run, config, ProbeContext(results_dir=tmp_path / "results")).values
    assert values["input_size"] == [3, 64, 64]
    assert sum(values["layer_live"]) == sum(values["layer_sizes"])  # at 64 px every weight of k = 3 sees the image
