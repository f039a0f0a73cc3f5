"""``tokenizer/diffusers_kl``: a 🤗 diffusers ``AutoencoderKL`` (the SD-VAE, MAR's KL-16, any LDM-style KL VAE) as a
vistok tokenizer over its continuous latent grid.

The encoder's diagonal Gaussian posterior is the latent; tokens are its mean quantized dimension-wise after
training, exactly as for ``kl_ae`` (shared through :class:`~vistok.tokenizers.continuous.ContinuousLatentTokenizer`),
so ``eval/ptq.py --autoencoder <folder>`` on a wrapped pretrained VAE is TokenBridge's setting (Wang et al.,
"Bridging Continuous and Discrete Tokens for Autoregressive Visual Generation", arXiv 2503.16430,
github.com/YuqingWang1029/TokenBridge): post-training quantization of a frozen, pretrained KL VAE.

Latents are the VAE's raw ones (not multiplied by ``scaling_factor``): the KL term of fine-tuning is LDM's on the
raw posterior, and the dimension-wise quantizer normalizes each dimension by its own fitted statistics anyway.

    tok = vistok.build("tokenizer", {"name": "diffusers_kl", "resolution": 256,
                                     "pretrained": "stabilityai/sd-vae-ft-mse"})
    tok = vistok.build("tokenizer", {"name": "diffusers_kl", "pretrained": "<pipeline id or folder>",
                                     "subfolder": "vae"})
"""

from __future__ import annotations

from typing import Any

import torch

from vistok.registry import build, register
from vistok.tokenizers.base import check_recon_loss
from vistok.tokenizers.continuous import ContinuousLatentTokenizer, dimwise_quantizer_config
from vistok.tokenizers.diffusers_common import DiffusersWrapper, check_resolution, load_diffusers_model, record_config


@register("tokenizer", "diffusers_kl")
class DiffusersKL(DiffusersWrapper, ContinuousLatentTokenizer):
    """Options: ``pretrained`` (hub id | folder) and ``subfolder``, or ``vae`` (an ``AutoencoderKL`` config) to
    build from scratch; ``kl_weight``/``recon_loss``/``recon_weight`` for training as ``kl_ae``; ``quantizer`` the
    post-training ``dimwise`` section (its ``code_dim`` defaults to the VAE's ``latent_channels``)."""

    def __init__(self, resolution: int = 256, pretrained: str | None = None, subfolder: str | None = None,
                 vae: dict[str, Any] | None = None, loaded_from: str | None = None, kl_weight: float = 1e-6,
                 recon_loss: str = "mse", recon_weight: float = 1.0,
                 quantizer: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.vae, config = load_diffusers_model("AutoencoderKL", "diffusers_kl", pretrained, subfolder, vae)
        record_config(self, config, pretrained, subfolder)
        self.resolution = resolution
        self.downsample = check_resolution(resolution, config, "diffusers_kl")
        self.latent_dim = int(config["latent_channels"])
        self.kl_weight = kl_weight
        self.recon_loss, self.recon_weight = check_recon_loss(recon_loss), recon_weight
        self.quantizer = build("quantizer", dimwise_quantizer_config(quantizer, self.latent_dim, "diffusers_kl"))

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar), each (B, N, D) channel-last; diffusers clamps logvar to [-30, 20] as LDM does."""
        self.check_images(images)
        dist = self.vae.encode(images).latent_dist
        return self.to_sequence(dist.mean), self.to_sequence(dist.logvar)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, D) raw latents → (B, 3, H, W) unclamped images."""
        return self.vae.decode(self.to_grid(latents)).sample
