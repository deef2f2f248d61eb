from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.data import DataError, augment, load_data, split_indices


def test_digits_offline_as_32x32_rgb():
    d = load_data(name="digits", val_fraction=0.1)
    assert d.input_size == (3, 32, 32) and d.num_classes == 10
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    x, y = next(d.test.batches(64, torch.device("cpu"), train=False))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.max() < 10


def test_subsets_and_seeded_shuffles():
    a = load_data(name="digits", train_subset=240, test_subset=100, val_fraction=0.2, seed=1)
    b = load_data(name="digits", train_subset=240, test_subset=100, val_fraction=0.2, seed=1)
    full = load_data(name="digits", val_fraction=0.2, seed=1)
    assert len(a.train) == 240 and len(a.val) == len(full.val) and len(a.test) == 100
    assert torch.equal(a.val.y, full.val.y)  # a training subset leaves the validation split as it was
    assert torch.equal(a.train.y, b.train.y)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    cpu = torch.device("cpu")
    xa, _ = next(a.train.batches(32, cpu, train=True, generator=g1))
    xb, _ = next(b.train.batches(32, cpu, train=True, generator=g2))
    assert torch.equal(xa, xb)


def test_augment_is_a_shifted_possibly_flipped_copy():
    x = torch.rand(64, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # every output is the input translated by at most 4 pixels (zeros enter from the padding) and maybe flipped
    for i in range(8):
        xp = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        found = any(torch.equal(out[i], c) for dy in range(9) for dx in range(9)
                    for c in (xp[:, dy:dy + 8, dx:dx + 8], xp[:, dy:dy + 8, dx:dx + 8].flip(2)))
        assert found
    assert not torch.equal(out, x)


def _image_folder(root, splits: dict[str, int], shape: tuple[int, int]) -> None:
    """Random JPEGs: ``splits[name]`` images per class (cat, dog) under root/name/<class>/."""
    rng = np.random.default_rng(0)
    for split, n in splits.items():
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(root / split / c / f"{k}.jpg")


def test_imagefolder_layout(tmp_path):
    _image_folder(tmp_path, {"train": 6, "test": 2}, (20, 24))
    d = load_data(name="imagefolder", root=str(tmp_path), image_size=16, val_fraction=0.25)
    assert d.num_classes == 2 and d.input_size == (3, 16, 16)
    assert len(d.train) + len(d.val) == 12 and len(d.test) == 4
    assert sorted(d.test.y.tolist()) == [0, 0, 1, 1]


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data.root: cifar10 not found"):
        load_data(name="cifar10", root=str(tmp_path))
    with pytest.raises(DataError, match="data.root: .* has no train/ folder"):
        load_data(name="imagefolder", root=str(tmp_path))


def test_large_imagefolder_validation_is_held_out_training_files(tmp_path):
    """Images over 64 px stream; their validation split is a slice of the training files never trained on."""
    _image_folder(tmp_path, {"train": 10, "val": 2}, (80, 80))
    d = load_data(name="imagefolder", root=str(tmp_path), image_size=72, val_fraction=0.25, workers=0)
    assert len(d.train) == 15 and len(d.val) == 5 and len(d.test) == 4
    assert d.val.ds.root == d.train.ds.root                  # validation comes from the training folder ...
    assert not set(d.train.indices) & set(d.val.indices)     # ... and is never trained on
    assert sorted(d.train.indices + d.val.indices) == list(range(20))
    x, _ = next(d.val.batches(8, torch.device("cpu"), train=False))
    assert x.shape == (5, 3, 72, 72)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "teachers" / "cifar10-val-files.txt").exists(), reason="no shared teacher here")
def test_the_split_is_the_shared_teachers_validation_list():
    """The shared converged teacher never trained on its validation files: the split the students get
    (val_fraction 0.2, split seed 0, any train_subset) holds out exactly those files."""
    import tarfile

    with tarfile.open(SHARED / "cifar10-jpg.tar.xz") as tar:
        files = sorted(m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/train/" in m.name)
    files.sort(key=lambda f: (f.split("/")[1], f))  # ImageFolder's order: sorted classes, sorted files
    val_idx, tr_idx = split_indices(len(files), 0.2, seed=0, train_subset=10_000)
    listed = set((SHARED / "teachers" / "cifar10-val-files.txt").read_text().split())
    assert {files[i] for i in val_idx.tolist()} == listed
    assert not listed & {files[i] for i in tr_idx.tolist()} and len(tr_idx) == 10_000
