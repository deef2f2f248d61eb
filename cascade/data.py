"""Data sets as tensors on the training device, with batched augmentation.

Small-image sets (digits, CIFAR, an ImageFolder of small images) are decoded once into uint8 tensors
(cached on disk) and augmented in batches on the device (pad-4 random crop + flip), so the trainer never
waits on JPEG decoding. ImageNet-size ImageFolders stream through DataLoader workers.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = ["DataBundle", "load_data", "DataError", "split_indices"]

Batch = tuple[torch.Tensor, torch.Tensor]  # (B, 3, H, W) float normalised, (B,) int64


from .config import ConfigError  # noqa: E402

DataError = ConfigError  # a data set that cannot be loaded: the config key at fault and why (one error class)


class TensorSplit:
    """A split held as uint8 images (N, 3, H, W) and labels (N,); moved to the device once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        self.x, self.y, self.mean, self.std = x, y, mean, std
        self._on: dict[str, Batch] = {}

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size: int, device: torch.device, *, train: bool,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        key = str(device)
        if key not in self._on:
            self._on = {key: (self.x.to(device), self.y.to(device))}
        x_all, y_all = self._on[key]
        n = len(y_all)
        order = torch.randperm(n, generator=generator).to(device) if train else torch.arange(n, device=device)
        mean, std = self.mean.to(device).view(1, -1, 1, 1), self.std.to(device).view(1, -1, 1, 1)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            if train and len(idx) < batch_size and s > 0:
                break  # drop the ragged last batch in training: BN statistics of tiny batches are noise
            x = x_all[idx].float().div_(255)
            if train:
                x = augment(x, generator)
            yield (x - mean) / std, y_all[idx]


