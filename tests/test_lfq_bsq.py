"""Group LFQ with ``codebook_entropy="sum"`` computes BSQ's soft entropy terms: zhaoyue-zephyrus/bsq-vit
``BinarySphericalQuantizer.soft_entropy_loss`` (groups of ``group_size`` bits, no l2 norm) sums the per-group
per-sample entropies (then averages over tokens) *and* the per-group codebook entropies. Restated here from that
description, independently of vistok's implementation."""

import torch

from vistok.quantizers.lfq import GroupLFQ


def _bsq_soft_entropy(z: torch.Tensor, group_size: int, inv_temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    groups = z.double().unflatten(-1, (-1, group_size))  # (M, G, g)
    k = torch.arange(2**group_size)
    # BSQ's sub-codes: big-endian rows; the set of codes (and so every entropy) does not depend on the bit order
    codes = (((k[:, None] >> torch.arange(group_size - 1, -1, -1)) & 1) * 2 - 1).double()
    prob = (2 * torch.einsum("mgc,dc->mgd", groups, codes) * inv_temperature).softmax(-1)  # −distance · invT
    per_sample = -(prob * torch.log(prob + 1e-30)).sum(-1).sum(-1).mean()  # Σ over groups, mean over tokens
    avg_prob = prob.mean(0)  # (G, 2^g)
    codebook = -(avg_prob * torch.log(avg_prob + 1e-30)).sum(-1).sum()  # Σ over groups
    return per_sample, codebook


def test_sum_pooling_is_bsq():
    torch.manual_seed(0)
    z = torch.randn(300, 12) * 0.4
    for tau in (0.5, 0.05):
        q = GroupLFQ(num_groups=3, group_dim=4, entropy_temperature=tau, codebook_entropy="sum")
        sample, codebook = q.entropy_terms(z)
        bsq_sample, bsq_codebook = _bsq_soft_entropy(z, 4, 1 / tau)
        torch.testing.assert_close(sample.double(), bsq_sample, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(codebook.double(), bsq_codebook, rtol=1e-4, atol=1e-5)
    # the training loss is then w_e·(w_s·H_sample − w_c·H_codebook) of those BSQ terms (here at the last τ)
    out = GroupLFQ(num_groups=3, group_dim=4, entropy_temperature=0.05, codebook_entropy="sum").train()(z[None])
    torch.testing.assert_close(out.losses["entropy"].double(), 0.1 * (bsq_sample - bsq_codebook), rtol=1e-4,
                               atol=1e-5)
