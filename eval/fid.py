"""FID, sFID, KID, precision/recall, IS of generated samples against a reference.

``python eval/fid.py --help`` for the options; the code is in vistok/cli/fid.py.
"""

import sys

from vistok.cli.fid import main

if __name__ == "__main__":
    sys.exit(main())
