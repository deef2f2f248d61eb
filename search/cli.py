"""The ``cascade`` command: the method's subcommands (teacher, prune) plus search, resume and frontier."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cascade import cli as cascade_cli
from spaces import SpaceError


def cmd_search(args: argparse.Namespace) -> int:
    from .api import print_frontier, run_search

    print_frontier(run_search(args.config, args.set, address=args.address, verbose=args.verbose))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from .api import print_frontier, resume_search

    print_frontier(resume_search(args.dir, address=args.address, verbose=args.verbose))
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    from .api import format_budget_report, load_result, print_frontier

    result = load_result(args.dir)
    print_frontier(result)
    if args.budget:
        print("\nbest accuracy within each FLOPs budget:")
        print(format_budget_report(result.trials, args.budget))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run a search: Optuna samples cascades, Ray Tune runs them, MLflow logs them")
    p.add_argument("config", help="search config YAML (e.g. spaces/smoke.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local Ray)")
    p.add_argument("--verbose", type=int, default=1, help="Ray Tune verbosity 0-3")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue an interrupted search from its directory")
    p.add_argument("dir", help="the search directory (<results_dir>/<experiment>)")
    p.add_argument("--address", default=None)
    p.add_argument("--verbose", type=int, default=1)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("frontier", help="print the Pareto table; write frontier.csv and frontier.png")
    p.add_argument("dir", help="the search directory (<results_dir>/<experiment>)")
    p.add_argument("--budget", type=float, action="append", default=[],
                   help="also report the best accuracy within this many FLOPs (repeatable)")
    p.set_defaults(func=cmd_frontier)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade", description="Cascaded channel pruning and its search.")
    sub = parser.add_subparsers(title="commands")
    cascade_cli.add_commands(sub)
    add_commands(sub)
    return cascade_cli.dispatch(parser, argv, user_errors=cascade_cli.USER_ERRORS + (SpaceError,))


if __name__ == "__main__":
    sys.exit(main())
