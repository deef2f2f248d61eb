"""Small pieces every training loop shares: device choice, evaluation, the LR schedule, atomic saves."""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["resolve_device", "autocast", "prepare", "evaluate", "lr_factor", "Step", "train_epoch", "sgd", "restarts",
           "fit", "save_atomic", "load_checkpoint", "CheckpointError", "format_seconds"]


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


def prepare(model: nn.Module, device: torch.device, *, channels_last: bool = True) -> nn.Module:
    """Move to the device; channels_last on CUDA, where convolutions run faster in it (not for a CascadeNet,
    whose member BatchNorms view the batch in NCHW for free)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" and channels_last else model


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
        outs = out if isinstance(out, list) else [out]
        c = torch.stack([(o.argmax(1) == y).sum() for o in outs])  # stays on the device: no sync per batch
        correct = c if correct is None else correct + c
        total += len(y)
    model.train(was_training)
    accs = (correct.float() * 100 / max(total, 1)).tolist() if correct is not None else [0.0]
    return accs if isinstance(out, list) else accs[0]


def lr_factor(step: int, steps_per_epoch: int, restart_epochs: int, restart_decay: float,
              total_epochs: float) -> float:
    """Cosine annealing with warm restarts about every ``restart_epochs``, each restart's peak decayed by
    ``restart_decay``, the cycles stretched to fit the phase's ``total_epochs`` exactly: ``total // restart``
    cycles (at least one), so the lr reaches 0 at the phase's last step. Why: a phase that stops mid-cycle ends
    at a high lr (4 epochs of a 5-epoch cycle end at 10% of the peak; 8 epochs, 3 into the second, at 28%) and
    leaves its weights unsettled; 80 epochs of 5 are 16 cycles of 5 either way. Past its end the lr is 0 (the
    per-epoch log reads the next step's lr)."""
    t = step / max(1, steps_per_epoch)
    if t >= total_epochs:
        return 0.0
    restart_epochs = total_epochs / max(1, int(total_epochs // restart_epochs))
    cycle = int(t // restart_epochs)
    pos = (t - cycle * restart_epochs) / restart_epochs
    return restart_decay ** cycle * 0.5 * (1.0 + math.cos(math.pi * pos))


Terms = dict[str, torch.Tensor]


class Step:
    """One training step, whatever is trained: ``loss_fn(x, y)`` -> named terms holding ``loss``; backward;
    every optimizer and scheduler steps. With ``compile``, ``loss_fn`` (forward and loss; AOTAutograd compiles
    its backward) runs through ``torch.compile`` in ``compile_mode`` (``reduce-overhead``: CUDA graphs, which
    the training batches' static shapes allow); nothing in a step synchronises with the host.
    ``after_backward()``, if given, may rescale gradients before the optimizers step."""

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], Terms], optimizers: list, schedulers: list = (),
                 *, compile: bool = False, compile_mode: str = "default",
                 after_backward: Callable[[], None] | None = None):
        self.loss_fn = torch.compile(loss_fn, mode=compile_mode) if compile else loss_fn
        self.graphs = compile and compile_mode in ("reduce-overhead", "max-autotune")
        self.optimizers, self.schedulers = [o for o in optimizers if o is not None], list(schedulers)
        self.after_backward = after_backward

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Terms:
        if self.graphs:  # a new iteration: the previous replay's outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        terms = self.loss_fn(x, y)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if self.after_backward is not None:
            self.after_backward()
        for o in self.optimizers:
            o.step()
        for s in self.schedulers:
            s.step()
        if self.graphs:  # a graph's outputs live in its pool, overwritten by the next replay
            return {k: v.detach().clone() for k, v in terms.items()}
        return {k: v.detach() for k, v in terms.items()}


def train_epoch(step: Step, split, device: torch.device, *, batch_size: int, generator: torch.Generator,
                name: str = "train", epoch: int = 0) -> dict[str, float]:
    """One pass over ``split`` in a seeded order: the mean of every term, with one host sync at the end.
    A loss that is not finite stops the run loudly rather than training on NaNs; the loss is also read at
    steps 1, 2, 4, 8, ... (log2 of the epoch's steps in syncs), so a run that diverges early stops within
    twice the steps it took, not after an epoch of NaNs."""
    sums: Terms = {}
    steps = 0
    for x, y in split.batches(batch_size, device, train=True, generator=generator):
        terms = step(x, y)
        for k, v in terms.items():  # summed on the device
            sums[k] = sums[k] + v if k in sums else v.float()
        steps += 1
        if steps & (steps - 1) == 0 and "loss" in terms and not math.isfinite(terms["loss"].item()):
            raise FloatingPointError(f"loss is not finite in {name} epoch {epoch} (step {steps}): "
                                     "lower the learning rate")
    keys = list(sums)
    means = dict(zip(keys, (torch.stack([sums[k] for k in keys]) / max(1, steps)).tolist())) if keys else {}
    if not math.isfinite(means.get("loss", 0.0)):
        raise FloatingPointError(f"loss is not finite in {name} epoch {epoch}: lower the learning rate")
    return means


def sgd(params, *, lr: float, momentum: float, weight_decay: float, nesterov: bool = True) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


def restarts(opt: torch.optim.Optimizer, steps_per_epoch: int, restart_epochs: int, restart_decay: float,
             total_epochs: int, start_epoch: int = 0):
    """The ``lr_factor`` schedule as a per-step LambdaLR, its cycles fitted to ``total_epochs``; its first step
    is ``start_epoch``'s (a phase that continues an earlier phase's schedule)."""
    start = start_epoch * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(start + k, steps_per_epoch, restart_epochs, restart_decay, total_epochs))


