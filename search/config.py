"""The search config (one YAML file): validated completely before Ray starts."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade.config import (ConfigError, DataConfig, ModelConfig, PruneConfig, ScheduleConfig, TeacherConfig,
                            apply_overrides, check, load_yaml, parse, to_dict, validate_prune)
from spaces import ALIASES, SAMPLERS, Space, SpaceError, parse_space
from spaces.space import LADDER_KEYS

__all__ = ["SearchConfig", "load_config", "trial_prune_config", "OBJECTIVES"]

OBJECTIVES = {"accuracy": "max", "flops": "min", "params": "min"}  # metric -> natural direction


@dataclass
class ResourcesConfig:
    cpu: float = 1.0
    gpu: float = 0.0  # fractions pack small trials on one GPU (0.25 = four trials per GPU)


@dataclass
class SamplerConfig:
    name: str = "tpe"  # tpe | nsga2 | gp | random
    n_startup_trials: int = 10


@dataclass
class SchedulerConfig:
    name: str = "fifo"          # fifo | asha (single objective only)
    grace_period: int = 1       # epochs before ASHA may stop a trial
    reduction_factor: int = 3


@dataclass
class MlflowConfig:
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<results>/<experiment>/mlflow.db
    experiment: str | None = None    # default: the search's experiment name


@dataclass
class SearchConfig:
    experiment: str = "cascade"
    seed: int = 0
    num_trials: int = 8
    concurrency: int = 1
    max_retries: int = 0             # Ray re-runs a failed trial this many times
    results_dir: str = "results"
    device: str = "auto"
    cache_dir: str | None = None
    objectives: dict[str, str] = field(default_factory=lambda: {"accuracy": "max", "flops": "min"})
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    budget: ScheduleConfig = field(default_factory=ScheduleConfig)  # epochs of each phase, per trial
    fixed: dict[str, Any] = field(default_factory=dict)  # prune-config paths set for every trial
    space: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.experiment

    @property
    def tracking_uri(self) -> str:
        return (self.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}")

    def parsed_space(self) -> Space:
        return parse_space(self.space)

    def config_hash(self) -> str:
        return hashlib.sha1(json.dumps(to_dict(self), sort_keys=True, default=str).encode()).hexdigest()[:12]


def base_prune_dict(cfg: SearchConfig) -> dict:
    """The prune config every trial starts from, before its sampled values."""
    base = {"seed": cfg.seed, "device": cfg.device, "cache_dir": cfg.cache_dir, "model": to_dict(cfg.model),
            "data": to_dict(cfg.data), "teacher": to_dict(cfg.teacher), "schedule": to_dict(cfg.budget)}
    return apply_overrides(base, {k: v for k, v in cfg.fixed.items()})


def trial_prune_config(cfg: SearchConfig, overrides: dict[str, Any]) -> PruneConfig:
    return validate_prune(parse(PruneConfig, apply_overrides(base_prune_dict(cfg), overrides)))


def load_config(path: str | Path | dict, overrides: list[str] | dict | None = None) -> SearchConfig:
    """Read, override (``key.path=value``), parse and validate a search config. Raises ConfigError naming
    the YAML path of the first bad field; nothing is written and Ray is not started."""
    data = path if isinstance(path, dict) else load_yaml(path)
    cfg = parse(SearchConfig, apply_overrides(data, overrides or []))
    _validate(cfg)
    return cfg


def _validate(cfg: SearchConfig) -> None:
    check(bool(cfg.experiment) and "/" not in cfg.experiment, "experiment", "expected a name without '/'")
    check(cfg.num_trials >= 1, "num_trials", f"expected >= 1, got {cfg.num_trials}")
    check(cfg.concurrency >= 1, "concurrency", f"expected >= 1, got {cfg.concurrency}")
    check(cfg.max_retries >= 0, "max_retries", f"expected >= 0, got {cfg.max_retries}")
    check(cfg.resources.cpu > 0, "resources.cpu", f"expected > 0, got {cfg.resources.cpu}")
    check(cfg.resources.gpu >= 0, "resources.gpu", f"expected >= 0, got {cfg.resources.gpu}")
    check(bool(cfg.objectives), "objectives", "expected at least one of accuracy, flops, params")
    for metric, mode in cfg.objectives.items():
        check(metric in OBJECTIVES, f"objectives.{metric}",
               f"unknown objective (expected one of {', '.join(OBJECTIVES)})")
        check(mode in ("max", "min"), f"objectives.{metric}", f"expected max or min, got {mode!r}")
    check(cfg.sampler.name in SAMPLERS, "sampler.name",
           f"unknown sampler {cfg.sampler.name!r} (expected one of {', '.join(SAMPLERS)})")
    check(cfg.sampler.n_startup_trials >= 0, "sampler.n_startup_trials", "expected >= 0")
    check(cfg.scheduler.name in ("fifo", "asha"), "scheduler.name",
           f"unknown scheduler {cfg.scheduler.name!r} (expected fifo or asha)")
    check(cfg.scheduler.name != "asha" or len(cfg.objectives) == 1, "scheduler.name",
           "asha needs a single objective: with several, a partial-budget result could reach the frontier")
    check(cfg.scheduler.grace_period >= 1, "scheduler.grace_period", "expected >= 1")
    check(cfg.scheduler.reduction_factor >= 2, "scheduler.reduction_factor", "expected >= 2")
    uri = cfg.mlflow.tracking_uri
    check(uri is None or uri.startswith(("http://", "https://", "sqlite:///", "file:", "databricks")),
           "mlflow.tracking_uri", f"expected an http(s):// server or a sqlite:/// file, got {uri!r}")
    try:
        space = cfg.parsed_space()
    except SpaceError as e:
        raise ConfigError(e.field, str(e).split(": ", 1)[1]) from None
    for key in cfg.fixed:
        check("." in key, f"fixed.{key}", "expected a prune-config path such as loss.hint_layers")
    # Every trial's config must be valid: check the base with each parameter at its extremes.
    try:
        trial_prune_config(cfg, {})
    except ConfigError as e:
        raise ConfigError(_search_path(e.field), str(e).split(": ", 1)[1]) from None
    _check_extremes(cfg, space)


def _search_path(prune_field: str) -> str:
    """A prune-config field as its path in the search YAML (schedule.* lives under budget)."""
    if prune_field.startswith("schedule."):
        return "budget." + prune_field.split(".", 1)[1]
    return prune_field


def _check_extremes(cfg: SearchConfig, space: Space) -> None:
    """Each searched or fixed value at its bounds must give a valid trial config. (The TA ladder needs no
    such check: parse_space already bounds num_tas, student_ratio and placement, and every placement then
    yields valid, strictly decreasing ratios.)"""
    for name, p in space.params.items():
        if name in LADDER_KEYS:
            continue
        for value in p.bounds():
            try:
                trial_prune_config(cfg, {ALIASES.get(name, name): value})
            except ConfigError as e:
                raise ConfigError(f"space.{name}", f"value {value!r} gives an invalid trial ({e})") from None
