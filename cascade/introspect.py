"""Reading a model before it is split into members: where the hints tap, which heads only training runs, and
replacing a submodule by its dotted name."""
from __future__ import annotations

import torch
import torch.nn as nn

from .groups import BN_TYPES

__all__ = ["set_module", "forward_once", "drop_train_only_heads", "hint_points"]


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def forward_once(model: nn.Module, example_input: torch.Tensor, hooks: list) -> None:
    """One no-grad forward with the given hook handles in place, removed afterwards."""
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()


def drop_train_only_heads(body: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Remove the auxiliary heads that only training runs (GoogLeNet's aux1/aux2, Inception's AuxLogits): the
    cascade's loss reads the main logits only, so they would cost compute, BN statistics and student size.
    A head is a child module with weights that an eval forward never calls; it is set to None where the
    model's train-mode forward then still runs (torchvision checks ``head is not None``), and kept otherwise."""
    called: set[nn.Module] = set()
    forward_once(body, example_input, [m.register_forward_hook(lambda m, i, o: called.add(m)) for m in body.modules()])
    dropped = []
    for name, m in list(body.named_modules()):
        if not name or m in called or any(name.startswith(d + ".") for d in dropped):
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        if parent in called and any(True for _ in m.parameters()):
            setattr(parent, leaf, None)
            try:
                with torch.no_grad():
                    body.train()(example_input.expand(2, *example_input.shape[1:]))
                dropped.append(name)
            except Exception:
                setattr(parent, leaf, m)
            finally:
                body.eval()
    return dropped


def hint_points(body: nn.Module, example_input: torch.Tensor, k: int) -> list[tuple[str, str]]:
    """The last ``k`` blocks, as (module, BatchNorm whose channels its output carries), in forward order.

    A block is a module held in a container (Sequential, ModuleList, ModuleDict) that is not a container
    itself, contains a BatchNorm, and has no such block above it: VGG's conv layers (their BNs), ResNet's
    residual blocks, MobileNet's inverted residuals. Its output must carry the channels of its last-run
    BatchNorm of the same width (so a pruned member's kept channels there are known); others are skipped."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    names = {m: n for n, m in body.named_modules()}
    blocks = set()
    for parent in body.modules():
        if isinstance(parent, containers):
            for child in parent.children():
                if not isinstance(child, containers) and any(isinstance(m, BN_TYPES) for m in child.modules()):
                    blocks.add(names[child])
    blocks = {b for b in blocks if not any(b.startswith(o + ".") for o in blocks)}  # outermost only
    done: list[tuple[str, int]] = []  # (block, output channels) in completion order
    bn_calls: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: bn_calls.append(n))
             for n, m in body.named_modules() if isinstance(m, BN_TYPES)]
    hooks += [body.get_submodule(b).register_forward_hook(
              lambda m, i, o, b=b: done.append((b, o.shape[1]) if torch.is_tensor(o) and o.dim() >= 2 else (b, -1)))
              for b in blocks]
    forward_once(body, example_input, hooks)
    points = []
    for block, channels in done:
        bns = [n for n in bn_calls if (n == block or n.startswith(block + "."))
               and body.get_submodule(n).num_features == channels]
        if bns:
            points.append((block, bns[-1]))
    return points[-k:]
