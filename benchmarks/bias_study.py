"""Runs the estimator-bias study from the benchmarks folder: same as `python -m tcestim bias`.

    python benchmarks/bias_study.py [--quick] [--out benchmarks/results/bias]
"""
import argparse
import sys

from tcestim.experiments import bias_study

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bias_study.add_arguments(parser)
    parser.set_defaults(out="benchmarks/results/bias")
    bias_study.main(parser.parse_args(sys.argv[1:]))
