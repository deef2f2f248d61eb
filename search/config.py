"""The search config (one YAML file): overridden, validated completely and its paths resolved before Ray starts."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade.config import (ConfigError, DataConfig, ModelConfig, PruneConfig, ScheduleConfig, TeacherConfig,
                            apply_overrides, check, is_uri, load_yaml, parse, prune_config, split_override, to_dict)
from spaces import ALIASES, LADDER_KEYS, SPEC_KEYS, Space, parse_space

from .sampling import SAMPLERS

__all__ = ["SearchConfig", "load_config", "read_config", "resolve_paths", "trial_prune_config", "OBJECTIVES"]

# metric -> natural direction. Objectives are measured on the validation split; the test split is reported only.
OBJECTIVES = {"val_accuracy": "max", "flops": "min", "params": "min"}


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
    results_dir: str = "results"    # the local summary: search.yaml, trials.json, frontier, Optuna journal
    storage: str | None = None       # Tune state, checkpoints, cached teachers: a shared path or a URI (s3://...)
    device: str = "auto"
    cache_dir: str | None = None
    objectives: dict[str, str] = field(default_factory=lambda: {"val_accuracy": "max", "flops": "min"})
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

    @property
    def storage_root(self) -> str:
        """Shared storage: ``storage``, by default the results dir."""
        return (self.storage or self.results_dir).rstrip("/")

    @property
    def tune_path(self) -> str:
        """Ray Tune's experiment (trial state and checkpoints) in the shared storage."""
        return f"{self.storage_root}/{self.experiment}/tune"

    @property
    def teacher_cache(self) -> str:
        return f"{self.storage_root}/teachers"

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
    return prune_config(base_prune_dict(cfg), overrides)


def load_config(path: str | Path | dict, overrides: list[str] | dict | None = None) -> SearchConfig:
    """Read, override (``key.path=value``), parse and validate a search config. Raises ConfigError naming
    the YAML path of the first bad field; nothing is written and Ray is not started."""
    cfg = read_config(path, overrides)
    _validate(cfg)
    return cfg


def read_config(path: str | Path | dict, overrides: list[str] | dict | None = None) -> SearchConfig:
    """Parse without validating: reading back a stored search (its data need not be on this machine)."""
    data = path if isinstance(path, dict) else load_yaml(path)
    return parse(SearchConfig, apply_search_overrides(data, overrides or []))


def apply_search_overrides(data: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """``--set`` for a search config. Under ``fixed`` and ``space`` a key is a prune-config path, so the rest
    of the dotted key is one name: ``fixed.optim.weight_decay=1e-3`` sets ``fixed["optim.weight_decay"]``,
    ``space.tau.high=30`` the ``high`` of ``space["tau"]``, ``space.optim.lr={low: .., high: ..}`` a whole entry."""
    out = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else [split_override(o) for o in overrides]
    for key, value in items:
        section, _, rest = key.partition(".")
        if section not in ("fixed", "space") or not rest:
            out = apply_overrides(out, {key: value})
            continue
        node = out.get(section)
        if node is None:
            node = out[section] = {}
        check(isinstance(node, dict), section, f"is not a mapping, cannot set {key!r}")
        name, _, spec = rest.rpartition(".")
        if section == "space" and name and spec in SPEC_KEYS:
            entry = node.get(name)
            node[name] = {**(entry if isinstance(entry, dict) else {}), spec: value}
        else:
            node[rest] = value
    return out


def resolve_paths(cfg: SearchConfig, *, cwd: Path | None = None) -> SearchConfig:
    """Every path a trial or a later command reads, made absolute (Ray Tune moves each trial's cwd).

    Inside a Ray job submitted with ``--working-dir`` the cwd is Ray's temporary copy of the project, deleted
    with the job, and the submitting shell's directory is unknown here: a relative path is an error there,
    naming the field (pass it absolute, e.g. ``--set results_dir=$PWD/results``, expanded by your shell)."""
    cwd = cwd or Path.cwd()
    in_job = "working_dir_files" in cwd.parts  # .../runtime_resources/working_dir_files/_ray_pkg_<hash>

    def absolute(value: str | None, name: str) -> str | None:
        if value is None or is_uri(value):
            return value
        p = Path(value).expanduser()
        if not p.is_absolute():
            check(not in_job, name, f"relative path {value!r} inside a Ray job would land in the job's temporary "
                                    f"copy of the working dir ({cwd}): pass an absolute path, e.g. "
                                    f"--set {name}=$PWD/{value}")
            p = cwd / p
        return str(p.resolve())

    cfg.results_dir = absolute(cfg.results_dir, "results_dir")
    cfg.storage = absolute(cfg.storage, "storage")
    cfg.cache_dir = absolute(cfg.cache_dir, "cache_dir")
    cfg.data.root = absolute(cfg.data.root, "data.root")
    cfg.teacher.checkpoint = absolute(cfg.teacher.checkpoint, "teacher.checkpoint")
    return cfg


def _validate(cfg: SearchConfig) -> None:
    check(bool(cfg.experiment) and "/" not in cfg.experiment, "experiment", "expected a name without '/'")
    check(cfg.num_trials >= 1, "num_trials", f"expected >= 1, got {cfg.num_trials}")
    check(cfg.concurrency >= 1, "concurrency", f"expected >= 1, got {cfg.concurrency}")
    check(cfg.max_retries >= 0, "max_retries", f"expected >= 0, got {cfg.max_retries}")
    check(cfg.resources.cpu > 0, "resources.cpu", f"expected > 0, got {cfg.resources.cpu}")
    check(cfg.resources.gpu >= 0, "resources.gpu", f"expected >= 0, got {cfg.resources.gpu}")
    check(bool(cfg.objectives), "objectives", f"expected at least one of {', '.join(OBJECTIVES)}")
    for metric, mode in cfg.objectives.items():
        check(metric not in ("accuracy", "test_accuracy"), f"objectives.{metric}",
              "the test split is reported, never selected on: use val_accuracy")
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
    check(cfg.storage is None or is_uri(cfg.storage) or bool(cfg.storage), "storage",
          "expected a path on a shared filesystem or a URI such as s3://bucket/cascade")
    space = cfg.parsed_space()
    for key in cfg.fixed:
        check("." in key, f"fixed.{key}", "expected a prune-config path such as loss.hint_layers")
    # Every trial's config must be valid: check the base with each parameter at its extremes.
    try:
        trial_prune_config(cfg, {})
    except ConfigError as e:
        raise ConfigError(_search_path(e.field), e.message) from None
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
