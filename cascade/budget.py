"""Exact FLOPs/params of a masked member, and masks that meet a FLOPs (or params) budget.

Every conv/linear layer's cost is (active inputs) x (active outputs) x a constant (spatial size x kernel),
in the paper's convention (``cascade.flops``). A channel's activity comes from its group's mask through the
index maps Torch-Pruning's dependency graph gives (``PruneGroup.layers``), so a removed filter also removes
its input channel from the next layers, and coupled channels count once per group. The cost is monotone in
the number of kept filters, so bisection on the global top-K finds the budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .flops import trace_layers
from .masks import global_topk_masks

__all__ = ["LayerCost", "CostModel", "budget_masks", "BUDGETS"]

BUDGETS = ("filters", "flops", "params")


@dataclass
class LayerCost:
    name: str
    pair_macs: int                 # MACs per (input channel, output channel) pair: H_out * W_out * kh * kw (1 for linear)
    pair_params: int               # weights per pair: kh * kw (1 for linear)
    depthwise: bool                # one input channel per output channel
    bias: bool
    in_total: int
    out_total: int
    in_maps: list[tuple[int, torch.Tensor]] = field(default_factory=list)   # (group, root index per input position)
    out_maps: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (group, root index per output position)
    in_fixed: int = -1             # positions in no group (always kept); set from the totals below
    out_fixed: int = -1

    def __post_init__(self):
        self.in_fixed, self.out_fixed = self.in_total, self.out_total


class CostModel:
    """``cost(masks) -> (flops, params)`` for one member's masks (one 1-D tensor per group)."""

    def __init__(self, layers: list[LayerCost]):
        self.layers = layers

    @staticmethod
    def build(model: nn.Module, example_input: torch.Tensor, groups) -> "CostModel":
        layers: dict[str, LayerCost] = {}
        for name, m, shape in trace_layers(model, example_input[:1]):
            if isinstance(m, nn.Conv2d):
                kk = m.kernel_size[0] * m.kernel_size[1]
                dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                layers[name] = LayerCost(name, shape[2] * shape[3] * kk, kk, dw, m.bias is not None,
                                         m.in_channels, m.out_channels)
            else:
                layers[name] = LayerCost(name, 1, 1, False, m.bias is not None, m.in_features, m.out_features)
        for gi, g in enumerate(groups):
            for name, direction, root_idx in g.layers:
                if name in layers:
                    L = layers[name]
                    (L.in_maps if direction == "in" else L.out_maps).append((gi, torch.tensor(root_idx, dtype=torch.long)))
                    if direction == "in":
                        L.in_fixed -= len(root_idx)
                    else:
                        L.out_fixed -= len(root_idx)
        return CostModel(list(layers.values()))

    def cost(self, masks: list[torch.Tensor]) -> tuple[int, int]:
        flops = params = 0
        for L in self.layers:
            n_in = L.in_fixed + sum(int(masks[g][r].sum()) for g, r in L.in_maps)
            n_out = L.out_fixed + sum(int(masks[g][r].sum()) for g, r in L.out_maps)
            pairs = n_out if L.depthwise else n_in * n_out
            flops += L.pair_macs * pairs
            params += L.pair_params * pairs + (n_out if L.bias else 0)
        return flops, params


def budget_masks(scores: list[torch.Tensor], cost: CostModel, target: float, kind: str,
                 round_to: int = 1) -> list[torch.Tensor]:
    """Masks keeping the most filters (global top-K by score, each group's count rounded to ``round_to``)
    whose FLOPs (``kind='flops'``) or params are at most ``target``. Cost is monotone in K, so bisection
    finds it; if even the smallest K costs more than the target, that floor is returned (as close as the
    granularity allows)."""
    idx = 0 if kind == "flops" else 1
    lo, hi = len(scores), sum(s.numel() for s in scores)  # K: one filter per group ... all filters
    full = global_topk_masks(scores, hi, round_to)
    if cost.cost(full)[idx] <= target:
        return full
    while hi - lo > 1:  # invariant: cost(lo) <= target (or lo is the floor), cost(hi) > target
        mid = (lo + hi) // 2
        if cost.cost(global_topk_masks(scores, mid, round_to))[idx] <= target:
            lo = mid
        else:
            hi = mid
    return global_topk_masks(scores, lo, round_to)
