"""``tokenizer/diffusers_vq``: a 🤗 diffusers ``VQModel`` (LDM's VQ-f4/f8, MoVQ with ``norm_type: spatial``) as a
vistok tokenizer: one index into its codebook per position of the latent grid (a ``vocab`` TokenSpec).

The nearest-code search is diffusers' own (Euclidean, ``torch.cdist``, no l2 normalization), so a pretrained model
gives the tokens it gives in diffusers. Training uses VQ-VAE's losses with the weights in their intended places:
codebook ``mean((q − sg(z))²)`` and commitment ``β · mean((sg(q) − z)²)``; diffusers' ``VectorQuantizer`` keeps,
for backward compatibility, taming's historical swap of β between the two terms (``legacy=True``), which vistok does
not reproduce (set ``commitment_weight: 1.0, codebook_weight: 0.25`` to train exactly as taming did).

    tok = vistok.build("tokenizer", {"name": "diffusers_vq", "resolution": 256,
                                     "pretrained": "<ldm pipeline id or folder>", "subfolder": "vqvae"})
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vistok.metrics.codebook import usage_stats
from vistok.registry import register
from vistok.spec import TokenSpec
from vistok.tokenizers.base import GridTokenizer, TokenizerOutput, check_recon_loss, pixel_loss
from vistok.tokenizers.diffusers_common import DiffusersWrapper, check_resolution, load_diffusers_model, record_config


@register("tokenizer", "diffusers_vq")
class DiffusersVQ(DiffusersWrapper, GridTokenizer):
    """Options: ``pretrained`` (hub id | folder) and ``subfolder``, or ``vae`` (a ``VQModel`` config) to build from
    scratch; ``commitment_weight``/``codebook_weight`` and ``recon_loss``/``recon_weight`` for training."""

    def __init__(self, resolution: int = 256, pretrained: str | None = None, subfolder: str | None = None,
                 vae: dict[str, Any] | None = None, loaded_from: str | None = None, commitment_weight: float = 0.25,
                 codebook_weight: float = 1.0, recon_loss: str = "mse", recon_weight: float = 1.0) -> None:
        super().__init__()
        self.vae, config = load_diffusers_model("VQModel", "diffusers_vq", pretrained, subfolder, vae)
        record_config(self, config, pretrained, subfolder)
        self.resolution = resolution
        self.downsample = check_resolution(resolution, config, "diffusers_vq")
        self.codebook_size = int(config["num_vq_embeddings"])
        self.code_dim = int(config.get("vq_embed_dim") or config["latent_channels"])
        self.spatial_norm = config.get("norm_type") == "spatial"  # MoVQ: the decoder's norms see the codes too
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        self.recon_loss, self.recon_weight = check_recon_loss(recon_loss), recon_weight

    @property
    def token_spec(self) -> TokenSpec:  # diffusers' own quantizer, not a vistok Quantizer: one vocabulary
        return TokenSpec.vocab(self.codebook_size, grid=self.grid, code_dim=self.code_dim)

    # ---- pieces -----------------------------------------------------------------------------------------------
    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, D): the encoder's output after ``quant_conv``, channel-last."""
        self.check_images(images)
        return self.to_sequence(self.vae.encode(images).latents)

    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(B, N, D) → (B, N) indices of the nearest codes, in fp32 as diffusers' quantizer does."""
        with torch.autocast(z.device.type, enabled=False):
            flat = z.float().reshape(-1, self.code_dim)
            indices = torch.cdist(flat, self.vae.quantize.embedding.weight.float()).argmin(dim=1)
        return indices.view(z.shape[:-1])

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N, D) codes → unclamped images (VQModel.decode without its optional re-quantization)."""
        quant = self.to_grid(codes)
        return self.vae.decoder(self.vae.post_quant_conv(quant), quant if self.spatial_norm else None)

    # ---- the interface ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._nearest(self._latents(images))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.token_spec.validate(tokens)
        return self._decode_codes(self.vae.quantize.embedding(tokens)).clamp(-1, 1)

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        z = self._latents(images)
        indices = self._nearest(z)
        codes = self.vae.quantize.embedding(indices)
        losses = {"codebook": self.codebook_weight * F.mse_loss(codes, z.detach()),
                  "commitment": self.commitment_weight * F.mse_loss(z, codes.detach())}
        recon = self._decode_codes(z + (codes - z).detach())  # straight-through
        losses = {"recon": self.recon_weight * pixel_loss(recon, images, self.recon_loss), **losses}
        return TokenizerOutput(recon, losses, usage_stats(indices, self.codebook_size), indices)
