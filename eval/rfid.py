"""rFID, rKID, PSNR, SSIM of a tokenizer's reconstructions.

``python eval/rfid.py --help`` for the options; the code is in vistok/cli/rfid.py.
"""

import sys

from vistok.cli.rfid import main

if __name__ == "__main__":
    sys.exit(main())
