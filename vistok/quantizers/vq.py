"""Vector quantizer with an l2-normalized codebook (LlamaGen / ViT-VQGAN), with optional codebook-health tools.

Both the latents and the codebook are l2-normalized before the nearest-neighbour lookup, so the search is by cosine
similarity and the codes live on the unit sphere; with a low code dimension (LlamaGen: 16,384 codes × 8 dims) this
keeps codebook usage high. Losses (VQ-VAE): codebook ``mean((q - sg(z))²)`` and commitment
``β · mean((sg(q) - z)²)`` with β = 0.25; gradients reach the encoder through the straight-through estimator
``z + sg(q - z)``. LlamaGen's optional entropy term is ``entropy_weight`` (0 by default, as in its configs).

Codebook health (all off by default; each keeps every rank's codebook identical under DDP):

- ``kmeans_init``: on the first training batch, gathered from every rank, the codebook is set to ``kmeans_iters``
  Lloyd iterations of k-means (spherical k-means when ``l2_norm``), as TokenFlow's ``--kmeans`` and
  vector-quantize-pytorch's ``kmeans_init`` do. Rank 0's result is broadcast.
- ``dead_code_steps`` N > 0: a code that no token of the *global* batch (counts all-reduced) picked for N
  consecutive training steps is replaced, before the next lookup, by a random latent of the current global batch
  (drawn on rank 0 and broadcast), as vector-quantize-pytorch's ``threshold_ema_dead_code`` and TA-TiTok's
  clustering VQ re-seed dead codes from encoder outputs.
- ``ema_decay`` γ in (0, 1): the codebook is not trained by gradient but by exponential moving averages of the
  assigned latents (VQ-VAE, arXiv 1711.00937, App. A.1; VQ-VAE-2, arXiv 1906.00446; vector-quantize-pytorch's
  ``EuclideanCodebook``): with n_k the number of global-batch latents assigned to code k and s_k their sum,
  ``N_k ← γ N_k + (1 − γ) n_k``, ``m_k ← γ m_k + (1 − γ) s_k``, Laplace smoothing
  ``Ñ_k = (N_k + ε) / (Σ N + K ε) · Σ N`` and ``e_k = m_k / Ñ_k``. The codebook loss term is then dropped (the
  commitment term stays). n_k and s_k are all-reduced, so every rank applies the same update.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vistok.errors import ConfigError
from vistok.quantizers.base import Quantizer, QuantizerOutput, usage_stats
from vistok.registry import register
from vistok.training import distributed
from vistok.training.distributed import batch_mean


@register("quantizer", "vq")
class VectorQuantizer(Quantizer):
    kind = "vocab"

    def __init__(self, codebook_size: int = 1024, code_dim: int = 8, l2_norm: bool = True,
                 commitment_weight: float = 0.25, codebook_weight: float = 1.0, entropy_weight: float = 0.0,
                 entropy_temperature: float = 0.01, kmeans_init: bool = False, kmeans_iters: int = 10,
                 dead_code_steps: int = 0, ema_decay: float = 0.0, ema_eps: float = 1e-5) -> None:
        super().__init__()
        if dead_code_steps < 0 or kmeans_iters < 1:
            raise ConfigError(f"vq: dead_code_steps must be >= 0 and kmeans_iters >= 1, got {dead_code_steps}, "
                              f"{kmeans_iters}")
        if not 0.0 <= ema_decay < 1.0 or ema_eps <= 0:
            raise ConfigError(f"vq: ema_decay must be in [0, 1) (0 = off) and ema_eps > 0, got {ema_decay}, "
                              f"{ema_eps}")
        self.codebook_sizes = (codebook_size,)
        self.code_dim = code_dim
        self.l2_norm = l2_norm
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.kmeans_iters, self.dead_code_steps = kmeans_iters, dead_code_steps
        self.ema_decay, self.ema_eps = ema_decay, ema_eps
        # Health buffers exist only when their option is on, so checkpoints of plain VQ keep their keys.
        if kmeans_init:
            self.register_buffer("initialized", torch.tensor(False))
        if dead_code_steps:
            self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))
        if ema_decay:
            self.codebook.weight.requires_grad_(False)  # moved by the EMA below, not by the optimizer
            self.register_buffer("ema_cluster_size", torch.zeros(codebook_size))
            self.register_buffer("ema_embed_sum", self.codebook.weight.detach().clone())

    @property
    def codebook_size(self) -> int:
        return self.codebook_sizes[0]

    @property
    def kmeans_init(self) -> bool:
        return hasattr(self, "initialized")

    def _codes(self) -> torch.Tensor:
        w = self.codebook.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, D) → quantized (B, N, D), indices (B, N)."""
        # The lookup runs in fp32 even under autocast: distances between near-unit vectors lose ties in bf16.
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            if self.l2_norm:
                z = F.normalize(z, dim=-1)
            flat = z.reshape(-1, self.code_dim)  # (B·N, D)
            if self.training:
                self.refresh_codebook(flat.detach())
            codes = self._codes()
            if self.ema_decay:  # the EMA step below writes the table in place; the lookup keeps its own copy
                codes = codes.detach().clone()
            # ‖z − c‖² = ‖z‖² + ‖c‖² − 2 z·c
            dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()  # (B·N, K)
            indices = dist.argmin(dim=1)
            quantized = codes[indices].view_as(z)

            losses: dict[str, torch.Tensor] = {}
            if self.training:
                if not self.ema_decay:
                    losses["codebook"] = self.codebook_weight * F.mse_loss(quantized, z.detach())
                losses["commitment"] = self.commitment_weight * F.mse_loss(z, quantized.detach())
                if self.entropy_weight > 0:
                    losses["entropy"] = self.entropy_weight * _entropy_loss(-dist, self.entropy_temperature)
                self.record_assignments(flat.detach(), indices)
            quantized = z + (quantized - z).detach()  # straight-through

        indices = indices.view(z.shape[:-1])
        return QuantizerOutput(quantized, indices, losses, usage_stats(indices.detach(), self.codebook_size))

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self._codes()[indices]

    # ---- codebook health (training only; every step below is identical on every rank) -------------------------
    @torch.no_grad()
    def refresh_codebook(self, flat: torch.Tensor) -> None:
        """Before a training lookup: k-means initialization (once) and dead-code restart. ``flat``: this rank's
        (M, D) latents, as the lookup sees them."""
        need_init = self.kmeans_init and not bool(self.initialized)
        dead = (self.unused_steps >= self.dead_code_steps) if self.dead_code_steps else None
        if not need_init and (dead is None or not bool(dead.any())):
            return  # (every rank takes the same branch: the buffers are identical everywhere)
        samples = distributed.gather_cat(flat.contiguous())
        if need_init:
            centroids, counts = kmeans(samples, self.codebook_size, self.kmeans_iters, spherical=self.l2_norm)
            self._set_codes(torch.arange(self.codebook_size, device=flat.device), centroids, counts)
            self.initialized.fill_(True)
            if dead is not None:
                self.unused_steps.zero_()
            return
        rows = dead.nonzero().squeeze(1)
        picks = torch.randint(samples.shape[0], (rows.numel(),), device=samples.device)
        new = broadcast_from_rank0(samples[picks].clone())
        self._set_codes(rows, new, torch.ones(rows.numel(), device=flat.device))
        self.unused_steps[rows] = 0

    def _set_codes(self, rows: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        self.codebook.weight.data[rows] = codes.to(self.codebook.weight.dtype)
        if self.ema_decay:  # keep the moving averages consistent with the new codes: e_k = m_k / N_k
            counts = counts.float().clamp_min(1)  # an empty k-means cluster still keeps its code
            self.ema_cluster_size[rows] = counts
            self.ema_embed_sum[rows] = codes.float() * counts.unsqueeze(1)

    @torch.no_grad()
    def record_assignments(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """After a training lookup: usage counters for dead-code restart, and the EMA codebook update."""
        if not (self.dead_code_steps or self.ema_decay):
            return
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        sums = torch.zeros(self.codebook_size, self.code_dim, device=flat.device).index_add_(0, indices, flat)
        if distributed.active():  # global-batch statistics: the same numbers on every rank
            packed = torch.cat([counts.unsqueeze(1), sums], dim=1)
            dist.all_reduce(packed)
            counts, sums = packed[:, 0], packed[:, 1:]
        if self.dead_code_steps:
            self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.ema_decay:
            ema_update_(self.codebook.weight.data, self.ema_cluster_size, self.ema_embed_sum, counts, sums,
                        self.ema_decay, self.ema_eps)


def ema_update_(weight: torch.Tensor, cluster_size: torch.Tensor, embed_sum: torch.Tensor, counts: torch.Tensor,
                sums: torch.Tensor, decay: float, eps: float) -> None:
    """One VQ-VAE EMA codebook step in place: ``N ← γN + (1−γ)n``, ``m ← γm + (1−γ)s``, Laplace-smoothed
    ``Ñ = (N + ε)/(ΣN + Kε)·ΣN``, ``weight = m / Ñ``."""
    cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + cluster_size.numel() * eps) * total
    weight.copy_(embed_sum / smoothed.unsqueeze(1))


@torch.no_grad()
def kmeans(samples: torch.Tensor, k: int, iters: int = 10,
           spherical: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (M, D) ``samples`` → (centroids (k, D), cluster sizes (k,)). Starts from k distinct
    random samples (with replacement if M < k); an empty cluster keeps its previous centroid. ``spherical``:
    cosine assignment and unit-norm centroids. Drawn with the global RNG on rank 0 and broadcast, so every rank
    gets the same codebook."""
    samples = samples.float()
    m = samples.shape[0]
    start = torch.randperm(m, device=samples.device)[:k] if m >= k else torch.randint(m, (k,), device=samples.device)
    centroids = samples[start].clone()
    counts = torch.zeros(k, device=samples.device)
    for _ in range(iters):
        # spherical: the samples are unit vectors, so the largest dot product is the nearest centroid direction
        assign = (samples @ centroids.t()).argmax(1) if spherical else torch.cdist(samples, centroids).argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        means = sums / counts.clamp_min(1).unsqueeze(1)
        if spherical:
            means = F.normalize(means, dim=-1)
        centroids = torch.where(counts.unsqueeze(1) > 0, means, centroids)
    return broadcast_from_rank0(centroids), broadcast_from_rank0(counts)


def broadcast_from_rank0(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (a no-op in one process): random draws for the codebook are made once."""
    if distributed.active():
        t = t.contiguous()
        dist.broadcast(t, src=0)
    return t


def _entropy_loss(affinity: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample entropy minus codebook (batch-averaged) entropy of softmax(affinity / T), as in LlamaGen/MaskGIT:
    low per-sample entropy makes assignments confident; high codebook entropy spreads usage."""
    probs = F.softmax(affinity / temperature, dim=-1)
    log_probs = F.log_softmax(affinity / temperature, dim=-1)
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    avg = batch_mean(probs)  # the codebook's usage over the (global, under DDP) batch
    codebook_entropy = -(avg * torch.log(avg.clamp_min(1e-12))).sum()
    return sample_entropy - codebook_entropy
