"""KL-regularized continuous autoencoder (LDM / MAR's KL-VAE) whose tokens come from dimension-wise post-training
quantization (TokenBridge, arXiv 2503.16430).

Architecture: the 2D conv encoder/decoder of ``conv2d.py`` (VQGAN/LlamaGen style); the encoder's 1×1 projection
outputs a mean and a log-variance per latent dimension (a diagonal Gaussian posterior). Training is the usual
continuous one: pixel MSE (or L1) on the decoder's output from a posterior **sample**, plus
``kl_weight · KL(q(z|x) ‖ N(0, I))``. The KL is normalised as in LDM's ``LPIPSWithDiscriminator``: summed over the
latent and divided by the number of pixel values, so ``kl_weight = 1e-6`` means LDM's default ratio to the
reconstruction term. No quantizer is involved in training.

Tokens: the posterior **mean** goes through a :class:`~vistok.quantizers.dimwise.DimwiseQuantizer` (D dimensions ×
B bins per position). The quantizer is fitted after training, without gradients, by :func:`post_training_quantize`
(``eval/ptq.py``), and the result saves and loads like any tokenizer. During training the quantizer keeps running
statistics so that periodic evaluations already report a (provisional) quantized reconstruction.
:meth:`KLAutoencoder.reconstruct_continuous` gives the unquantized reconstruction for comparison.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vistok.errors import ConfigError
from vistok.registry import build, register
from vistok.tokenizers.base import GridTokenizer, TokenizerOutput, check_recon_loss, pixel_loss
from vistok.tokenizers.conv_nets import Decoder, Encoder, conv_net_options


def dimwise_quantizer_config(quantizer: dict[str, Any] | None, latent_dim: int, owner: str) -> dict[str, Any]:
    """The (post-training) dimension-wise quantizer section of a continuous tokenizer, checked against its latent."""
    quantizer = dict(quantizer or {"name": "dimwise", "num_bins": 64})
    if quantizer.get("name") != "dimwise":
        raise ConfigError(f"{owner}: the quantizer must be 'dimwise' (post-training), got {quantizer.get('name')!r}")
    quantizer.setdefault("code_dim", latent_dim)
    if quantizer["code_dim"] != latent_dim:
        raise ConfigError(f"{owner}: quantizer.code_dim={quantizer['code_dim']} differs from the latent dimension "
                          f"{latent_dim}")
    return quantizer


class ContinuousLatentTokenizer(GridTokenizer):
    """A tokenizer over a continuous latent grid (a diagonal Gaussian posterior), tokenized by post-training
    dimension-wise quantization. Subclasses provide :meth:`posterior` ((mean, logvar), each (B, N, D)),
    :meth:`decode_latents` ((B, N, D) → unclamped images) and the attributes ``downsample``, ``latent_dim``,
    ``quantizer`` (a ``DimwiseQuantizer``), ``kl_weight``, ``recon_loss`` and ``recon_weight``; the tokenizer
    interface, the KL training forward and :func:`post_training_quantize` come from here."""

    latent_dim: int
    kl_weight: float
    recon_loss: str
    recon_weight: float

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior mean (B, N, D): what the post-training quantizer sees."""
        return self.posterior(images)[0]

    @torch.no_grad()
    def reconstruct_continuous(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(self.encode_latents(images)).clamp(-1, 1)

    # ---- the tokenizer interface ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.encode_latents(images)).indices

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.token_spec.validate(tokens)
        return self.decode_latents(self.quantizer.indices_to_codes(tokens)).clamp(-1, 1)

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        mean, logvar = self.posterior(images)
        latents = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        recon = self.decode_latents(latents)
        pixel = pixel_loss(recon, images, self.recon_loss)
        # KL(N(μ, σ²) ‖ N(0, 1)) summed over the latent, per image, divided by the number of pixel values
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2)).mean() / images[0].numel()
        losses = {"recon": self.recon_weight * pixel, "kl": self.kl_weight * kl}
        stats = {"kl_per_dim": (kl * images[0].numel() / mean[0].numel()).detach(),
                 "latent_std": mean.detach().std(), "posterior_std": (0.5 * logvar.detach()).exp().mean()}
        if self.training:
            self.quantizer.update_running_stats(mean)
        return TokenizerOutput(recon, losses, stats, None)


