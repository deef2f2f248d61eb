"""One-shot peers: the model pruned once by a Torch-Pruning importance, then trained by KD like the student.

Each peer scores the filters of the cascade's own prunable groups (``CascadeNet.groups``) with an importance
from Torch-Pruning, and the cascade's budget code turns those scores into a mask at the exact FLOPs (or
params, or filters) target, so a peer and a cascade student are pruned to the same budget, by the same
rules (no layer emptied, ``round_to``), and exported by the same code. ``cascade.train`` then trains it with
the cascade's loss, schedule and data pipeline (``method`` in the prune config).

- ``l1``: uniform per-layer pruning by the L1 magnitude of each channel's group (Torch-Pruning's
  ``MagnitudeImportance(p=1)``, as its ``MagnitudePruner``): the scores are each filter's rank within its
  layer, so one global threshold removes the same fraction of every layer (Li et al. 2017);
- ``group_norm``: global pruning by group L2 magnitude (``GroupMagnitudeImportance(p=2)``), layers unevenly;
- ``taylor``: global pruning by first-order Taylor importance (``GroupTaylorImportance``: |w * dL/dw| of the
  training loss, CE + KD from the frozen teacher, summed over a few training batches in train mode).

The global ones normalise each group's importance by its mean (Torch-Pruning's default) and never remove
more than ``MAX_LAYER_RATIO`` of a layer (as ``max_pruning_ratio`` there).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch_pruning as tp

from .config import METHODS
from .losses import member_loss
from .member_ops import main_output
from .members import CascadeNet

__all__ = ["METHODS", "PEERS", "peer_scores", "taylor_gradients", "prunable_copy"]

PEERS = METHODS[1:]
MAX_LAYER_RATIO = 0.9
TAYLOR_BATCHES = 4


def _importance(method: str):
    if method == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if method == "group_norm":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if method == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"method: expected one of {', '.join(PEERS)}, got {method!r}")


@torch.no_grad()
def peer_scores(method: str, net: CascadeNet, model: nn.Module) -> torch.Tensor:
    """(F,) scores in ``net``'s flat filter order from ``model`` (the pretrained weights; with ``taylor``, its
    parameters' ``.grad`` set by ``taylor_gradients``): higher is kept first."""
    imp = _importance(method)
    model = model.eval()
    example = torch.zeros(1, *net.input_size, device=next(model.parameters()).device)
    names = {m: n for n, m in model.named_modules()}
    with torch.enable_grad():  # Torch-Pruning traces the graph through autograd
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    ignored = [model.get_submodule(n) for n in (net.head_name,)]
    by_root = {names[g[0].dep.target.module]: g for g in dg.get_all_groups(ignored_layers=ignored,
                                                                          root_module_types=[nn.Conv2d])}
    scores = []
    for g in net.groups:
        s = imp(by_root[g.root]).detach().float().cpu()  # (C_g,) one importance per root channel
        if method == "l1":  # uniform: the rank within the layer, so a global threshold cuts every layer alike
            s = (s.argsort().argsort().float() + 1) / g.size
        else:  # global, but no layer loses more than MAX_LAYER_RATIO: its best filters are kept first
            s = s / s.mean().clamp_min(1e-12)
            floor = max(1, int(round((1 - MAX_LAYER_RATIO) * g.size)))
            s[s.topk(floor).indices] += s.max() + 1.0
        scores.append(s)
    return torch.cat(scores)


def taylor_gradients(model: nn.Module, teacher: nn.Module, data, device: torch.device, *, tau: float,
                     lambda_kd: float, batch_size: int, seed: int) -> dict[str, float]:
    """Accumulate into ``model``'s ``.grad`` the gradient of the training loss (CE + lambda_KD * tau^2 * KL from
    the frozen ``teacher``) over ``TAYLOR_BATCHES`` augmented training batches, ``model`` in train mode (its
    BatchNorms on batch statistics, as in training; in eval mode it would equal the teacher and its KL term and
    gradient would vanish). Returns the mean loss terms (``kd`` > 0 shows the KD term took part)."""
    model = model.to(device).train()
    teacher = teacher.eval()
    g = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    steps = 0
    for x, y in data.train.batches(batch_size, device, train=True, generator=g):
        with torch.no_grad():
            t_logits = main_output(teacher(x))
        terms = member_loss(main_output(model(x)), y, t_logits, tau=tau, lambda_kd=lambda_kd, lambda_h=0.0)
        terms["loss"].backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        steps += 1
        if steps == TAYLOR_BATCHES:
            break
    return {k: v / max(1, steps) for k, v in sums.items()}


def prunable_copy(model: nn.Module) -> nn.Module:
    """A float32 copy with gradients enabled (the frozen teacher's parameters are not)."""
    m = copy.deepcopy(model).float()
    for p in m.parameters():
        p.requires_grad_(True)
        p.grad = None
    return m
