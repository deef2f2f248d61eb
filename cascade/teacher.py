"""The frozen pretrained teacher: loaded from a checkpoint, or trained once and cached by its config."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, PruneConfig
from .data import DataBundle, default_cache_dir
from .engine import evaluate, fit, load_checkpoint, prepare, save_atomic
from .members import main_output
from .models import create_model

__all__ = ["get_teacher", "teacher_key"]


def teacher_key(cfg: PruneConfig) -> str:
    """Hash of everything that determines the teacher: model, data and teacher sections, and the seed."""
    d = cfg.data
    ident = {"model": vars(cfg.model), "teacher": vars(cfg.teacher), "seed": cfg.seed,
             "data": {k: getattr(d, k) for k in ("name", "root", "image_size", "train_subset", "val_fraction")}}
    if d.root:
        ident["data"]["root"] = str(Path(d.root).expanduser().resolve())
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def get_teacher(cfg: PruneConfig, data: DataBundle, device: torch.device,
                log: Callable[[str], None] = print) -> tuple[nn.Module, float]:
    """Return ``(teacher, test accuracy)``, training and caching it on first use."""
    if cfg.teacher.checkpoint:
        model = _load(cfg, data)
    else:
        cache = Path(cfg.cache_dir or default_cache_dir()) / "teachers" / teacher_key(cfg)
        if (cache / "teacher.pt").exists():
            model = load_checkpoint(cache / "teacher.pt")
            log(f"teacher: reusing {cache / 'teacher.pt'}")
        else:
            torch.manual_seed(cfg.seed)  # the initial weights too: torch's own startup seed is random
            model = create_model(cfg.model.name, num_classes=data.num_classes, width=cfg.model.width,
                                 pretrained=cfg.model.pretrained)
            model = train_teacher(model, cfg, data, device, log)
            cache.mkdir(parents=True, exist_ok=True)
            save_atomic(model.cpu(), cache / "teacher.pt")
            (cache / "config.json").write_text(json.dumps({"key": teacher_key(cfg)}, indent=2))
    model = prepare(model, device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, float(evaluate(model, data.test, device))


def _load(cfg: PruneConfig, data: DataBundle) -> nn.Module:
    path = cfg.teacher.checkpoint
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
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
                  log: Callable[[str], None] = print) -> nn.Module:
    """Plain supervised training (SGD + Nesterov, one cosine cycle) for ``cfg.teacher.epochs``."""
    t = cfg.teacher
    return fit(model, data, device, loss_fn=lambda m, x, y: F.cross_entropy(main_output(m(x)).float(), y), epochs=t.epochs,
               lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, restart_epochs=max(1, t.epochs), restart_decay=1.0,
               batch_size=cfg.data.batch_size, seed=cfg.seed, log=log, name="teacher")
