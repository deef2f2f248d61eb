"""Small pure functions over masks and scores: kept counts, the straight-through gradient, cascaded routing.

``cascade.budget`` turns scores into masks; ``CascadeNet`` owns the scores and calls these. The last three
measure how much the masks learn (logged per joint epoch): overlap with the start, rank correlation of the
scores with their start, and the signal-to-noise of the score gradient the members receive.
"""
from __future__ import annotations

import torch

__all__ = ["keep_count", "straight_through", "route_to_teacher", "jaccard", "spearman", "GradientMoments",
           "TaylorSaliency"]


def keep_count(ratio: float, total: int, min_keep: int = 1) -> int:
    """Filters kept when a fraction ``ratio`` of ``total`` is removed (at least ``min_keep``)."""
    return max(min_keep, total - int(round(ratio * total)))


def straight_through(hard: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Forward: the binary mask. Backward: dL/dscore = dL/dmask (the threshold is taken as the identity).

    dL/dmask of filter n is sum over positions of dL/dY_n * (unmasked output)_n, so a masked filter still
    receives a gradient and can come back.
    """
    return hard + scores - scores.detach()


def route_to_teacher(grad: torch.Tensor) -> torch.Tensor:
    """The cascaded score update on a (N, C) gradient, student first.

    Member i takes member i+1's gradient (its teacher member still has the filters that i pruned and sees
    their contribution); the top member keeps its own.
    """
    return torch.cat([grad[1:], grad[-1:]], dim=0)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, F) 0/1 masks -> (N,) |a and b| / |a or b| per member: 1 = the same kept filters."""
    a, b = a.bool(), b.bool()
    return (a & b).sum(1) / (a | b).sum(1).clamp_min(1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, F) scores -> (N,) Spearman rank correlation per member (ties broken by position)."""
    ra, rb = (x.argsort(1).argsort(1).double() for x in (a, b))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


class GradientMoments:
    """Running per-filter mean and variance of the (N, F) score gradient over the steps of an epoch, on the
    device: ``log10_snr()`` gives each member's median over filters of log10(|mean| / std), the evidence of a
    consistent signal (0 = as strong as its noise; a gradient of pure noise over S steps sits near -log10(S)/2)."""

    def __init__(self):
        self.n, self.sum, self.sq = 0, None, None

    def add(self, grad: torch.Tensor) -> None:
        g = grad.detach().double()
        self.sum = g.clone() if self.sum is None else self.sum + g
        self.sq = g * g if self.sq is None else self.sq + g * g
        self.n += 1

    def log10_snr(self) -> list[float]:
        if self.n < 2:
            return []
        mean = self.sum / self.n
        std = (self.sq / self.n - mean * mean).clamp_min(0).sqrt()
        snr = mean.abs() / std.clamp_min(1e-30)
        return snr.clamp_min(1e-30).log10().median(1).values.tolist()


class TaylorSaliency:
    """``cascade.score_signal: taylor``: a member's scores become the running mean of |dL/dmask| it receives (the
    routed gradient: for a kept filter, the first-order estimate of the loss its removal costs; for a masked one,
    of what adding it gains), per unit of each filter's cost, so one global threshold ranks importance per FLOP.
    A magnitude accumulates where the signed gradient averages out to noise. The scores move from their start
    to it over ``warmup`` steps. ``start`` (N, F), ``cost`` (F,) > 0; state on the scores' device."""

    def __init__(self, start: torch.Tensor, cost: torch.Tensor, warmup: int):
        self.start, self.cost, self.warmup = start.detach().clone(), cost.to(start), max(1, warmup)
        self.sum, self.n = torch.zeros_like(self.start), 0

    @torch.no_grad()
    def update(self, scores: torch.Tensor, grad: torch.Tensor) -> None:
        self.sum += grad.abs()
        self.n += 1
        per_cost = self.sum / self.cost
        saliency = per_cost / per_cost.mean(1, keepdim=True).clamp_min(1e-30) * self.start.mean(1, keepdim=True)
        a = min(1.0, self.n / self.warmup)
        scores.copy_((1 - a) * self.start + a * saliency)

    def state_dict(self) -> dict:
        return {"start": self.start, "sum": self.sum, "n": self.n}

    def load_state_dict(self, d: dict) -> None:
        self.start, self.sum, self.n = d["start"].to(self.start), d["sum"].to(self.sum), d["n"]
