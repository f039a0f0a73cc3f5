"""Sample images for prompts from a trained generator run.

``python sample.py --help`` for the options; the code is in vistok/cli/sample.py.
"""

import sys

from vistok.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
