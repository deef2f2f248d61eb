"""The search config (one YAML file): its own keys, the prune config every trial starts from (``prune``, the
schema of ``cascade prune``), and the ``space`` the sampler draws from. Overridden, validated completely and
its paths resolved before Ray starts."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from cascade.config import (ConfigError, PruneConfig, apply_overrides, check, is_uri, load_yaml, opt, parse,
                            prune_config, section, split_override, to_dict, validate_prune)
from spaces import ALIASES, SPEC_KEYS, Space, parse_space, space_targets

from .sampling import SAMPLERS

__all__ = ["SearchConfig", "load_config", "read_config", "resolve_paths", "trial_prune_config", "OBJECTIVES"]

# metric -> natural direction. Objectives are measured on the validation split; the test split is reported only.
OBJECTIVES = {"val_accuracy": "max", "flops": "min", "params": "min"}


@dataclass
class ResourcesConfig:
    cpu: float = opt(1.0, "CPUs per trial", gt=0)
    gpu: float = opt(0.0, "GPUs per trial: fractions pack trials on one GPU (0.25 = four per GPU)", ge=0)


@dataclass
class SamplerConfig:
    name: Literal[SAMPLERS] = opt("tpe", "Optuna's sampler (tpe and gp handle the conditional spaces; grid: "
                                         "every combination of the space's choices)")
    n_startup_trials: int = opt(10, "random trials before the model-based sampler starts", ge=0)


@dataclass
class SchedulerConfig:
    name: Literal["fifo", "asha", "pareto"] = opt("fifo", "asha stops weak trials early (a single objective); "
                                                          "pareto: successive halving by non-dominated rank "
                                                          "(val_accuracy and flops)")
    grace_period: int = opt(1, "epochs before a trial may be stopped", ge=1)
    reduction_factor: int = opt(3, "1 in this many goes on at each rung", ge=2)


@dataclass
class MlflowConfig:
    tracking_uri: str | None = opt(None, "an http(s):// server or sqlite:/// file (null: $MLFLOW_TRACKING_URI, "
                                         "else <results_dir>/<experiment>/mlflow.db)")
    experiment: str | None = opt(None, "the MLflow experiment (null: the search's name)")
    register_min_val_accuracy: float | None = opt(None, "frontier students registered in the Model Registry: at "
                                                        "least this validation accuracy (null: chance + 10 points)")


@dataclass
class SearchConfig:
    experiment: str = opt("cascade", "the search's name: its results dir, MLflow experiment and Optuna study")
    seed: int = opt(0, "seeds the sampler")
    num_trials: int = opt(8, "trials in all (a resumed search ends with exactly this many)", ge=1)
    concurrency: int = opt(1, "trials at once", ge=1)
    max_retries: int = opt(0, "Ray re-runs a failed trial this many times, from its checkpoint", ge=0)
    results_dir: str = opt("results", "the local summary: search.yaml, trials.json, the frontier, the Optuna "
                                      "journal, the local MLflow store")
    storage: str | None = opt(None, "Tune state, checkpoints, cached teachers: a path every node mounts or a URI "
                                    "(s3://...); null: results_dir")
    objectives: dict[str, str] = opt({"val_accuracy": "max", "flops": "min"}, "metric -> max | min, of "
                                     "val_accuracy, flops, params")
    resources: ResourcesConfig = section(ResourcesConfig, "what one trial holds")
    sampler: SamplerConfig = section(SamplerConfig, "Optuna")
    scheduler: SchedulerConfig = section(SchedulerConfig, "Ray Tune's trial scheduler")
    mlflow: MlflowConfig = section(MlflowConfig, "where the runs are recorded")
    prune: PruneConfig = section(PruneConfig, "every trial's config before its sampled values: the keys of "
                                              "`cascade prune`")
    space: dict[str, Any] = opt({}, "what the sampler draws: name -> value spec (docs/config.md, 'Search spaces')")

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

    @cached_property
    def parsed_space(self) -> Space:
        """The space, parsed once (validated with the rest of the config)."""
        return parse_space(self.space)

    @property
    def epochs(self) -> int:
        """A trial's epochs over its phases (with fine_tune: all, at most: each TA fine-tunes too)."""
        s = self.prune.schedule
        tas = self.parsed_space.max_tas if s.fine_tune == "all" else 0
        return s.joint_epochs + s.finetune_epochs * (1 + tas)

    def config_hash(self) -> str:
        return hashlib.sha1(json.dumps(to_dict(self), sort_keys=True, default=str).encode()).hexdigest()[:12]


def base_prune_dict(cfg: SearchConfig) -> dict:
    """The prune config every trial starts from, before its sampled values."""
    return to_dict(cfg.prune)


def trial_prune_config(cfg: SearchConfig, overrides: dict[str, Any]) -> PruneConfig:
    return prune_config(base_prune_dict(cfg), overrides)


