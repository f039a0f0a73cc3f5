"""``vistok-eval <metric> ...``: one command for the evaluation CLIs (the same as ``python eval/<metric>.py``).

    vistok-eval fid   --samples samples/ --ref VIRTUAL_imagenet256_labeled.npz --out fid.json
    vistok-eval rfid  --tokenizer runs/vq_f8_imagenet64 --data /data/imagenet/val --resolution 64 --out m.json
    vistok-eval recon --tokenizer runs/demo/tokenizer --data shapes --out runs/demo/recon
    vistok-eval ptq   --autoencoder runs/kl_ae_f8_imagenet64 --data /data/imagenet/val --out runs/ptq
    vistok-eval mllm  --model runs/mllm_vocab_shapes32 --data shapes --out m.json
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"fid": "generated samples against a reference: FID, sFID, KID, precision/recall, IS",
            "rfid": "a tokenizer's reconstructions: rFID, rKID, PSNR, SSIM, codebook usage, bits/image",
            "recon": "a tokenizer's reconstructions without Inception: PSNR, SSIM, codebook usage, bits/image",
            "ptq": "post-training dimension-wise quantization of a KL autoencoder (TokenBridge)",
            "mllm": "an MLLM: understanding accuracy of its answers, generation judged on shapes"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        listing = "\n".join(f"  {name:<6} {what}" for name, what in COMMANDS.items())
        print(f"usage: vistok-eval <command> [options]   (vistok-eval <command> --help)\n{listing}",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    module = importlib.import_module(f"vistok.cli.{argv[0]}")
    return module.main(argv[1:], prog=f"vistok-eval {argv[0]}")


def console() -> None:
    """The `vistok-eval` command."""
    sys.exit(main())
