"""``cascade teacher``, ``cascade prune`` and ``cascade config``. Bad input exits 2 with one line naming the field.

Every command's ``--help`` lists the config keys it reads (type, default, one line), generated from the schema
in ``cascade.config``; nothing here imports torch before a command runs."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Callable, Sequence

from .config import ConfigError, PruneConfig, load_prune_config, schema_markdown, schema_rows, to_dict

__all__ = ["add_commands", "dispatch", "main", "keys_epilog"]

USER_ERRORS = (ConfigError,)  # bad config, data or space: exit 2 naming the field


def keys_epilog(cls: type = PruneConfig, *, skip: str | None = None, note: str = "") -> str:
    """The config keys of ``cls`` for a --help: ``key  (type, default)`` and its line of help; keys under the
    section ``skip`` are left to ``note``."""
    lines = ["config keys (YAML, or --set KEY=VALUE; `cascade config --markdown` prints the reference):"]
    for path, tp, default, help_ in schema_rows(cls):
        if skip and path.startswith(f"{skip}."):
            continue
        lines.append(f"  {path}  ({tp}; default {default})")
        lines += textwrap.wrap(help_, width=100, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines + ([note] if note else []))


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="prune config YAML (defaults apply without one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set cascade.ratios=[0.7,0.0]")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def add_commands(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("teacher", help="train (or load) the teacher once; later runs reuse it from the cache",
                       epilog=keys_epilog(), formatter_class=fmt)
    _config_args(p)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("prune", help="one cascade (or one-shot peer) with fixed hyperparameters; writes "
                                     "student.pt and result.json", epilog=keys_epilog(), formatter_class=fmt)
    _config_args(p)
    p.add_argument("--out", help="output directory (resumes from its checkpoint if present)")
    p.add_argument("--onnx", action="store_true", help="also write student.onnx")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("config", help="the config keys: type, default, one line each (--markdown: "
                                      "docs/config.md)")
    p.add_argument("--markdown", action="store_true", help="the whole reference as markdown")
    p.set_defaults(func=cmd_config)


def _resolved(args: argparse.Namespace):
    cfg = load_prune_config(args.config, args.set)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return cfg


def cmd_teacher(args: argparse.Namespace) -> int:
    cfg = _resolved(args)
    if args.print_config:
        return 0
    from .engine import resolve_device
    from .teacher import get_teacher
    from .train import load_prune_data

    data = load_prune_data(cfg)
    _, acc = get_teacher(cfg, data, resolve_device(cfg.device))
    print(f"teacher {cfg.model.name} on {cfg.data.name}: test accuracy {acc:.2f}%")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    cfg = _resolved(args)
    if args.print_config:
        return 0
    if not args.out:
        raise ConfigError("--out", "the output directory is needed")
    from .train import run_prune

    if args.onnx:
        cfg.onnx = True
    r = run_prune(cfg, args.out)
    print(json.dumps({k: r[k] for k in ("accuracy", "val_accuracy", "teacher_accuracy", "flops", "params",
                                        "flops_reduction", "params_reduction")}, indent=2))
    print(f"wrote {args.out}/student.pt and {args.out}/result.json")
    return 0


def config_reference() -> str:
    """docs/config.md: the prune config (every command's); the search adds its own section (search.cli)."""
    return "## The prune config (`cascade prune`, `cascade teacher`, a search's `prune:`)\n\n" + \
        schema_markdown(PruneConfig)


def cmd_config(args: argparse.Namespace) -> int:
    print(config_reference() if args.markdown else keys_epilog())
    return 0


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
             user_errors: tuple[type[Exception], ...] = USER_ERRORS) -> int:
    """Parse and run a subcommand; user errors become one ``error: field: message`` line and exit 2."""
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a run that cannot go on: one line, exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        from .engine import CheckpointError

        if isinstance(e, CheckpointError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__)
    add_commands(parser.add_subparsers(title="commands"))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
