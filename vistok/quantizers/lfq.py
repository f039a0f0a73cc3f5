"""Group lookup-free quantization (WeTok's GQ, built on MAGVIT-v2 / Open-MAGVIT2's LFQ).

Lookup-free quantization (MAGVIT-v2) quantizes each latent dimension to its sign, ``q = +1 if z > 0 else -1``, so
the implicit codebook is {-1, +1}^d and nothing is looked up. WeTok splits the ``d = G·g`` channels into G
**contiguous** groups of g dimensions (group i = channels [i·g, (i+1)·g)) and treats each group as its own
lookup-free quantizer with 2^g codes. A token is then G sub-indices, each in [0, 2^g), rather than one index in
[0, 2^(G·g)).

Groups may also have unequal sizes (``group_dims``, e.g. [6, 12]); each is still a contiguous channel range.

Tokens (what ``indices`` holds, and the sub-vocabularies of the ``subvocab`` TokenSpec) are by default one
sub-index per group. ``factorized_bits`` splits the code into other contiguous bit slices instead: Open-MAGVIT2's
*asymmetric token factorization* (Luo et al. 2024, "Open-MAGVIT2: An Open-Source Project Toward Democratizing
Auto-regressive Visual Generation", arXiv 2409.04410; TencentARC/SEED-Voken ``lookup_free_quantize.py``,
``token_factorization``/``factorized_bits``) gives its AR model an 18-bit code as sub-tokens of 6 bits (channels 0–5,
2^6 = 64 values) and 12 bits (channels 6–17, 2^12 = 4096) rather than one 2^18-way token. The split only changes the
token layout: the codes, the entropy groups and every loss are those of the unsplit quantizer.

Index convention: **little-endian within a sub-token**, as Open-MAGVIT2 / WeTok: channel j of a slice is bit j, so
``index = Σ_j [q_j > 0] · 2^j``. The flat index (only when the code has ≤ 62 bits, so it fits in int64) puts
sub-token 0 in the lowest bits: ``flat = Σ_k index_k · 2^(offset_k)``, i.e. the little-endian index of all bits,
whatever the split.

Losses (Open-MAGVIT2 / WeTok code, weights from their configs):
- entropy: ``w_e · (w_s·H_sample − w_c·H_codebook)`` with ``w_e = 0.1``, ``w_s = w_c = 1``. Per group, the soft
  assignment over the group's 2^g codes is ``p = softmax(2⟨z_g, c_k⟩ / τ)`` with τ = 0.01 (−‖z_g − c_k‖² up to a
  constant, because ‖c_k‖² = g for every code). ``H_sample`` is the entropy of p averaged over tokens, and over
  groups pooled like the codebook entropy (below): averaged, or summed for ``"sum"``. The logits tensor is
  (B·N, G, 2^g): memory grows with G·2^g, not 2^(G·g) as in full-codebook LFQ.
- commitment: ``0.25 · mse(z, sg(q))``; gradients reach the encoder through the straight-through ``z + sg(q − z)``.

What the grouping approximates: the true product codebook's soft assignment for ``−‖z − c‖²/τ`` factorizes over
groups, so the per-sample entropy of the full 2^(G·g) codebook is *exactly* the sum of the groups' per-sample
entropies (tested). The codebook (batch-marginal) entropy does not factorize: per-group codebook entropies only
see each group's marginal usage, and Σ_i H(marginal_i) ≥ H(joint) (subadditivity, tested). Maximizing the summed
marginals therefore spreads each group's usage but cannot see correlations between groups. ``codebook_entropy``
chooses how the groups' entropies are pooled (the papers differ):
- ``"shared"`` (WeTok / Open-MAGVIT2 default): one 2^g-way usage distribution averaged over tokens *and groups*;
  the per-sample entropy averaged over tokens and groups (equal groups only: unequal ones have no common codes);
- ``"sum"`` (BSQ, Zhao et al., "Image and Video Tokenization with Binary Spherical Quantization", arXiv 2406.07548;
  zhaoyue-zephyrus/bsq-vit ``soft_entropy_loss``): Σ_i H(marginal of group i), the upper bound on the joint codebook
  entropy, *and* the per-sample entropy summed over groups (so, like the codebook term, it equals the full product
  codebook's per-sample entropy and the two stay on one scale);
- ``"mean"`` (vector-quantize-pytorch with ``num_codebooks > 1``): the means over groups of both terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vistok.errors import ConfigError
from vistok.quantizers.base import Quantizer, QuantizerOutput, usage_stats
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


def group_entropy_terms(z: torch.Tensor, num_groups: int | Sequence[int],
                        temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-group entropy terms of LFQ's soft assignment.

    z: (M, D) latents (M tokens); ``num_groups``: the number of equal groups, or the sizes of contiguous groups.
    Returns ``(sample_entropy (G,), codebook_entropy (G,), shared_entropy ())``: for each group the mean over tokens
    of H(p_n), the entropy of the token-averaged p, and the entropy of the distribution averaged over tokens and
    groups (WeTok's pooled codebook entropy; ``None`` for unequal groups). Memory: M·Σ_i 2^(g_i) floats.
    """
    equal = isinstance(num_groups, int)
    dims = [z.shape[-1] // num_groups] * num_groups if equal else [int(g) for g in num_groups]
    if len(set(dims)) > 1:  # unequal groups: each on its own codes
        terms = [group_entropy_terms(part, 1, temperature) for part in z.split(dims, dim=-1)]
        return torch.cat([t[0] for t in terms]), torch.cat([t[1] for t in terms]), None
    group_dim, num_groups = dims[0], len(dims)
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
    """Group lookup-free quantizer: (B, N, D) latents → ±1 codes, (B, N, K) sub-indices (sub-token k in
    [0, 2^(b_k))).

    Groups (the entropy terms): ``num_groups`` × ``group_dim`` channels, or ``group_dims`` for unequal contiguous
    groups. Sub-tokens (the indices): one per group, or ``factorized_bits`` (Open-MAGVIT2's asymmetric token
    factorization, e.g. [6, 12] for an 18-bit code). With one group of d channels this is MAGVIT-v2 / Open-MAGVIT2's
    LFQ. TokenSpec: ``subvocab`` with one sub-vocabulary of size 2^(b_k) per sub-token.
    """

    kind = "subvocab"
    renamed_options = {"temperature": "entropy_temperature"}

    def __init__(self, num_groups: int = 4, group_dim: int = 8, entropy_weight: float = 0.1,
                 sample_entropy_weight: float = 1.0, codebook_entropy_weight: float = 1.0,
                 commitment_weight: float = 0.25, entropy_temperature: float = 0.01, codebook_entropy: str = "shared",
                 group_dims: list[int] | None = None, factorized_bits: list[int] | None = None) -> None:
        super().__init__()
        dims = [int(g) for g in group_dims] if group_dims is not None else [group_dim] * num_groups
        if not dims or min(dims) < 1 or num_groups < 1:
            raise ConfigError(f"lfq: groups need >= 1 dimension each, got num_groups={num_groups}, "
                              f"group_dim={group_dim}, group_dims={group_dims}")
        if max(dims) > 20:
            raise ConfigError(f"lfq: a group of {max(dims)} dimensions means 2^{max(dims)} codes in the entropy loss; "
                              "use more groups of fewer dimensions (WeTok: groups of 8)")
        if codebook_entropy not in CODEBOOK_ENTROPY_POOLS:
            raise ConfigError(f"lfq: codebook_entropy must be one of {CODEBOOK_ENTROPY_POOLS}, "
                              f"got {codebook_entropy!r}")
        if codebook_entropy == "shared" and len(set(dims)) > 1:
            raise ConfigError(f"lfq: codebook_entropy='shared' pools one usage histogram over groups of equal size; "
                              f"group_dims={dims} are unequal, use 'sum' (BSQ) or 'mean'")
        self.group_dims = dims
        self.num_groups, self.group_dim = len(dims), dims[0]  # group_dim: the size when the groups are equal
        self.code_dim = sum(dims)
        bits = [int(b) for b in factorized_bits] if factorized_bits is not None else list(dims)
        if min(bits) < 1 or sum(bits) != self.code_dim:
            raise ConfigError(f"lfq: factorized_bits={factorized_bits} must be positive and add up to the code's "
                              f"{self.code_dim} bits (e.g. [6, 12] for 18)")
        self.token_bits = bits
        self.token_offsets = [sum(bits[:k]) for k in range(len(bits))]
        self.codebook_sizes = tuple(2**b for b in bits)
        self.entropy_weight = entropy_weight
        self.sample_entropy_weight, self.codebook_entropy_weight = sample_entropy_weight, codebook_entropy_weight
        self.commitment_weight, self.entropy_temperature = commitment_weight, entropy_temperature
        self.codebook_entropy = codebook_entropy
        self.register_buffer("bit_weights", 2 ** torch.arange(max(bits)), persistent=False)

    # ---- indices ----------------------------------------------------------------------------------------------
    @property
    def flat_fits_int64(self) -> bool:
        return self.code_dim <= 62

    def _slices(self) -> list[tuple[int, int]]:
        return list(zip(self.token_offsets, self.token_bits))

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., D) codes (any sign pattern; > 0 is bit 1) → (..., K) int64 sub-indices (little-endian per slice)."""
        bits = (codes > 0).long()
        return torch.stack([(bits[..., o:o + b] * self.bit_weights[:b]).sum(-1) for o, b in self._slices()], -1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., K) sub-indices → (..., D) ±1 codes."""
        idx = indices.long()
        bits = [(idx[..., k, None] >> torch.arange(b, device=idx.device)) & 1 for k, b in enumerate(self.token_bits)]
        return torch.cat(bits, -1).float() * 2 - 1

    def flat_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., K) sub-indices → (...) one int64 index in [0, 2^D): the little-endian index of all D bits."""
        if not self.flat_fits_int64:
            raise ValueError(f"lfq: a flat index of {self.code_dim} bits does not fit in int64; use the "
                             f"{len(self.token_bits)} sub-indices")
        shifts = torch.tensor(self.token_offsets, device=indices.device)
        return (indices.long() << shifts).sum(-1)

    def unflatten_indices(self, flat: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`flat_indices`: (...) → (..., K)."""
        shifts = torch.tensor(self.token_offsets, device=flat.device)
        masks = torch.tensor([2**b - 1 for b in self.token_bits], device=flat.device)
        return (flat.long().unsqueeze(-1) >> shifts) & masks

    # ---- forward ----------------------------------------------------------------------------------------------
    def entropy_terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample entropy, codebook entropy) for (M, D) latents, pooled over groups as configured: BSQ
        (``"sum"``) sums both over groups; the others average the per-sample entropy over groups."""
        sample, codebook, shared = group_entropy_terms(z, self.group_dims, self.entropy_temperature)
        if self.codebook_entropy == "sum":
            return sample.sum(), codebook.sum()
        return sample.mean(), shared if self.codebook_entropy == "shared" else codebook.mean()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, N, D) → quantized ±1 (B, N, D) (straight-through), indices (B, N, K)."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"lfq: expected latents with {self.code_dim} channels (groups {self.group_dims}), "
                             f"got {z.shape[-1]}")
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
        stats.update(usage_stats(indices.detach(), self.codebook_sizes))
        return QuantizerOutput(quantized, indices, losses, stats)

