"""Search spaces as plain YAML, validated, and sampled define-by-run with Optuna.

A space maps a name to a value spec::

    num_tas: {low: 0, high: 3}                  # int range
    student_ratio: {low: 0.3, high: 0.85}       # float range (or a fixed 0.6)
    placement: {choices: [paper, even, geometric, free]}
    free_fraction: {low: 0.2, high: 0.9}        # per-TA fractions, used only by placement 'free'
    tau: {low: 2.0, high: 20.0, log: true}
    lambda_h: {choices: [0.0, 0.001]}
    optim.weight_decay: 5.0e-4                   # any prune-config path, fixed or searched

``num_tas``, ``student_ratio``, ``placement`` and ``free_fraction`` become ``cascade.ratios``; ``tau``,
``lambda_kd``, ``lambda_h``, ``lr`` and ``score_lr`` are short for their prune-config paths. Conditional
parameters get distinct names per branch (``placement`` exists only with 2+ TAs; ``free_fraction_2_of_3``
only where placement is 'free' with 3 TAs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cascade.config import as_number

from .ratios import PLACEMENTS, member_ratios

__all__ = ["Param", "Space", "SpaceError", "parse_space", "sample_space", "ALIASES"]

ALIASES = {"tau": "loss.tau", "lambda_kd": "loss.lambda_kd", "lambda_h": "loss.lambda_h", "lr": "optim.lr",
           "score_lr": "optim.score_lr"}
LADDER_KEYS = ("num_tas", "student_ratio", "placement", "free_fraction")
_SPEC_KEYS = {"low", "high", "log", "step", "type", "choices"}


class SpaceError(ValueError):
    """A bad space entry; ``field`` is its YAML path (``space.tau.low``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


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

    def suggest(self, trial, name: str | None = None) -> Any:
        """Draw from an Optuna trial (or return the fixed value)."""
        name = name or self.name
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

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
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise SpaceError(f"{path}.{sorted(unknown)[0]}", f"unknown key (expected {', '.join(sorted(_SPEC_KEYS))})")
    if "choices" in spec:
        if set(spec) - {"choices"}:
            raise SpaceError(path, "choices cannot be combined with a range")
        ch = spec["choices"]
        if not isinstance(ch, list) or not ch:
            raise SpaceError(f"{path}.choices", f"expected a non-empty list, got {ch!r}")
        return Param(name, "categorical", choices=tuple(as_number(c) for c in ch))
    for key in ("low", "high"):
        if key not in spec:
            raise SpaceError(path, f"a range needs low and high (or use choices, or a fixed value); {key} is missing")
        if not _is_num(spec[key]):
            raise SpaceError(f"{path}.{key}", f"expected a number, got {spec[key]!r}")
    low, high = spec["low"], spec["high"]
    kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise SpaceError(f"{path}.type", f"expected int or float, got {kind!r}")
    if not low < high:
        raise SpaceError(path, f"empty range: low {low} must be below high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{path}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{path}.low", f"a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (not _is_num(step) or step <= 0):
        raise SpaceError(f"{path}.step", f"expected a positive number, got {step!r}")
    if log and step is not None and kind == "float":
        raise SpaceError(f"{path}.step", "a float range cannot have both log and step")
    return Param(name, kind, low=float(low), high=float(high), log=log, step=step)


def parse_space(data: Any, path: str = "space") -> Space:
    """Validate a space mapping; every error names its YAML path."""
    if not isinstance(data, dict) or not data:
        raise SpaceError(path, "expected a non-empty mapping of parameter name -> value spec")
    space = Space({str(k): _parse_param(str(k), v, f"{path}.{k}") for k, v in data.items()})
    for key, p in space.params.items():
        if key not in LADDER_KEYS and key not in ALIASES and "." not in key:
            raise SpaceError(f"{path}.{key}", f"unknown parameter (expected {', '.join(LADDER_KEYS + tuple(ALIASES))}"
                                              f" or a prune-config path such as optim.weight_decay)")
    for v in space.get("num_tas", 0).bounds():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise SpaceError(f"{path}.num_tas", f"expected integers >= 0, got {v!r}")
    for v in space.get("student_ratio", 0.5).bounds():
        if not _is_num(v) or not 0 < v < 1:
            raise SpaceError(f"{path}.student_ratio", f"expected numbers in (0, 1), got {v!r}")
    for v in space.get("placement", "paper").bounds():
        if v not in PLACEMENTS:
            raise SpaceError(f"{path}.placement", f"unknown placement {v!r} (expected {', '.join(PLACEMENTS)})")
    for v in space.get("free_fraction", 0.5).bounds():
        if not _is_num(v) or not 0 < v < 1:
            raise SpaceError(f"{path}.free_fraction", f"expected numbers in (0, 1), got {v!r}")
    return space


def sample_space(trial, space: Space) -> tuple[dict[str, Any], dict[str, Any]]:
    """Define-by-run sampling. Returns (prune-config overrides by dotted path, params to log).

    The logged params hold what was sampled plus what it implies: the TA count and every member's ratio.
    """
    overrides: dict[str, Any] = {}
    logged: dict[str, Any] = {}
    num_tas = int(space.get("num_tas", 0).suggest(trial))
    student = float(space.get("student_ratio", 0.5).suggest(trial))
    placement, free = "paper", None
    if num_tas >= 2:  # with 0 or 1 TA every placement gives the same ladder
        placement = space.get("placement", "paper").suggest(trial)
        if placement == "free":
            frac = space.params.get("free_fraction", Param("free_fraction", "float", low=0.2, high=0.9))
            free = [float(frac.suggest(trial, f"free_fraction_{j}_of_{num_tas}")) for j in range(1, num_tas)]
    ratios = member_ratios(student, num_tas, placement, free)
    overrides["cascade.ratios"] = ratios
    logged.update(num_tas=num_tas, student_ratio=student, placement=placement)
    logged.update({f"ratio_m{i}": r for i, r in enumerate(ratios)})
    for name, p in space.params.items():
        if name in LADDER_KEYS:
            continue
        value = p.suggest(trial)
        overrides[ALIASES.get(name, name)] = value
        logged[name] = value
    return overrides, logged
