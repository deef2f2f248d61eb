"""Search spaces as plain YAML, validated (sampling them with Optuna lives in ``search.sampling``).

A space maps a name to a value spec::

    num_tas: {low: 0, high: 3}                  # int range
    student_ratio: {low: 0.3, high: 0.85}       # float range (or a fixed 0.6)
    placement: {choices: [paper, even, geometric, free]}
    free_fraction: {low: 0.2, high: 0.9}        # per-TA fractions, used only by placement 'free'
    tau: {low: 2.0, high: 20.0, log: true}
    lambda_h: {choices: [0.0, 0.001]}
    optim.weight_decay: 5.0e-4                   # any prune-config path, fixed or searched

``method`` (cascade | l1 | group_norm | taylor: the cascade or a one-shot peer) picks the pruning method; a peer
has no TAs, so ``num_tas``, ``placement``, ``free_fraction`` and the cascade-only parameters (``CASCADE_ONLY``:
the scores' optimisation, the members' weighting) exist only in the cascade's branch.
``num_tas``, ``student_ratio``, ``placement`` and ``free_fraction`` become ``cascade.ratios``; ``tau``,
``lambda_kd``, ``lambda_h``, ``lr`` and ``score_lr`` are short for their prune-config paths. Conditional
parameters get distinct names per branch (``placement`` exists only with 2+ TAs; ``free_fraction_2_of_3``
only where placement is 'free' with 3 TAs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cascade.config import METHODS, ConfigError, PruneConfig, as_number, schema_paths

from .ratios import PLACEMENTS

__all__ = ["Param", "Space", "parse_space", "ALIASES", "LADDER_KEYS", "SPEC_KEYS", "cascade_only", "space_targets"]

ALIASES = {"tau": "loss.tau", "lambda_kd": "loss.lambda_kd", "lambda_h": "loss.lambda_h", "lr": "optim.lr",
           "score_lr": "optim.score_lr"}
LADDER_KEYS = ("method", "num_tas", "student_ratio", "placement", "free_fraction")
# prune-config paths that only the cascade reads (a one-shot peer has no scores to train and one member)
CASCADE_ONLY = ("optim.score_", "cascade.score_init", "cascade.route_scores", "cascade.score_signal",
                "loss.student_weight", "loss.own_grads")


def space_targets(name: str) -> list[str]:
    """The prune-config paths a space parameter sets: the ladder's keys the ratios (and ``method`` the method),
    an alias its path, any other name itself."""
    if name == "method":
        return ["method", "cascade.ratios"]
    if name in LADDER_KEYS:
        return ["cascade.ratios"]
    return [ALIASES.get(name, name)]


def cascade_only(name: str) -> bool:
    """Whether the space parameter ``name`` (an alias or a prune-config path) exists only for the cascade."""
    return ALIASES.get(name, name).startswith(CASCADE_ONLY)
SPEC_KEYS = ("low", "high", "log", "step", "type", "choices")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str                     # fixed | int | float | categorical
    value: Any = None             # fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def bounds(self) -> list[Any]:
        """The extreme values this parameter can take (to validate them before any trial runs)."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]


@dataclass
class Space:
    params: dict[str, Param] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Param:
        return self.params.get(name, Param(name, "fixed", default))

    @property
    def max_tas(self) -> int:
        return max(int(v) for v in self.get("num_tas", 0).bounds())


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_param(name: str, spec: Any, path: str) -> Param:
    if not isinstance(spec, dict):
        return Param(name, "fixed", as_number(spec))
    spec = {k: as_number(v) for k, v in spec.items()}
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}", f"unknown key (expected {', '.join(sorted(SPEC_KEYS))})")
    if "choices" in spec:
        if set(spec) - {"choices"}:
            raise ConfigError(path, "choices cannot be combined with a range")
        ch = spec["choices"]
        if not isinstance(ch, list) or not ch:
            raise ConfigError(f"{path}.choices", f"expected a non-empty list, got {ch!r}")
        return Param(name, "categorical", choices=tuple(as_number(c) for c in ch))
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(path, f"a range needs low and high (or use choices, or a fixed value); {key} is missing")
        if not _is_num(spec[key]):
            raise ConfigError(f"{path}.{key}", f"expected a number, got {spec[key]!r}")
    low, high = spec["low"], spec["high"]
    kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"{path}.type", f"expected int or float, got {kind!r}")
    if not low < high:
        raise ConfigError(path, f"empty range: low {low} must be below high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{path}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{path}.low", f"a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (not _is_num(step) or step <= 0):
        raise ConfigError(f"{path}.step", f"expected a positive number, got {step!r}")
    if log and step is not None and kind == "float":
        raise ConfigError(f"{path}.step", "a float range cannot have both log and step")
    return Param(name, kind, low=float(low), high=float(high), log=log, step=step)


def parse_space(data: Any, path: str = "space") -> Space:
    """Validate a space mapping; every error names its YAML path."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(path, "expected a non-empty mapping of parameter name -> value spec")
    known = schema_paths(PruneConfig)
    for key in data:  # the name first: a misspelt one is unknown, whatever its spec says
        key = str(key)
        if key not in LADDER_KEYS and key not in ALIASES and key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown parameter (expected one of "
                                              f"{', '.join(LADDER_KEYS + tuple(ALIASES))}, or a prune-config path "
                                              f"such as optim.weight_decay: `cascade config prune` lists them)")
    space = Space({str(k): _parse_param(str(k), v, f"{path}.{k}") for k, v in data.items()})
    for v in space.get("method", "cascade").bounds():
        if v not in METHODS:
            raise ConfigError(f"{path}.method", f"unknown method {v!r} (expected {', '.join(METHODS)})")
    for v in space.get("num_tas", 0).bounds():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{path}.num_tas", f"expected integers >= 0, got {v!r}")
    for v in space.get("student_ratio", 0.5).bounds():
        if not _is_num(v) or not 0 < v < 1:
            raise ConfigError(f"{path}.student_ratio", f"expected numbers in (0, 1), got {v!r}")
    for v in space.get("placement", "paper").bounds():
        if v not in PLACEMENTS:
            raise ConfigError(f"{path}.placement", f"unknown placement {v!r} (expected {', '.join(PLACEMENTS)})")
    for v in space.get("free_fraction", 0.5).bounds():
        if not _is_num(v) or not 0 < v < 1:
            raise ConfigError(f"{path}.free_fraction", f"expected numbers in (0, 1), got {v!r}")
    return space
