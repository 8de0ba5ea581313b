"""Command line: `python -m tcestim demo [--quick]`."""
from __future__ import annotations

import argparse
import sys

from tcestim import demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcestim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(commands.add_parser(
        "demo", help="every estimator's TC next to the exact and closed-form truths"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
