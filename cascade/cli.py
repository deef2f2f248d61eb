"""``cascade teacher`` and ``cascade prune``. Bad input exits 2 with one line naming the field."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from .config import ConfigError, load_prune_config
from .engine import CheckpointError

__all__ = ["add_commands", "dispatch", "main"]

USER_ERRORS = (ConfigError,)  # bad config, data or space: exit 2 naming the field


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="train (or load) the teacher once; later runs reuse it from the cache")
    p.add_argument("config", nargs="?", help="prune config YAML (defaults apply without one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("prune", help="one cascade with fixed hyperparameters; writes student.pt and result.json")
    p.add_argument("config", nargs="?", help="prune config YAML (defaults apply without one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--out", required=True, help="output directory (resumes from its checkpoint if present)")
    p.add_argument("--onnx", action="store_true", help="also write student.onnx")
    p.set_defaults(func=cmd_prune)


def cmd_teacher(args: argparse.Namespace) -> int:
    from .engine import resolve_device
    from .teacher import get_teacher
    from .train import load_prune_data

    cfg = load_prune_config(args.config, args.set)
    data = load_prune_data(cfg)
    _, acc = get_teacher(cfg, data, resolve_device(cfg.device))
    print(f"teacher {cfg.model.name} on {cfg.data.name}: test accuracy {acc:.2f}%")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .train import run_prune

    cfg = load_prune_config(args.config, args.set)
    if args.onnx:
        cfg.onnx = True
    r = run_prune(cfg, args.out)
    print(json.dumps({k: r[k] for k in ("accuracy", "teacher_accuracy", "flops", "params", "flops_reduction",
                                        "params_reduction")}, indent=2))
    print(f"wrote {args.out}/student.pt and {args.out}/result.json")
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
    except (CheckpointError, FloatingPointError) as e:  # a run that cannot go on: one line, exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__)
    add_commands(parser.add_subparsers(title="commands"))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
