"""MNIST and Fashion-MNIST: IDX files (raw, gzipped), Hub copies and Debian's package give identical tensors."""
import gzip

import numpy as np
import pytest
import torch

from rf_bench import data as D
from rf_bench.data import sources

import fakedata as fd


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def grey():
    return fd.grey_arrays()


@pytest.fixture(autouse=True)
def _no_hub_no_env(monkeypatch):
    """No test here may reach the Hub or a data dir from the environment."""
    def offline(*a, **k):
        raise ConnectionError("offline in tests")
    monkeypatch.setattr(sources, "load_from_hub", offline)
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)


def _reference(arrays, split):
    """What every source must give: 28x28 padded with 2 zero pixels each side, one channel."""
    x, y = arrays[split]
    padded = np.zeros((len(x), 1, 32, 32), np.uint8)
    padded[:, 0, 2:30, 2:30] = x
    return torch.from_numpy(padded), torch.from_numpy(y.astype(np.int64))


def _numpy_stats(arrays):
    x, _ = arrays["train"]
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float64) / 255
    return padded.mean(), padded.std(ddof=1)




@pytest.mark.parametrize("split", ["train", "test"])
def test_every_source_gives_identical_tensors(tmp_path, cache, grey, split):
    fd.write_idx(tmp_path / "gz", grey, gz=True)
    fd.write_idx(tmp_path / "raw", grey, gz=False)
    fd.write_idx(tmp_path / "tv" / "FashionMNIST" / "raw", grey)  # torchvision's layout
    fd.write_grey_parquet(tmp_path / "parquet", grey)
    fd.write_save_to_disk(tmp_path / "disk", fd.grey_hf_datasets(grey))
    images, labels = _reference(grey, split)
    mean, std = _numpy_stats(grey)
    for fmt in ("gz", "raw", "tv", "parquet", "disk"):
        got = D.load("fashion_mnist", split, data_dir=tmp_path / fmt, cache_dir=cache / fmt)
        assert got.images.dtype == torch.uint8 and got.images.shape[1:] == (1, 32, 32), fmt
        assert torch.equal(got.images, images), fmt
        assert torch.equal(got.labels, labels), fmt
        assert got.classes == fd.FASHION_CLASSES, fmt
        # normalisation is the train split's, for both splits
        assert got.mean == pytest.approx((mean,), abs=1e-12) and got.std == pytest.approx((std,), abs=1e-12), fmt


@pytest.mark.parametrize("folder", ["fashion_mnist", "fashion-mnist", "fashionmnist", "FashionMNIST"])
def test_a_folder_named_like_any_spelling_of_the_data_set_is_found(tmp_path, cache, grey, folder):
    fd.write_idx(tmp_path / folder, grey)
    for name in ("fashion_mnist", "fashion-mnist"):
        got = D.load(name, "test", data_dir=tmp_path, cache_dir=cache)
        assert torch.equal(got.images, _reference(grey, "test")[0]) and got.source == str(tmp_path / folder)


def test_mnist_reads_its_idx_files_and_hub_copy(tmp_path, cache, grey):
    fd.write_idx(tmp_path / "idx" / "MNIST" / "raw", grey)
    fd.write_grey_parquet(tmp_path / "hub", grey, config="mnist", classes=[str(d) for d in range(10)])
    a = D.load("mnist", "test", data_dir=tmp_path / "idx", cache_dir=cache)
    b = D.load("mnist", "test", data_dir=tmp_path / "hub", cache_dir=cache)
    assert torch.equal(a.images, _reference(grey, "test")[0]) and torch.equal(a.images, b.images)
    assert a.classes == b.classes == [str(d) for d in range(10)] and a.mean == b.mean


