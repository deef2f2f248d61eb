"""TA placement: the member ratios (student first, the unpruned top member last) for a number of TAs.

Pure functions; every placement returns a strictly decreasing list that ends at 0 when there are TAs.
"""
from __future__ import annotations

__all__ = ["PLACEMENTS", "member_ratios"]

PLACEMENTS = ("paper", "even", "geometric", "free")


def member_ratios(student: float, num_tas: int, placement: str = "paper",
                  free: list[float] | None = None) -> list[float]:
    """Ratios k_0 > k_1 > ... > k_{N-1} = 0 for ``num_tas`` TAs (N = num_tas + 1 members).

    - ``paper``: k_0, k_0/1.5, k_0/2.5, ..., 0 (the paper's 3-TA ladder 0.8, 0.533, 0.32, 0)
    - ``even``: linearly spaced from k_0 down to 0
    - ``geometric``: kept fractions (1 - k) geometrically spaced from 1 - k_0 up to 1
    - ``free``: ``free[j]`` is TA j+1's ratio as a fraction of the member below it, in (0, 1)
    """
    if not 0 < student < 1:
        raise ValueError(f"student ratio must be in (0, 1), got {student}")
    if num_tas < 0:
        raise ValueError(f"num_tas must be >= 0, got {num_tas}")
    if num_tas == 0:
        return [student]
    n = num_tas
    if placement == "paper":
        mids = [student / (1.5 + j) for j in range(n - 1)]
    elif placement == "even":
        mids = [student * (1 - j / n) for j in range(1, n)]
    elif placement == "geometric":
        mids = [1 - (1 - student) ** (1 - j / n) for j in range(1, n)]
    elif placement == "free":
        free = list(free or [])
        if len(free) != n - 1:
            raise ValueError(f"free placement with {n} TAs needs {n - 1} fractions, got {len(free)}")
        mids, k = [], student
        for f in free:
            if not 0 < f < 1:
                raise ValueError(f"free TA fractions must be in (0, 1), got {f}")
            k *= f
            mids.append(k)
    else:
        raise ValueError(f"unknown placement {placement!r} (expected one of {', '.join(PLACEMENTS)})")
    return [student, *mids, 0.0]
