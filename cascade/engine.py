"""Small pieces every training loop shares: device choice, evaluation, the LR schedule, atomic saves."""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["resolve_device", "autocast", "evaluate", "lr_factor", "fit", "save_atomic", "load_checkpoint",
           "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read: reported, never silently replaced by a fresh start."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (bf16 convs are slower than fp32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device; channels_last on CUDA, where convolutions run faster in it."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


@torch.no_grad()
def evaluate(model: nn.Module, split, device: torch.device, batch_size: int = 512) -> list[float] | float:
    """Top-1 accuracy in percent. A model returning a list (a CascadeNet) gives one accuracy per member."""
    was_training = model.training
    model.eval()
    correct: torch.Tensor | None = None
    total = 0
    for x, y in split.batches(batch_size, device, train=False):
        with autocast(device):
            out = model(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        c = torch.stack([(o.argmax(1) == y).sum() for o in outs])  # stays on the device: no sync per batch
        correct = c if correct is None else correct + c
        total += len(y)
    model.train(was_training)
    accs = (correct.float() * 100 / max(total, 1)).tolist() if correct is not None else [0.0]
    return accs if isinstance(out, (list, tuple)) else accs[0]


def lr_factor(step: int, steps_per_epoch: int, restart_epochs: int, restart_decay: float) -> float:
    """Cosine annealing with warm restarts every ``restart_epochs``; each restart's peak decays exponentially."""
    t = step / max(1, steps_per_epoch)
    cycle = int(t // restart_epochs)
    pos = (t - cycle * restart_epochs) / restart_epochs
    return restart_decay ** cycle * 0.5 * (1.0 + math.cos(math.pi * pos))


def fit(model: nn.Module, data, device: torch.device, *, loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor],
        torch.Tensor], epochs: int, lr: float, momentum: float, weight_decay: float, restart_epochs: int,
        restart_decay: float, batch_size: int, seed: int, log: Callable[[str], None] = print,
        name: str = "train") -> nn.Module:
    """Train ``model`` on ``data.train`` with ``loss_fn(model, x, y)``: SGD + Nesterov, the ``lr_factor``
    schedule, augmented batches in a seeded order; one log line per epoch. Returns the model in eval mode."""
    torch.manual_seed(seed)
    model = prepare(model, device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    steps = max(1, len(data.train) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, restart_epochs, restart_decay))
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        total = torch.zeros((), device=device)  # summed on the device: no host synchronisation per step
        for x, y in data.train.batches(batch_size, device, train=True, generator=g):
            with autocast(device):
                loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        acc = evaluate(model, data.val, device) if len(data.val) else float("nan")
        log(f"{name} epoch {epoch + 1}/{epochs}  loss {total.item() / steps:.4f}  val acc {acc:.2f}%")
    return model.eval()


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save through a temporary file and a rename: a kill mid-write never leaves half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, pickling error, ...
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated ({type(e).__name__}: {e}); "
                              f"delete it to start this run from scratch") from None
