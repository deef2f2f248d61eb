"""The ``cascade`` command: the method's subcommands (teacher, prune) plus search, resume and frontier.

Exit codes: 0 when at least one trial finished; 1 when none did (the failures are listed); 2 for bad input
(one line naming the field)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import yaml

from cascade import cli as cascade_cli
from cascade.config import to_dict


def _finish(result) -> int:
    from .report import print_result

    print_result(result)
    return 0 if result.finished else 1


def cmd_search(args: argparse.Namespace) -> int:
    from .config import load_config, resolve_paths

    cfg = resolve_paths(load_config(args.config, args.set))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from .api import run_search

    return _finish(run_search(cfg, address=args.address, verbose=args.verbose))


def cmd_resume(args: argparse.Namespace) -> int:
    from .api import resume_search

    return _finish(resume_search(args.dir, address=args.address, verbose=args.verbose))


def cmd_frontier(args: argparse.Namespace) -> int:
    from .report import format_budget_report, print_result
    from .results import load_result

    result = load_result(args.dir)
    print_result(result)
    if args.budget:
        print("\nbest validation accuracy within each FLOPs budget:")
        print(format_budget_report(result.trials, args.budget))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run a search: Optuna samples cascades, Ray Tune runs them, MLflow logs them")
    p.add_argument("config", help="search config YAML (e.g. spaces/smoke.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (fixed.optim.weight_decay=1e-3, space.tau.high=30 reach into "
                        "fixed and space)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local Ray)")
    p.add_argument("--verbose", action="store_true", help="Ray's own output instead of the compact progress")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue an interrupted search from its directory")
    p.add_argument("dir", help="the search directory (<results_dir>/<experiment>)")
    p.add_argument("--address", default=None)
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("frontier", help="print the Pareto table (also of a running or interrupted search); write "
                                        "frontier.csv and frontier.png")
    p.add_argument("dir", help="the search directory (<results_dir>/<experiment>)")
    p.add_argument("--budget", type=float, action="append", default=[],
                   help="also report the best validation accuracy within this many FLOPs (repeatable)")
    p.set_defaults(func=cmd_frontier)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade", description="Cascaded channel pruning and its search.")
    sub = parser.add_subparsers(title="commands")
    cascade_cli.add_commands(sub)
    add_commands(sub)
    return cascade_cli.dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
