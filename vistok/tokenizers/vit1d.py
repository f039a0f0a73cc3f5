"""1D tokenizer (TiTok, Yu et al., NeurIPS 2024, arXiv 2406.07550; single-stage variant with an RGB head), with
the prefix regularizers of One-D-Piece (tail token drop) and FlexTok (nested dropout) and any registered quantizer
(VQ, FSQ, Instella-T2I's binary latents). Reference code: bytedance/1d-tokenizer (TiTok), One-D-Piece's release,
apple/ml-flextok, AMD-AIG-AIMA/Instella-T2I.

Encoder: conv patch embed (k = s = patch) → [cls | P patches | K learnable latent tokens] with learned positional
embeddings (latents: their own table, init scale W^-0.5) → ln_pre → timm ViT blocks → keep the last K outputs →
ln_post → Linear(W → quantizer input dim) → quantizer.

Decoder: Linear(code dim → W) on the (possibly shortened) latents → prefix regularizer (training: tail drop or
nested dropout; inference: a k-prefix is decoded as is, or padded with the mask token for nested dropout) → +
latent positional embedding[:k] → [cls | P copies of a learned mask token + 2D positional embedding | latents] →
ln_pre → blocks → keep the P patch outputs → ln_post → Linear(W → patch²·3) → unpatchify → 3×3 conv (TiTok's
single-stage head).

Deviations from the papers (on purpose, CPU-sized): the loss is pixel MSE (or L1) + the quantizer's losses; TiTok's
LPIPS/ConvNeXt perceptual term, hinge GAN and LeCam are not included (no two-stage proxy-code training either).
FlexTok's encoder/decoder are a causal-register Transformer and a rectified-flow decoder over VAE latents; here
FlexTok contributes only its FSQ and nested dropout, on the TiTok architecture. Instella's
RoPE/Llama blocks and 2× grid down/up-sampling are replaced by the same timm blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from vistok.metrics.recon import psnr, ssim, to_unit_range
from vistok.registry import build, register
from vistok.spec import TokenSpec
from vistok.tokenizers.base import Tokenizer, TokenizerOutput, check_recon_loss, pixel_loss

# ViT sizes by name. small/base/large: TiTok's table (MLP ratio 4, pre-norm). micro/tiny: for CPU tests and demos.
VIT_SIZES: dict[str, dict[str, int]] = {
    "micro": {"width": 32, "depth": 1, "heads": 2},
    "tiny": {"width": 128, "depth": 3, "heads": 4},
    "small": {"width": 512, "depth": 8, "heads": 8},
    "base": {"width": 768, "depth": 12, "heads": 12},
    "large": {"width": 1024, "depth": 24, "heads": 16},
}


def vit_size(size: str | dict[str, int], role: str) -> dict[str, int]:
    if isinstance(size, str):
        if size not in VIT_SIZES:
            raise ValueError(f"{role}_size {size!r} is not one of {sorted(VIT_SIZES)} (or pass "
                             "{'width': ..., 'depth': ..., 'heads': ...})")
        return dict(VIT_SIZES[size])
    size = dict(size)
    if set(size) != {"width", "depth", "heads"} or size["width"] % size["heads"]:
        raise ValueError(f"{role}_size must have width, depth, heads with width divisible by heads, got {size}")
    return size


def _blocks(width: int, depth: int, heads: int) -> nn.Sequential:
    return nn.Sequential(*[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])


class ViT1DEncoder(nn.Module):
    """Patches + K latent tokens through a ViT; returns the K latent outputs (B, K, W)."""

    def __init__(self, resolution: int, patch_size: int, num_tokens: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        num_patches = (resolution // patch_size) ** 2
        scale = width**-0.5
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(scale * torch.randn(1, num_patches + 1, width))
        self.latent_tokens = nn.Parameter(scale * torch.randn(1, num_tokens, width))
        self.latent_pos_embed = nn.Parameter(scale * torch.randn(1, num_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = _blocks(width, depth, heads)
        self.ln_post = nn.LayerNorm(width)
        self.num_tokens = num_tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        patches = rearrange(self.patch_embed(images), "b w h v -> b (h v) w")
        x = torch.cat([self.cls_token.expand(b, -1, -1), patches], dim=1) + self.pos_embed
        latents = (self.latent_tokens + self.latent_pos_embed).expand(b, -1, -1)
        x = self.blocks(self.ln_pre(torch.cat([x, latents], dim=1)))
        return self.ln_post(x[:, -self.num_tokens:])


class ViT1DDecoder(nn.Module):
    """Mask-token queries for every patch + the latent sequence through a ViT; writes pixels (RGB head)."""

    def __init__(self, resolution: int, patch_size: int, num_tokens: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.side = resolution // patch_size
        self.patch_size = patch_size
        num_patches = self.side**2
        scale = width**-0.5
        self.cls_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(scale * torch.randn(1, num_patches + 1, width))
        self.latent_pos_embed = nn.Parameter(scale * torch.randn(1, num_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = _blocks(width, depth, heads)
        self.ln_post = nn.LayerNorm(width)
        self.pixel_head = nn.Linear(width, patch_size * patch_size * 3)
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, k, W) already projected to the decoder width, 1 <= k <= K."""
        b, k, _ = latents.shape
        num_patches = self.side**2
        queries = torch.cat([self.cls_token, self.mask_token.expand(1, num_patches, -1)], dim=1) + self.pos_embed
        x = torch.cat([queries.expand(b, -1, -1), latents + self.latent_pos_embed[:, :k]], dim=1)
        x = self.ln_post(self.blocks(self.ln_pre(x))[:, 1:num_patches + 1])
        pixels = rearrange(self.pixel_head(x), "b (h v) (p q c) -> b c (h p) (v q)", h=self.side,
                           p=self.patch_size, q=self.patch_size, c=3)
        return self.conv_out(pixels)


