"""1D tokenizer (TiTok, Yu et al., NeurIPS 2024, arXiv 2406.07550; single-stage variant with an RGB head), with
the prefix regularizers of One-D-Piece (tail token drop) and FlexTok (nested dropout), FlexTok's causal registers and
latent space, and any registered quantizer (VQ, FSQ, Instella-T2I's binary latents). Reference code:
bytedance/1d-tokenizer (TiTok), One-D-Piece's release, apple/ml-flextok (FlexTok, arXiv 2502.13967),
AMD-AIG-AIMA/Instella-T2I.

Encoder: conv patch embed (k = s = patch) → [cls | P patches | K learnable latent tokens] with learned positional
embeddings (latents: their own table, init scale W^-0.5) → ln_pre → timm ViT blocks → keep the last K outputs →
ln_post → Linear(W → quantizer input dim) → quantizer. With ``causal_registers`` the blocks use FlexTok's
``causal_last`` mask (``BlockWiseSequencePacker``): full attention among [cls | patches], which do not attend to the
registers, and causal attention over the K registers (register i reads every patch and registers 0..i), so a prefix
of the tokens never depends on the tokens after it.

Decoder: Linear(code dim → W) on the (possibly shortened) latents → prefix regularizer (training: tail drop or
nested dropout; inference: a k-prefix is decoded as is, or padded with the mask token for nested dropout) → +
latent positional embedding[:k] → [cls | P copies of a learned mask token + 2D positional embedding | latents] →
ln_pre → blocks → keep the P patch outputs → ln_post → Linear(W → patch²·3) → unpatchify → 3×3 conv (TiTok's
single-stage head).

Latent space (``autoencoder``), as FlexTok: the "pixels" are the latent grid of a frozen continuous autoencoder
(``kl_ae``, or any registered tokenizer with ``encode_latents``/``decode_latents``/``grid``/``latent_dim``). Images →
the AE's posterior (a sample in training, the mean otherwise; FlexTok's ``sample_posterior``) → × ``latent_scale``
→ the encoder reads it in patch_size × patch_size patches of latent positions (FlexTok: 2×2); the decoder writes
the latent grid back through a linear head (FlexTok's; no 3×3 conv) and the AE's decoder turns it into pixels. The
loss is in latent space (MSE or L1 against the scaled latents) plus an optional pixel loss through the frozen
decoder (``pixel_weight``). The scale is LDM's ``scale_by_std``: 1 / std of the first batch's latents, unless given.

Deviations from the papers (on purpose, CPU-sized): the loss is pixel (or latent) MSE / L1 + the quantizer's losses;
TiTok's LPIPS/ConvNeXt perceptual term, hinge GAN and LeCam are not included (no two-stage proxy-code training
either). FlexTok's decoder is a rectified-flow Transformer; here the latent grid is regressed in one pass by the
TiTok decoder. Instella's RoPE/Llama blocks and 2× grid down/up-sampling are replaced by the same timm blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from vistok.errors import ConfigError
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


def causal_register_mask(prefix: int, num_tokens: int, device: torch.device | None = None) -> torch.Tensor:
    """FlexTok's ``causal_last`` attention mask (True = may attend) over ``prefix`` tokens followed by
    ``num_tokens`` registers: query q reads key j when j is in the prefix or j <= q. The prefix therefore never
    reads a register, and register i reads the prefix and registers 0..i."""
    n = prefix + num_tokens
    q = torch.arange(n, device=device)[:, None]
    kv = torch.arange(n, device=device)[None, :]
    return (kv < prefix) | (kv <= q)


class ViT1DEncoder(nn.Module):
    """Patches of an (in_channels, side·patch, side·patch) input + K latent tokens through a ViT; returns the K
    latent outputs (B, K, W). ``causal_registers``: the latent tokens attend causally (see the module docstring)."""

    def __init__(self, resolution: int, patch_size: int, num_tokens: int, width: int, depth: int, heads: int,
                 in_channels: int = 3, causal_registers: bool = False) -> None:
        super().__init__()
        num_patches = (resolution // patch_size) ** 2
        scale = width**-0.5
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(scale * torch.randn(1, num_patches + 1, width))
        self.latent_tokens = nn.Parameter(scale * torch.randn(1, num_tokens, width))
        self.latent_pos_embed = nn.Parameter(scale * torch.randn(1, num_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = _blocks(width, depth, heads)
        self.ln_post = nn.LayerNorm(width)
        self.num_tokens, self.causal_registers = num_tokens, causal_registers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        patches = rearrange(self.patch_embed(images), "b w h v -> b (h v) w")
        x = torch.cat([self.cls_token.expand(b, -1, -1), patches], dim=1) + self.pos_embed
        latents = (self.latent_tokens + self.latent_pos_embed).expand(b, -1, -1)
        x = self.ln_pre(torch.cat([x, latents], dim=1))
        mask = causal_register_mask(x.shape[1] - self.num_tokens, self.num_tokens, x.device) \
            if self.causal_registers else None
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        return self.ln_post(x[:, -self.num_tokens:])


class ViT1DDecoder(nn.Module):
    """Mask-token queries for every patch + the latent sequence through a ViT; writes pixels (TiTok's RGB head:
    linear + unpatchify + 3×3 conv) or, with ``out_channels`` != 3 / ``conv_out=False``, an autoencoder's latent
    grid (FlexTok's linear head)."""

    def __init__(self, resolution: int, patch_size: int, num_tokens: int, width: int, depth: int, heads: int,
                 out_channels: int = 3, conv_out: bool = True) -> None:
        super().__init__()
        self.side = resolution // patch_size
        self.patch_size, self.out_channels = patch_size, out_channels
        num_patches = self.side**2
        scale = width**-0.5
        self.cls_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(scale * torch.randn(1, num_patches + 1, width))
        self.latent_pos_embed = nn.Parameter(scale * torch.randn(1, num_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = _blocks(width, depth, heads)
        self.ln_post = nn.LayerNorm(width)
        head = nn.Linear(width, patch_size * patch_size * out_channels)
        if conv_out:
            self.pixel_head, self.conv_out = head, nn.Conv2d(out_channels, out_channels, 3, padding=1)
        else:
            self.latent_head, self.conv_out = head, None

    @property
    def head(self) -> nn.Linear:
        return self.pixel_head if self.conv_out is not None else self.latent_head

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, k, W) already projected to the decoder width, 1 <= k <= K."""
        b, k, _ = latents.shape
        num_patches = self.side**2
        queries = torch.cat([self.cls_token, self.mask_token.expand(1, num_patches, -1)], dim=1) + self.pos_embed
        x = torch.cat([queries.expand(b, -1, -1), latents + self.latent_pos_embed[:, :k]], dim=1)
        x = self.ln_post(self.blocks(self.ln_pre(x))[:, 1:num_patches + 1])
        out = rearrange(self.head(x), "b (h v) (p q c) -> b c (h p) (v q)", h=self.side,
                        p=self.patch_size, q=self.patch_size, c=self.out_channels)
        return self.conv_out(out) if self.conv_out is not None else out


class _LazyReconstruction(TokenizerOutput):
    """A training output whose pixel reconstruction is decoded by the frozen autoencoder when first read (with
    gradients, so perceptual/GAN losses on it train the tokenizer), and not at all when nothing reads it."""

    def __init__(self, decode: Any, losses: dict[str, torch.Tensor], stats: dict[str, torch.Tensor],
                 tokens: torch.Tensor | None) -> None:
        self._decode, self._recon = decode, None
        super().__init__(None, losses, stats, tokens)  # type: ignore[arg-type]

    @property
    def reconstruction(self) -> torch.Tensor:  # type: ignore[override]
        if self._recon is None:
            self._recon = self._decode()
        return self._recon

    @reconstruction.setter
    def reconstruction(self, value: torch.Tensor | None) -> None:
        self._recon = value


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

    FlexTok's options: ``causal_registers=True`` (the encoder attends causally over its latent tokens) and
    ``autoencoder`` (work in the latent space of a frozen continuous autoencoder): the folder of a trained one
    (``vistok.load``), or a tokenizer config dict (architecture only: how a saved model rebuilds it before loading
    its own copy of the weights). ``patch_size`` then counts latent positions (FlexTok: 2). ``recon_loss`` /
    ``recon_weight`` apply to the latents, ``pixel_weight`` adds a pixel loss through the frozen decoder, and
    ``latent_scale`` multiplies the AE's latents (None: 1 / std of the first batch, LDM's ``scale_by_std``).
    """

    def __init__(self, resolution: int = 64, patch_size: int = 8, num_tokens: int = 32,
                 encoder_size: str | dict[str, int] = "tiny", decoder_size: str | dict[str, int] = "tiny",
                 quantizer: dict[str, Any] | None = None, prefix: dict[str, Any] | None = None,
                 recon_loss: str = "mse", recon_weight: float = 1.0, causal_registers: bool = False,
                 autoencoder: str | dict[str, Any] | None = None, pixel_weight: float = 0.0,
                 latent_scale: float | None = None, sample_posterior: bool = True) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.resolution, self.patch_size, self.num_tokens = resolution, patch_size, num_tokens
        self.recon_loss, self.recon_weight = check_recon_loss(recon_loss), recon_weight
        self.pixel_weight, self.sample_posterior = pixel_weight, sample_posterior
        self.autoencoder = _frozen_autoencoder(autoencoder, resolution) if autoencoder is not None else None
        if self.autoencoder is not None:
            # Saved models rebuild the AE from its config and load its weights from their own checkpoint, so a
            # saved vit1d loads stand-alone (the AE's folder is not needed any more).
            ae_config = {k: v for k, v in self.autoencoder._hub_mixin_config.items() if k != "_vistok"}
            self._hub_mixin_config["autoencoder"] = {"name": self.autoencoder.registry_name, **ae_config}
            side, _ = self.autoencoder.grid
            channels, conv_out = int(self.autoencoder.latent_dim), False
        else:
            side, channels, conv_out = resolution, 3, True
        if pixel_weight and self.autoencoder is None:
            raise ValueError("pixel_weight is the pixel loss through a frozen autoencoder's decoder; without "
                             "autoencoder=... the loss is already in pixels (use recon_weight)")
        if side % patch_size:
            unit = "latent grid" if self.autoencoder is not None else "resolution"
            raise ValueError(f"{unit} {side} is not divisible by patch_size {patch_size}")
        if self.autoencoder is not None:  # (RGB models keep their state dict as before)
            # 0 = not measured yet: the first batch sets it (scale_by_std); saved with the weights either way
            self.register_buffer("latent_scale", torch.tensor(float(latent_scale or 0.0)))
        enc, dec = vit_size(encoder_size, "encoder"), vit_size(decoder_size, "decoder")
        self.encoder = ViT1DEncoder(side, patch_size, num_tokens, **enc, in_channels=channels,
                                    causal_registers=causal_registers)
        self.quantizer = build("quantizer", dict(quantizer or {"name": "vq", "codebook_size": 4096, "code_dim": 12}))
        in_dim = self.quantizer.input_dim
        self.quant_proj = nn.Linear(enc["width"], in_dim)
        self.post_quant_proj = nn.Linear(self.quantizer.code_dim, dec["width"])
        prefix = dict(prefix or {"name": "tail_drop"})
        self.prefix_name = prefix["name"]
        self.prefix_regularizer = build("prefix", prefix, num_tokens=num_tokens, width=dec["width"])
        self.decoder = ViT1DDecoder(side, patch_size, num_tokens, **dec, out_channels=channels, conv_out=conv_out)
        for name, module in self.named_children():
            if name != "autoencoder":  # the frozen AE keeps its trained weights
                module.apply(_init_weights)
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
        """The last trained weight before the pixels (VQGAN's adaptive GAN weight compares gradient norms here):
        the 3×3 conv of the RGB head, or the latent head in front of the frozen autoencoder."""
        conv = self.decoder.conv_out
        return conv.weight if conv is not None else self.decoder.head.weight

    def train(self, mode: bool = True) -> ViT1DTokenizer:
        """The frozen autoencoder stays in eval mode (as FlexTok's frozen VAE wrapper)."""
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()
        return self

    # ---- latent space -----------------------------------------------------------------------------------------
    def _to_latent_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Images → the AE's (scaled) latent grid (B, D, h, w): a posterior sample in training when
        ``sample_posterior`` (FlexTok's default), the mean otherwise. No gradient reaches the frozen AE."""
        ae = self.autoencoder
        with torch.no_grad():
            if self.training and self.sample_posterior and hasattr(ae, "posterior"):
                mean, logvar = ae.posterior(images)
                z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
            else:
                z = ae.encode_latents(images)
            if float(self.latent_scale) == 0.0:
                self.latent_scale.fill_(1.0 / float(z.float().std().clamp_min(1e-8)))
        h, w = ae.grid
        return rearrange(z * self.latent_scale, "b (h w) d -> b d h w", h=h, w=w)

    def _to_images(self, grid: torch.Tensor) -> torch.Tensor:
        """Scaled latent grid (B, D, h, w) → (B, 3, H, W) unclamped pixels through the frozen AE decoder."""
        return self.autoencoder.decode_latents(rearrange(grid / self.latent_scale, "b d h w -> b (h w) d"))

    # ---- pieces -----------------------------------------------------------------------------------------------
    def _encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        return self._to_latent_grid(images) if self.autoencoder is not None else images

    def _quantize(self, inputs: torch.Tensor):
        return self.quantizer(self.quant_proj(self.encoder(inputs)))

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, k, W_dec) projected latents → image (or the AE's latent grid); training applies the regularizer,
        inference pads/keeps the prefix as the regularizer says."""
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
        return self._quantize(self._encoder_input(images)).indices[:, :k]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens of any prefix length 1..K (batched, one length per call) → (B, 3, H, W) in [-1, 1]."""
        replace(self.token_spec, prefix_ok=True).validate(tokens)
        out = self._decode_latents(self.post_quant_proj(self.quantizer.indices_to_codes(tokens)))
        return (self._to_images(out) if self.autoencoder is not None else out).clamp(-1, 1)

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        inputs = self._encoder_input(images)
        q = self._quantize(inputs)
        out = self._decode_latents(self.post_quant_proj(q.quantized))
        losses = {"recon": self.recon_weight * pixel_loss(out, inputs, self.recon_loss), **q.losses}
        stats = dict(q.stats)
        reg = self.prefix_regularizer
        if self.training and getattr(reg, "last_k", None) is not None:
            stats["kept_tokens"] = torch.tensor(float(reg.last_k))
        if self.training and getattr(reg, "last_keep", None) is not None:
            stats["kept_tokens"] = reg.last_keep.float().mean()
        if self.autoencoder is None:
            return TokenizerOutput(out, losses, stats, q.indices)
        if self.pixel_weight:
            recon = self._to_images(out)
            losses["pixel"] = self.pixel_weight * pixel_loss(recon, images, self.recon_loss)
            return TokenizerOutput(recon, losses, stats, q.indices)
        # FlexTok trains in latent space only: the AE decoder runs when something reads the pixels
        return _LazyReconstruction(lambda: self._to_images(out), losses, stats, q.indices)

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


def _frozen_autoencoder(spec: str | dict[str, Any], resolution: int) -> Tokenizer:
    """The autoencoder named by ``spec`` (a saved folder, or a tokenizer config dict), frozen and in eval mode;
    checks that it has continuous latents at this resolution."""
    if isinstance(spec, (str, Path)):
        if not (Path(spec) / "config.json").is_file():
            raise ConfigError(f"autoencoder={str(spec)!r}: no saved tokenizer there; train one first (e.g. python "
                              "train.py --config configs/tokenizer/kl_ae_f8_imagenet64.yaml) and pass its run folder")
        from vistok.hub import load_pretrained

        ae = load_pretrained(spec, kind="tokenizer")
    elif isinstance(spec, Mapping):
        ae = build("tokenizer", dict(spec))
    else:
        raise ConfigError(f"autoencoder must be a folder or a tokenizer config dict, got {type(spec).__name__}")
    missing = [m for m in ("encode_latents", "decode_latents", "grid", "latent_dim") if not hasattr(ae, m)]
    if missing:
        raise ConfigError(f"autoencoder {type(ae).__name__} ({getattr(ae, 'registry_name', '?')}) has no continuous "
                          f"latents (lacks {missing}); use a kl_ae (or another tokenizer with encode_latents/"
                          "decode_latents/grid/latent_dim)")
    if ae.resolution != resolution:
        raise ConfigError(f"autoencoder takes {ae.resolution}×{ae.resolution} images but this vit1d has resolution "
                          f"{resolution}; use an autoencoder trained at {resolution}")
    return ae.eval().requires_grad_(False)


def _init_weights(module: nn.Module) -> None:
    """ViT-style init (truncated normal 0.02 for linear layers, zero biases); LayerNorm keeps ones/zeros."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
