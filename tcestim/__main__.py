"""``python -m tcestim ...``: the command line lives in :mod:`tcestim.experiments.cli`."""
import sys

from tcestim.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
