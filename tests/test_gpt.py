"""The GPT generator: KV cache vs full recompute, CFG, seeds, class dropout, overfitting, save/load, RoPE, heads."""

import pytest
import torch
from torch import nn

import vistok
from vistok.errors import ConfigError
from vistok.generators import GPT, GPT_SIZES, build_head, rope_coords
from vistok.generators.gpt import gpt
from vistok.generators.kv_cache import KVCache
from vistok.layers import RoPE, apply_rope, swiglu_hidden_dim
from vistok.spec import TokenSpec

GRID = TokenSpec.vocab(32, grid=(4, 4))
SEQ = TokenSpec.vocab(32, length=10, prefix_ok=True)
LABELS = torch.tensor([0, 1, 2, 3, 1])


def tiny(spec: TokenSpec = GRID, seed: int = 0, **kw) -> GPT:
    """A tiny GPT with large random weights, so logits depend clearly on condition and context (the LlamaGen init
    zeroes the output head: every logit would be 0 and every path would trivially agree)."""
    torch.manual_seed(seed)
    model = GPT(spec.to_dict(), num_classes=4, dim=64, depth=2, heads=4, **kw)
    for p in model.parameters():
        if p.ndim >= 2:
            nn.init.normal_(p, std=0.15)
    return model.eval()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def teacher_forced_logits(model: GPT, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (B, n, V) of one causal pass over [prefix, tokens[:, :-1]], the training forward's view."""
    x = torch.cat([prefix, model.head.embed(tokens[:, :-1])], dim=1)
    return model.head.logits(model.backbone(x)[:, prefix.shape[1] - 1:])


# ---- KV cache ---------------------------------------------------------------------------------------------------
# The two paths reduce in different shapes, so float32 rounding differs by ~1e-6, and CFG's l_u + s·(l_c − l_u)
# magnifies that by up to 2s − 1; float64 checks the algorithm itself to 1e-5 with guidance too.
@pytest.mark.parametrize("spec", [GRID, SEQ], ids=["grid", "seq"])
@pytest.mark.parametrize("dtype, cfg_scale, schedule", [
    (torch.float32, 1.0, "constant"), (torch.float64, 1.0, "constant"), (torch.float64, 3.0, "constant"),
    (torch.float64, 2.5, "linear")])
def test_kv_cache_matches_full_recompute(spec, dtype, cfg_scale, schedule):
    model = tiny(spec).to(dtype)
    tokens = model.generate(LABELS, cfg_scale=cfg_scale, cfg_schedule=schedule, generator=seeded(0))
    assert tokens.shape == (5, spec.length) and tokens.dtype == torch.int64
    cached = model.step_logits(LABELS, tokens, cfg_scale=cfg_scale, cfg_schedule=schedule, use_cache=True)
    full = model.step_logits(LABELS, tokens, cfg_scale=cfg_scale, cfg_schedule=schedule, use_cache=False)
    assert cached.shape == (5, spec.length, 32) and cached.dtype == dtype
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    slow = model.generate(LABELS, cfg_scale=cfg_scale, cfg_schedule=schedule, generator=seeded(0), use_cache=False)
    assert torch.equal(tokens, slow)
    # greedy decoding picks the argmax of exactly these per-step logits
    greedy = model.generate(LABELS, cfg_scale=cfg_scale, cfg_schedule=schedule, temperature=0)
    greedy_logits = model.step_logits(LABELS, greedy, cfg_scale=cfg_scale, cfg_schedule=schedule)
    assert torch.equal(greedy, greedy_logits.argmax(-1))


@pytest.mark.parametrize("spec", [GRID, SEQ], ids=["grid", "seq"])
def test_decoding_matches_the_training_forward(spec):
    model = tiny(spec)
    tokens = model.generate(LABELS, generator=seeded(1))
    expected = teacher_forced_logits(model, model.cond(LABELS), tokens)
    torch.testing.assert_close(model.step_logits(LABELS, tokens), expected, atol=1e-5, rtol=0)
    loss = nn.functional.cross_entropy(expected.flatten(0, 1), tokens.flatten())
    torch.testing.assert_close(model(tokens, LABELS).loss, loss, atol=1e-5, rtol=0)


def test_kv_cache_chunked_prefill_equals_one_pass():
    model = tiny(GRID)
    x = torch.randn(2, 9, 64)
    whole = model.backbone(x)
    cache = model.new_cache(2, 12)
    parts = [model.backbone(x[:, a:b], a, cache) for a, b in ((0, 4), (4, 7), (7, 9))]  # prefill in three chunks
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=0)
    with pytest.raises(IndexError, match="12 positions"):
        KVCache(1, 12, 2, 8).update(10, torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8))


