"""Small pure functions over masks and scores: kept counts, the straight-through gradient, cascaded routing.

``cascade.budget`` turns scores into masks; ``CascadeNet`` owns the scores and calls these.
"""
from __future__ import annotations

import torch

__all__ = ["keep_count", "straight_through", "route_to_teacher"]


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
