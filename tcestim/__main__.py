"""Command line: `python -m tcestim demo [--quick]` and `python -m tcestim bias [--quick] [--out DIR]`."""
from __future__ import annotations

import argparse
import sys

from tcestim import bias_study, demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcestim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(commands.add_parser(
        "demo", help="every estimator's TC next to the exact and closed-form truths"))
    bias_study.add_arguments(commands.add_parser(
        "bias", help="the estimator-bias study against exact and closed-form ground truth"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo.run(args)
    elif args.command == "bias":
        bias_study.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
