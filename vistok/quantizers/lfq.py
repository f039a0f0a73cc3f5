"""Group lookup-free quantization (WeTok's GQ, built on MAGVIT-v2 / Open-MAGVIT2's LFQ).

Lookup-free quantization (MAGVIT-v2) quantizes each latent dimension to its sign, ``q = +1 if z > 0 else -1``, so
the implicit codebook is {-1, +1}^d and nothing is looked up. WeTok splits the ``d = G·g`` channels into G
**contiguous** groups of g dimensions (group i = channels [i·g, (i+1)·g)) and treats each group as its own
lookup-free quantizer with 2^g codes. A token is then G sub-indices, each in [0, 2^g), rather than one index in
[0, 2^(G·g)).

Index convention: **little-endian within a group**, as Open-MAGVIT2 / WeTok: channel j of a group is bit j, so
``index = Σ_j [q_j > 0] · 2^j``. The flat index (only when G·g ≤ 62, so it fits in int64) puts group 0 in the
lowest bits: ``flat = Σ_i index_i · 2^(i·g)``, i.e. the little-endian index of all G·g bits.

Losses (Open-MAGVIT2 / WeTok code, weights from their configs):
- entropy: ``w_e · (w_s·H_sample − w_c·H_codebook)`` with ``w_e = 0.1``, ``w_s = w_c = 1``. Per group, the soft
  assignment over the group's 2^g codes is ``p = softmax(2⟨z_g, c_k⟩ / τ)`` with τ = 0.01 (−‖z_g − c_k‖² up to a
  constant, because ‖c_k‖² = g for every code). ``H_sample`` is the mean entropy of p over tokens and groups. The
  logits tensor is (B·N, G, 2^g): memory grows with G·2^g, not 2^(G·g) as in full-codebook LFQ.
- commitment: ``0.25 · mse(z, sg(q))``; gradients reach the encoder through the straight-through ``z + sg(q − z)``.

What the grouping approximates: the true product codebook's soft assignment for ``−‖z − c‖²/τ`` factorizes over
groups, so the per-sample entropy of the full 2^(G·g) codebook is *exactly* the sum of the groups' per-sample
entropies (tested). The codebook (batch-marginal) entropy does not factorize: per-group codebook entropies only
see each group's marginal usage, and Σ_i H(marginal_i) ≥ H(joint) (subadditivity, tested). Maximizing the summed
marginals therefore spreads each group's usage but cannot see correlations between groups. ``codebook_entropy``
chooses how the groups' codebook entropies are pooled (the papers differ, see the quantizers note):
- ``"shared"`` (WeTok / Open-MAGVIT2 default): one 2^g-way usage distribution averaged over tokens *and groups*;
- ``"sum"`` (BSQ): Σ_i H(marginal of group i), the upper bound on the joint codebook entropy;
- ``"mean"`` (vector-quantize-pytorch with ``num_codebooks > 1``): the mean of the per-group entropies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vistok.errors import ConfigError
from vistok.quantizers.base import Quantizer, QuantizerOutput
from vistok.registry import register
from vistok.training.distributed import batch_mean

CODEBOOK_ENTROPY_POOLS = ("shared", "sum", "mean")


def group_codes(group_dim: int) -> torch.Tensor:
    """All 2^g codes of one group as a (2^g, g) ±1 float tensor; row k is the code of index k (little-endian)."""
    k = torch.arange(2**group_dim)
    bits = (k[:, None] >> torch.arange(group_dim)) & 1  # bit j of k, j = 0 is the least significant
    return bits.float() * 2 - 1


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (0·log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim)


def group_entropy_terms(z: torch.Tensor, num_groups: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
    """Per-group entropy terms of LFQ's soft assignment.

    z: (M, G·g) latents (M tokens). Returns ``(sample_entropy (G,), codebook_entropy (G,), shared_entropy ())``:
    for each group the mean over tokens of H(p_n), the entropy of the token-averaged p, and the entropy of the
    distribution averaged over tokens and groups (WeTok's pooled codebook entropy). Memory: M·G·2^g floats.
    """
    group_dim = z.shape[-1] // num_groups
    codes = group_codes(group_dim).to(z)  # (K, g)
    zg = z.reshape(-1, num_groups, group_dim)  # (M, G, g)
    logits = 2 * torch.einsum("mgd,kd->mgk", zg, codes) / temperature  # (M, G, K) = −‖z−c‖²/τ + const
    log_probs = F.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    sample_entropy = -(probs * log_probs).sum(-1).mean(0)  # (G,)
    marginal = batch_mean(probs)  # (G, K): each group's usage over the (global, under DDP) batch
    return sample_entropy, entropy(marginal), entropy(marginal.mean(0))


@register("quantizer", "lfq")
class GroupLFQ(Quantizer):
    """Group lookup-free quantizer: (B, N, G·g) latents → ±1 codes, (B, N, G) sub-indices in [0, 2^g).

    With ``num_groups=1`` this is MAGVIT-v2 / Open-MAGVIT2's LFQ. TokenSpec: ``subvocab`` with G sub-vocabularies
    of size 2^g.
    """

    kind = "subvocab"

    def __init__(self, num_groups: int = 4, group_dim: int = 8, entropy_weight: float = 0.1,
                 sample_entropy_weight: float = 1.0, codebook_entropy_weight: float = 1.0,
                 commitment_weight: float = 0.25, temperature: float = 0.01, codebook_entropy: str = "shared") -> None:
        super().__init__()
        if num_groups < 1 or group_dim < 1:
            raise ConfigError(f"lfq: num_groups and group_dim must be >= 1, got {num_groups}, {group_dim}")
        if group_dim > 20:
            raise ConfigError(f"lfq: group_dim={group_dim} means 2^{group_dim} codes per group in the entropy loss; "
                              "use more groups of fewer dimensions (WeTok: groups of 8)")
        if codebook_entropy not in CODEBOOK_ENTROPY_POOLS:
            raise ConfigError(f"lfq: codebook_entropy must be one of {CODEBOOK_ENTROPY_POOLS}, "
                              f"got {codebook_entropy!r}")
        self.num_groups, self.group_dim = num_groups, group_dim
        self.codebook_sizes = (2**group_dim,) * num_groups
        self.code_dim = num_groups * group_dim
        self.entropy_weight = entropy_weight
        self.sample_entropy_weight, self.codebook_entropy_weight = sample_entropy_weight, codebook_entropy_weight
        self.commitment_weight, self.temperature = commitment_weight, temperature
        self.codebook_entropy = codebook_entropy
        self.register_buffer("bit_weights", 2 ** torch.arange(group_dim), persistent=False)

    # ---- indices ----------------------------------------------------------------------------------------------
    @property
    def flat_fits_int64(self) -> bool:
        return self.code_dim <= 62

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., G·g) codes (any sign pattern; > 0 is bit 1) → (..., G) int64 sub-indices."""
        bits = (codes > 0).long().unflatten(-1, (self.num_groups, self.group_dim))
        return (bits * self.bit_weights).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., G) sub-indices → (..., G·g) ±1 codes."""
        bits = (indices.long().unsqueeze(-1) >> torch.arange(self.group_dim, device=indices.device)) & 1
        return (bits.float() * 2 - 1).flatten(-2)

    def flat_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., G) sub-indices → (...) one int64 index in [0, 2^(G·g)); group 0 holds the lowest g bits."""
        if not self.flat_fits_int64:
            raise ValueError(f"lfq: a flat index of {self.code_dim} bits does not fit in int64; use the "
                             f"{self.num_groups} sub-indices")
        shifts = torch.arange(self.num_groups, device=indices.device) * self.group_dim
        return (indices.long() << shifts).sum(-1)

    def unflatten_indices(self, flat: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`flat_indices`: (...) → (..., G)."""
        shifts = torch.arange(self.num_groups, device=flat.device) * self.group_dim
        return (flat.long().unsqueeze(-1) >> shifts) & (2**self.group_dim - 1)

    # ---- forward ----------------------------------------------------------------------------------------------
    def entropy_terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample entropy, pooled codebook entropy) for (M, G·g) latents, pooled as configured."""
        sample, codebook, shared = group_entropy_terms(z, self.num_groups, self.temperature)
        pooled = {"shared": shared, "sum": codebook.sum(), "mean": codebook.mean()}[self.codebook_entropy]
        return sample.mean(), pooled

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, G·g) → quantized ±1 (B, N, G·g) (straight-through), indices (B, N, G)."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"lfq: expected latents with {self.code_dim} = {self.num_groups}×{self.group_dim} "
                             f"channels, got {z.shape[-1]}")
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            codes = torch.where(z > 0, 1.0, -1.0)
            indices = self.codes_to_indices(codes)
            losses: dict[str, torch.Tensor] = {}
            stats: dict[str, torch.Tensor] = {}
            if self.training:
                losses["commitment"] = self.commitment_weight * F.mse_loss(z, codes)
                if self.entropy_weight > 0:
                    sample_h, codebook_h = self.entropy_terms(z.reshape(-1, self.code_dim))
                    losses["entropy"] = self.entropy_weight * (self.sample_entropy_weight * sample_h
                                                               - self.codebook_entropy_weight * codebook_h)
                    stats["sample_entropy"], stats["codebook_entropy"] = sample_h.detach(), codebook_h.detach()
            # straight-through when a gradient is wanted; otherwise the exact ±1 codes
            quantized = z + (codes - z).detach() if z.requires_grad else codes
        stats.update(_group_usage(indices.detach(), self.codebook_sizes[0]))
        return QuantizerOutput(quantized, indices, losses, stats)


def _group_usage(indices: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Batch usage and perplexity per group, averaged over groups (one histogram per group, never mixed)."""
    flat = indices.reshape(-1, indices.shape[-1])
    counts = torch.stack([torch.bincount(flat[:, g], minlength=size) for g in range(flat.shape[1])]).float()
    probs = counts / counts.sum(1, keepdim=True)
    return {"usage": (counts > 0).float().mean(), "perplexity": entropy(probs).exp().mean()}