@register("tokenizer", "kl_ae")
class KLAutoencoder(ContinuousLatentTokenizer):
    def __init__(self, resolution: int = 256, channels: int = 128, channel_mult: list[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, mid_attention: bool = True, dropout: float = 0.0,
                 latent_dim: int = 16, kl_weight: float = 1e-6, recon_loss: str = "mse", recon_weight: float = 1.0,
                 quantizer: dict[str, Any] | None = None) -> None:
        super().__init__()
        quantizer = dimwise_quantizer_config(quantizer, latent_dim, "kl_ae")
        self.resolution, self.latent_dim, self.kl_weight = resolution, latent_dim, kl_weight
        self.recon_loss, self.recon_weight = check_recon_loss(recon_loss), recon_weight
        net, self.downsample = conv_net_options(resolution, channels, channel_mult, num_res_blocks, z_channels,
                                                mid_attention, dropout)
        self.encoder = Encoder(**net)
        self.moments_proj = nn.Conv2d(z_channels, 2 * latent_dim, 1)  # mean and log-variance
        self.post_quant_proj = nn.Conv2d(latent_dim, z_channels, 1)
        self.decoder = Decoder(**net)
        self.quantizer = build("quantizer", quantizer)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight (VQGAN's adaptive GAN weight compares gradient norms here)."""
        return self.decoder.conv_out.weight

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar), each (B, N, D) channel-last."""
        self.check_images(images)
        mean, logvar = self.moments_proj(self.encoder(images)).chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)  # as LDM's DiagonalGaussianDistribution
        return self.to_sequence(mean), self.to_sequence(logvar)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, D) continuous latents → (B, 3, H, W) unclamped images."""
        return self.decoder(self.post_quant_proj(self.to_grid(latents)))


@torch.no_grad()
def post_training_quantize(ae: ContinuousLatentTokenizer, latents: torch.Tensor, num_bins: int,
                           **quantizer_options: Any) -> ContinuousLatentTokenizer:
    """TokenBridge's post-training step: a copy of ``ae`` whose dimension-wise quantizer has ``num_bins`` bins and
    per-dimension statistics fitted to ``latents`` (M, N, D). No gradient, no retraining; the weights are shared
    in value with ``ae`` (copied), so the result saves and loads as an ordinary tokenizer."""
    config = dict(ae._hub_mixin_config)  # the constructor arguments the hub mixin recorded
    config["quantizer"] = {**dict(config.get("quantizer") or {"name": "dimwise"}), **quantizer_options,
                           "num_bins": num_bins, "code_dim": ae.latent_dim}
    config.pop("_vistok", None)
    out = type(ae)(**config)
    out.load_state_dict(ae.state_dict())
    out.quantizer.fit(latents.reshape(-1, ae.latent_dim))
    return out.eval()


@torch.no_grad()
def ptq_report(ae: ContinuousLatentTokenizer, dataset: Dataset, bins: list[int], *, num_images: int | None = None,
               batch_size: int = 64, save_bins: int | None = None, progress: bool = True,
               **quantizer_options: Any) -> tuple[list[dict[str, float]], ContinuousLatentTokenizer | None]:
    """Fit the post-training quantizer to ``dataset``'s latents and compare reconstructions on the same images.

    Returns one row per entry of ``bins`` (plus a ``bins = 0`` row for the continuous autoencoder) with PSNR/SSIM
    (per image on uint8-quantized images, averaged, as ``evaluate_reconstruction``), bits/image and the PSNR gap to
    the continuous autoencoder; and the PTQ tokenizer with ``save_bins`` bins (or None).
    """
    from vistok.metrics.recon import psnr, ssim, to_unit_range

    if num_images is not None and num_images < len(dataset):
        dataset = Subset(dataset, range(num_images))
    ae = ae.cpu().eval()
    images = torch.cat([b["image"] for b in DataLoader(dataset, batch_size=batch_size)])
    latents = torch.cat([ae.encode_latents(x) for x in images.split(batch_size)])  # (M, N, D)
    variants: dict[int, ContinuousLatentTokenizer] = {b: post_training_quantize(ae, latents, b, **quantizer_options)
                                          for b in sorted(set(bins) | ({save_bins} if save_bins else set()))}
    rows: list[dict[str, float]] = []
    for b in [0, *bins]:
        ps, ss = [], []
        batches = zip(images.split(batch_size), latents.split(batch_size))
        for x, z in tqdm(batches, desc=f"B={b}" if b else "continuous", disable=not progress,
                         total=math.ceil(len(images) / batch_size)):
            # the latents are encoded once; variants[b].encode(x) == variants[b].quantizer(z).indices
            if b == 0:
                recon = ae.decode_latents(z).clamp(-1, 1)
            else:
                recon = variants[b].decode(variants[b].quantizer(z).indices)
            ps.append(psnr(to_unit_range(x), to_unit_range(recon)))
            ss.append(ssim(to_unit_range(x), to_unit_range(recon)))
        p, s = torch.cat(ps), torch.cat(ss)
        # the continuous row counts its latent as float32 values
        spec_bits = variants[b].token_spec.bits_per_image() if b else 32.0 * latents[0].numel()
        rows.append({"bins": b, "psnr": float(p[torch.isfinite(p)].mean()), "ssim": float(s.mean()),
                     "bits_per_image": spec_bits, "num_images": len(p)})
    for r in rows:
        r["psnr_gap"] = rows[0]["psnr"] - r["psnr"]
    return rows, variants.get(save_bins) if save_bins else None
