"""VQGAN / LlamaGen-style convolutional encoder and decoder (shared by the 2D conv tokenizers).

Residual blocks (GroupNorm → SiLU → 3×3 conv, twice, with a 1×1 shortcut when channels change), stride-2 conv
downsampling, nearest-neighbour ×2 upsampling + conv, and a middle stage with one self-attention block at the
lowest resolution (as in taming-transformers' VQGAN and LlamaGen's VQ tokenizer). The downsampling factor is
2^(len(channel_mult) − 1): channel_mult (1, 2) → 2, (1, 1, 2) → 4, (1, 1, 2, 2) → 8, (1, 1, 2, 2, 4) → 16.

Two options reproduce published architectures exactly, so that their weights load (``vistok.convert.llamagen``);
both are off by default:

- ``level_attention``: a self-attention block after every residual block of the lowest-resolution level, in the
  encoder and the decoder (LlamaGen's VQ-8/VQ-16, taming's ``attn_resolutions`` at the last level);
- ``asymmetric_downsample``: each stride-2 conv pads one row/column at the bottom/right only, instead of one on
  every side (taming, LDM and LlamaGen: torch's conv has no asymmetric padding, so they pad by hand). The weights
  are the same shape either way; only the sampling grid shifts by half a pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import ConfigError


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in VQGAN when channels allow; small CPU models fall back to fewer groups.
    groups = 32 if channels % 32 == 0 else max(g for g in (16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (VQGAN's mid block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Conv2d):
    """3×3 stride-2 conv (its parameters are a plain conv's, ``weight`` and ``bias``); ``asymmetric``: pad 0 left/
    top and 1 right/bottom, as taming/LDM/LlamaGen, instead of 1 on every side."""

    def __init__(self, channels: int, asymmetric: bool = False) -> None:
        super().__init__(channels, channels, 3, stride=2, padding=0 if asymmetric else 1)
        self.asymmetric = asymmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)) if self.asymmetric else x)


class Encoder(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 128, channel_mult=(1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, mid_attention: bool = True,
                 dropout: float = 0.0, level_attention: bool = False, asymmetric_downsample: bool = False) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        cin = channels
        for level, mult in enumerate(channel_mult):
            cout = channels * mult
            last = level == len(channel_mult) - 1
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(cin, cout, dropout))
                cin = cout
                if last and level_attention:
                    blocks.append(AttnBlock(cin))
            if not last:
                blocks.append(Downsample(cin, asymmetric_downsample))
        self.down = nn.Sequential(*blocks)
        self.mid = nn.Sequential(ResBlock(cin, cin, dropout), AttnBlock(cin) if mid_attention else nn.Identity(),
                                 ResBlock(cin, cin, dropout))
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, out_channels: int = 3, channels: int = 128, channel_mult=(1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, mid_attention: bool = True,
                 dropout: float = 0.0, level_attention: bool = False, asymmetric_downsample: bool = False) -> None:
        # asymmetric_downsample concerns the encoder only; accepted here so both nets take the same options
        super().__init__()
        cin = channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = nn.Sequential(ResBlock(cin, cin, dropout), AttnBlock(cin) if mid_attention else nn.Identity(),
                                 ResBlock(cin, cin, dropout))
        blocks: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            cout = channels * mult
            for _ in range(num_res_blocks + 1):  # one more block per level than the encoder, as in VQGAN
                blocks.append(ResBlock(cin, cout, dropout))
                cin = cout
                if level == len(channel_mult) - 1 and level_attention:
                    blocks.append(AttnBlock(cin))
            if level != 0:
                blocks.extend([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cin, 3, padding=1)])
        self.up = nn.Sequential(*blocks)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


def conv_net_options(resolution: int, channels: int, channel_mult: tuple[int, ...] | list[int], num_res_blocks: int,
                     z_channels: int, mid_attention: bool, dropout: float, level_attention: bool = False,
                     asymmetric_downsample: bool = False) -> tuple[dict, int]:
    """The keyword arguments of the :class:`Encoder`/:class:`Decoder` pair the 2D conv tokenizers share, and its
    downsampling factor 2^(len(channel_mult) − 1), which must divide the resolution."""
    downsample = 2 ** (len(channel_mult) - 1)
    if resolution % downsample:
        raise ConfigError(f"resolution {resolution} is not divisible by the downsampling factor {downsample}")
    net = dict(channels=channels, channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks,
               z_channels=z_channels, mid_attention=mid_attention, dropout=dropout, level_attention=level_attention,
               asymmetric_downsample=asymmetric_downsample)
    return net, downsample
