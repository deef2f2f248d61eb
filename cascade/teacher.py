"""The frozen pretrained teacher: loaded from a checkpoint, or trained once and cached by its config.

Checkpoint and cache may be local paths or URIs (``s3://``, ``gs://``, ``file://``: whatever pyarrow.fs reads),
so a cluster's trials can share one teacher through shared storage.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, PruneConfig, is_uri
from .data import DataBundle, default_cache_dir
from .engine import CheckpointError, evaluate, fit, prepare
from .member_ops import main_output
from .models import create_model

__all__ = ["get_teacher", "teacher_key", "teacher_location"]


def teacher_key(cfg: PruneConfig) -> str:
    """Hash of everything that determines the teacher: model, data and teacher sections, and the seed."""
    d = cfg.data
    ident = {"model": vars(cfg.model), "teacher": vars(cfg.teacher), "seed": cfg.seed,
             "data": {k: getattr(d, k) for k in ("name", "root", "image_size", "train_subset", "val_fraction",
                                                 "split_seed")}}
    if d.root:
        ident["data"]["root"] = str(Path(d.root).expanduser().resolve())
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def teacher_location(cfg: PruneConfig, cache: str | None = None) -> str:
    """Where the teacher for ``cfg`` is cached: ``<cache>/<config hash>`` (``cache`` a directory or a URI;
    default ``<cache_dir>/teachers``)."""
    root = cache or str(Path(cfg.cache_dir or default_cache_dir()) / "teachers")
    return f"{root.rstrip('/')}/{teacher_key(cfg)}"


def get_teacher(cfg: PruneConfig, data: DataBundle, device: torch.device, log: Callable[[str], None] = print, *,
                cache: str | None = None) -> tuple[nn.Module, float]:
    """Return ``(teacher, test accuracy)``, training it on first use and caching it under
    ``teacher_location(cfg, cache)`` with its accuracy (so a reuse costs no evaluation)."""
    acc = None
    if cfg.teacher.checkpoint:
        model = _load(cfg, data)
    else:
        where = teacher_location(cfg, cache)
        if _exists(f"{where}/teacher.pt"):
            model = _torch_load(f"{where}/teacher.pt")
            acc = json.loads(_read(f"{where}/config.json")).get("test_accuracy") if _exists(
                f"{where}/config.json") else None
            log(f"teacher: reusing {where}/teacher.pt")
        else:
            torch.manual_seed(cfg.seed)  # the initial weights too: torch's own startup seed is random
            model = create_model(cfg.model.name, num_classes=data.num_classes, width=cfg.model.width,
                                 pretrained=cfg.model.pretrained)
            # per-epoch checkpoints on local disk (a cache URI may be an object store), removed once cached
            partial = Path(cfg.cache_dir or default_cache_dir()) / "teachers" / f"{teacher_key(cfg)}.partial.pt"
            partial.parent.mkdir(parents=True, exist_ok=True)
            model = train_teacher(model, cfg, data, device, log, checkpoint=partial)
            acc = float(evaluate(prepare(model, device).eval(), data.test, device))
            buf = io.BytesIO()
            torch.save(model.cpu(), buf)
            _write(f"{where}/teacher.pt", buf.getvalue())
            _write(f"{where}/config.json", json.dumps({"key": teacher_key(cfg), "test_accuracy": acc,
                                                       "trained_by_pid": os.getpid()}, indent=2).encode())
            partial.unlink(missing_ok=True)
    model = prepare(model, device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, float(acc if acc is not None else evaluate(model, data.test, device))


def _fs(location: str):
    """(pyarrow filesystem, path) for a URI; None for a local path."""
    if not is_uri(location):
        return None, location
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(location)


def _exists(location: str) -> bool:
    fs, path = _fs(location)
    if fs is None:
        return Path(path).expanduser().is_file()
    import pyarrow.fs

    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def _read(location: str) -> bytes:
    fs, path = _fs(location)
    if fs is None:
        return Path(path).expanduser().read_bytes()
    with fs.open_input_stream(path) as f:
        return f.read()


def _write(location: str, data: bytes) -> None:
    """Atomic where the store allows it: a local temp file and a rename (object stores write whole objects)."""
    fs, path = _fs(location)
    if fs is None:
        p = Path(path).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, p)
        return
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def _torch_load(location: str):
    try:
        return torch.load(io.BytesIO(_read(location)), map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickling error, ...
        raise CheckpointError(f"checkpoint {location!r} is corrupt or truncated ({type(e).__name__}: {e}); "
                              f"delete it to start this run from scratch") from None


def _load(cfg: PruneConfig, data: DataBundle) -> nn.Module:
    path = cfg.teacher.checkpoint
    try:
        obj = torch.load(io.BytesIO(_read(path)), map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError("teacher.checkpoint", f"cannot read {path!r} ({type(e).__name__}: {e})") from None
    if isinstance(obj, nn.Module):
        model = obj
    elif isinstance(obj, dict):
        model = create_model(cfg.model.name, num_classes=data.num_classes, width=cfg.model.width)
        try:
            model.load_state_dict(obj.get("state_dict", obj))
        except RuntimeError as e:
            raise ConfigError("teacher.checkpoint", f"does not fit model {cfg.model.name!r}: "
                              f"{str(e).splitlines()[0]}") from None
    else:
        raise ConfigError("teacher.checkpoint", f"expected a module or a state_dict, got {type(obj).__name__}")
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *data.input_size)).shape[-1]
    if out != data.num_classes:
        raise ConfigError("teacher.checkpoint", f"the teacher predicts {out} classes but data set "
                          f"{cfg.data.name!r} has {data.num_classes}")
    return model.eval()


def train_teacher(model: nn.Module, cfg: PruneConfig, data: DataBundle, device: torch.device,
                  log: Callable[[str], None] = print, checkpoint: Path | None = None) -> nn.Module:
    """Plain supervised training (SGD + Nesterov, one cosine cycle) for ``cfg.teacher.epochs``; with
    ``checkpoint``, resumable per epoch."""
    t = cfg.teacher
    return fit(model, data, device, loss_fn=lambda m, x, y: F.cross_entropy(main_output(m(x)).float(), y),
               epochs=t.epochs, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, restart_epochs=max(1, t.epochs),
               restart_decay=1.0, batch_size=cfg.data.batch_size, seed=cfg.seed, log=log, name="teacher",
               checkpoint=checkpoint)
