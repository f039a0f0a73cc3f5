"""Understanding and generation report of an MLLM.

``python eval/mllm.py --help`` for the options; the code is in vistok/cli/mllm.py.
"""

import sys

from vistok.cli.mllm import main

if __name__ == "__main__":
    sys.exit(main())