def fit(model: nn.Module, data, device: torch.device, *, loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor],
        torch.Tensor], epochs: int, lr: float, momentum: float, weight_decay: float, restart_epochs: int,
        restart_decay: float, batch_size: int, seed: int, log: Callable[[str], None] = print,
        name: str = "train", compile_mode: str | None = None, checkpoint: Path | None = None) -> nn.Module:
    """Train ``model`` on ``data.train`` with ``loss_fn(model, x, y)``: SGD + Nesterov, the ``lr_factor``
    schedule, augmented batches in a seeded order; one log line per epoch with an ETA; ``compile_mode``: the
    steps through ``torch.compile`` in that mode. With ``checkpoint``, every epoch is saved there and a new call
    resumes from it. Returns the model in eval mode."""
    torch.manual_seed(seed)
    model = prepare(model, device).train()
    opt = sgd(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = restarts(opt, max(1, len(data.train) // batch_size), restart_epochs, restart_decay, epochs)

    def terms(x: torch.Tensor, y: torch.Tensor) -> Terms:
        with autocast(device):
            return {"loss": loss_fn(model, x, y)}

    step = Step(terms, [opt], [sched], compile=compile_mode is not None, compile_mode=compile_mode or "default")
    g = torch.Generator().manual_seed(seed)
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["rng"])
        start = state["epoch"]
        log(f"{name}: resuming from {checkpoint}, {start} of {epochs} epochs done")
    t0 = time.time()
    for epoch in range(start, epochs):
        loss = train_epoch(step, data.train, device, batch_size=batch_size, generator=g, name=name,
                           epoch=epoch + 1)["loss"]
        acc = evaluate(model, data.val, device) if len(data.val) else float("nan")
        if checkpoint is not None:
            save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                         "rng": g.get_state(), "epoch": epoch + 1}, checkpoint)
        eta = (time.time() - t0) / (epoch + 1 - start) * (epochs - epoch - 1)
        log(f"{name} epoch {epoch + 1}/{epochs}  loss {loss:.4f}  val acc {acc:.2f}%"
            + (f"  (ETA {format_seconds(eta)})" if epoch + 1 < epochs else ""))
    return model.eval()


def format_seconds(s: float) -> str:
    """``42s``, ``7m05s``, ``2h13m``."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


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
