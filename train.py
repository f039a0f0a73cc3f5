"""Train a tokenizer or a generator from a YAML config.

``python train.py --help`` for the options; the code is in vistok/cli/train.py.
"""

import sys

from vistok.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