def test_debian_files_are_found_without_a_flag(tmp_path, cache, grey, monkeypatch):
    assert sources.DEBIAN_FASHION_MNIST.as_posix() == "/usr/share/datasets/fashion-mnist"
    assert sources.DATASETS["fashion-mnist"].default_dirs == (sources.DEBIAN_FASHION_MNIST,)
    system = fd.write_idx(tmp_path / "usr-share", grey)
    spec = sources.DATASETS["fashion-mnist"]
    monkeypatch.setitem(sources.DATASETS, "fashion-mnist", type(spec)(**{**spec.__dict__, "default_dirs": (system,)}))
    got = D.load("fashion-mnist", "train", cache_dir=cache)  # no data_dir, no env, the Hub unreachable
    assert torch.equal(got.images, _reference(grey, "train")[0]) and got.source == str(system)
    # a folder given explicitly wins over the system copy, and an empty one is an error, not a silent fallback
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing usable in .*empty.*train-images-idx3-ubyte.gz"):
        D.load("fashion-mnist", "train", data_dir=tmp_path / "empty", cache_dir=cache)


def test_no_copy_anywhere_names_the_debian_package_layout(tmp_path, cache, monkeypatch):
    spec = sources.DATASETS["fashion-mnist"]
    monkeypatch.setitem(sources.DATASETS, "fashion-mnist",
                        type(spec)(**{**spec.__dict__, "default_dirs": (tmp_path / "absent",)}))
    with pytest.raises(FileNotFoundError, match=r"Hub is unreachable.*--data-dir.*IDX") as e:
        D.load("fashion-mnist", "test", cache_dir=cache)
    assert "\n" not in str(e.value)


def _corrupt(folder, name, data):
    (folder / name).write_bytes(gzip.compress(data, mtime=0))


def _bad_copies(grey):
    x, y = grey["train"]
    good_images, good_labels = fd.idx_bytes(x), fd.idx_bytes(y)
    wrong_magic = bytearray(good_images)
    wrong_magic[2] = 0x0D  # float elements
    bad_label = y.copy()
    bad_label[3] = 10
    return {
        "magic": ("train-images-idx3-ubyte.gz", bytes(wrong_magic), r"train-images-idx3-ubyte.gz has magic number "
                                                                    r"0x00000d03, not 0x00000803"),
        "dims": ("train-labels-idx1-ubyte.gz", fd.idx_bytes(y[:, None]), r"train-labels-idx1-ubyte.gz has magic"),
        "truncated": ("train-images-idx3-ubyte.gz", good_images[:-100], r"train-images-idx3-ubyte.gz holds .* bytes "
                                                                        r"of data but its header says 40x28x28"),
        "header": ("train-images-idx3-ubyte.gz", good_images[:9], r"train-images-idx3-ubyte.gz is truncated"),
        "count": ("train-labels-idx1-ubyte.gz", fd.idx_bytes(y[:-1]), r"train-labels-idx1-ubyte.gz has 39 labels but "
                                                                      r"train-images-idx3-ubyte.gz has 40 images"),
        "label": ("train-labels-idx1-ubyte.gz", fd.idx_bytes(bad_label), r"train-labels-idx1-ubyte.gz has label 10, "
                                                                         r"outside the 10 classes"),
        "gzip": ("train-images-idx3-ubyte.gz", None, r"corrupt IDX file .*train-images-idx3-ubyte.gz"),
    }, good_labels


