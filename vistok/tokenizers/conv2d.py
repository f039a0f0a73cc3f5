"""2D convolutional tokenizer (VQGAN / LlamaGen): conv encoder → 1×1 projection to the code dim → any registered
quantizer over the h×w grid → 1×1 projection → conv decoder. The baseline every other tokenizer is compared to.

The quantizer is chosen by config (``quantizer={"name": "vq", "codebook_size": ..., "code_dim": ...}``), so later
quantizers (group LFQ, FSQ, …) drop in without touching this file. Training loss: pixel reconstruction (MSE or L1)
plus the quantizer's named losses. LlamaGen adds LPIPS and a PatchGAN on top; those are training losses
(``vistok.losses``, a config's ``loss:`` section), not part of the tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.registry import build, register
from vistok.tokenizers.base import GridTokenizer, TokenizerOutput, check_recon_loss, pixel_loss
from vistok.tokenizers.conv_nets import Decoder, Encoder, conv_net_options

CONV_SIZES: dict[str, dict[str, Any]] = {
    # LlamaGen's VQ-16 (f16, 72M) and VQ-8 (f8) exactly as released (vq_ds16_c2i.pt / vq_ds8_c2i.pt load into them
    # through vistok.convert.llamagen): ch 128, z 256, codebook 16384 × 8 l2-normalized, attention after every
    # residual block of the lowest-resolution level, bottom/right-padded stride-2 downsampling.
    "llamagen_f16": {"channels": 128, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256,
                     "mid_attention": True, "level_attention": True, "asymmetric_downsample": True},
    "llamagen_f8": {"channels": 128, "channel_mult": [1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256,
                    "mid_attention": True, "level_attention": True, "asymmetric_downsample": True},
}
# What an option left unset means when no size is named (the VQGAN-style f16 net).
CONV_DEFAULTS: dict[str, Any] = {"channels": 128, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
                                 "z_channels": 256, "mid_attention": True, "level_attention": False,
                                 "asymmetric_downsample": False}


def resolve_conv_size(size: str | None, **given: Any) -> dict[str, Any]:
    """The conv net options: those given explicitly (not None) win over the named ``size``'s, which win over
    :data:`CONV_DEFAULTS`."""
    if size is not None and size not in CONV_SIZES:
        raise ConfigError(f"unknown conv tokenizer size {size!r}; choose one of {sorted(CONV_SIZES)} "
                          "(or leave size unset and give channels/channel_mult/... explicitly)")
    named = {**CONV_DEFAULTS, **(CONV_SIZES[size] if size else {})}
    return {k: named[k] if given.get(k) is None else given[k] for k in CONV_DEFAULTS}


@register("tokenizer", "conv2d")
class ConvTokenizer(GridTokenizer):
    """``size``: a named architecture of :data:`CONV_SIZES` (``llamagen_f16``, ``llamagen_f8``); options given
    explicitly win over it. ``level_attention``/``asymmetric_downsample``: see ``conv_nets.py``."""

    def __init__(self, resolution: int = 256, channels: int | None = None, channel_mult: list[int] | None = None,
                 num_res_blocks: int | None = None, z_channels: int | None = None, mid_attention: bool | None = None,
                 dropout: float = 0.0, quantizer: dict[str, Any] | None = None, recon_loss: str = "mse",
                 recon_weight: float = 1.0, level_attention: bool | None = None,
                 asymmetric_downsample: bool | None = None, size: str | None = None) -> None:
        super().__init__()
        arch = resolve_conv_size(size, channels=channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                                 z_channels=z_channels, mid_attention=mid_attention, level_attention=level_attention,
                                 asymmetric_downsample=asymmetric_downsample)
        quantizer = dict(quantizer or {"name": "vq", "codebook_size": 16384, "code_dim": 8})
        self.resolution = resolution
        self.recon_loss, self.recon_weight = check_recon_loss(recon_loss), recon_weight
        net, self.downsample = conv_net_options(resolution, dropout=dropout, **arch)
        z_channels = arch["z_channels"]
        self.encoder = Encoder(**net)
        self.quantizer = build("quantizer", quantizer)
        # into the quantizer's input width (binary: num_bits logits; FSQ: one per level), out of its code width
        self.quant_proj = nn.Conv2d(z_channels, self.quantizer.input_dim, 1)
        self.post_quant_proj = nn.Conv2d(self.quantizer.code_dim, z_channels, 1)
        self.decoder = Decoder(**net)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight (VQGAN's adaptive GAN weight compares gradient norms here)."""
        return self.decoder.conv_out.weight

    # ---- pieces -----------------------------------------------------------------------------------------------
    def _quantize(self, images: torch.Tensor):
        self.check_images(images)
        z = self.quant_proj(self.encoder(images))  # (B, D, h, w)
        h, w = z.shape[-2:]
        return self.quantizer(self.to_sequence(z)), (h, w)

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_proj(self.to_grid(codes)))

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
