"""Typed configuration: dataclass schemas, strict parsing from YAML/dicts, ``--set key.path=value`` overrides.

Every error is a ``ConfigError`` whose ``field`` is the dotted path of the bad key and ``message`` the reason,
so the CLI can print one line naming it and exit 2 before any work starts. It is the one field-error class:
bad data (``cascade.data.DataError``) and bad search spaces raise it too.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = ["ConfigError", "PruneConfig", "parse", "load_yaml", "apply_overrides", "split_override", "as_number",
           "check", "to_dict", "validate_prune", "prune_config", "load_prune_config", "is_uri", "opt", "section",
           "schema_rows", "schema_markdown", "schema_paths"]


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(_join(path, str(key)), f"unknown key (expected one of: {', '.join(sorted(fields))})")
    kwargs = {k: _coerce(hints[k], v, _join(path, k)) for k, v in data.items()}
    for k, v in kwargs.items():
        _check_bounds(fields[k].metadata, v, _join(path, k))
    return cls(**kwargs)


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b), "le": ("<=", lambda v, b: v <= b),
           "lt": ("<", lambda v, b: v < b)}


def _check_bounds(meta: Any, value: Any, path: str) -> None:
    """A number outside its field's bounds (``opt(..., gt=0)``): ConfigError naming them all."""
    bounds = [(k, meta[k]) for k in _BOUNDS if k in meta]
    if not bounds or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not all(_BOUNDS[k][1](value, b) for k, b in bounds):
        rule = " and ".join(f"{_BOUNDS[k][0]} {b:g}" for k, b in bounds)
        raise ConfigError(path, f"expected {rule}, got {value:g}")


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
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise ConfigError(path, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
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
# Every choice is a Literal type (the parser refuses anything else, naming the choices) and every field carries
# its one line of help, so `cascade prune --help`, `cascade config` and docs/config.md come from this schema.
METHODS = ("cascade", "l1", "group_norm", "taylor")   # cascade.peers holds the one-shot ones
DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
BUDGETS = ("filters", "flops", "params")
SCORE_INITS = ("rank", "l1", "random")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def opt(default: Any, help: str, **bounds: float) -> Any:
    """A config field: its default, its one line of help, and numeric bounds (``ge``, ``gt``, ``le``, ``lt``)
    that the parser checks."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **bounds})
    return field(default=default, metadata={"help": help, **bounds})


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class ModelConfig:
    name: str = opt("vgg16_cifar", "registry name: vgg16_cifar, resnet56_cifar, resnet20_cifar, resnet50 or "
                                   "torchvision:<name>")
    width: float = opt(1.0, "channel multiplier of the CIFAR-style models (0.25: a small CPU model)", gt=0)
    pretrained: bool = opt(False, "torchvision weights (torchvision:<name>, resnet50), from TORCH_HOME's cache")


@dataclass
class DataConfig:
    name: Literal[DATASETS] = opt("digits", "digits ships with scikit-learn (no download)")
    root: str | None = opt(None, "the data set's folder (imagefolder: train/ and val/ or test/)")
    download: bool = opt(False, "torchvision's download (cifar10, cifar100), where there is internet")
    image_size: int = opt(32, "<= 64: decoded once into tensors and augmented on the device; larger: streamed",
                          ge=8)
    train_subset: int | None = opt(None, "train on this many of the training images (after the validation split)",
                                   gt=0)
    test_subset: int | None = opt(None, "evaluate on this many test images", gt=0)
    val_fraction: float = opt(0.1, "training images held out for validation: member health, teacher swaps, "
                                   "every selection", ge=0, lt=1)
    split_seed: int | None = opt(None, "seeds the validation split (null: the run's seed), so teachers of other "
                                       "seeds can share one split")
    batch_size: int = opt(128, "training batch (the paper's 128)", gt=0)
    workers: int = opt(4, "DataLoader workers of a streamed (ImageNet-size) data set", ge=0)


@dataclass
class TeacherConfig:
    checkpoint: str | None = opt(None, "your teacher: a saved module or a state_dict, a path or a URI (s3://...); "
                                       "null: train one and cache it")
    epochs: int = opt(30, "epochs when training the teacher (fine-tuning when pretrained)", ge=0)
    lr: float = opt(0.05, "the teacher's SGD learning rate (one cosine cycle)", gt=0)
    weight_decay: float = opt(5e-4, "the teacher's weight decay", ge=0)


@dataclass
class CascadeConfig:
    ratios: list[float] = opt([0.6, 0.4, 0.0], "the fraction each member removes, student first, strictly "
                                               "decreasing (the paper's k0, k0/1.5, 0); a peer prunes to the first")
    budget: Literal[BUDGETS] = opt("flops", "what a ratio removes a fraction of")
    score_init: Literal[SCORE_INITS] = opt("rank", "rank: each filter's L1 rank in its layer (starts as uniform "
                                                   "L1 pruning); l1: L1 / layer max; random")
    route_scores: bool = opt(True, "each member's scores follow its teacher member's gradient (false: its own, "
                                   "an ablation)")
    round_to: int = opt(1, "keep a multiple of this many channels per layer (8: faster on most hardware)", ge=1)
    prune_stem: bool = opt(True, "each member's stem filters are pruned too (false: the paper's whole stem)")
    score_signal: Literal["gradient", "taylor"] = opt("gradient", "gradient: the scores follow the routed STE "
                                                                  "gradient (the paper's); taylor: the running mean "
                                                                  "of its magnitude per unit of filter cost")


@dataclass
class LossConfig:
    tau: float = opt(15.0, "KD temperature (the paper's)", gt=0)
    lambda_kd: float = opt(0.4, "weight of tau^2 * KL (the paper's)", ge=0)
    lambda_h: float = opt(0.001, "weight of the hint (the paper's; summed squared distance, see docs/method.md)",
                          ge=0)
    hint_layers: int = opt(3, "hints at the outputs of the last n blocks", ge=0)
    student_weight: float | None = opt(None, "the student's share of the shared weights' gradient (null: 1/N, as "
                                             "every member's)", gt=0, lt=1)
    own_grads: Literal["full", "shared"] = opt("full", "full: a member's BNs, stem and head get its whole loss's "
                                                       "gradient; shared: weighted like the shared weights")


@dataclass
class OptimConfig:
    lr: float = opt(0.008, "SGD (Nesterov) learning rate (the paper's)", gt=0)
    momentum: float = opt(0.9, "SGD momentum (the paper's)", ge=0, lt=1)
    nesterov: bool = opt(True, "Nesterov momentum (the paper's)")
    weight_decay: float = opt(4e-4, "weight decay (the paper's)", ge=0)
    restart_epochs: int = opt(5, "cosine with warm restarts about every n epochs, cycles fitted to each phase "
                                 "(the paper's 5)", ge=1)
    restart_decay: float = opt(0.8, "each restart's peak lr, as a fraction of the one before", gt=0, le=1)
    lr_schedule: Literal["phases", "run"] = opt("phases", "phases: each phase its own cycles, from the peak; "
                                                          "run: one schedule over both phases")
    score_lr: float | None = opt(None, "the scores' lr (null: 0.3 / joint steps, the same mask travel at any "
                                       "length; the paper gives none)", ge=0)
    score_optimizer: Literal["rmsprop", "sgd", "adam"] = opt("rmsprop", "the scores' optimizer (the paper's "
                                                                        "RMSProp)")
    score_schedule: Literal["constant", "cosine"] = opt("constant", "cosine: the scores' lr anneals to 0 over the "
                                                                    "joint phase, from twice the default")


@dataclass
class ScheduleConfig:
    joint_epochs: int = opt(80, "epochs of the joint phase (a peer's first phase; the paper's 80)", ge=1)
    finetune_epochs: int = opt(80, "epochs of the student's fine-tuning (the paper's 80)", ge=0)
    fine_tune: Literal["student", "all"] = opt("student", "student: the TAs are exported as they end the joint "
                                                          "phase; all: every pruned TA gets its own fine-tuning "
                                                          "phase too (each a model on the frontier)")


@dataclass
class PruneConfig:
    method: Literal[METHODS] = opt("cascade", "cascade, or a one-shot peer pruned by Torch-Pruning's importance "
                                              "and trained by KD")
    seed: int = opt(0, "seeds the weights' start, batch order and augmentation (and the split, unless "
                       "data.split_seed)")
    device: str = opt("auto", "auto (cuda when there is one), cpu, cuda or cuda:N")
    cache_dir: str | None = opt(None, "decoded data and trained teachers (null: $CASCADE_CACHE or "
                                      "~/.cache/cascade)")
    onnx: bool = opt(False, "also write student.onnx")
    compile: bool = opt(False, "torch.compile the training steps (on CUDA with compile_mode: reduce-overhead)")
    compile_mode: Literal[COMPILE_MODES] = opt("default", "torch.compile's mode (reduce-overhead: CUDA graphs)")
    model: ModelConfig = section(ModelConfig, "the network to prune")
    data: DataConfig = section(DataConfig, "the data set and its split")
    teacher: TeacherConfig = section(TeacherConfig, "the frozen pretrained model")
    cascade: CascadeConfig = section(CascadeConfig, "the members and their masks")
    loss: LossConfig = section(LossConfig, "CE + lambda_KD tau^2 KL + lambda_H hint, per member")
    optim: OptimConfig = section(OptimConfig, "the weights' and the scores' optimisation")
    schedule: ScheduleConfig = section(ScheduleConfig, "the two phases' lengths")


def check(cond: bool, field_: str, message: str) -> None:
    """Raise ConfigError(field_, message) unless ``cond``."""
    if not cond:
        raise ConfigError(field_, message)


def validate_prune(cfg: PruneConfig) -> PruneConfig:
    """What types and bounds cannot say (the parser checked those): the ladder, the model, paths that must
    exist, the device; raises ConfigError naming the field."""
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
    d = cfg.data
    if d.name == "imagefolder":
        check(d.root is not None, "data.root", "imagefolder needs a root folder holding train/ and val/ or test/")
    if d.root is not None and d.name != "digits":
        check(Path(d.root).expanduser().exists() or (d.name != "imagefolder" and d.download), "data.root",
              f"no such directory {d.root!r}")
    t = cfg.teacher
    if t.checkpoint is not None and not is_uri(t.checkpoint):
        check(Path(t.checkpoint).expanduser().is_file(), "teacher.checkpoint", f"no such file {t.checkpoint!r}")
    check(cfg.device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", cfg.device) is not None, "device",
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


# ---------------------------------------------------------------- the schema, for people
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " | null"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def schema_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) of every leaf field of a config dataclass, sections in order."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows += schema_rows(tp, f"{path}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((path, _type_name(tp), yaml.safe_dump(default, default_flow_style=True).strip()
                     .removesuffix("...").strip(), f.metadata.get("help", "")))
    return rows


def schema_paths(cls: type) -> set[str]:
    """Every leaf key of a config dataclass, dotted (``optim.lr``)."""
    return {row[0] for row in schema_rows(cls)}


def schema_markdown(cls: type, prefix: str = "", skip: str | None = None) -> str:
    """The config reference as a markdown table per section, the top-level keys first (docs/config.md);
    ``skip``: a section left out."""
    sections: dict[str, list[str]] = {}
    for path, tp, default, help_ in schema_rows(cls, prefix):
        rest = path[len(prefix):]
        if skip and rest.startswith(f"{skip}."):
            continue
        sec = prefix + rest.rsplit(".", 1)[0] if "." in rest else ""
        sections.setdefault(sec, []).append(f"| `{path}` | {tp.replace('|', '&#124;')} | `{default}` | {help_} |")
    out = []
    for sec in sorted(sections, key=lambda k: k != ""):  # stable: the top level first, then schema order
        out += ["", f"### `{sec}`" if sec else "### top level", "", "| key | type | default | |",
                "|---|---|---|---|", *sections[sec]]
    return "\n".join(out).strip() + "\n"
