"""Scores -> binary masks: one global threshold per member, straight-through gradient, cascaded routing.

Pure functions over tensors; ``CascadeNet`` owns the scores and calls these.
"""
from __future__ import annotations

import torch

__all__ = ["keep_count", "global_topk_masks", "straight_through", "route_to_teacher"]


def keep_count(ratio: float, total: int, min_keep: int = 1) -> int:
    """Filters kept when a fraction ``ratio`` of ``total`` is removed (at least ``min_keep``)."""
    return max(min_keep, total - int(round(ratio * total)))


@torch.no_grad()
def global_topk_masks(scores: list[torch.Tensor], keep: int, round_to: int = 1) -> list[torch.Tensor]:
    """Binary masks that keep exactly ``keep`` filters across all layers by one global threshold.

    ``scores`` holds one 1-D tensor per prunable group. Each group keeps its best filter whatever the
    threshold (a layer of width 0 cannot be exported); the remaining ``keep - len(scores)`` slots go to
    the globally highest scores, so the count is exact even with ties. ``round_to > 1`` then rounds each
    group's count to the nearest multiple (at least one multiple, at most the group), keeping its best
    filters: hardware-friendly widths, and the total is no longer exact.
    """
    sizes = [s.numel() for s in scores]
    flat = torch.cat([s.detach().float().flatten() for s in scores])  # (F,)
    if keep >= flat.numel():
        return [torch.ones_like(s, dtype=torch.float32) for s in scores]
    forced = torch.zeros_like(flat, dtype=torch.bool)
    offset = 0
    for n, s in zip(sizes, scores):
        forced[offset + int(s.detach().argmax())] = True
        offset += n
    rest = flat.masked_fill(forced, float("-inf"))
    extra = max(0, keep - len(scores))
    keep_mask = forced.clone()
    if extra:
        keep_mask[rest.topk(extra).indices] = True
    masks = keep_mask.split(sizes)
    if round_to > 1:  # each group's count to the nearest multiple, at least one, at most the group
        counts = [min(s.numel(), max(round_to, (int(m.sum()) + round_to // 2) // round_to * round_to))
                  for s, m in zip(scores, masks)]
        return [_top(s, c) for s, c in zip(scores, counts)]
    return [m.float() for m in masks]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.float32)
    mask[scores.detach().float().flatten().topk(k).indices.cpu()] = 1.0
    return mask.to(scores.device).view_as(scores)


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
