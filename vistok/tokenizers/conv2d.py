"""2D convolutional tokenizer (VQGAN / LlamaGen): conv encoder → 1×1 projection to the code dim → any registered
quantizer over the h×w grid → 1×1 projection → conv decoder. The baseline every other tokenizer is compared to.

The quantizer is chosen by config (``quantizer={"name": "vq", "codebook_size": ..., "code_dim": ...}``), so later
quantizers (group LFQ, FSQ, …) drop in without touching this file. Training loss: pixel reconstruction (MSE or L1)
plus the quantizer's named losses. LlamaGen adds LPIPS and a PatchGAN on top; those belong to the loss modules a
later issue adds (``perceptual_weight``/GAN hooks are deliberately absent rather than stubbed).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

from vistok.registry import build, register
from vistok.spec import TokenSpec
from vistok.tokenizers.base import Tokenizer, TokenizerOutput, check_recon_loss, pixel_loss
from vistok.tokenizers.conv_nets import Decoder, Encoder, conv_net_options

CONV_SIZES: dict[str, dict[str, Any]] = {
    # LlamaGen's VQ-16 (f16, 72M): ch 128, mult (1,1,2,2,4), z 256, codebook 16384 × 8.
    "llamagen_f16": {"channels": 128, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256},
    "llamagen_f8": {"channels": 128, "channel_mult": [1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256},
}


@register("tokenizer", "conv2d")
class ConvTokenizer(Tokenizer):
    def __init__(self, resolution: int = 256, channels: int = 128, channel_mult: list[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, mid_attention: bool = True, dropout: float = 0.0,
                 quantizer: dict[str, Any] | None = None, recon_loss: str = "mse", recon_weight: float = 1.0) -> None:
        super().__init__()
        quantizer = dict(quantizer or {"name": "vq", "codebook_size": 16384, "code_dim": 8})
        self.resolution = resolution
        self.recon_loss, self.recon_weight = check_recon_loss(recon_loss), recon_weight
        net, self.downsample = conv_net_options(resolution, channels, channel_mult, num_res_blocks, z_channels,
                                                mid_attention, dropout)
        self.encoder = Encoder(**net)
        self.quantizer = build("quantizer", quantizer)
        # into the quantizer's input width (binary: num_bits logits; FSQ: one per level), out of its code width
        self.quant_proj = nn.Conv2d(z_channels, self.quantizer.input_dim, 1)
        self.post_quant_proj = nn.Conv2d(self.quantizer.code_dim, z_channels, 1)
        self.decoder = Decoder(**net)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.resolution // self.downsample
        return side, side

    @property
    def token_spec(self) -> TokenSpec:
        q = self.quantizer
        return TokenSpec(kind=q.kind, vocab_sizes=q.codebook_sizes, layout="grid", length=self.grid[0] * self.grid[1],
                         grid=self.grid, code_dim=q.code_dim)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight (VQGAN's adaptive GAN weight compares gradient norms here)."""
        return self.decoder.conv_out.weight

    # ---- pieces -----------------------------------------------------------------------------------------------
    def _quantize(self, images: torch.Tensor):
        self.check_images(images)
        z = self.quant_proj(self.encoder(images))  # (B, D, h, w)
        h, w = z.shape[-2:]
        return self.quantizer(rearrange(z, "b d h w -> b (h w) d")), (h, w)

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        z = rearrange(codes, "b (h w) d -> b d h w", h=h, w=w)
        return self.decoder(self.post_quant_proj(z))

    # ---- the interface ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        out, _ = self._quantize(images)
        return out.indices

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.token_spec.validate(tokens)
        return self._decode_codes(self.quantizer.indices_to_codes(tokens)).clamp(-1, 1)

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        q, _ = self._quantize(images)
        recon = self._decode_codes(q.quantized)
        pixel = pixel_loss(recon, images, self.recon_loss)
        losses = {"recon": self.recon_weight * pixel, **q.losses}
        return TokenizerOutput(recon, losses, q.stats, q.indices)
