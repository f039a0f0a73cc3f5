"""Dual-codebook quantizer: TokenFlow's shared index, or DualToken's separate indices.

Each position carries a semantic latent (first ``semantic_dim`` channels) and a pixel latent (last ``pixel_dim``
channels), quantized against two codebooks, E_sem (K_sem × semantic_dim) and E_pix (K_pix × pixel_dim), with inputs
and codes l2-normalised per half (ẑ, ê). The output is concat(ê_sem[·], ê_pix[·]). ``index`` picks how the two
tables are addressed:

- ``"shared"`` (TokenFlow, Qu et al., CVPR 2025, arXiv 2412.03069, ByteFlow-AI/TokenFlow): one index into tables of
  the same size K,

      k* = argmin_k  w_sem · ‖ẑ_sem − ê_sem,k‖² + w_pix · ‖ẑ_pix − ê_pix,k‖²

  (TokenFlow's code: w_sem = 1, w_pix = 1.0). TokenSpec ``vocab`` of K. With w_sem = 0 the index is pixel-only VQ,
  with w_pix = 0 semantic-only VQ (both tested). TokenFlow's maintainers note this equals one concatenated table
  searched with a weighted distance; keeping two tables makes the branches' codes separately addressable.
- ``"separate"`` (DualToken, Song et al., arXiv 2503.14324, songweii/DualToken): two independent nearest-code
  lookups, one per branch, with their own sizes ``semantic_codebook_size`` and ``pixel_codebook_size``; each is a
  :class:`~vistok.quantizers.vq.VectorQuantizer` (l2-normalised), so k-means initialization, dead-code restart
  and EMA updates apply per branch: the top-level options set both, ``semantic_options`` / ``pixel_options``
  override them per branch (DualToken: EMA updates for the semantic codebook, dead-code restart for the pixel
  one). TokenSpec ``subvocab`` with G = 2: sub-token 0 is the semantic index, sub-token 1 the pixel index;
  bits per position log2 K_sem + log2 K_pix.

Losses (TokenFlow ``vq_loss.py``; VQ-VAE): codebook ``mean((q − sg(ẑ))²)`` (weight 1) and commitment
``0.25 · mean((sg(q) − ẑ)²)`` on the normalised vectors (in ``separate`` mode per branch, named
``semantic_codebook`` etc.); straight-through ``ẑ + sg(q − ẑ)``.

Codebook health in ``shared`` mode: ``kmeans_init`` (TokenFlow's ``--kmeans``) runs k-means on the concatenation
(√w_sem·ẑ_sem, √w_pix·ẑ_pix), whose squared Euclidean distance is exactly the shared-index cost, then re-normalises
each half; ``dead_code_steps`` re-seeds codes unused for that many steps from the global batch, as for ``vq``.

Deviations: TokenFlow quantizes a VAR-style multi-scale residual pyramid with this codebook and DualToken a
depth-8 residual VQ per branch; here each branch is one scale and depth (one index per grid position and branch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import ConfigError
from vistok.metrics.codebook import usage_stats
from vistok.quantizers.base import Quantizer, QuantizerOutput
from vistok.quantizers.vq import VectorQuantizer, broadcast_from_rank0, kmeans
from vistok.registry import register
from vistok.training import distributed

INDEX_MODES = ("shared", "separate")


@register("quantizer", "dual")
class DualCodebookQuantizer(Quantizer):
    """(B, N, semantic_dim + pixel_dim) → indices (B, N) (shared) or (B, N, 2) (separate: semantic, pixel)."""

    def __init__(self, codebook_size: int = 1024, semantic_dim: int = 32, pixel_dim: int = 8,
                 semantic_weight: float = 1.0, pixel_weight: float = 1.0, commitment_weight: float = 0.25,
                 codebook_weight: float = 1.0, index: str = "shared", semantic_codebook_size: int | None = None,
                 pixel_codebook_size: int | None = None, kmeans_init: bool = False, kmeans_iters: int = 10,
                 dead_code_steps: int = 0, ema_decay: float = 0.0, ema_eps: float = 1e-5,
                 semantic_options: dict | None = None, pixel_options: dict | None = None) -> None:
        super().__init__()
        if index not in INDEX_MODES:
            raise ConfigError(f"dual: index must be one of {INDEX_MODES}, got {index!r}")
        if semantic_weight < 0 or pixel_weight < 0 or semantic_weight + pixel_weight == 0:
            raise ConfigError(f"dual: semantic_weight and pixel_weight must be >= 0 and not both 0, got "
                              f"{semantic_weight}, {pixel_weight}")
        self.index = index
        self.semantic_dim, self.pixel_dim = semantic_dim, pixel_dim
        self.code_dim = semantic_dim + pixel_dim
        self.semantic_weight, self.pixel_weight = semantic_weight, pixel_weight
        self.commitment_weight, self.codebook_weight = commitment_weight, codebook_weight
        if index == "separate":
            self.kind = "subvocab"
            sizes = (semantic_codebook_size or codebook_size, pixel_codebook_size or codebook_size)
            self.codebook_sizes = sizes
            health = {"kmeans_init": kmeans_init, "kmeans_iters": kmeans_iters, "dead_code_steps": dead_code_steps,
                      "ema_decay": ema_decay, "ema_eps": ema_eps}
            branches = []
            for branch, size, dim, extra in (("semantic", sizes[0], semantic_dim, semantic_options),
                                             ("pixel", sizes[1], pixel_dim, pixel_options)):
                unknown = sorted(set(extra or {}) - set(health))
                if unknown:
                    raise ConfigError(f"dual: {branch}_options takes {sorted(health)}, got {unknown}")
                branches.append(VectorQuantizer(size, dim, l2_norm=True, commitment_weight=commitment_weight,
                                                codebook_weight=codebook_weight, **{**health, **(extra or {})}))
            self.semantic_vq, self.pixel_vq = branches
            return
        if semantic_options or pixel_options:
            raise ConfigError("dual: semantic_options / pixel_options need index='separate'")
        if semantic_codebook_size not in (None, codebook_size) or pixel_codebook_size not in (None, codebook_size):
            raise ConfigError("dual: semantic_codebook_size / pixel_codebook_size need index='separate' (a shared "
                              "index addresses two tables of the same size codebook_size)")
        if ema_decay:
            raise ConfigError("dual: ema_decay (EMA codebook updates) needs index='separate'; TokenFlow's shared "
                              "index trains its tables by gradient")
        self.kind = "vocab"
        self.codebook_sizes = (codebook_size,)
        self.semantic_codebook = nn.Embedding(codebook_size, semantic_dim)
        self.pixel_codebook = nn.Embedding(codebook_size, pixel_dim)
        for table in (self.semantic_codebook, self.pixel_codebook):
            nn.init.uniform_(table.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.kmeans_iters, self.dead_code_steps = kmeans_iters, dead_code_steps
        if kmeans_init:
            self.register_buffer("initialized", torch.tensor(False))
        if dead_code_steps:
            self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., D) → l2-normalised (semantic, pixel) halves."""
        sem, pix = z.split([self.semantic_dim, self.pixel_dim], dim=-1)
        return F.normalize(sem, dim=-1), F.normalize(pix, dim=-1)

    def codebooks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two l2-normalised tables, (K_sem, semantic_dim) and (K_pix, pixel_dim)."""
        if self.index == "separate":
            return self.semantic_vq._codes(), self.pixel_vq._codes()
        return F.normalize(self.semantic_codebook.weight, dim=-1), F.normalize(self.pixel_codebook.weight, dim=-1)

    def distances(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances (M, K) of the normalised semantic and pixel halves of (M, D) latents to every code."""
        sem, pix = self.split(z)
        e_sem, e_pix = self.codebooks()
        # for unit vectors ‖a − b‖² = 2 − 2⟨a, b⟩
        return 2 - 2 * sem @ e_sem.t(), 2 - 2 * pix @ e_pix.t()

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        e_sem, e_pix = self.codebooks()
        if self.index == "separate":
            return torch.cat([e_sem[indices[..., 0]], e_pix[indices[..., 1]]], dim=-1)
        return torch.cat([e_sem[indices], e_pix[indices]], dim=-1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, semantic_dim + pixel_dim) → quantized (B, N, same), indices (B, N) or (B, N, 2)."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"dual: expected {self.code_dim} = {self.semantic_dim} + {self.pixel_dim} channels, "
                             f"got {z.shape[-1]}")
        if self.index == "separate":
            return self._forward_separate(z)
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            if self.training:
                self._refresh_shared(z.detach().reshape(-1, self.code_dim))
            d_sem, d_pix = self.distances(z.reshape(-1, self.code_dim))
            indices = (self.semantic_weight * d_sem + self.pixel_weight * d_pix).argmin(dim=1).view(z.shape[:-1])
            z_norm = torch.cat(self.split(z), dim=-1)
            quantized = self.indices_to_codes(indices)
            losses: dict[str, torch.Tensor] = {}
            if self.training:
                losses["codebook"] = self.codebook_weight * F.mse_loss(quantized, z_norm.detach())
                losses["commitment"] = self.commitment_weight * F.mse_loss(z_norm, quantized.detach())
                self._count_shared(indices.detach())
            quantized = z_norm + (quantized - z_norm).detach()
        return QuantizerOutput(quantized, indices, losses, usage_stats(indices.detach(), self.codebook_sizes[0]))

    def _forward_separate(self, z: torch.Tensor) -> QuantizerOutput:
        sem, pix = z.split([self.semantic_dim, self.pixel_dim], dim=-1)
        outs = {"semantic": self.semantic_vq(sem), "pixel": self.pixel_vq(pix)}
        losses = {f"{branch}_{name}": v for branch, out in outs.items() for name, v in out.losses.items()}
        stats = {f"{branch}_{name}": v for branch, out in outs.items() for name, v in out.stats.items()}
        indices = torch.stack([outs["semantic"].indices, outs["pixel"].indices], dim=-1)
        # the family's usage/perplexity: averaged over the two sub-vocabularies (one histogram each, never mixed)
        stats.update(usage_stats(indices.detach(), self.codebook_sizes))
        return QuantizerOutput(torch.cat([outs["semantic"].quantized, outs["pixel"].quantized], dim=-1), indices,
                               losses, stats)

    # ---- codebook health of the shared index (the separate mode's lives in its two VectorQuantizers) -----------
    @torch.no_grad()
    def _weighted(self, flat: torch.Tensor) -> torch.Tensor:
        """Rows whose squared Euclidean distances are the shared-index cost (unit halves scaled by √w)."""
        sem, pix = self.split(flat)
        return torch.cat([math.sqrt(self.semantic_weight) * sem, math.sqrt(self.pixel_weight) * pix], dim=-1)

    @torch.no_grad()
    def _set_codes(self, rows: torch.Tensor, weighted: torch.Tensor) -> None:
        sem, pix = weighted.split([self.semantic_dim, self.pixel_dim], dim=-1)
        # a branch with weight 0 has no say in the index: its half is only rescaled back to unit norm
        self.semantic_codebook.weight.data[rows] = F.normalize(sem, dim=-1)
        self.pixel_codebook.weight.data[rows] = F.normalize(pix, dim=-1)

    @torch.no_grad()
    def _refresh_shared(self, flat: torch.Tensor) -> None:
        need_init = hasattr(self, "initialized") and not bool(self.initialized)
        dead = (self.unused_steps >= self.dead_code_steps) if self.dead_code_steps else None
        if not need_init and (dead is None or not bool(dead.any())):
            return
        samples = distributed.gather_cat(self._weighted(flat).contiguous())
        if need_init:
            centroids, _ = kmeans(samples, self.codebook_sizes[0], self.kmeans_iters)
            self._set_codes(torch.arange(self.codebook_sizes[0], device=flat.device), centroids)
            self.initialized.fill_(True)
            if dead is not None:
                self.unused_steps.zero_()
            return
        rows = dead.nonzero().squeeze(1)
        picks = torch.randint(samples.shape[0], (rows.numel(),), device=samples.device)
        self._set_codes(rows, broadcast_from_rank0(samples[picks].clone()))
        self.unused_steps[rows] = 0

    @torch.no_grad()
    def _count_shared(self, indices: torch.Tensor) -> None:
        if not self.dead_code_steps:
            return
        counts = torch.bincount(indices.reshape(-1), minlength=self.codebook_sizes[0])
        if distributed.active():
            torch.distributed.all_reduce(counts)
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
