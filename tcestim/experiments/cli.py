"""Command line.

    python -m tcestim demo [--quick]                 estimators vs exact and closed-form TC
    python -m tcestim bias [--quick] [--out DIR]     the estimator-bias study
    python -m tcestim train [...]                    train a reference VAE (see --help)
    python -m tcestim evaluate CHECKPOINT            exact decomposition and MIG of a checkpoint
"""
from __future__ import annotations

import argparse
import sys

from tcestim.experiments import bias_study, demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcestim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(commands.add_parser(
        "demo", help="every estimator's TC next to the exact and closed-form truths"))
    bias_study.add_arguments(commands.add_parser(
        "bias", help="the estimator-bias study against exact and closed-form ground truth"))
    from tcestim.experiments import train
    train.add_train_arguments(commands.add_parser("train", help="train a reference VAE with a TC objective"))
    evaluate = commands.add_parser("evaluate", help="exact decomposition and MIG of a checkpoint")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--eval-points", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "train":
        train.main_train(args)
    elif args.command == "evaluate":
        train.main_evaluate(args)
    elif args.command == "demo":
        demo.run(args)
    elif args.command == "bias":
        bias_study.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
