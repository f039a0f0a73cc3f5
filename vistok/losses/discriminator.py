"""PatchGAN discriminator (pix2pix, Isola et al., arXiv 1611.07004), as taming-transformers' ``NLayerDiscriminator``
that VQGAN (arXiv 2012.09841), LlamaGen, TiTok and Open-MAGVIT2 train their tokenizers against.

Layout (``num_layers`` = n, ``channels`` = ndf): conv 4×4 stride 2 (3 → ndf) + LeakyReLU(0.2); then n − 1 blocks of
conv 4×4 stride 2 with channels ndf·min(2^i, 8) + norm + LeakyReLU; one conv 4×4 stride 1 (ndf·min(2^n, 8)) + norm
+ LeakyReLU; a final conv 4×4 stride 1 to one logit per patch. Convs feeding a norm have no bias. Init as taming's
``weights_init``: conv weights N(0, 0.02); norm scales N(1, 0.02), shifts 0.

``norm``: ``batch`` (taming's default; each call normalizes with its own batch statistics, so real and fake
batches are normalized separately, as the anchors call it) or ``none``. With several processes BatchNorm uses
each rank's own batch, as in the anchors' DDP training.
"""

from __future__ import annotations

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.registry import register

NORMS = ("batch", "none")


@register("discriminator", "patchgan")
class PatchGANDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"discriminator patchgan: norm must be one of {NORMS}, got {norm!r}")
        if num_layers < 1:
            raise ConfigError(f"discriminator patchgan: num_layers must be >= 1, got {num_layers}")

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            if norm == "none":
                return [nn.Conv2d(cin, cout, 4, stride, 1), nn.LeakyReLU(0.2, True)]
            return [nn.Conv2d(cin, cout, 4, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]

        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, num_layers):
            prev, mult = mult, min(2**n, 8)
            layers += block(channels * prev, channels * mult, 2)
        prev, mult = mult, min(2**num_layers, 8)
        layers += block(channels * prev, channels * mult, 1)
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, 1, h, w) patch logits."""
        return self.main(images)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
