"""Open-MAGVIT2's asymmetric token factorization: an 18-bit LFQ code as sub-tokens of [6, 12] bits (configurable),
group LFQ with unequal groups, and per-sub-token CFG scales, temperatures, top-k and top-p in the generator."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import vistok
from vistok.errors import ConfigError
from vistok.generators import GPT
from vistok.quantizers.lfq import GroupLFQ, group_entropy_terms

ROOT = Path(__file__).resolve().parents[1]


def _little_endian(bits: torch.Tensor) -> torch.Tensor:
    return (bits.long() * 2 ** torch.arange(bits.shape[-1])).sum(-1)


def test_18_bit_code_split_into_6_and_12_bit_subtokens():
    torch.manual_seed(0)
    plain = GroupLFQ(num_groups=1, group_dim=18).train()
    split = GroupLFQ(num_groups=1, group_dim=18, factorized_bits=[6, 12]).train()
    assert split.codebook_sizes == (64, 4096) and plain.codebook_sizes == (2**18,)
    z = torch.randn(2, 5, 18)
    a, b = plain(z), split(z)
    # Open-MAGVIT2's pre/post indices: channels 0-5 and 6-17, each little-endian (lookup_free_quantize.py)
    positive = z > 0
    assert b.indices.shape == (2, 5, 2)
    assert torch.equal(b.indices[..., 0], _little_endian(positive[..., :6]))
    assert torch.equal(b.indices[..., 1], _little_endian(positive[..., 6:]))
    # the split changes the token layout only: same codes, same losses, same flat 18-bit index
    assert torch.equal(a.quantized, b.quantized)
    for name in a.losses:
        torch.testing.assert_close(a.losses[name], b.losses[name])
    assert torch.equal(split.flat_indices(b.indices), a.indices[..., 0])
    assert torch.equal(split.unflatten_indices(a.indices[..., 0]), b.indices)
    assert torch.equal(split.indices_to_codes(b.indices), b.quantized.detach())
    assert GroupLFQ(num_groups=1, group_dim=18, factorized_bits=[12, 6]).eval()(z).indices.amax(dim=(0, 1)).tolist() \
        <= [4095, 63]
    with pytest.raises(ConfigError, match="add up to the code's 18 bits"):
        GroupLFQ(num_groups=1, group_dim=18, factorized_bits=[6, 6])


def test_group_lfq_with_unequal_groups():
    torch.manual_seed(1)
    q = GroupLFQ(group_dims=[6, 12], codebook_entropy="sum").train()
    assert q.code_dim == 18 and q.codebook_sizes == (64, 4096)
    z = torch.randn(40, 18) * 0.3
    sample, codebook, shared = group_entropy_terms(z, [6, 12], 0.01)
    assert shared is None and sample.shape == codebook.shape == (2,)
    for g, (lo, hi) in enumerate(((0, 6), (6, 18))):  # each group on its own 2^g codes
        s_g, c_g, _ = group_entropy_terms(z[:, lo:hi], 1, 0.01)
        torch.testing.assert_close(sample[g], s_g[0])
        torch.testing.assert_close(codebook[g], c_g[0])
    s, c = q.entropy_terms(z)
    torch.testing.assert_close(s, sample.sum())
    torch.testing.assert_close(c, codebook.sum())
    out = q(z[None])
    assert out.indices.shape == (1, 40, 2) and torch.equal(q.indices_to_codes(out.indices), out.quantized.detach())
    with pytest.raises(ConfigError, match="unequal"):
        GroupLFQ(group_dims=[6, 12])  # 'shared' pools one histogram: only for groups of equal size
    # equal entropy groups, sub-tokens across their boundary
    crossing = GroupLFQ(num_groups=2, group_dim=9, factorized_bits=[6, 12]).eval()
    idx = crossing(z[None]).indices
    assert torch.equal(idx[0, :, 1], _little_endian((z > 0)[:, 6:]))


def test_conv2d_tokenizer_gives_the_asymmetric_subvocab_spec():
    tok = vistok.build("tokenizer", {"name": "conv2d", "resolution": 16, "channels": 8, "channel_mult": [1, 2],
                                     "num_res_blocks": 1, "z_channels": 8, "mid_attention": False,
                                     "quantizer": {"name": "lfq", "num_groups": 1, "group_dim": 18,
                                                   "factorized_bits": [6, 12]}}).eval()
    spec = tok.token_spec
    assert spec.kind == "subvocab" and spec.vocab_sizes == (64, 4096)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tokens = tok.encode(x)
    assert tokens.shape == (2, 64, 2)
    with torch.no_grad():  # the two sub-tokens carry the whole 18-bit code: decoding them is the forward pass
        torch.testing.assert_close(tok.decode(tokens), tok(x).reconstruction.clamp(-1, 1))


SPEC = {"kind": "subvocab", "vocab_sizes": [8, 32], "layout": "grid", "length": 4, "grid": [2, 2]}
LABELS = torch.tensor([0, 1, 2])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    gpt = GPT(SPEC, num_classes=3, dim=32, depth=2, heads=2, head={"factorized_layers": 1})
    for p in gpt.parameters():
        if p.ndim >= 2:
            nn.init.normal_(p, std=0.3)  # the zero-initialised sub-token heads would make every scale agree
    return gpt.double().eval()


def test_per_subtoken_cfg_scales(model):
    tokens = model.generate(LABELS, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    a = model.step_logits(LABELS, tokens, cfg_scale=1.5)
    b = model.step_logits(LABELS, tokens, cfg_scale=3.0)
    mixed = model.step_logits(LABELS, tokens, cfg_scale=[1.5, 3.0])
    torch.testing.assert_close(mixed[:, :, 0], a[:, :, 0])  # sub-token 0 guided at 1.5
    torch.testing.assert_close(mixed[:, :, 1], b[:, :, 1])  # sub-token 1 at 3.0 (same forced sub-token 0)
    assert not torch.allclose(a[:, :, 1, :32], b[:, :, 1, :32])
    # a schedule ramps each sub-token's scale from 1: the first step is the conditional model for both
    ramp = model.step_logits(LABELS, tokens, cfg_scale=[1.5, 3.0], cfg_schedule="linear")
    torch.testing.assert_close(ramp[:, 0], model.step_logits(LABELS, tokens, cfg_scale=1.0)[:, 0])
    # [1, 1] needs no unconditional branch; [1, 3] does (guidance on sub-token 1 only)
    torch.testing.assert_close(model.step_logits(LABELS, tokens, cfg_scale=[1.0, 1.0]),
                               model.step_logits(LABELS, tokens, cfg_scale=1.0))
    only_second = model.step_logits(LABELS, tokens, cfg_scale=[1.0, 3.0])
    torch.testing.assert_close(only_second[:, :, 1], b[:, :, 1])


def test_per_subtoken_temperature_top_k_top_p(model):
    seed = torch.Generator().manual_seed
    same = model.generate(LABELS, cfg_scale=2.0, temperature=[0.7, 0.7], top_k=[5, 5], generator=seed(3))
    assert torch.equal(same, model.generate(LABELS, cfg_scale=2.0, temperature=0.7, top_k=5, generator=seed(3)))
    greedy_first = model.generate(LABELS, cfg_scale=2.0, temperature=[0.0, 1.0], generator=seed(4))
    logits = model.step_logits(LABELS, greedy_first, cfg_scale=2.0)
    assert torch.equal(greedy_first[..., 0], logits[:, :, 0, :8].argmax(-1))  # sub-token 0 greedy
    samples = torch.stack([model.generate(LABELS, cfg_scale=2.0, temperature=[0.0, 1.0], generator=seed(s))
                           for s in range(6)])
    assert (samples[..., 1] != samples[:1, ..., 1]).any()  # sub-token 1 still sampled at temperature 1
    top1 = model.generate(LABELS, cfg_scale=2.0, top_k=[1, 0], generator=seed(5))
    assert torch.equal(top1[..., 0], model.step_logits(LABELS, top1, cfg_scale=2.0)[:, :, 0, :8].argmax(-1))
    with pytest.raises(ConfigError, match="temperature has 3 values for 2 sub-tokens"):
        model.generate(LABELS, temperature=[1.0, 1.0, 1.0])


def test_lists_are_refused_for_single_vocabulary_tokens():
    gpt = GPT({"kind": "vocab", "vocab_sizes": [16], "layout": "grid", "length": 4, "grid": [2, 2]}, num_classes=3,
              dim=32, depth=1, heads=2).eval()
    with pytest.raises(ConfigError, match="cfg_scale=.*subvocab tokens; this model's tokens are 'vocab'"):
        gpt.generate(LABELS, cfg_scale=[2.0, 1.5])
    with pytest.raises(ConfigError, match="temperature"):
        gpt.generate(LABELS, temperature=[1.0])


def test_sample_cli_takes_one_value_per_subtoken(model, tmp_path, capsys):
    copy.deepcopy(model).float().save_pretrained(tmp_path / "run")
    tok = vistok.build("tokenizer", {"name": "conv2d", "resolution": 8, "channels": 8, "channel_mult": [1, 2, 2],
                                     "num_res_blocks": 1, "z_channels": 8, "mid_attention": False,
                                     "quantizer": {"name": "lfq", "num_groups": 1, "group_dim": 8,
                                                   "factorized_bits": [3, 5]}})
    assert tok.token_spec.vocab_sizes == (8, 32) and tok.token_spec.grid == (2, 2)
    tok.save_pretrained(tmp_path / "run" / "tokenizer")
    spec = importlib.util.spec_from_file_location("sample_cli", ROOT / "sample.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    common = ["--model", str(tmp_path / "run"), "--prompt", "1", "--num-per-prompt", "2", "--device", "cpu"]
    assert cli.main([*common, "--cfg-scale", "1.75,1.85", "--temperature", "1.1,1.0", "--top-k", "0,4",
                     "--out", str(tmp_path / "out")]) == 0
    settings = json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]
    assert settings["cfg_scale"] == [1.75, 1.85] and settings["temperature"] == [1.1, 1.0]
    assert settings["top_k"] == [0, 4] and settings["top_p"] == 1.0
    capsys.readouterr()
    assert cli.main([*common, "--cfg-scale", "1,2,3", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sample.py: error: cfg_scale has 3 values for 2 sub-tokens; give one per sub-token or one for all"]
