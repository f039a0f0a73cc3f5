"""A re-declaration of LlamaGen's VQ tokenizer modules (Sun et al., "Autoregressive Model Beats Diffusion: Llama for
Scalable Image Generation", arXiv 2406.06525; github.com/FoundationVision/LlamaGen,
tokenizer/tokenizer_image/vq_model.py), for tests: the same module names, nesting, parameter shapes and forward
computations, so its ``state_dict()`` has exactly the keys and shapes of the released ``vq_ds16_c2i.pt`` /
``vq_ds8_c2i.pt`` and its outputs are the reference for the converted vistok tokenizer. Inference paths only
(no training losses or usage tracking beyond the ``codebook_used`` buffer the checkpoints carry)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)  # LlamaGen's Normalize(norm_type="group")


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        return (self.nin_shortcut(x) if self.in_channels != self.out_channels else x) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, hh * ww).permute(0, 2, 1)  # (b, hw, c)
        k = self.k(h).reshape(b, c, hh * ww)                    # (b, c, hw)
        weights = F.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # (b, hw_q, hw_k)
        v = self.v(h).reshape(b, c, hh * ww)
        out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        in_ch_mult = (1, *ch_mult)
        self.conv_blocks = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1:
                    block.attn.append(AttnBlock(block_in))
            if i_level != self.num_resolutions - 1:
                block.downsample = Downsample(block_in)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, block in enumerate(self.conv_blocks):
            for i_block in range(self.num_res_blocks):
                h = block.res[i_block](h)
                if len(block.attn) > 0:
                    h = block.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, z_channels: int = 256, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.conv_blocks = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1:
                    block.attn.append(AttnBlock(block_in))
            if i_level != 0:
                block.upsample = Upsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for i_level, block in enumerate(self.conv_blocks):
            for i_block in range(self.num_res_blocks + 1):
                h = block.res[i_block](h)
                if len(block.attn) > 0:
                    h = block.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = block.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """l2-normalized codebook (codebook_l2_norm=True, codebook_show_usage=True in LlamaGen's ModelArgs)."""

    def __init__(self, n_e: int, e_dim: int) -> None:
        super().__init__()
        self.n_e, self.e_dim = n_e, e_dim
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self.embedding.weight.data = F.normalize(self.embedding.weight.data, p=2, dim=-1)
        self.register_buffer("codebook_used", nn.Parameter(torch.zeros(65536)))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → (quantized (B, C, H, W), indices (B·H·W,)), in eval mode."""
        z = F.normalize(z.permute(0, 2, 3, 1).contiguous(), p=2, dim=-1)
        flat = z.view(-1, self.e_dim)
        embedding = F.normalize(self.embedding.weight, p=2, dim=-1)
        d = flat.pow(2).sum(1, keepdim=True) + embedding.pow(2).sum(1) - 2 * flat @ embedding.t()
        indices = d.argmin(dim=1)
        z_q = embedding[indices].view(z.shape)
        return z_q.permute(0, 3, 1, 2), indices

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        z_q = F.normalize(self.embedding.weight, p=2, dim=-1)[indices]
        return z_q.reshape(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """LlamaGen's ``VQModel(ModelArgs(...))``; ``VQ_16()``/``VQ_8()`` below are its published configurations."""

    def __init__(self, codebook_size: int = 16384, codebook_embed_dim: int = 8, ch_mult=(1, 1, 2, 2, 4),
                 z_channels: int = 256, ch: int = 128, num_res_blocks: int = 2) -> None:
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(z_channels, ch, ch_mult, num_res_blocks)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, indices: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
        return self.decode(self.quantize.get_codebook_entry(indices, shape))


def VQ_16(**kwargs) -> VQModel:  # noqa: N802 - LlamaGen's name
    return VQModel(ch_mult=(1, 1, 2, 2, 4), **kwargs)


def VQ_8(**kwargs) -> VQModel:  # noqa: N802 - LlamaGen's name
    return VQModel(ch_mult=(1, 2, 2, 4), **kwargs)
