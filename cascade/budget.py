"""Budgets as tensor work: the exact FLOPs/params of masked members, the per-step threshold, the final fill.

Filters are numbered flat, group after group (F in all, G groups). Every conv/linear layer costs (active inputs)
x (active outputs) x a constant (spatial size x kernel), in the paper's convention (``cascade.flops``), and a
layer's active channels are its fixed ones plus, for each group, (kept filters of the group) x (positions each
filter feeds in that layer), from Torch-Pruning's index maps. So a removed filter also removes its input
channel from the next layers, and coupled channels count once. The cost of a member is then a quadratic form
of its G per-group kept counts c:  cost(c) = const + lin . c + c^T Q c  (exact in float64).

Per training step (``threshold_masks``, no host synchronisation): member i keeps its filters of rank < K_i in
one global order (each group's best filter first, then by score, ties by index); K_i is the largest K whose
cost fits the budget. The counts of every prefix K come from one cumulative sum, so every K is priced at once
(also with ``round_to``, which rounds the counts). Once, where a mask freezes (``fill``): the best-scored
filters that still fit are added one at a time, so the member ends as close under its target as the channel
granularity allows.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import BUDGETS
from .flops import trace_layers

__all__ = ["BUDGETS", "CostModel", "group_counts", "rank_order", "threshold_masks", "fill", "rounded_counts"]

_KINDS = ("flops", "params")


class CostModel(nn.Module):
    """Exact (FLOPs, params) of per-group kept counts; all state in non-persistent float64 buffers."""

    def __init__(self, const: torch.Tensor, lin: torch.Tensor, quad: torch.Tensor):
        super().__init__()
        self.register_buffer("const", const, persistent=False)  # (2,)       flops, params
        self.register_buffer("lin", lin, persistent=False)      # (2, G)
        self.register_buffer("quad", quad, persistent=False)    # (2, G, G)

    @staticmethod
    def build(model: nn.Module, example_input: torch.Tensor, groups) -> "CostModel":
        """From one eval forward of ``model`` and the groups' index maps."""
        calls = trace_layers(model, example_input[:1])
        index = {name: i for i, (name, _, _) in enumerate(calls)}
        n_layers, n_groups = len(calls), len(groups)
        w = torch.zeros(2, n_layers, n_groups, dtype=torch.float64)  # [in|out][layer, group]: positions per filter
        for gi, g in enumerate(groups):
            for name, direction, roots in g.layers:
                if name in index:
                    per_filter = torch.bincount(torch.tensor(roots), minlength=g.size)
                    if not (per_filter == per_filter[0]).all():
                        raise ValueError(f"cannot prune: the channels of group {g.root!r} feed {name!r} unevenly")
                    w[int(direction == "out"), index[name], gi] = float(per_filter[0])
        sizes = torch.tensor([g.size for g in groups], dtype=torch.float64)
        const = torch.zeros(2, dtype=torch.float64)
        lin = torch.zeros(2, n_groups, dtype=torch.float64)
        quad = torch.zeros(2, n_groups, n_groups, dtype=torch.float64)
        for i, (_, m, shape) in enumerate(calls):
            if isinstance(m, nn.Conv2d):
                kk = m.kernel_size[0] * m.kernel_size[1]
                macs, n_in, n_out = shape[2] * shape[3] * kk, m.in_channels, m.out_channels
                dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                fan_in = 1 if dw else (m.in_channels // m.groups if m.groups > 1 else 0)  # 0: n_in, which varies
            else:  # a Linear over (B, ..., F): once per position of the middle dims (tokens)
                kk, macs, n_in, n_out, fan_in = 1, math.prod(shape[1:-1]), m.in_features, m.out_features, 0
            w_in, w_out = w[0, i], w[1, i]
            in0, out0 = n_in - float(w_in @ sizes), n_out - float(w_out @ sizes)  # channels in no group
            bias = float(m.bias is not None)
            for k, unit in enumerate((macs, kk)):  # flops: MACs per (input, output) pair; params: weights per pair
                if fan_in:  # n_out x a fixed fan-in: linear in the counts
                    const[k] += unit * fan_in * out0
                    lin[k] += unit * fan_in * w_out
                else:       # n_in x n_out: bilinear
                    const[k] += unit * in0 * out0
                    lin[k] += unit * (in0 * w_out + out0 * w_in)
                    quad[k] += unit * torch.outer(w_in, w_out)
            const[1] += bias * out0
            lin[1] += bias * w_out
        return CostModel(const, lin, quad)

    def price(self, counts: torch.Tensor, kind: str) -> torch.Tensor:
        """counts (..., G) kept filters per group -> cost (...,), float64 holding an exact integer."""
        k = _KINDS.index(kind)
        c = counts.to(torch.float64)
        return self.const[k] + c @ self.lin[k] + ((c @ self.quad[k]) * c).sum(-1)

    def cost(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """counts (..., G) -> (flops, params), each (...,) int64."""
        return self.price(counts, "flops").round().long(), self.price(counts, "params").round().long()

    def granularity(self, sizes: torch.Tensor, kind: str) -> torch.Tensor:
        """(G,) the cost of one filter of each group when every other filter is kept: an upper bound of that
        filter's cost at any mask (the form has non-negative coefficients), hence the budget's granularity."""
        full = sizes.to(torch.float64)
        return self.price(full, kind) - self.price(full - torch.eye(len(sizes), dtype=torch.float64,
                                                                     device=full.device), kind)

    def marginal(self, counts: torch.Tensor, kind: str) -> torch.Tensor:
        """counts (G,) -> (G,) the exact cost of one more filter in each group."""
        k = _KINDS.index(kind)
        c = counts.to(torch.float64)
        q = self.quad[k]
        return self.lin[k] + q @ c + q.T @ c + q.diagonal()


def group_counts(masks: torch.Tensor, group_of: torch.Tensor, n_groups: int) -> torch.Tensor:
    """masks (..., F) of 0/1 -> kept filters per group (..., G)."""
    out = torch.zeros(*masks.shape[:-1], n_groups, dtype=masks.dtype, device=masks.device)
    return out.scatter_add_(-1, group_of.expand_as(masks), masks)


def rank_order(scores: torch.Tensor, group_of: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global order of every member's filters: each group's best filter first (so no layer is ever
    emptied), then by score, ties by flat index. scores (N, F) -> (order (N, F), rank (N, F))."""
    n, f = scores.shape
    by_score = torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices   # (N, F)
    g_sorted = group_of[by_score]                                                          # (N, F)
    pos = torch.arange(f, device=scores.device).expand(n, f)
    first = torch.full((n, n_groups), f, dtype=torch.long, device=scores.device)
    first = first.scatter_reduce(1, g_sorted, pos, reduce="amin")                         # group's best position
    forced = (pos == first.gather(1, g_sorted)).long()                                  # (N, F), G per row
    # a stable partition, forced first, by counting instead of a second sort
    new_pos = torch.where(forced.bool(), forced.cumsum(1) - 1, n_groups + (1 - forced).cumsum(1) - 1)
    order = torch.empty_like(by_score).scatter_(1, new_pos, by_score)
    rank = torch.empty_like(order).scatter_(1, order, pos)
    return order, rank


def rounded_counts(counts: torch.Tensor, sizes: torch.Tensor, round_to: int) -> torch.Tensor:
    """Each group's kept count to the nearest multiple of ``round_to`` (half up), at least one, at most the group."""
    if round_to == 1:
        return counts
    return torch.minimum(sizes, ((counts + round_to // 2) // round_to * round_to).clamp_min(round_to))


def _group_rank(order: torch.Tensor, group_of: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(N, F) each filter's rank within its group, in the global order."""
    n, f = order.shape
    g_sorted = group_of[order]                                           # (N, F) group of each rank
    by_group = torch.sort(g_sorted, dim=1, stable=True).indices           # ranks grouped, in rank order
    within = torch.arange(f, device=order.device) - offsets[g_sorted.gather(1, by_group)]
    return torch.empty_like(order).scatter_(1, order.gather(1, by_group), within)


class _Layout:
    """What the threshold needs besides the scores: the filters' groups and the cost model."""

    def __init__(self, group_of: torch.Tensor, sizes: torch.Tensor, cost: CostModel):
        self.group_of, self.sizes, self.cost = group_of, sizes, cost
        self.offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def threshold_masks(scores: torch.Tensor, layout: _Layout, *, kind: str, limits: torch.Tensor,
                    round_to: int = 1) -> torch.Tensor:
    """scores (N, F) -> 0/1 masks (N, F): member i keeps its top-K_i filters in ``rank_order`` (each group's
    count rounded to ``round_to``), where K_i is ``limits[i]`` filters (``kind='filters'``) or the most filters
    whose FLOPs/params are at most ``limits[i]`` (at least one per group). Tensor ops only, on the scores'
    device: no host synchronisation."""
    n, f = scores.shape
    n_groups = len(layout.sizes)
    order, rank = rank_order(scores, layout.group_of, n_groups)
    g_sorted = layout.group_of[order]                                                  # (N, F)
    if kind == "filters":
        k = limits.long()[:, None]
    else:  # the per-group counts of every prefix K = 1..F, priced at once (cost is monotone in K)
        onehot = torch.zeros(n, f, n_groups, dtype=torch.float64, device=scores.device)
        counts = onehot.scatter_(2, g_sorted[..., None], 1.0).cumsum(1)                 # (N, F, G)
        cost = layout.cost.price(rounded_counts(counts, layout.sizes, round_to), kind)  # (N, F)
        k = (cost <= limits[:, None]).sum(1, keepdim=True).clamp_min(n_groups)
    if round_to == 1:
        return (rank < k).float()
    kept = rounded_counts(group_counts((rank < k).long(), layout.group_of, n_groups), layout.sizes, round_to)
    grank = _group_rank(order, layout.group_of, layout.offsets)
    return (grank < kept.gather(1, layout.group_of.expand(n, f))).float()


@torch.no_grad()
def fill(mask: torch.Tensor, scores: torch.Tensor, layout: _Layout, *, kind: str, limit: float,
         round_to: int = 1) -> torch.Tensor:
    """One member's threshold mask (F,) -> the same mask plus the best-scored filters (with ``round_to``, a
    group's next ``round_to``) that still fit under ``limit``, added one at a time until none fits.
    Exact costs on the host; runs once where a mask freezes (export, stats, evaluation), not per step."""
    dev = mask.device
    mask, scores = mask.detach().cpu().bool().clone(), scores.detach().cpu().float()
    group_of, sizes = layout.group_of.cpu(), layout.sizes.cpu()
    cost = CostModel(layout.cost.const.cpu(), layout.cost.lin.cpu(), layout.cost.quad.cpu())
    n_groups = len(sizes)
    counts = group_counts(mask.long(), group_of, n_groups)
    order, _ = rank_order(scores[None], group_of, n_groups)
    grank = _group_rank(order, group_of, layout.offsets.cpu())[0]
    spent = float(cost.price(counts, kind))
    while True:
        # each group's candidate: its next ``round_to`` filters (fewer at its end), scored by the best of them
        add = torch.minimum(torch.full_like(sizes, round_to), sizes - counts)               # (G,)
        delta = cost.price(counts + torch.diag(add), kind) - spent if round_to > 1 else cost.marginal(counts, kind)
        nxt = (grank == counts[group_of]) & ~mask                                           # each group's next filter
        best = torch.full((n_groups,), float("-inf")).scatter_reduce(0, group_of[nxt], scores[nxt], reduce="amax")
        ok = (add > 0) & (spent + delta <= limit)
        if not ok.any():
            break
        g = int(best.masked_fill(~ok, float("-inf")).argmax())
        mask |= (group_of == g) & (grank >= counts[g]) & (grank < counts[g] + add[g])
        counts[g] += add[g]
        spent = float(cost.price(counts, kind))
    return mask.float().to(dev)
