"""The host-side budget algorithm the device threshold replaced (Python bisection over K, one cost evaluation
per step), kept as the reference the device masks must equal. Same global order: each group's best filter
first, then by score, ties by flat index."""
import torch


def global_topk(scores: list[torch.Tensor], keep: int, round_to: int = 1) -> list[torch.Tensor]:
    """Keep exactly ``keep`` filters (each group its best, then the globally best); then round each group's
    count to the nearest multiple of ``round_to`` (half up, at least one, at most the group)."""
    sizes = [s.numel() for s in scores]
    flat = torch.cat([s.detach().float().flatten() for s in scores])
    order = torch.sort(flat, descending=True, stable=True).indices.tolist()
    groups = [g for g, n in enumerate(sizes) for _ in range(n)]
    seen, forced, rest = set(), [], []
    for f in order:
        (rest if groups[f] in seen else forced).append(f)
        seen.add(groups[f])
    keep_mask = torch.zeros(len(flat), dtype=torch.bool)
    keep_mask[(forced + rest)[:keep]] = True
    masks = list(keep_mask.split(sizes))
    if round_to > 1:
        out = []
        for s, m in zip(scores, masks):
            c = min(s.numel(), max(round_to, (int(m.sum()) + round_to // 2) // round_to * round_to))
            top = torch.sort(s.detach().float(), descending=True, stable=True).indices[:c]
            out.append(torch.zeros(s.numel(), dtype=torch.bool).index_fill_(0, top, True))
        masks = out
    return [m.float() for m in masks]


def bisect_masks(scores: list[torch.Tensor], cost, target: float, kind: str, round_to: int = 1) -> list[torch.Tensor]:
    """The most filters (global top-K) whose cost is at most ``target``, by bisection on K."""
    price = lambda masks: float(cost.price(torch.tensor([float(m.sum()) for m in masks]), kind))  # noqa: E731
    lo, hi = len(scores), sum(s.numel() for s in scores)
    full = global_topk(scores, hi, round_to)
    if price(full) <= target:
        return full
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if price(global_topk(scores, mid, round_to)) <= target:
            lo = mid
        else:
            hi = mid
    return global_topk(scores, lo, round_to)
