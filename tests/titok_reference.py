"""A re-declaration of TiTok's single-stage tokenizer modules (Yu et al., "An Image is Worth 32 Tokens for
Reconstruction and Generation", arXiv 2406.07550; github.com/bytedance/1d-tokenizer, modeling/titok.py,
modeling/modules/blocks.py, modeling/quantizer/quantizer.py) for tests: the module names, nesting, parameter
shapes and forward computations of a ``TiTok`` with ``is_legacy: False, finetune_decoder: False,
quantize_mode: vq`` (the released ``titok_bl64_vq8k``, ``titok_bl128_vq8k``, ``titok_sl256_vq8k``), so its
``state_dict()`` has those checkpoints' keys and shapes. Widths/depths/heads are explicit arguments (TiTok names
them small/base/large: 512/8/8, 768/12/12, 1024/24/16) so that tests can build it small. Images in [0, 1], as TiTok
takes them. Inference paths only."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_2 = nn.LayerNorm(d_model)
        width = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, width)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(width, d_model))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (L, N, D), as nn.MultiheadAttention's default
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TiTokEncoder(nn.Module):
    def __init__(self, image_size: int, patch_size: int, num_latent_tokens: int, token_size: int, width: int,
                 num_layers: int, num_heads: int) -> None:
        super().__init__()
        self.grid_size, self.num_latent_tokens, self.token_size = image_size // patch_size, num_latent_tokens, \
            token_size
        self.width = width
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=True)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(1, width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size ** 2 + 1, width))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList([ResidualAttentionBlock(width, num_heads) for _ in range(num_layers)])
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, token_size, kernel_size=1, bias=True)

    def forward(self, pixel_values: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b = pixel_values.shape[0]
        x = self.patch_embed(pixel_values).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.unsqueeze(0).expand(b, -1, -1), x], dim=1) + self.positional_embedding
        latents = latent_tokens.unsqueeze(0).expand(b, -1, -1) + self.latent_token_positional_embedding
        x = self.ln_pre(torch.cat([x, latents], dim=1)).permute(1, 0, 2)
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x.permute(1, 0, 2)[:, 1 + self.grid_size ** 2:])
        # is_legacy=False: a real per-token 1×1 conv
        x = x.reshape(b, self.num_latent_tokens, self.width, 1).permute(0, 2, 1, 3)
        return self.conv_out(x).reshape(b, self.token_size, 1, self.num_latent_tokens)


class TiTokDecoder(nn.Module):
    def __init__(self, image_size: int, patch_size: int, num_latent_tokens: int, token_size: int, width: int,
                 num_layers: int, num_heads: int) -> None:
        super().__init__()
        self.grid_size, self.patch_size, self.width = image_size // patch_size, patch_size, width
        self.decoder_embed = nn.Linear(token_size, width, bias=True)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(1, width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size ** 2 + 1, width))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList([ResidualAttentionBlock(width, num_heads) for _ in range(num_layers)])
        self.ln_post = nn.LayerNorm(width)
        # is_legacy=False: the RGB head (a 1×1 conv to p·p·3 values per patch, then a 3×3 conv)
        self.ffn = nn.Sequential(nn.Conv2d(width, patch_size * patch_size * 3, 1, padding=0, bias=True))
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1, bias=True)

    def forward(self, z_quantized: torch.Tensor) -> torch.Tensor:
        n, c, h, w = z_quantized.shape
        x = self.decoder_embed(z_quantized.reshape(n, c * h, w).permute(0, 2, 1))
        masks = self.mask_token.repeat(n, self.grid_size ** 2, 1)
        masks = torch.cat([self.class_embedding.unsqueeze(0).expand(n, -1, -1), masks], dim=1)
        masks = masks + self.positional_embedding
        x = x + self.latent_token_positional_embedding[:w]
        x = self.ln_pre(torch.cat([masks, x], dim=1)).permute(1, 0, 2)
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x.permute(1, 0, 2)[:, 1:1 + self.grid_size ** 2])
        x = x.permute(0, 2, 1).reshape(n, self.width, self.grid_size, self.grid_size)
        x = rearrange(self.ffn(x.contiguous()), "b (p1 p2 c) h w -> b c (h p1) (w p2)", p1=self.patch_size,
                      p2=self.patch_size)
        return self.conv_out(x)


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, token_size: int, use_l2_norm: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, token_size)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.use_l2_norm = use_l2_norm

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, 1, K) → (quantized (B, C, 1, K), indices (B, 1, K))."""
        z = rearrange(z.float(), "b c h w -> b h w c").contiguous()
        flat = rearrange(z, "b h w c -> (b h w) c")
        embedding = self.embedding.weight
        if self.use_l2_norm:
            flat, embedding = F.normalize(flat, dim=-1), F.normalize(embedding, dim=-1)
        d = flat.pow(2).sum(1, keepdim=True) + embedding.pow(2).sum(1) - 2 * flat @ embedding.t()
        indices = d.argmin(dim=1)
        quantized = self.get_codebook_entry(indices).view(z.shape)
        return rearrange(quantized, "b h w c -> b c h w"), indices.view(z.shape[0], z.shape[1], z.shape[2])

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        z = self.embedding(indices)
        return F.normalize(z, dim=-1) if self.use_l2_norm else z


class TiTok(nn.Module):
    def __init__(self, image_size: int = 256, patch_size: int = 16, num_latent_tokens: int = 64,
                 token_size: int = 64, codebook_size: int = 8192, use_l2_norm: bool = False,
                 encoder: tuple[int, int, int] = (768, 12, 12), decoder: tuple[int, int, int] = (1024, 24, 16)) -> None:
        super().__init__()
        self.encoder = TiTokEncoder(image_size, patch_size, num_latent_tokens, token_size, *encoder)
        self.decoder = TiTokDecoder(image_size, patch_size, num_latent_tokens, token_size, *decoder)
        width = encoder[0]
        self.latent_tokens = nn.Parameter(width ** -0.5 * torch.randn(num_latent_tokens, width))
        self.quantize = VectorQuantizer(codebook_size, token_size, use_l2_norm)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[0, 1] images → (quantized latents, indices (B, 1, K))."""
        return self.quantize(self.encoder(pixel_values=x, latent_tokens=self.latent_tokens))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """indices (B, 1, K) → images (unclamped; TiTok's demo clamps to [0, 1])."""
        tokens = tokens.squeeze(1)
        b, k = tokens.shape
        z = self.quantize.get_codebook_entry(tokens.reshape(-1)).reshape(b, 1, k, -1)
        return self.decoder(rearrange(z, "b h w c -> b c h w").contiguous())