def load_config(path: str | Path | dict, overrides: list[str] | dict | None = None, *,
                stored: bool = False) -> SearchConfig:
    """Read, override (``key.path=value``), parse and validate a search config. Raises ConfigError naming
    the YAML path of the first bad field; nothing is written and Ray is not started. ``stored``: the resolved
    config a search wrote (every key spelt out), whose keys were checked for one place when it started."""
    data = _read(path, overrides)
    cfg = _parse(data)
    _validate(cfg, explicit=set() if stored else _leaf_paths(data.get("prune") or {}))
    return cfg


def read_config(path: str | Path | dict, overrides: list[str] | dict | None = None) -> SearchConfig:
    """Parse without validating: reading back a stored search (its data need not be on this machine)."""
    return _parse(_read(path, overrides))


def _read(path, overrides) -> dict:
    data = path if isinstance(path, dict) else load_yaml(path)
    return apply_search_overrides(data, overrides or [])


def _parse(data: dict) -> SearchConfig:
    return parse(SearchConfig, data)


def _leaf_paths(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out |= _leaf_paths(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def apply_search_overrides(data: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """``--set`` for a search config. Under ``space`` a key is a parameter name, which may itself be a dotted
    prune-config path: ``space.tau.high=30`` sets the ``high`` of ``space["tau"]``, ``space.optim.lr={low: ..,
    high: ..}`` the whole of ``space["optim.lr"]``. Everything else is a plain path (``prune.optim.lr=0.01``)."""
    out = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else [split_override(o) for o in overrides]
    for key, value in items:
        section_, _, rest = key.partition(".")
        if section_ != "space" or not rest:
            out = apply_overrides(out, {key: value})
            continue
        node = out.get("space")
        if node is None:
            node = out["space"] = {}
        check(isinstance(node, dict), "space", f"is not a mapping, cannot set {key!r}")
        name, _, spec = rest.rpartition(".")
        if name and spec in SPEC_KEYS:
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
    p = cfg.prune
    p.cache_dir = absolute(p.cache_dir, "prune.cache_dir")
    p.data.root = absolute(p.data.root, "prune.data.root")
    p.teacher.checkpoint = absolute(p.teacher.checkpoint, "prune.teacher.checkpoint")
    return cfg


def _validate(cfg: SearchConfig, explicit: set[str]) -> None:
    """What types and bounds cannot say; ``explicit``: the prune paths the YAML or --set gave a value."""
    check(bool(cfg.experiment) and "/" not in cfg.experiment, "experiment", "expected a name without '/'")
    check(bool(cfg.objectives), "objectives", f"expected at least one of {', '.join(OBJECTIVES)}")
    for metric, mode in cfg.objectives.items():
        check(metric not in ("accuracy", "test_accuracy"), f"objectives.{metric}",
              "the test split is reported, never selected on: use val_accuracy")
        check(metric in OBJECTIVES, f"objectives.{metric}",
              f"unknown objective (expected one of {', '.join(OBJECTIVES)})")
        check(mode in ("max", "min"), f"objectives.{metric}", f"expected max or min, got {mode!r}")
    check(cfg.scheduler.name != "asha" or len(cfg.objectives) == 1, "scheduler.name",
          "asha needs a single objective (with several: scheduler.name: pareto)")
    check(cfg.scheduler.name != "pareto" or set(cfg.objectives) <= {"val_accuracy", "flops"}, "scheduler.name",
          "pareto ranks trials on val_accuracy and flops, the objectives a running trial reports")
    uri = cfg.mlflow.tracking_uri
    check(uri is None or uri.startswith(("http://", "https://", "sqlite:///", "file:", "databricks")),
          "mlflow.tracking_uri", f"expected an http(s):// server or a sqlite:/// file, got {uri!r}")
    check(cfg.storage is None or is_uri(cfg.storage) or bool(cfg.storage), "storage",
          "expected a path on a shared filesystem or a URI such as s3://bucket/cascade")
    try:
        validate_prune(cfg.prune)
    except ConfigError as e:
        raise ConfigError(f"prune.{e.field}", e.message) from None
    space = cfg.parsed_space
    if cfg.sampler.name == "grid":
        for name, p in space.params.items():
            check(p.kind in ("fixed", "categorical"), f"space.{name}", "the grid sampler needs choices, not a range")
    for name in space.params:  # one value, one place: a searched path that is also fixed would be overridden
        for path in space_targets(name):
            check(path not in explicit, f"space.{name}",
                  f"also fixed by prune.{path}: a searched value overrides it, so set it in one place")
    _check_extremes(cfg, space)


def _check_extremes(cfg: SearchConfig, space: Space) -> None:
    """Each searched value at its bounds must give a valid trial config. (The TA ladder needs no such check:
    parse_space already bounds num_tas, student_ratio and placement, and every placement then yields valid,
    strictly decreasing ratios.)"""
    for name, p in space.params.items():
        if space_targets(name) != [ALIASES.get(name, name)]:
            continue
        for value in p.bounds():
            try:
                trial_prune_config(cfg, {ALIASES.get(name, name): value})
            except ConfigError as e:
                raise ConfigError(f"space.{name}", f"value {value!r} gives an invalid trial ({e})") from None
