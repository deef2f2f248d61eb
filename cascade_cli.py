"""The ``cascade`` command (the console script): the method's subcommands from ``cascade.cli`` (teacher, prune,
config) and the search's (search, resume, frontier). It is the one module that sees both layers.

Exit codes: 0 when at least one trial finished; 1 when none did (the failures are listed); 2 for bad input
(one line naming the field). ``--help`` imports neither torch, ray nor mlflow."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import yaml

from cascade import cli as cascade_cli
from cascade.config import schema_markdown, to_dict


def _finish(result) -> int:
    from search.report import print_result

    print_result(result)
    return 0 if result.finished else 1


def cmd_search(args: argparse.Namespace) -> int:
    from search.config import load_config, resolve_paths

    cfg = resolve_paths(load_config(args.config, args.set))
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from search.api import run_search

    return _finish(run_search(cfg, address=args.address, verbose=args.verbose))


def cmd_resume(args: argparse.Namespace) -> int:
    from search.api import resume_search

    return _finish(resume_search(args.dir, address=args.address, verbose=args.verbose))


def cmd_frontier(args: argparse.Namespace) -> int:
    from search.report import format_budget_report, print_result
    from search.results import load_result

    result = load_result(args.dir)
    print_result(result)
    if args.budget:
        print("\nbest validation accuracy within each FLOPs budget:")
        print(format_budget_report(result.trials, args.budget))
    return 0


def count(text: str) -> float:
    """``2M``, ``1.5G``, ``300k`` or ``2e6``: a FLOPs count, as the tables print it."""
    units = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
    try:
        return float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count such as 2M, 1.5G or 2e6, got {text!r}") from None


PRUNE_NOTE = "  prune.KEY  every key of `cascade prune --help`: the trials' config before the sampled values"
SPACE_SPEC = """a space entry (under space:) is a fixed value or {low, high[, log, step, type]} or {choices: [...]};
its name is a prune-config key (optim.weight_decay), an alias (tau, lambda_kd, lambda_h, lr, score_lr) or a
ladder key (method, num_tas, student_ratio, placement, free_fraction). docs/config.md, "Search spaces"."""


SPACES_DOC = """## Search spaces

`space:` maps a parameter name to a value spec:

| spec | meaning |
|---|---|
| `0.6` | fixed for every trial |
| `{low: 0.3, high: 0.85}` | a float range (`log: true` for a log scale, `step: ...`); integers give an int range |
| `{choices: [paper, even]}` | a categorical choice |

| name | what it sets |
|---|---|
| `method` | `cascade`, `l1`, `group_norm` or `taylor`; a peer draws no TA ladder and no cascade-only key (`optim.score_*`, `cascade.score_init`, `cascade.route_scores`, `loss.student_weight`, `loss.own_grads`) |
| `num_tas`, `student_ratio`, `placement`, `free_fraction` | `cascade.ratios`: the student's ratio and N TAs placed by `paper` (k0, k0/1.5, k0/2.5, ..., 0), `even` (linear to 0), `geometric` (kept fractions geometric) or `free` (each TA's ratio a drawn fraction of the one below) |
| `tau`, `lambda_kd`, `lambda_h`, `lr`, `score_lr` | `loss.tau`, `loss.lambda_kd`, `loss.lambda_h`, `optim.lr`, `optim.score_lr` |
| any prune-config key, e.g. `optim.weight_decay` | that key |

Conditional parameters get distinct names per branch: `placement` exists only with 2+ TAs,
`free_fraction_2_of_3` only for `free` with 3 TAs. A space without the ladder's keys leaves `cascade.ratios` and
`method` as `prune:` has them. A key may be fixed under `prune:` or searched, not both.
"""


def add_commands(sub: argparse._SubParsersAction) -> None:
    from search.config import SearchConfig

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("search", help="run a search: Optuna samples cascades, Ray Tune runs them, MLflow logs them",
                       formatter_class=fmt, epilog=cascade_cli.keys_epilog(
                           SearchConfig, skip="prune", note=PRUNE_NOTE + "\n\n" + SPACE_SPEC))
    p.add_argument("config", help="search config YAML (e.g. configs/smoke.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key: prune.optim.weight_decay=1e-3, space.tau.high=30, "
                        "'space.lr={low: 0.001, high: 0.1}'")
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
    p.add_argument("--budget", type=count, action="append", default=[],
                   help="also report the best validation accuracy within this many FLOPs, e.g. 2M (repeatable)")
    p.set_defaults(func=cmd_frontier)


def config_reference() -> str:
    """docs/config.md, whole: the prune config, then the search config around it."""
    from search.config import SearchConfig

    return ("# Configuration reference\n\nGenerated by `cascade config --markdown` from the schemas "
            "(`cascade/config.py`, `search/config.py`); `tests/test_docs.py` checks it is current.\n\n"
            + cascade_cli.config_reference() + "\n## The search config (`cascade search`)\n\nIts own keys; "
            "`prune:` holds a prune config (above), the trials' start.\n\n"
            + schema_markdown(SearchConfig, skip="prune") + "\n" + SPACES_DOC)


def cmd_config(args: argparse.Namespace) -> int:
    from search.config import SearchConfig

    print(config_reference() if args.markdown else cascade_cli.keys_epilog() + "\n\nsearch " +
          cascade_cli.keys_epilog(SearchConfig, skip="prune"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade", description="Cascaded channel pruning and its search.")
    sub = parser.add_subparsers(title="commands")
    cascade_cli.add_commands(sub)
    add_commands(sub)
    sub.choices["config"].set_defaults(func=cmd_config)  # the search's keys too
    return cascade_cli.dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