# ---- classifier-free guidance ----------------------------------------------------------------------------------
def test_cfg_scale_one_is_the_conditional_model():
    model = tiny(GRID)
    tokens = model.generate(LABELS, generator=seeded(2))
    doubled = model.step_logits(LABELS, tokens, cfg_scale=1.0, guidance=True)
    conditional = model.step_logits(LABELS, tokens, cfg_scale=1.0, guidance=False)
    torch.testing.assert_close(doubled, conditional, atol=1e-5, rtol=0)
    a = model.generate(LABELS, cfg_scale=1.0, guidance=True, generator=seeded(3))
    b = model.generate(LABELS, cfg_scale=1.0, guidance=False, generator=seeded(3))
    assert torch.equal(a, b)


def test_cfg_combines_conditional_and_null_logits():
    model = tiny(GRID)
    tokens = model.generate(LABELS, generator=seeded(4))
    cond = teacher_forced_logits(model, model.cond(LABELS), tokens)
    uncond = teacher_forced_logits(model, model.cond.null(len(LABELS)), tokens)
    assert (cond - uncond).abs().max() > 0.1  # the null class really is a different condition
    guided = model.step_logits(LABELS, tokens, cfg_scale=3.0)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), atol=1e-4, rtol=0)
    ramp = model.step_logits(LABELS, tokens, cfg_scale=3.0, cfg_schedule="linear")
    torch.testing.assert_close(ramp[:, 0], cond[:, 0], atol=1e-5, rtol=0)  # linear starts at scale 1
    torch.testing.assert_close(ramp[:, -1], guided[:, -1], atol=1e-5, rtol=0)  # and ends at the full scale


