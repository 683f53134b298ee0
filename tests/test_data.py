"""rf_bench.data: every offline format gives identical tensors; cache; loader; augmentation."""
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rf_bench import data as D

import fakedata as fd


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def cifar_arrays():
    return fd.cifar_arrays()


def _cifar_copies(root: Path, arrays):
    fd.write_cifar_batches(root / "folder", arrays)
    fd.write_cifar_tarball(root / "tar", arrays)
    fd.write_cifar_parquet(root / "parquet", arrays)
    fd.write_save_to_disk(root / "disk", fd.cifar_hf_datasets(arrays))
    return {fmt: root / fmt for fmt in ("folder", "tar", "parquet", "disk")}


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_every_format_gives_identical_tensors(tmp_path, cache, cifar_arrays, split):
    copies = _cifar_copies(tmp_path, cifar_arrays)
    x, y = cifar_arrays[split]
    for fmt, root in copies.items():
        got = D.load("cifar10", split, data_dir=root, cache_dir=cache)
        assert torch.equal(got.images, torch.from_numpy(x)), fmt
        assert torch.equal(got.labels, torch.from_numpy(y)), fmt
        assert got.classes == fd.CIFAR_CLASSES, fmt
        assert got.images.dtype == torch.uint8 and got.labels.dtype == torch.int64
        assert got.mean == D.CIFAR10_MEAN


def test_data_dir_from_env_and_named_subfolder(tmp_path, cache, cifar_arrays, monkeypatch):
    fd.write_cifar_tarball(tmp_path / "cifar10", cifar_arrays)
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path))
    got = D.load("cifar10", "test", cache_dir=cache)
    assert torch.equal(got.images, torch.from_numpy(cifar_arrays["test"][0]))


@pytest.fixture(scope="module")
def tiny_files():
    return fd.tiny_files()


@pytest.mark.parametrize("split", ["train", "test"])
def test_tiny_imagenet_every_format_gives_identical_tensors(tmp_path, cache, tiny_files, split):
    fd.write_tiny_folder(tmp_path / "folder", tiny_files)
    fd.write_tiny_zip(tmp_path / "zip", tiny_files)
    fd.write_tiny_parquet(tmp_path / "parquet", tiny_files)
    fd.write_save_to_disk(tmp_path / "disk", fd.tiny_hf_datasets(tiny_files))
    expected = fd.tiny_canonical(tiny_files)["train" if split == "train" else "valid"]
    ref_images = torch.stack([
        torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1) for b, _ in expected])
    ref_labels = torch.tensor([c for _, c in expected])
    for fmt in ("folder", "zip", "parquet", "disk"):
        got = D.load("tiny-imagenet", split, data_dir=tmp_path / fmt, cache_dir=cache)
        assert got.images.shape[1:] == (3, 64, 64), fmt  # grayscale became RGB
        assert torch.equal(got.images, ref_images), fmt
        assert torch.equal(got.labels, ref_labels), fmt
        assert got.classes == sorted(fd.TINY_WNIDS), fmt


def test_zip_members_are_never_extracted(tmp_path, cache, tiny_files):
    evil = {"../../evil.txt": b"pwned"}
    fd.write_tiny_zip(tmp_path / "z", tiny_files, extra=evil)
    got = D.load("tiny-imagenet", "train", data_dir=tmp_path / "z", cache_dir=cache)
    assert len(got) == 9
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_digits_and_synthetic_need_no_network():
    train, test = D.load("digits", "train"), D.load("digits", "test")
    assert train.images.shape[1:] == (3, 32, 32) and len(train) + len(test) == 1797
    assert set(train.labels.tolist()) == set(range(10))
    # stratified: each class is the same share of both splits (within one image)
    share = train.labels.bincount() / len(train) - test.labels.bincount() / len(test)
    assert share.abs().max() < 3 / len(test)
    assert torch.equal(D.load("digits", "train").images, train.images)  # fixed split
    s1 = D.load("synthetic", "train", n=64, num_classes=4, size=16, seed=3)
    s2 = D.load("synthetic", "train", n=64, num_classes=4, size=16, seed=3)
    assert torch.equal(s1.images, s2.images) and s1.images.shape == (64, 3, 16, 16) and s1.num_classes == 4


