"""Reconstruction report of a tokenizer: PSNR, SSIM, codebook usage, bits/image.

``python eval/recon.py --help`` for the options; the code is in vistok/cli/recon.py.
"""

import sys

from vistok.cli.recon import main

if __name__ == "__main__":
    sys.exit(main())
