"""Post-training dimension-wise quantization (TokenBridge) of a trained KL autoencoder.

``python eval/ptq.py --help`` for the options; the code is in vistok/cli/ptq.py.
"""

import sys

from vistok.cli.ptq import main

if __name__ == "__main__":
    sys.exit(main())
