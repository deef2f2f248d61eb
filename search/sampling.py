"""Optuna sampling of a ``spaces.Space``: the samplers by name and the define-by-run draw of one trial."""
from __future__ import annotations

from typing import Any

from spaces import ALIASES, LADDER_KEYS, Param, Space, cascade_only, member_ratios

__all__ = ["SAMPLERS", "make_sampler", "sample_space", "suggest"]

SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")


def grid(space: Space) -> dict[str, list]:
    """The ``grid`` sampler's search space: every searched parameter's choices (ranges have no grid)."""
    return {name: list(p.choices) for name, p in space.params.items() if p.kind == "categorical"}


def make_sampler(name: str, *, seed: int, n_startup_trials: int = 10, space: Space | None = None):
    """TPE (multivariate, handles conditional spaces), NSGA-II, GP, random search, or every combination of the
    space's choices (``grid``, in a seeded order), seeded."""
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(grid(space), seed=seed)
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


def suggest(param: Param, trial, name: str | None = None) -> Any:
    """Draw ``param`` from an Optuna trial (or return its fixed value)."""
    name = name or param.name
    if param.kind == "fixed":
        return param.value
    if param.kind == "categorical":
        return trial.suggest_categorical(name, list(param.choices))
    if param.kind == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def sample_space(trial, space: Space, *, student_ratio: float = 0.5) -> tuple[dict[str, Any], dict[str, Any]]:
    """Define-by-run sampling. Returns (prune-config overrides by dotted path, params to log).

    The logged params hold what was sampled plus what it implies: the method, the TA count and every member's
    ratio. A one-shot peer (``method`` other than cascade) draws no TA ladder and no cascade-only parameter.
    A space without the ladder's keys leaves the ratios (and the method) as the base config has them;
    ``student_ratio`` is the student's ratio where the space does not draw it.
    """
    overrides: dict[str, Any] = {}
    logged: dict[str, Any] = {}
    method = suggest(space.get("method", "cascade"), trial)
    peer = method != "cascade"
    if any(k in space.params for k in LADDER_KEYS):
        num_tas = 0 if peer else int(suggest(space.get("num_tas", 0), trial))
        student = float(suggest(space.get("student_ratio", student_ratio), trial))
        placement, free = "paper", None
        if num_tas >= 2:  # with 0 or 1 TA every placement gives the same ladder
            placement = suggest(space.get("placement", "paper"), trial)
            if placement == "free":
                frac = space.params.get("free_fraction", Param("free_fraction", "float", low=0.2, high=0.9))
                free = [float(suggest(frac, trial, f"free_fraction_{j}_of_{num_tas}")) for j in range(1, num_tas)]
        ratios = member_ratios(student, num_tas, placement, free)
        overrides.update({"method": method, "cascade.ratios": ratios})
        logged.update(method=method, num_tas=num_tas, student_ratio=student, placement=placement)
        logged.update({f"ratio_m{i}": r for i, r in enumerate(ratios)})
    for name, p in space.params.items():
        if name in LADDER_KEYS or (peer and cascade_only(name)):
            continue
        value = suggest(p, trial)
        overrides[ALIASES.get(name, name)] = value
        logged[name] = value
    return overrides, logged
