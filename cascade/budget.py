"""Budgets as tensor work: the exact FLOPs/params of masked members, the per-step threshold, the final fill.

Filters are numbered flat, group after group (F in all). Every conv/linear layer's cost is (active inputs) x
(active outputs) x a constant (spatial size x kernel), in the paper's convention (``cascade.flops``); a layer's
active channels are its fixed ones plus, for each flat filter, how many of its input (output) positions that
filter feeds: the (L, F) count matrices ``in_w`` and ``out_w`` built from Torch-Pruning's index maps. So a
removed filter also removes its input channel from the next layers, and coupled channels count once.

Per training step (``threshold_masks``, no host synchronisation): member i keeps its filters of rank < K_i
in one global order (each group's best filter first, then by score, ties by index); K_i is the largest K
whose cost fits the budget. Cost is monotone in K, so with ``round_to == 1`` one cumulative sum over the
order prices every K at once; with rounding, a coarse-to-fine search prices candidate K's in batches.
Once, where a mask freezes (``fill``): the best-scored filters that still fit are added one by one, so the
member ends as close under its target as the channel granularity allows.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .flops import trace_layers

__all__ = ["BUDGETS", "CostModel", "rank_order", "threshold_masks", "fill", "rounded_counts"]

BUDGETS = ("filters", "flops", "params")


class CostModel(nn.Module):
    """Exact (FLOPs, params) of masks over the F flat filters; all state in non-persistent buffers."""

    def __init__(self, pair_macs, pair_params, depthwise, conv_groups, bias, in_fixed, out_fixed, in_w, out_w):
        super().__init__()
        for name, value in dict(pair_macs=pair_macs, pair_params=pair_params, depthwise=depthwise,
                                conv_groups=conv_groups, bias=bias, in_fixed=in_fixed, out_fixed=out_fixed,
                                in_w=in_w, out_w=out_w).items():
            self.register_buffer(name, value, persistent=False)

    @staticmethod
    def build(model: nn.Module, example_input: torch.Tensor, groups, offsets: list[int]) -> "CostModel":
        """From one eval forward of ``model`` and the groups' index maps (``offsets[g]``: group g's first filter)."""
        calls = trace_layers(model, example_input[:1])
        index = {name: i for i, (name, _, _) in enumerate(calls)}
        n_filters = offsets[-1] + groups[-1].size if groups else 0
        L = len(calls)
        in_w = torch.zeros(L, n_filters, dtype=torch.long)
        out_w = torch.zeros(L, n_filters, dtype=torch.long)
        rows = []
        for name, m, shape in calls:
            if isinstance(m, nn.Conv2d):
                kk = m.kernel_size[0] * m.kernel_size[1]
                dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                rows.append((shape[2] * shape[3] * kk, kk, dw, m.groups, m.bias is not None,
                             m.in_channels, m.out_channels))
            else:  # a Linear over (B, ..., F): once per position of the middle dims (tokens)
                rows.append((math.prod(shape[1:-1]), 1, False, 1, m.bias is not None, m.in_features, m.out_features))
        for gi, g in enumerate(groups):
            for name, direction, roots in g.layers:
                if name in index:
                    w = in_w if direction == "in" else out_w
                    w[index[name]].index_add_(0, torch.tensor(roots) + offsets[gi], torch.ones(len(roots), dtype=torch.long))
        col = lambda j: torch.tensor([r[j] for r in rows], dtype=torch.long)  # noqa: E731
        return CostModel(col(0), col(1), col(2).bool(), col(3), col(4), col(5) - in_w.sum(1), col(6) - out_w.sum(1),
                         in_w, out_w)

    def _price(self, n_in: torch.Tensor, n_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., L) active channel counts -> (flops, params), each (...,), int64."""
        pairs = torch.where(self.depthwise, n_out, n_out * n_in // self.conv_groups)
        flops = (pairs * self.pair_macs).sum(-1)
        params = (pairs * self.pair_params + n_out * self.bias).sum(-1)
        return flops, params

    def cost(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """masks (..., F) of 0/1 -> (flops, params), each (...,), exact int64."""
        m = masks.to(torch.float64)  # integer counts below 2**53: exact
        n_in = self.in_fixed + (m @ self.in_w.T.to(torch.float64)).round().long()
        n_out = self.out_fixed + (m @ self.out_w.T.to(torch.float64)).round().long()
        return self._price(n_in, n_out)

    def prefix_costs(self, order: torch.Tensor, kind: str) -> torch.Tensor:
        """order (N, F): filter index by rank -> cost of keeping the first K filters, for K = 1..F: (N, F)."""
        n_in = self.in_fixed + self.in_w.T[order].cumsum(1)     # (N, F, L)
        n_out = self.out_fixed + self.out_w.T[order].cumsum(1)  # (N, F, L)
        flops, params = self._price(n_in, n_out)
        return flops if kind == "flops" else params

    def marginal_full(self, kind: str) -> torch.Tensor:
        """(F,) each filter's cost when every other filter is kept: an upper bound of its cost at any mask
        (costs are bilinear with non-negative coefficients), hence the budget's granularity."""
        full = torch.ones(1, self.in_w.shape[1], dtype=torch.float64, device=self.in_w.device)
        n_in = self.in_fixed + self.in_w.sum(1)
        n_out = self.out_fixed + self.out_w.sum(1)
        whole = self.cost(full)[0 if kind == "flops" else 1]
        without = self._price(n_in - self.in_w.T, n_out - self.out_w.T)[0 if kind == "flops" else 1]  # (F,)
        return whole - without


def rank_order(scores: torch.Tensor, group_of: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global order of every member's filters: each group's best filter first (so no layer is ever
    emptied), then by score, ties by flat index. scores (N, F) -> (order (N, F), rank (N, F))."""
    n, f = scores.shape
    by_score = torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices   # (N, F)
    # the first filter of each group in that order is the group's best
    g_sorted = group_of[by_score]                                                          # (N, F)
    first = torch.full((n, n_groups), f, dtype=torch.long, device=scores.device)
    pos = torch.arange(f, device=scores.device).expand(n, f)
    first = first.scatter_reduce(1, g_sorted, pos, reduce="amin")
    forced = (pos == first.gather(1, g_sorted)).to(torch.int8)                            # (N, F) by position
    order = by_score.gather(1, torch.sort(forced, dim=1, descending=True, stable=True).indices)
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


def _masks_at(k: torch.Tensor, rank: torch.Tensor, grank: torch.Tensor, layout: _Layout, round_to: int) -> torch.Tensor:
    """k (N, C) candidate counts -> masks (N, C, F): the top-k by rank, each group's count rounded."""
    base = rank[:, None, :] < k[..., None]                                # (N, C, F)
    if round_to == 1:
        return base.float()
    n, c, f = base.shape
    counts = torch.zeros(n, c, len(layout.sizes), dtype=torch.long, device=rank.device)
    counts.scatter_add_(2, layout.group_of.expand(n, c, f), base.long())
    kept = rounded_counts(counts, layout.sizes, round_to)                # (N, C, G)
    return (grank[:, None, :] < kept.gather(2, layout.group_of.expand(n, c, f))).float()


def threshold_masks(scores: torch.Tensor, layout: _Layout, *, kind: str, limits: torch.Tensor,
                    round_to: int = 1, candidates: int = 64) -> torch.Tensor:
    """scores (N, F) -> 0/1 masks (N, F): member i keeps its top-K_i filters in ``rank_order``, where K_i is
    ``limits[i]`` filters (``kind='filters'``) or the most filters whose FLOPs/params are at most ``limits[i]``
    (at least one per group). Tensor ops only, on the scores' device: no host synchronisation."""
    n, f = scores.shape
    n_groups = len(layout.sizes)
    order, rank = rank_order(scores, layout.group_of, n_groups)
    grank = _group_rank(order, layout.group_of, layout.offsets) if round_to > 1 else rank
    if kind == "filters":
        k = limits.long()[:, None]
    elif round_to == 1:  # every K priced at once
        fits = layout.cost.prefix_costs(order, kind) <= limits[:, None]
        k = fits.sum(1, keepdim=True).clamp_min(n_groups)
    else:  # rounding: coarse-to-fine over batches of candidate K (cost is still monotone in K)
        lo = torch.full((n, 1), n_groups, dtype=torch.long, device=scores.device)
        hi = torch.full((n, 1), f, dtype=torch.long, device=scores.device)
        steps = torch.arange(candidates + 1, device=scores.device)
        for _ in range(max(1, math.ceil(math.log(max(2, f), candidates + 1))) + 1):
            ks = lo + (hi - lo) * steps // candidates                          # (N, C+1)
            cost = layout.cost.cost(_masks_at(ks, rank, grank, layout, round_to))[0 if kind == "flops" else 1]
            i = ((cost <= limits[:, None]).sum(1, keepdim=True) - 1).clamp_min(0)
            lo, hi = ks.gather(1, i), ks.gather(1, (i + 1).clamp_max(candidates))
        k = lo
    return _masks_at(k, rank, grank, layout, round_to)[:, 0]


@torch.no_grad()
def fill(mask: torch.Tensor, scores: torch.Tensor, layout: _Layout, *, kind: str, limit: float,
         round_to: int = 1) -> torch.Tensor:
    """One member's threshold mask (F,) -> the same mask plus the best-scored filters (with ``round_to``, a
    group's next ``round_to``) that still fit under ``limit``, added one at a time until none fits.
    Exact integer costs on the host; runs once where a mask freezes (export, stats), not per step."""
    cost, dev = layout.cost, mask.device
    mask, scores = mask.detach().cpu().bool().clone(), scores.detach().cpu().float()
    in_w, out_w = cost.in_w.cpu(), cost.out_w.cpu()
    group_of, sizes = layout.group_of.cpu(), layout.sizes.cpu()
    price = CostModel(*(b.cpu() for b in (cost.pair_macs, cost.pair_params, cost.depthwise, cost.conv_groups,
                                          cost.bias, cost.in_fixed, cost.out_fixed, in_w, out_w)))._price
    idx = 0 if kind == "flops" else 1
    n_in, n_out = cost.in_fixed.cpu() + in_w @ mask.long(), cost.out_fixed.cpu() + out_w @ mask.long()  # (L,)
    if round_to > 1:
        order, _ = rank_order(scores[None], group_of, len(sizes))
        grank = _group_rank(order, group_of, layout.offsets.cpu())[0]
    while True:
        if round_to == 1:  # every unkept filter is a candidate
            units = torch.nonzero(~mask).flatten()
            d_in, d_out, unit_score = in_w.T[units], out_w.T[units], scores[units]   # (U, L), (U, L), (U,)
            members = lambda u: units[u]  # noqa: E731
        else:  # a group's next round_to filters (fewer at its end)
            counts = torch.zeros(len(sizes), dtype=torch.long).scatter_add_(0, group_of, mask.long())
            nxt = [torch.nonzero((group_of == g) & (grank >= counts[g]) & (grank < counts[g] + round_to)).flatten()
                   for g in range(len(sizes)) if counts[g] < sizes[g]]
            if not nxt:
                break
            d_in = torch.stack([in_w[:, u].sum(1) for u in nxt])
            d_out = torch.stack([out_w[:, u].sum(1) for u in nxt])
            unit_score = torch.stack([scores[u].max() for u in nxt])
            members = lambda u: nxt[u]  # noqa: E731
        if len(unit_score) == 0:
            break
        fits = price(n_in + d_in, n_out + d_out)[idx] <= limit                   # (U,)
        if not fits.any():
            break
        u = int(unit_score.masked_fill(~fits, float("-inf")).argmax())
        mask[members(u)] = True
        n_in, n_out = n_in + d_in[u], n_out + d_out[u]
    return mask.float().to(dev)
