"""Typed configuration: dataclass schemas, strict parsing from YAML/dicts, ``--set key.path=value`` overrides.

Every error is a ``ConfigError`` whose ``field`` is the dotted path of the bad key and ``message`` the reason,
so the CLI can print one line naming it and exit 2 before any work starts. It is the one field-error class:
bad data (``cascade.data.DataError``) and bad search spaces raise it too.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

__all__ = ["ConfigError", "PruneConfig", "parse", "load_yaml", "apply_overrides", "split_override", "as_number",
           "check", "to_dict", "validate_prune", "prune_config", "load_prune_config", "is_uri"]


class ConfigError(ValueError):
    """A bad value: ``field`` is its dotted path (``data.root``, ``space.tau.low``), ``message`` the reason."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def __reduce__(self):  # crosses process boundaries (Ray tasks) intact
        return type(self), (self.field, self.message)


def is_uri(path: str) -> bool:
    """``s3://bucket/x``, ``gs://...``, ``file:///...``: a location for pyarrow.fs rather than a local path."""
    return "://" in path


# ---------------------------------------------------------------- generic strict parser
def parse(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys and wrong types raise ConfigError naming the path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(_join(path, str(key)), f"unknown key (expected one of: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, _join(path, k)) for k, v in data.items()}
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, path)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_show(value)}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {_show(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        value = as_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {_show(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {_show(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {_show(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def as_number(value: Any) -> Any:
    """``1e-3`` as a float: YAML 1.1 (PyYAML) reads exponents without a dot as strings."""
    return float(value) if isinstance(value, str) and _FLOAT.match(value.strip()) else value


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; syntax errors and non-mappings become ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"no such file {str(p)!r}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("config", f"invalid YAML in {str(p)!r}: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{str(p)!r} must hold a mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    import copy

    out = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else [split_override(o) for o in overrides]
    for key, value in items:
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"is not a section, cannot set {key!r}")
            node = nxt
        node[parts[-1]] = value
    return out


def split_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` as (key path, value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError("--set", f"expected key.path=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), as_number(yaml.safe_load(raw))  # 1e-3 is a number, not YAML 1.1's string
    except yaml.YAMLError:
        return key.strip(), raw


# ---------------------------------------------------------------- the prune config
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
METHODS = ("cascade", "l1", "group_norm", "taylor")  # cascade.peers holds the one-shot ones

@dataclass
class ModelConfig:
    name: str = "vgg16_cifar"
    width: float = 1.0           # channel multiplier of CIFAR-style models
    pretrained: bool = False     # torchvision weights (torchvision:<name>, resnet50), from TORCH_HOME's cache


@dataclass
class DataConfig:
    name: str = "digits"         # digits | cifar10 | cifar100 | imagefolder
    root: str | None = None
    download: bool = False
    image_size: int = 32         # <= 64: decoded once into tensors; larger: streamed (ImageNet)
    train_subset: int | None = None
    test_subset: int | None = None
    val_fraction: float = 0.1    # of the training images, held out for member health, teacher swaps, selection
    split_seed: int | None = None  # seeds the validation split (None: the run's seed): teachers of other seeds
    #                                on one split
    batch_size: int = 128
    workers: int = 4


@dataclass
class TeacherConfig:
    checkpoint: str | None = None  # a saved module (torch.save(model)) or a state_dict: a path or a URI (s3://...)
    epochs: int = 30               # training epochs when no checkpoint is given (fine-tuning when pretrained)
    lr: float = 0.05
    weight_decay: float = 5e-4


@dataclass
class CascadeConfig:
    # k_0 (student) > k_1 > ... > k_{N-1}. Default: the paper's ladder with one TA (k_0, 0), which beat 0 and 2 TAs
    # at -83% FLOPs in BENCHMARKS.md's short runs; the paper's 3 TAs: k_0, k_0/1.5, k_0/2.5, 0
    ratios: list[float] = field(default_factory=lambda: [0.6, 0.0])
    budget: str = "flops"          # what a ratio removes: a fraction of the FLOPs, of the params, or of the filters
    score_init: str = "rank"       # rank: filter L1 rank within its layer; l1: L1 norm / layer max; random
    route_scores: bool = True      # the cascaded score update; false = each member's own gradient (ablation)
    round_to: int = 1              # keep a multiple of this many channels per group (8: faster on most hardware)
    prune_stem: bool = True        # each member's stem filters are pruned too; false: METHOD.md's whole stem


@dataclass
class LossConfig:
    tau: float = 15.0
    lambda_kd: float = 0.4
    lambda_h: float = 0.001
    hint_layers: int = 3           # hints at the outputs of the last n blocks
    student_weight: float | None = None  # the student's share of the shared weights' gradient (None: 1/N, as
    #                                      every member's); the TAs split the rest evenly
    own_grads: str = "full"        # full: a member's BNs/stem/head get its whole loss gradient; shared: weighted
    #                                like the shared weights' (the former behaviour, kept as an ablation)


@dataclass
class OptimConfig:
    lr: float = 0.008
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-4
    restart_epochs: int = 5        # cosine schedule with warm restarts (cycles fitted to each phase) ...
    restart_decay: float = 0.8     # ... whose peak decays by this factor at each restart
    lr_schedule: str = "phases"    # phases: each phase its own cycles, from the peak; run: one over both phases
    score_lr: float | None = None  # RMSProp lr on the scores; None: SCORE_TRAVEL / joint steps (README)
    score_optimizer: str = "rmsprop"  # rmsprop | sgd | adam
    score_schedule: str = "constant"  # constant | cosine: the scores' lr anneals to 0 over the joint phase (the
    #                                   masks settle before export; the default lr doubles, the same travel)


@dataclass
class ScheduleConfig:
    joint_epochs: int = 80
    finetune_epochs: int = 80


@dataclass
class PruneConfig:
    method: str = "cascade"        # cascade | l1 | group_norm | taylor (one-shot peers: cascade.peers)
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    cache_dir: str | None = None   # teacher and decoded-data cache (default ~/.cache/cascade or $CASCADE_CACHE)
    onnx: bool = False             # also write student.onnx
    compile: bool = False          # torch.compile the training steps (opt-in: see the README)
    compile_mode: str = "default"  # torch.compile's mode: default | reduce-overhead (CUDA graphs) | max-autotune
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


def check(cond: bool, field_: str, message: str) -> None:
    """Raise ConfigError(field_, message) unless ``cond``."""
    if not cond:
        raise ConfigError(field_, message)


def validate_prune(cfg: PruneConfig) -> PruneConfig:
    """Range and existence checks that types alone cannot express; raises ConfigError naming the field."""
    from .members import validate_cascade
    from .models import list_models

    c = cfg.cascade
    try:
        validate_cascade(c.ratios, budget=c.budget, score_init=c.score_init, round_to=c.round_to)
    except ValueError as e:
        raise ConfigError("cascade." + str(e).split(":", 1)[0], str(e).split(":", 1)[1].strip()) from None
    m = cfg.model.name
    check(m in list_models() or (m.startswith("torchvision:") and _torchvision_known(m.split(":", 1)[1])),
           "model.name", f"unknown model {m!r} (known: {', '.join(list_models())})")
    check(cfg.model.width > 0, "model.width", f"expected > 0, got {cfg.model.width}")
    d = cfg.data
    check(d.name in ("digits", "cifar10", "cifar100", "imagefolder"), "data.name",
           f"unknown data set {d.name!r} (expected digits, cifar10, cifar100 or imagefolder)")
    if d.name == "imagefolder":
        check(d.root is not None, "data.root", "imagefolder needs a root folder holding train/ and val/ or test/")
    if d.root is not None and d.name != "digits":
        check(Path(d.root).expanduser().exists() or (d.name != "imagefolder" and d.download), "data.root",
               f"no such directory {d.root!r}")
    check(d.image_size >= 8, "data.image_size", f"expected >= 8, got {d.image_size}")
    for name in ("train_subset", "test_subset"):
        v = getattr(d, name)
        check(v is None or v > 0, f"data.{name}", f"expected a positive integer or null, got {v}")
    check(0 <= d.val_fraction < 1, "data.val_fraction", f"expected a number in [0, 1), got {d.val_fraction}")
    check(d.batch_size > 0, "data.batch_size", f"expected > 0, got {d.batch_size}")
    check(d.workers >= 0, "data.workers", f"expected >= 0, got {d.workers}")
    t = cfg.teacher
    if t.checkpoint is not None and not is_uri(t.checkpoint):
        check(Path(t.checkpoint).expanduser().is_file(), "teacher.checkpoint", f"no such file {t.checkpoint!r}")
    check(t.epochs >= 0, "teacher.epochs", f"expected >= 0, got {t.epochs}")
    check(t.lr > 0, "teacher.lr", f"expected > 0, got {t.lr}")
    lo = cfg.loss
    check(lo.tau > 0, "loss.tau", f"expected > 0, got {lo.tau}")
    check(lo.lambda_kd >= 0, "loss.lambda_kd", f"expected >= 0, got {lo.lambda_kd}")
    check(lo.lambda_h >= 0, "loss.lambda_h", f"expected >= 0, got {lo.lambda_h}")
    check(lo.hint_layers >= 0, "loss.hint_layers", f"expected >= 0, got {lo.hint_layers}")
    check(lo.student_weight is None or 0 < lo.student_weight < 1, "loss.student_weight",
          f"expected a number in (0, 1) or null, got {lo.student_weight}")
    check(lo.own_grads in ("full", "shared"), "loss.own_grads", f"expected 'full' or 'shared', got {lo.own_grads!r}")
    o = cfg.optim
    check(o.lr > 0, "optim.lr", f"expected > 0, got {o.lr}")
    check(o.score_lr is None or o.score_lr >= 0, "optim.score_lr", f"expected >= 0 or null, got {o.score_lr}")
    check(0 <= o.momentum < 1, "optim.momentum", f"expected a number in [0, 1), got {o.momentum}")
    check(o.weight_decay >= 0, "optim.weight_decay", f"expected >= 0, got {o.weight_decay}")
    check(o.restart_epochs >= 1, "optim.restart_epochs", f"expected >= 1, got {o.restart_epochs}")
    check(0 < o.restart_decay <= 1, "optim.restart_decay", f"expected a number in (0, 1], got {o.restart_decay}")
    check(o.lr_schedule in ("phases", "run"), "optim.lr_schedule", f"expected phases or run, got {o.lr_schedule!r}")
    check(o.score_optimizer in ("rmsprop", "sgd", "adam"), "optim.score_optimizer",
           f"expected rmsprop, sgd or adam, got {o.score_optimizer!r}")
    check(o.score_schedule in ("constant", "cosine"), "optim.score_schedule",
          f"expected constant or cosine, got {o.score_schedule!r}")
    s = cfg.schedule
    check(s.joint_epochs >= 1, "schedule.joint_epochs", f"expected >= 1, got {s.joint_epochs}")
    check(s.finetune_epochs >= 0, "schedule.finetune_epochs", f"expected >= 0, got {s.finetune_epochs}")
    check(cfg.method in METHODS, "method", f"expected one of {', '.join(METHODS)}, got {cfg.method!r}")
    check(cfg.compile_mode in COMPILE_MODES, "compile_mode",
          f"expected one of {', '.join(COMPILE_MODES)}, got {cfg.compile_mode!r}")
    check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"), "device",
           f"expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    return cfg


def _torchvision_known(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def prune_config(data: dict, overrides: list[str] | dict[str, Any] | None = None) -> PruneConfig:
    """The one way a prune config is assembled: ``data`` <- overrides, parsed strictly, then validated."""
    return validate_prune(parse(PruneConfig, apply_overrides(data, overrides or [])))


def load_prune_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> PruneConfig:
    """Defaults <- YAML file <- overrides."""
    return prune_config(load_yaml(path) if path else {}, overrides)