def augment(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and horizontal flip, per image, as batched tensor ops."""
    b, _, h, w = x.shape
    dev = x.device
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(dev)       # (2, B) crop offsets
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    xp = F.pad(x, (pad, pad, pad, pad))                                           # (B, C, H+2p, W+2p)
    iy = off[0][:, None] + torch.arange(h, device=dev)[None]                       # (B, H)
    ix = off[1][:, None] + torch.arange(w, device=dev)[None]                       # (B, W)
    ix = torch.where(flip[:, None], ix.flip(1), ix)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]]               # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class StreamSplit:
    """An ImageFolder split streamed through DataLoader workers (ImageNet-size images): the files at
    ``indices`` (all when None) of ``root``, with the training or the test-time transform."""

    def __init__(self, root: Path, train: bool, image_size: int, workers: int, indices: list[int] | None = None):
        import torchvision.transforms as T
        from torchvision.datasets import ImageFolder

        norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        tf = (T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if train
              else T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm]))
        self.ds = ImageFolder(str(root), transform=tf)
        self.indices = indices
        self.workers = workers

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.ds)

    def batches(self, batch_size: int, device: torch.device, *, train: bool,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        from torch.utils.data import DataLoader, Subset

        ds = Subset(self.ds, self.indices) if self.indices is not None else self.ds
        loader = DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train, generator=generator,
                            num_workers=self.workers, pin_memory=device.type == "cuda", persistent_workers=False)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@dataclass
class DataBundle:
    train: TensorSplit | StreamSplit
    val: TensorSplit | StreamSplit
    test: TensorSplit | StreamSplit
    num_classes: int
    input_size: tuple[int, int, int]


def load_data(*, name: str, root: str | None = None, download: bool = False, image_size: int = 32,
              train_subset: int | None = None, test_subset: int | None = None, val_fraction: float = 0.1,
              seed: int = 0, workers: int = 4, cache_dir: str | None = None) -> DataBundle:
    """Load a data set by name: ``digits``, ``cifar10``, ``cifar100`` or ``imagefolder``.

    The validation split is ``val_fraction`` of the training images (``split_indices``, seeded by ``seed``),
    held out for member health, teacher swaps and selection; ``train_subset`` trains on part of the rest;
    accuracy is reported on the test split.
    """
    if name == "imagefolder" and image_size > 64:
        return _stream_imagefolder(root, image_size, train_subset, test_subset, val_fraction, seed, workers)
    key = hashlib.sha1(repr((name, str(Path(root).resolve()) if root else None, image_size)).encode()).hexdigest()[:16]
    cache = Path(cache_dir or default_cache_dir()) / "data" / f"{name}-{key}.pt"
    if cache.exists():
        tensors = torch.load(cache, weights_only=True)
    else:
        tensors = _decode(name, root, download, image_size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save(tensors, tmp)
        os.replace(tmp, cache)  # atomic: concurrent trials never read half a file
    xtr, ytr, xte, yte = tensors["xtr"], tensors["ytr"], tensors["xte"], tensors["yte"]
    num_classes = int(tensors["num_classes"])
    val_idx, all_tr = split_indices(len(ytr), val_fraction, seed)
    tr_idx = all_tr[:train_subset] if train_subset is not None else all_tr
    if test_subset is not None and test_subset < len(yte):
        keep = torch.randperm(len(yte), generator=torch.Generator().manual_seed(seed))[:test_subset]
        xte, yte = xte[keep], yte[keep]
    n_val = len(val_idx)
    # normalised by every training image of the split, so a subset's inputs are its teacher's (trained on all)
    xf = xtr[all_tr].float() / 255
    mean, std = xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    del xf
    split = lambda x, y: TensorSplit(x, y, mean, std)  # noqa: E731
    test = split(xte, yte)
    val = split(xtr[val_idx], ytr[val_idx]) if n_val else test  # val_fraction 0: validate on the test split
    return DataBundle(split(xtr[tr_idx], ytr[tr_idx]), val, test, num_classes, (3, image_size, image_size))


def split_indices(n: int, val_fraction: float, seed: int, train_subset: int | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, training) indices of ``n`` training images: one seeded permutation, its first
    ``val_fraction`` held out; ``train_subset`` then keeps the first images of the rest. The validation split
    depends on (n, val_fraction, seed) only, so a subset never trains on another run's validation images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * n))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    return val_idx, tr_idx[:train_subset] if train_subset is not None else tr_idx


def default_cache_dir() -> str:
    return os.environ.get("CASCADE_CACHE", str(Path.home() / ".cache" / "cascade"))


def _decode(name: str, root: str | None, download: bool, size: int) -> dict:
    if name == "digits":
        return _digits(size)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, download, size)
    if name == "imagefolder":
        return _small_imagefolder(root, size)
    raise DataError("data.name", f"unknown data set {name!r} (known: digits, cifar10, cifar100, imagefolder)")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, h, w) -> uint8 (N, 3, size, size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = [F.interpolate(c.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
           for c in x.split(4096)]
    return torch.cat(out).round().clamp(0, 255).to(torch.uint8)


def _digits(size: int) -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).mul(255 / 16).round().to(torch.uint8)  # (N, 8, 8), 0..16 -> 0..255
    x = _resize(x[:, None].expand(-1, 3, -1, -1), size)                                   # grey -> RGB (N, 3, S, S)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # fixed 80/20 split
    n_test = len(y) // 5
    te, tr = perm[:n_test], perm[n_test:]
    return {"xtr": x[tr], "ytr": y[tr], "xte": x[te], "yte": y[te], "num_classes": 10}


def _cifar(name: str, root: str | None, download: bool, size: int) -> dict:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = root or str(Path(default_cache_dir()) / "torchvision")
    try:
        tr, te = cls(root, train=True, download=download), cls(root, train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise DataError("data.root", f"{name} not found under {root!r} ({e}); set data.download=true where there "
                        f"is internet, or point data.root at a local copy of the python-version archive, or use "
                        f"data.name=imagefolder with a folder of images") from None
    to_t = lambda a: _resize(torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(), size)  # noqa: E731
    return {"xtr": to_t(tr.data), "ytr": torch.tensor(tr.targets), "xte": to_t(te.data),
            "yte": torch.tensor(te.targets), "num_classes": len(tr.classes)}


def imagefolder_splits(root: str | None) -> tuple[Path, Path]:
    """``root/train`` and ``root/val`` (or ``root/test``), or a DataError naming data.root."""
    if not root:
        raise DataError("data.root", "imagefolder needs data.root (a folder holding train/ and val/ or test/)")
    r = Path(root).expanduser()
    if not (r / "train").is_dir():
        raise DataError("data.root", f"{str(r)!r} has no train/ folder (expected train/ and val/ or test/)")
    for name in ("val", "test"):
        if (r / name).is_dir():
            return r / "train", r / name
    raise DataError("data.root", f"{str(r)!r} has no val/ or test/ folder")


def _small_imagefolder(root: str | None, size: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    train_dir, test_dir = imagefolder_splits(root)
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())

    def read(path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)  # (3, h, w) uint8
        return _resize(img[None], size)[0]

    def load(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
        files = [(f, ci) for ci, c in enumerate(classes) for f in sorted((folder / c).iterdir()) if f.is_file()]
        if not files:
            raise DataError("data.root", f"no images under {str(folder)!r}")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            xs = list(pool.map(read, [f for f, _ in files], chunksize=256))
        return torch.stack(xs), torch.tensor([c for _, c in files])

    xtr, ytr = load(train_dir)
    xte, yte = load(test_dir)
    return {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte, "num_classes": len(classes)}


def _stream_imagefolder(root, image_size, train_subset, test_subset, val_fraction, seed, workers) -> DataBundle:
    """Validation is a held-out slice of the training FILES (never trained on), seen with the test transform."""
    from torchvision.datasets import ImageFolder

    train_dir, test_dir = imagefolder_splits(root)
    n_train = len(ImageFolder(str(train_dir)).samples)
    val_idx, train_idx = (t.tolist() for t in split_indices(n_train, val_fraction, seed, train_subset))
    n_val = len(val_idx)
    n_test = len(ImageFolder(str(test_dir)).samples)
    test_idx = (torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))[:test_subset].tolist()
                if test_subset else None)
    train = StreamSplit(train_dir, True, image_size, workers, train_idx)
    test = StreamSplit(test_dir, False, image_size, workers, test_idx)
    val = StreamSplit(train_dir, False, image_size, workers, val_idx) if n_val else test
    return DataBundle(train, val, test, len(train.ds.classes), (3, image_size, image_size))