# ---- seeds and sampling options --------------------------------------------------------------------------------
def test_seeds_temperature_and_top_k():
    model = tiny(GRID)
    a = model.generate(LABELS, cfg_scale=2.0, generator=seeded(7))
    b = model.generate(LABELS, cfg_scale=2.0, generator=seeded(7))
    c = model.generate(LABELS, cfg_scale=2.0, generator=seeded(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(LABELS, cfg_scale=2.0, temperature=0)
    assert torch.equal(greedy, model.generate(LABELS, cfg_scale=2.0, temperature=0))
    assert not torch.equal(greedy, a)
    top1 = model.generate(LABELS, cfg_scale=2.0, top_k=1, generator=seeded(9))
    assert torch.equal(top1, greedy)
    nucleus = model.generate(LABELS, cfg_scale=2.0, top_p=1e-6, generator=seeded(9))  # only the top token
    assert torch.equal(nucleus, greedy)


def test_num_tokens_only_for_prefix_ok_specs():
    assert tiny(SEQ).generate(LABELS, num_tokens=4, generator=seeded(0)).shape == (5, 4)
    assert torch.isfinite(tiny(SEQ)(torch.randint(0, 32, (5, 4)), LABELS).loss)  # prefixes train too
    with pytest.raises(ConfigError, match="prefix_ok"):
        tiny(GRID).generate(LABELS, num_tokens=4)
    with pytest.raises(ConfigError, match="1..10"):
        tiny(SEQ).generate(LABELS, num_tokens=11)


# ---- class dropout ---------------------------------------------------------------------------------------------
def test_class_dropout_only_in_training():
    model = tiny(GRID, class_dropout=1.0)
    prefixes = []
    model.cond.register_forward_hook(lambda mod, args, out: prefixes.append(out.detach()))
    tokens = torch.randint(0, 32, (5, 16), generator=seeded(0))
    null = model.cond.null(5)
    model.train()(tokens, LABELS)
    assert torch.equal(prefixes[-1], null)
    model.eval()(tokens, LABELS)
    assert torch.equal(prefixes[-1], model.cond.embedding.weight[LABELS][:, None])
    assert not (prefixes[-1] == null).all(-1).any()


def test_class_conditioning_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        tiny(GRID).generate(torch.tensor([4]))  # 4 is the null row, not a class


# ---- learning ----------------------------------------------------------------------------------------------------
def test_overfits_fixed_sequences_and_greedy_generation_reproduces_them():
    torch.manual_seed(0)
    model = GPT(GRID.to_dict(), num_classes=4, dim=64, depth=2, heads=4, class_dropout=0.0)
    seqs = torch.randint(0, 32, (4, 16), generator=seeded(0))
    labels = torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):
        out = model(seqs, labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert set(out.losses) == {"ce"} and "acc" in out.stats
    assert losses[-1] < 0.25 * losses[0]
    assert torch.equal(model.eval().generate(labels, temperature=0), seqs)


# ---- save / load -------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    model = tiny(SEQ, class_names=["a", "b", "c", "d"])
    tokens = model.generate(LABELS, cfg_scale=2.0, generator=seeded(0))
    expected = model.step_logits(LABELS, tokens, cfg_scale=2.0)
    model.save_pretrained(tmp_path / "gpt")
    for loaded in (GPT.from_pretrained(tmp_path / "gpt"), vistok.load(tmp_path / "gpt", kind="generator")):
        assert isinstance(loaded, GPT) and not loaded.training
        assert loaded.token_spec == SEQ and loaded.class_names == ["a", "b", "c", "d"]
        assert torch.equal(loaded.step_logits(LABELS, tokens, cfg_scale=2.0), expected)
        assert torch.equal(loaded.generate(LABELS, cfg_scale=2.0, generator=seeded(0)), tokens)


def test_sizes_match_llamagen_parameter_counts():
    spec = TokenSpec.vocab(16384, grid=(16, 16)).to_dict()  # LlamaGen's VQ-16 tokens of 256px ImageNet
    reported = {"gpt_b": 111e6, "gpt_l": 343e6, "gpt_xl": 775e6}  # LlamaGen Table 2
    for size, n in reported.items():
        with torch.device("meta"):
            model = gpt(size, token_spec=spec, num_classes=1000)
        assert (model.dim, model.depth, model.heads) == tuple(GPT_SIZES[size].values())
        assert abs(sum(p.numel() for p in model.parameters()) - n) < 0.01 * n
    assert swiglu_hidden_dim(768) == 2048 and swiglu_hidden_dim(1280) == 3584
    with pytest.raises(ValueError, match="gpt_b"):
        gpt("gpt_q", token_spec=spec, num_classes=10)


# ---- RoPE ----------------------------------------------------------------------------------------------------------
def rotated_dot(rope: RoPE, q: torch.Tensor, k: torch.Tensor, pq: list[int], pk: list[int]) -> torch.Tensor:
    cos, sin = rope(torch.tensor([pq, pk]))  # (2, hd/2)
    qr = apply_rope(q.view(1, 1, 1, -1), cos[:1], sin[:1])
    kr = apply_rope(k.view(1, 1, 1, -1), cos[1:], sin[1:])
    return (qr * kr).sum()


def test_rope_1d_depends_only_on_the_offset():
    rope = RoPE(32, n_axes=1)
    q, k = torch.randn(32, generator=seeded(0)), torch.randn(32, generator=seeded(1))
    base = rotated_dot(rope, q, k, [7], [3])
    for shift in (-3, 1, 50):
        torch.testing.assert_close(rotated_dot(rope, q, k, [7 + shift], [3 + shift]), base, atol=1e-4, rtol=1e-5)
    assert (rotated_dot(rope, q, k, [7], [5]) - base).abs() > 1e-3
    torch.testing.assert_close(rotated_dot(rope, q, k, [4], [4]), q @ k, atol=1e-4, rtol=1e-5)  # offset 0: no-op


def test_rope_2d_depends_only_on_the_offset_per_axis():
    rope = RoPE(32, n_axes=2)
    q, k = torch.randn(32, generator=seeded(2)), torch.randn(32, generator=seeded(3))
    base = rotated_dot(rope, q, k, [5, 2], [1, 6])
    for dr, dc in ((1, 0), (0, 3), (-4, 7)):
        torch.testing.assert_close(rotated_dot(rope, q, k, [5 + dr, 2 + dc], [1 + dr, 6 + dc]), base,
                                   atol=1e-4, rtol=1e-5)
    for other in ([5, 3], [6, 2]):  # changing either axis' offset changes the score
        assert (rotated_dot(rope, q, k, other, [1, 6]) - base).abs() > 1e-3
    # the first half of head_dim follows the row, the second half the column
    x = torch.randn(1, 1, 1, 32)
    cos, sin = rope(torch.tensor([[0, 9]]))
    assert torch.equal(apply_rope(x, cos, sin)[..., :16], x[..., :16])
    assert not torch.allclose(apply_rope(x, cos, sin)[..., 16:], x[..., 16:])


def test_rope_coords_follow_the_layout():
    grid = TokenSpec.vocab(8, grid=(2, 3))
    assert rope_coords(grid, 1).tolist() == [[0, 0], [1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    assert rope_coords(TokenSpec.vocab(8, length=3), 2).tolist() == [[0], [1], [2], [3], [4]]


# ---- heads ---------------------------------------------------------------------------------------------------------
def test_every_kind_has_a_head_and_a_missing_one_is_a_clear_error(monkeypatch):
    from vistok import registry
    from vistok.spec import KINDS

    assert set(KINDS) <= set(registry.list_names("head"))
    bits = TokenSpec.bits(8, grid=(4, 4))
    monkeypatch.delitem(registry._REGISTRY["head"], "bits")
    with pytest.raises(ConfigError, match="no generator head for TokenSpec kind 'bits'"):
        build_head(bits, 64)
    with pytest.raises(ConfigError, match="'bits'"):
        GPT(bits.to_dict(), num_classes=4, dim=64, depth=1, heads=4)


def test_named_sizes_from_config_and_explicit_values_win():
    spec = TokenSpec.vocab(16, grid=(4, 4)).to_dict()
    with torch.device("meta"):
        b = vistok.build("generator", {"name": "gpt", "size": "gpt_b"}, token_spec=spec, num_classes=2)
        b6 = vistok.build("generator", {"name": "gpt", "size": "gpt_b", "depth": 6}, token_spec=spec, num_classes=2)
        default = vistok.build("generator", {"name": "gpt"}, token_spec=spec, num_classes=2)
    assert (b.dim, b.depth, b.heads) == (768, 12, 12) and len(b.blocks) == 12
    assert (b6.dim, b6.depth, b6.heads) == (768, 6, 12)
    assert (default.dim, default.depth, default.heads) == (256, 6, 8)  # gpt_tiny
    with pytest.raises(ConfigError, match="unknown GPT size 'gpt_q'"):
        vistok.build("generator", {"name": "gpt", "size": "gpt_q"}, token_spec=spec, num_classes=2)
