"""Command line.

    python -m tcestim demo [--quick]                 estimators vs exact and closed-form TC
    python -m tcestim bias [--quick] [--out DIR]     the estimator-bias study
    python -m tcestim train [...]                    train a reference VAE (see --help)
    python -m tcestim evaluate CHECKPOINT            exact decomposition and MIG of a checkpoint
    python -m tcestim sweep [...]                    objectives x beta x seeds of train (see --help)

Every size is checked when the command line is read; a command that writes a folder refuses a
non-empty one unless told (--overwrite, or --resume for train).
"""
from __future__ import annotations

import argparse
import sys

from tcestim.experiments import bias_study, demo, runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcestim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(commands.add_parser(
        "demo", help="every estimator's TC next to the exact and closed-form truths"))
    bias_study.add_arguments(commands.add_parser(
        "bias", help="the estimator-bias study against exact and closed-form ground truth"))
    from tcestim.experiments import train
    train_parser = commands.add_parser("train", help="train a reference VAE with a TC objective")
    train.add_train_arguments(train_parser)
    from tcestim.experiments import sweep
    sweep.add_arguments(commands.add_parser(
        "sweep", help="objectives x beta x seeds of train, resumable, with the paper's table and plots"))
    evaluate = commands.add_parser("evaluate", help="exact decomposition and MIG of a checkpoint")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--eval-points", type=runs.int_at_least(2), default=None)
    evaluate.add_argument("--device", type=runs.device, default="cpu", help="cpu, cuda or cuda:N")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command == "train":
        args.explicit = runs.explicit_options(train_parser, argv[argv.index("train") + 1:])
        return train.main_train(args)
    if args.command == "evaluate":
        return train.main_evaluate(args)
    if args.command == "sweep":
        sweep.main(args)
    elif args.command == "demo":
        demo.run(args)
    elif args.command == "bias":
        bias_study.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