def test_cache_is_reused_and_corruption_is_rebuilt(tmp_path, cache, cifar_arrays, monkeypatch, capsys):
    root = fd.write_cifar_tarball(tmp_path, cifar_arrays).parent
    first = D.load("cifar10", "train", data_dir=root, cache_dir=cache)
    (cached,) = cache.glob("cifar10-train-*.safetensors")

    def boom(*a, **k):
        raise AssertionError("decoded again although cached")
    monkeypatch.setattr(D.sources.cifar, "_cifar_batches", boom)
    assert torch.equal(D.load("cifar10", "train", data_dir=root, cache_dir=cache).images, first.images)
    monkeypatch.undo()

    for corrupt in (lambda b: b[: len(b) // 2], lambda b: b[:-1] + bytes([b[-1] ^ 0xFF])):
        cached.write_bytes(corrupt(cached.read_bytes()))
        again = D.load("cifar10", "train", data_dir=root, cache_dir=cache)
        assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
        assert "corrupt" in capsys.readouterr().err


def test_changed_source_is_decoded_again(tmp_path, cache):
    a, b = fd.cifar_arrays(seed=1), fd.cifar_arrays(seed=2)
    fd.write_cifar_batches(tmp_path / "x", a)
    first = D.load("cifar10", "test", data_dir=tmp_path / "x", cache_dir=cache)
    import shutil
    shutil.rmtree(tmp_path / "x")
    fd.write_cifar_batches(tmp_path / "x", b)
    second = D.load("cifar10", "test", data_dir=tmp_path / "x", cache_dir=cache)
    assert torch.equal(second.images, torch.from_numpy(b["test"][0])) and not torch.equal(first.images, second.images)


def test_errors_are_one_line_and_name_the_fix(tmp_path, cache, cifar_arrays):
    with pytest.raises(ValueError,
                       match="unknown data set 'cifar100'; known: cifar10, tiny-imagenet, fashion-mnist, mnist, digits"):
        D.load("cifar100", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--data-dir.*cifar-10-python.tar.gz") as e:
        D.load("cifar10", "train", data_dir=tmp_path / "empty", cache_dir=cache)
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cifar-10-python.tar.gz").write_bytes(b"not a tarball at all")
    with pytest.raises(ValueError, match=r"corrupt archive .*cifar-10-python.tar.gz"):
        D.load("cifar10", "train", data_dir=bad, cache_dir=cache)
    folder = fd.write_cifar_batches(tmp_path / "shape", cifar_arrays)
    import pickle
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(ValueError, match=r"test_batch holds \(4, 100\)"):
        D.load("cifar10", "test", data_dir=tmp_path / "shape", cache_dir=cache)


def test_pickles_cannot_run_code(tmp_path, cache, cifar_arrays):
    folder = fd.write_cifar_batches(tmp_path / "evil", cifar_arrays)
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        D.load("cifar10", "test", data_dir=tmp_path / "evil", cache_dir=cache)
    assert not (tmp_path / "pwned").exists()


def test_offline_without_local_copy(tmp_path, monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("offline")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"Hub is unreachable.*--data-dir"):
        D.load("tiny-imagenet", "train", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------ loader

def _indexed(n=103, size=8):
    """An ImageSet whose labels are the sample indices, to see exactly which samples a batch holds."""
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    return D.ImageSet(images, torch.arange(n), [str(i) for i in range(n)], (0.5,) * 3, (0.25,) * 3)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_order_is_a_function_of_seed_and_epoch():
    data = _indexed()
    a, b = D.TensorLoader(data, 16, seed=5), D.TensorLoader(data, 16, seed=5)
    for (xa, ya), (xb, yb) in zip(_epoch(a, 3), _epoch(b, 3)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    e3 = torch.cat([y for _, y in _epoch(a, 3)])
    e4 = torch.cat([y for _, y in _epoch(a, 4)])
    assert not torch.equal(e3, e4)
    assert len(a) == 103 // 16 and len(e3) == 16 * (103 // 16) and len(set(e3.tolist())) == len(e3)
    # resuming mid-epoch gives the remaining batches exactly
    a.set_epoch(3)
    rest = list(a.iter_from(2))
    for (x, y), (xr, yr) in zip(_epoch(b, 3)[2:], rest):
        assert torch.equal(x, xr) and torch.equal(y, yr)


@pytest.mark.parametrize("train", [True, False])
def test_two_ranks_shard_one_permutation(train):
    data = _indexed()
    ranks = [D.TensorLoader(data, 8, train=train, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for loader in ranks:
        loader.set_epoch(2)
    batches = [[y for _, y in loader] for loader in ranks]
    assert len(batches[0]) == len(batches[1])  # same number of steps on every rank
    seen = torch.cat([torch.cat(b) for b in batches])
    real = seen[seen != D.IGNORE_INDEX]
    assert len(set(real.tolist())) == len(real)  # disjoint
    if train:  # drop_last: every rank full, nothing repeated
        assert len(real) == 2 * 8 * (103 // 2 // 8)
    else:  # eval: everything exactly once, padding marked to be ignored
        assert sorted(real.tolist()) == list(range(103))
    # the union of both ranks' step-t batches is the 1-process global batch of step t (same seed, epoch)
    # and so are the augmented images: a sample's crop/flip does not depend on its rank
    if train:
        single = D.TensorLoader(data, 16, train=True, seed=1)
        single.set_epoch(2)
        perm = torch.cat([y for _, y in single])
        both = torch.stack([torch.cat(b) for b in batches])  # (2, steps * 8)
        interleaved = both.t().reshape(-1)
        assert torch.equal(interleaved[: len(perm)], perm[: len(interleaved)])
        single_x = {int(y): x for xb, yb in single for x, y in zip(xb, yb)}
        for loader in ranks:
            for xb, yb in loader:
                for x, y in zip(xb, yb):
                    if int(y) in single_x:
                        assert torch.equal(x, single_x[int(y)])


def test_normalize_matches_torchvision():
    from torchvision.transforms import v2
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    ref = v2.Normalize(D.CIFAR10_MEAN, D.CIFAR10_STD)(x.float() / 255)
    torch.testing.assert_close(D.normalize(x, D.CIFAR10_MEAN, D.CIFAR10_STD), ref)


def test_crop_moves_real_pixels_by_the_offset_and_flip_mirrors():
    digits = D.load("digits", "train").images[:64]
    out = D.augment_batch(digits, torch.Generator().manual_seed(0), padding=4, flip=True)
    padded = torch.nn.functional.pad(digits, (4,) * 4)
    offsets, flips = set(), 0
    for i in range(len(digits)):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {i} is not a padded crop (or its mirror) of its source"
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(offsets) > 20 and 16 < flips < 48
    # a lone pixel moves by exactly (dy - 4, dx - 4)
    dot = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    dot[..., 10, 20] = 255
    g = torch.Generator().manual_seed(7)
    moved = D.augment_batch(dot, g, padding=4, flip=False)
    g = torch.Generator().manual_seed(7)
    dy, dx = (int(torch.randint(0, 9, (1,), generator=g)) for _ in range(2))
    assert moved[0, 0].nonzero().tolist() == [[10 + 4 - dy, 20 + 4 - dx]]
    mirrored = D.augment_batch(dot.expand(64, -1, -1, -1), torch.Generator().manual_seed(1), padding=0)
    cols = {tuple(m[0].nonzero().tolist()[0]) for m in mirrored}
    assert cols == {(10, 20), (10, 31 - 20)}


def test_loader_batches_are_crops_of_the_right_samples():
    data = _indexed(n=24, size=12)
    loader = D.TensorLoader(data, 8, train=True, seed=0)
    padded = torch.nn.functional.pad(data.images, (4,) * 4)
    for x, y in loader:
        raw = (x * 0.25 + 0.5) * 255  # undo normalisation
        assert torch.allclose(raw, raw.round(), atol=1e-3)
        raw = raw.round().to(torch.uint8)
        for img, i in zip(raw, y.tolist()):
            assert any(torch.equal(img, c) or torch.equal(img, c.flip(-1))
                       for c in (padded[i, :, dy:dy + 12, dx:dx + 12] for dy in range(9) for dx in range(9)))


def test_loader_normalises_exactly_as_normalize_does():
    data = _indexed(n=37)
    loader = D.TensorLoader(data, 10, train=False)
    got = torch.cat([x for x, _ in loader])
    assert torch.equal(got, D.normalize(data.images, data.mean, data.std))  # bit for bit
