"""The tokenizer interface: images ↔ tokens, a training forward, and the :class:`TokenSpec` it publishes.

Images are float tensors in [-1, 1], NCHW, everywhere inside the library; conversion to and from uint8/PIL happens
at the edges (``vistok.data.imageio``). Tokens are plain integer tensors shaped as ``token_spec`` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange

from vistok.errors import ConfigError
from vistok.hub import PretrainedModel
from vistok.spec import TokenSpec


@dataclass
class TokenizerOutput:
    """A training forward's result.

    reconstruction: (B, 3, H, W) in [-1, 1] (not clamped, so the loss sees the raw output).
    losses:         named scalar losses, already weighted; the trainer minimizes their sum.
    stats:          named detached scalars for logging.
    tokens:         the tokens the images were encoded to.
    """

    reconstruction: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: torch.Tensor | None = None


class Tokenizer(PretrainedModel):
    """Base class of every tokenizer. Subclasses implement the four members below and register themselves with
    ``@register("tokenizer", name)``."""

    resolution: int

    @property
    def token_spec(self) -> TokenSpec:  # pragma: no cover - interface
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """(B, 3, H, W) images in [-1, 1] → tokens shaped ``(B, *token_spec.token_shape)``."""
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Tokens → (B, 3, H, W) images in [-1, 1] (clamped)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> TokenizerOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(f"this tokenizer takes {self.resolution}×{self.resolution} images, "
                             f"got {images.shape[-2]}×{images.shape[-1]}; resize them first "
                             "(vistok.data uses an ADM-style center crop)")


class GridTokenizer(Tokenizer):
    """A tokenizer whose tokens are the positions of the h×w latent grid of an autoencoder that downsamples by
    ``downsample`` (conv2d, kl_ae, the diffusers wrappers): the grid, the TokenSpec read off ``self.quantizer``
    (kind, per-channel sizes, code width), and the reshapes between a (B, D, h, w) feature map and the row-major
    (B, h·w, D) sequence every quantizer takes."""

    downsample: int

    @property
    def grid(self) -> tuple[int, int]:
        side = self.resolution // self.downsample
        return side, side

    @property
    def token_spec(self) -> TokenSpec:
        q, (h, w) = self.quantizer, self.grid
        return TokenSpec(kind=q.kind, vocab_sizes=tuple(q.codebook_sizes), layout="grid", length=h * w,
                         grid=(h, w), code_dim=q.code_dim)

    def to_sequence(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) → (B, h·w, D), row-major."""
        return rearrange(feature_map, "b d h w -> b (h w) d")

    def to_grid(self, sequence: torch.Tensor) -> torch.Tensor:
        """(B, h·w, D) → (B, D, h, w): the inverse of :meth:`to_sequence` on this tokenizer's grid."""
        h, w = self.grid
        return rearrange(sequence, "b (h w) d -> b d h w", h=h, w=w)


RECON_LOSSES = ("mse", "l1")


def check_recon_loss(name: str) -> str:
    if name not in RECON_LOSSES:
        raise ConfigError(f"recon_loss must be one of {RECON_LOSSES}, got {name!r}")
    return name


def pixel_loss(reconstruction: torch.Tensor, images: torch.Tensor, name: str) -> torch.Tensor:
    """The reconstruction loss every tokenizer trains with: mean squared ("mse") or absolute ("l1") error."""
    return F.mse_loss(reconstruction, images) if name == "mse" else F.l1_loss(reconstruction, images)
