"""Optuna samplers by name, seeded."""
from __future__ import annotations

import optuna

__all__ = ["SAMPLERS", "make_sampler"]

SAMPLERS = ("tpe", "nsga2", "gp", "random")


def make_sampler(name: str, *, seed: int, n_startup_trials: int = 10) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, handles conditional spaces), NSGA-II, GP or random search."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True,
                                          group=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r} (expected one of {', '.join(SAMPLERS)})")
