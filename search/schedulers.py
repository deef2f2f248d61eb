"""Pareto successive halving: ASHA's asynchronous early stopping for several objectives at once.

At each rung (``grace_period``, then × ``reduction_factor``, ... epochs) a trial's objective values are compared
with those of every trial that reached the rung before it. It goes on when fewer than 1 / ``reduction_factor`` of
them lie in strictly better non-dominated fronts (so every trial on the rung's own frontier goes on, one good only
at low FLOPs included) and stops otherwise. A stopped trial never reaches Optuna as complete nor the frontier.
"""
from __future__ import annotations

import math

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from .frontier import pareto_front

__all__ = ["ParetoHalving", "fronts"]


def fronts(points: list[list[float]], modes: list[str]) -> list[int]:
    """Each point's non-dominated front: 0 for the frontier, 1 for the frontier of the rest, and so on."""
    rank = [-1] * len(points)
    left, level = list(range(len(points))), 0
    while left:
        front = [left[i] for i in pareto_front([points[j] for j in left], modes)]
        for j in front:
            rank[j] = level
        left = [j for j in left if rank[j] < 0]
        level += 1
    return rank


class ParetoHalving(FIFOScheduler):
    def __init__(self, *, metrics: list[str], modes: list[str], time_attr: str, max_t: int, grace_period: int = 1,
                 reduction_factor: int = 3):
        super().__init__()
        self.metrics, self.modes, self.time_attr, self.rf = metrics, modes, time_attr, reduction_factor
        rungs, r = [], grace_period
        while r < max_t:
            rungs.append(r)
            r *= reduction_factor
        self.rungs: dict[int, dict[str, list[float]]] = {r: {} for r in rungs}  # rung -> trial -> its values

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if any(m not in result for m in self.metrics) or self.time_attr not in result:
            return TrialScheduler.CONTINUE
        t = result[self.time_attr]
        for rung in sorted(self.rungs, reverse=True):
            seen = self.rungs[rung]
            if t < rung or trial.trial_id in seen:
                continue
            seen[trial.trial_id] = [float(result[m]) for m in self.metrics]
            ids = list(seen)
            rank = fronts([seen[i] for i in ids], self.modes)
            mine = rank[ids.index(trial.trial_id)]
            better = sum(r < mine for r in rank)
            return TrialScheduler.CONTINUE if better < math.ceil(len(ids) / self.rf) else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return "ParetoHalving: " + ", ".join(f"rung {r}: {len(s)} trials" for r, s in self.rungs.items())