@dataclass
class AdaptiveEncoding:
    """Result of :meth:`ViT1DTokenizer.encode_adaptive`: per image the shortest token prefix meeting a target."""

    tokens: list[torch.Tensor]  # tokens[i]: (k_i, ...) the prefix for image i
    num_tokens: torch.Tensor  # (B,) k_i
    quality: torch.Tensor  # (B,) the metric the chosen prefix reaches
    met: torch.Tensor  # (B,) bool; False where even all K tokens miss the target (then k_i = K)


@register("tokenizer", "vit1d")
class ViT1DTokenizer(Tokenizer):
    """TiTok-style 1D tokenizer. ``prefix`` selects the regularizer: ``{"name": "tail_drop"}`` (One-D-Piece),
    ``{"name": "nested_dropout", "mode": "pow2" | "uniform" | "uniform_pow2"}`` (FlexTok) or ``{"name": "none"}``.

    Any model decodes any prefix length 1..K mechanically; ``token_spec.prefix_ok`` is True only when it was trained
    with a prefix regularizer (a plain TiTok decodes short prefixes badly, which the rate-distortion benchmark shows).
    """

    def __init__(self, resolution: int = 64, patch_size: int = 8, num_tokens: int = 32,
                 encoder_size: str | dict[str, int] = "tiny", decoder_size: str | dict[str, int] = "tiny",
                 quantizer: dict[str, Any] | None = None, prefix: dict[str, Any] | None = None,
                 recon_loss: str = "mse", recon_weight: float = 1.0) -> None:
        super().__init__()
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} is not divisible by patch_size {patch_size}")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.resolution, self.patch_size, self.num_tokens = resolution, patch_size, num_tokens
        self.recon_loss, self.recon_weight = check_recon_loss(recon_loss), recon_weight
        enc, dec = vit_size(encoder_size, "encoder"), vit_size(decoder_size, "decoder")
        self.encoder = ViT1DEncoder(resolution, patch_size, num_tokens, **enc)
        self.quantizer = build("quantizer", dict(quantizer or {"name": "vq", "codebook_size": 4096, "code_dim": 12}))
        in_dim = self.quantizer.input_dim
        self.quant_proj = nn.Linear(enc["width"], in_dim)
        self.post_quant_proj = nn.Linear(self.quantizer.code_dim, dec["width"])
        prefix = dict(prefix or {"name": "tail_drop"})
        self.prefix_name = prefix["name"]
        self.prefix_regularizer = build("prefix", prefix, num_tokens=num_tokens, width=dec["width"])
        self.decoder = ViT1DDecoder(resolution, patch_size, num_tokens, **dec)
        self.apply(_init_weights)
        # The projections into and out of the quantizer get unit-gain init (std 1/√fan_in) rather than 0.02: with
        # 0.02 the latents fed to FSQ/binary start near 0, every image rounds to the same code, and the decoder
        # sees no image information for hundreds of steps (measured: codebook usage ~1e-3 of FSQ's grid).
        for proj in (self.quant_proj, self.post_quant_proj):
            nn.init.normal_(proj.weight, std=proj.in_features**-0.5)

    @property
    def token_spec(self) -> TokenSpec:
        q = self.quantizer
        return TokenSpec(kind=q.kind, vocab_sizes=q.codebook_sizes, layout="seq", length=self.num_tokens,
                         prefix_ok=self.prefix_name != "none", code_dim=q.code_dim)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight (VQGAN's adaptive GAN weight compares gradient norms here)."""
        return self.decoder.conv_out.weight

    # ---- pieces -----------------------------------------------------------------------------------------------
    def _quantize(self, images: torch.Tensor):
        self.check_images(images)
        return self.quantizer(self.quant_proj(self.encoder(images)))

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, k, W_dec) projected latents → image; training applies the regularizer, inference pads/keeps the
        prefix as the regularizer says."""
        latents = self.prefix_regularizer(latents) if self.training else self.prefix_regularizer.prefix(latents)
        return self.decoder(latents)

    def _check_num_tokens(self, num_tokens: int | None) -> int:
        k = self.num_tokens if num_tokens is None else int(num_tokens)
        if not 1 <= k <= self.num_tokens:
            raise ValueError(f"num_tokens must be in 1..{self.num_tokens} for this tokenizer, got {num_tokens}")
        return k

    # ---- the interface ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """Images → the first ``num_tokens`` (default all K) tokens: (B, k) for vocab quantizers, (B, k, bits)
        for binary ones. The encoder always sees all K latent queries; a prefix is the head of that sequence."""
        k = self._check_num_tokens(num_tokens)
        return self._quantize(images).indices[:, :k]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens of any prefix length 1..K (batched, one length per call) → (B, 3, H, W) in [-1, 1]."""
        replace(self.token_spec, prefix_ok=True).validate(tokens)
        latents = self.post_quant_proj(self.quantizer.indices_to_codes(tokens))
        return self._decode_latents(latents).clamp(-1, 1)

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        q = self._quantize(images)
        recon = self._decode_latents(self.post_quant_proj(q.quantized))
        pixel = pixel_loss(recon, images, self.recon_loss)
        losses = {"recon": self.recon_weight * pixel, **q.losses}
        stats = dict(q.stats)
        reg = self.prefix_regularizer
        if self.training and getattr(reg, "last_k", None) is not None:
            stats["kept_tokens"] = torch.tensor(float(reg.last_k))
        if self.training and getattr(reg, "last_keep", None) is not None:
            stats["kept_tokens"] = reg.last_keep.float().mean()
        return TokenizerOutput(recon, losses, stats, q.indices)

    @torch.no_grad()
    def encode_adaptive(self, images: torch.Tensor, target_psnr: float | None = None,
                        target_ssim: float | None = None) -> AdaptiveEncoding:
        """Per image, the shortest prefix whose reconstruction reaches ``target_psnr`` (dB) or ``target_ssim``.

        Scans k = 1..K and decodes, at each k, only the images still short of the target, so the answer is the
        exact shortest prefix (quality need not be monotone in k). Images that miss the target even with all K
        tokens get k = K and ``met = False``. Quality is measured as in ``vistok.metrics``: on uint8-quantized
        images. Costs up to K decoder passes.
        """
        if (target_psnr is None) == (target_ssim is None):
            raise ValueError("encode_adaptive: give exactly one of target_psnr=... or target_ssim=...")
        metric, target = (psnr, target_psnr) if target_psnr is not None else (ssim, target_ssim)
        full = self.encode(images)
        reference = to_unit_range(images)
        b = images.shape[0]
        chosen = torch.full((b,), self.num_tokens, dtype=torch.long)
        quality = torch.full((b,), float("nan"), dtype=torch.float64)
        met = torch.zeros(b, dtype=torch.bool)
        for k in range(1, self.num_tokens + 1):
            todo = (~met).nonzero().flatten()
            if len(todo) == 0:
                break
            rec = self.decode(full[todo.to(full.device), :k])
            q = metric(reference[todo.to(reference.device)], to_unit_range(rec)).cpu()
            good = q >= target
            chosen[todo[good]] = k
            met[todo[good]] = True
            if k == self.num_tokens:
                quality[todo] = q
            quality[todo[good]] = q[good]
        tokens = [full[i, : int(chosen[i])] for i in range(b)]
        return AdaptiveEncoding(tokens, chosen, quality, met)


def _init_weights(module: nn.Module) -> None:
    """ViT-style init (truncated normal 0.02 for linear layers, zero biases); LayerNorm keeps ones/zeros."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
