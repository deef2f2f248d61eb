"""The ``cascade`` command: the method's subcommands plus the search's."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cascade import cli as cascade_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade", description="Cascaded channel pruning and its search.")
    sub = parser.add_subparsers(title="commands")
    cascade_cli.add_commands(sub)
    return cascade_cli.dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