@pytest.mark.parametrize("case", ["magic", "dims", "truncated", "header", "count", "label", "gzip"])
def test_bad_idx_file_is_one_line_naming_it_and_nothing_is_cached(tmp_path, cache, grey, case):
    folder = fd.write_idx(tmp_path / "copy", grey)
    bad, _ = _bad_copies(grey)
    name, data, message = bad[case]
    if data is None:  # a torn gzip stream
        whole = (folder / name).read_bytes()
        (folder / name).write_bytes(whole[: len(whole) // 2])
    else:
        _corrupt(folder, name, data)
    with pytest.raises(ValueError, match=message) as e:
        D.load("fashion-mnist", "train", data_dir=folder, cache_dir=cache)
    assert "\n" not in str(e.value)
    assert not list(cache.glob("*.safetensors")) if cache.exists() else True
    # once the file is repaired, the load works and only then is the split cached
    fd.write_idx(folder, {"train": grey["train"]})
    assert len(D.load("fashion-mnist", "train", data_dir=folder, cache_dir=cache)) == 40
    assert len(list(cache.glob("fashion-mnist-train-*.safetensors"))) == 1


def test_missing_half_of_a_pair_is_named(tmp_path, cache, grey):
    folder = fd.write_idx(tmp_path / "copy", grey)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="no t10k-labels IDX file beside the other one"):
        D.load("fashion-mnist", "test", data_dir=folder, cache_dir=cache)


# -------------------------------------------------------------------------------- stratified subset

def test_per_class_subset_is_stratified_seeded_and_checked(grey):
    full = D.ImageSet(*_reference(grey, "train"), fd.FASHION_CLASSES, (0.2,), (0.3,), "fashion-mnist", "train")
    a, b, c = full.per_class(3, seed=0), full.per_class(3, seed=0), full.per_class(3, seed=1)
    assert torch.equal(a.labels.bincount(minlength=10), torch.full((10,), 3))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    # every picked image is one of the split's, with its own label, in split order
    index = {full.images[i].numpy().tobytes(): i for i in range(len(full))}
    picked = [index[img.numpy().tobytes()] for img in a.images]
    assert picked == sorted(picked) and torch.equal(full.labels[picked], a.labels)
    assert a.mean == full.mean
    with pytest.raises(ValueError, match="only 4 images of class .*; ask for at most 4 per class"):
        full.per_class(5)
    with pytest.raises(ValueError, match="give n >= 1"):
        full.per_class(0)


def test_subset_joins_the_run_id_only_when_set():
    from rf_bench.recipes import config_hash, resolve_config

    plain = resolve_config("fast", model="vgg19_rfpool1", dataset="fashion-mnist")
    assert "train_per_class" not in plain.identity() and "subset_seed" not in plain.identity()
    sub = resolve_config("fast", model="vgg19_rfpool1", dataset="fashion-mnist", train_per_class=50)
    other = resolve_config("fast", model="vgg19_rfpool1", dataset="fashion-mnist", train_per_class=50, subset_seed=1)
    assert len({config_hash(plain), config_hash(sub), config_hash(other)}) == 3


def test_training_on_a_grey_subset(tmp_path, grey):
    import json

    from rf_bench.train import main

    folder = fd.write_idx(tmp_path / "fm", fd.grey_arrays(n_train=60, n_test=20))
    rc = main(["--model", "vgg19_rfpool2", "--dataset", "fashion_mnist", "--data-dir", str(folder), "--recipe", "fast",
               "--epochs", "1", "--batch-size", "10", "--width-mult", "0.0625", "--train-per-class", "2",
               "--output", str(tmp_path / "runs"), "--no-progress", "--cpu"])
    assert rc == 0
    (run,) = (tmp_path / "runs").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["train_per_class"] == 2 and config["data"]["train_size"] == 20
    assert config["data"]["test_size"] == 20 and config["data"]["input_size"] == [1, 32, 32]
    assert config["model_kwargs"]["in_chans"] == 1
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and 0 <= metrics[0]["test_acc"] <= 1
    # the probes see the run's own subset (Hessian images, fine-tunes), and the whole test split
    from rf_bench.results import load_run

    seen = load_run(run).load_data("train", str(folder))
    assert len(seen) == 20 and torch.equal(seen.labels.bincount(), torch.full((10,), 2))
    assert len(load_run(run).load_data("test", str(folder))) == 20
    # every per-run probe works on a one-channel run (the RF map's random inputs take the run's channels)
    from rf_bench.cli import main as cli

    assert cli(["probe", str(run), "--suite", "rfmap,hessian", "--results", str(tmp_path / "results"),
                "--data-dir", str(folder), "--no-progress", "--set", "rfmap.n=2", "--set", "rfmap.measure_rf=false",
                "--set", "hessian.k=2", "--set", "hessian.n_images=8", "--set", "hessian.trace_samples=2",
                "--set", "hessian.density_steps=3", "--set", "hessian.stages=[\"init\"]"]) == 0
    rfmap = next((tmp_path / "results").glob("*/rfmap-*.json"))
    assert json.loads(rfmap.read_text())["values"]["input_size"] == [1, 64, 64]
    assert main(["--model", "vgg19_rfpool2", "--dataset", "fashion_mnist", "--data-dir", str(folder),
                 "--train-per-class", "7", "--epochs", "1", "--output", str(tmp_path / "runs"), "--no-progress",
                 "--cpu"]) == 2  # 6 images of some class: one line, exit 2
