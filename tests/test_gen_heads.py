"""Heads per TokenSpec kind: hand-made likelihoods, the decoding distributions equal the training loss (chain rule),
KV cache equality, CFG, greedy/seeded sampling and variable-length 1D generation — for every kind."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vistok.generators import GPT, build_head
from vistok.generators.heads.bins import TOKENBRIDGE_ORDER_16, dequantized_bin_values
from vistok.spec import TokenSpec

LABELS = torch.tensor([0, 1, 2])
HEAD_OPTIONS = {"subvocab": {"factorized_layers": 1, "factorized_heads": 2},
                "bins": {"head_width": 32, "head_depth": 1, "head_heads": 2}}
GRID = {
    "vocab": TokenSpec.vocab(16, grid=(3, 3)),
    "subvocab": TokenSpec.subvocab([4, 8], grid=(3, 3)),
    "bits": TokenSpec.bits(5, grid=(3, 3)),
    "bins": TokenSpec.bins(3, 6, grid=(3, 3)),
}
SEQ = {k: TokenSpec.from_dict({**s.to_dict(), "layout": "seq", "grid": None, "prefix_ok": True})
       for k, s in GRID.items()}


def tiny(spec: TokenSpec, seed: int = 0, head: dict | None = None, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(spec.to_dict(), num_classes=4, dim=32, depth=2, heads=2,
                head=HEAD_OPTIONS.get(spec.kind) if head is None else head, **kw)
    for p in model.parameters():  # large random weights: zero-init heads would make every path agree trivially
        if p.ndim >= 2:
            nn.init.normal_(p, std=0.2)
    return model.eval()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nll_from_decoding(logits: torch.Tensor, tokens: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over positions of −Σ_channels log p(token) under the per-step decoding logits."""
    if kind == "vocab":
        logits, tokens = logits[:, :, None], tokens[..., None]
    logp = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, L, C)
    return -logp.sum(-1).mean()


# ---- the loss is the right likelihood ------------------------------------------------------------------------------
def test_bits_loss_is_the_sum_of_bernoulli_nlls_on_a_hand_made_case():
    head = build_head(TokenSpec.bits(2, length=1), 2)
    with torch.no_grad():
        head.output.weight.copy_(torch.eye(2))  # logits = hidden
    hidden, target = torch.tensor([[[2.0, -1.0]]]), torch.tensor([[[1, 1]]])
    loss, _ = head.loss(hidden, target)
    expected = math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))  # −log σ(2) − log σ(−1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_independent_subvocab_loss_is_the_sum_of_group_cross_entropies_on_a_hand_made_case():
    head = build_head(TokenSpec.subvocab([2, 3], length=1), 2, factorized_layers=0)
    with torch.no_grad():
        head.outputs[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.outputs[1].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]]))
    hidden, target = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0, 2]]])
    loss, _ = head.loss(hidden, target)
    # group 0 logits (1, 2), target 0; group 1 logits (3, 0, −1), target 2
    expected = (math.log(math.e + math.e ** 2) - 1) + (math.log(math.e ** 3 + 1 + math.e ** -1) + 1)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("kind", ["subvocab", "bins", "bits", "vocab"])
def test_zero_initialised_heads_start_at_the_uniform_likelihood(kind):
    spec = GRID[kind]
    torch.manual_seed(0)
    model = GPT(spec.to_dict(), num_classes=4, dim=32, depth=1, heads=2, head=HEAD_OPTIONS.get(kind))
    tokens = torch.stack([torch.randint(0, v, (2, 9)) for v in spec.vocab_sizes], -1)
    tokens = tokens[..., 0] if kind == "vocab" else tokens
    uniform = sum(math.log(v) for v in spec.vocab_sizes)  # nats per position
    assert model(tokens, LABELS[:2]).loss.item() == pytest.approx(uniform, abs=1e-5)


@pytest.mark.parametrize("kind", list(GRID))
def test_training_loss_equals_the_likelihood_of_the_decoding_distributions(kind):
    model = tiny(GRID[kind]).double()
    tokens = model.generate(LABELS, generator=seeded(0))
    logits = model.step_logits(LABELS, tokens)
    torch.testing.assert_close(model(tokens, LABELS).loss, nll_from_decoding(logits, tokens, kind), atol=1e-8,
                               rtol=0)


# ---- KV cache, CFG, sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(GRID))
@pytest.mark.parametrize("layout", ["grid", "seq"])
def test_kv_cache_matches_full_recompute_for_every_kind(kind, layout):
    spec = (GRID if layout == "grid" else SEQ)[kind]
    model = tiny(spec).double()
    tokens = model.generate(LABELS, cfg_scale=2.5, cfg_schedule="linear", generator=seeded(1))
    assert tokens.shape == (3, *spec.token_shape)
    spec.validate(tokens)
    cached = model.step_logits(LABELS, tokens, cfg_scale=2.5, cfg_schedule="linear", use_cache=True)
    full = model.step_logits(LABELS, tokens, cfg_scale=2.5, cfg_schedule="linear", use_cache=False)
    torch.testing.assert_close(cached, full, atol=1e-8, rtol=0)
    slow = model.generate(LABELS, cfg_scale=2.5, cfg_schedule="linear", generator=seeded(1), use_cache=False)
    assert torch.equal(tokens, slow)


@pytest.mark.parametrize("kind", list(GRID))
def test_seeds_and_greedy_decoding_for_every_kind(kind):
    model = tiny(GRID[kind])
    a = model.generate(LABELS, cfg_scale=2.0, generator=seeded(3))
    assert torch.equal(a, model.generate(LABELS, cfg_scale=2.0, generator=seeded(3)))
    assert not torch.equal(a, model.generate(LABELS, cfg_scale=2.0, generator=seeded(4)))
    greedy = model.generate(LABELS, cfg_scale=2.0, temperature=0)
    assert torch.equal(greedy, model.step_logits(LABELS, greedy, cfg_scale=2.0).argmax(-1))
    assert torch.equal(model.generate(LABELS, cfg_scale=2.0, top_k=1, generator=seeded(5)), greedy)


@pytest.mark.parametrize("kind", list(GRID))
def test_cfg_for_every_kind(kind):
    """Guided logits per kind: logits for vocab/subvocab/bits (per sub-token / per bit, with the same forced
    earlier sub-tokens in both branches), the feature before the channel head for bins (TokenBridge)."""
    spec = GRID[kind]
    head = tiny(spec).head.double()
    h_c, h_u = torch.randn(4, 32, dtype=torch.float64), torch.randn(4, 32, dtype=torch.float64)
    tokens = torch.stack([torch.randint(0, v, (4,)) for v in spec.vocab_sizes], -1)
    tokens = tokens[:, 0] if kind == "vocab" else tokens
    guided = head.forced_logits(h_c, h_u, 3.0, tokens)
    if kind == "bins":
        expected = head.forced_logits(h_u + 3.0 * (h_c - h_u), None, 1.0, tokens)
    else:
        lc, lu = head.forced_logits(h_c, None, 1.0, tokens), head.forced_logits(h_u, None, 1.0, tokens)
        expected = lu + 3.0 * (lc - lu)
    finite = torch.isfinite(expected)
    torch.testing.assert_close(guided[finite], expected[finite], atol=1e-9, rtol=0)
    assert torch.equal(torch.isfinite(guided), finite)
    assert (guided[finite] - head.forced_logits(h_c, None, 1.0, tokens)[finite]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", list(GRID))
def test_variable_length_1d_generates_exactly_the_requested_tokens(kind):
    model = tiny(SEQ[kind])
    for n in (1, 4, 9):
        tokens = model.generate(LABELS, num_tokens=n, generator=seeded(0))
        assert tokens.shape == (3, n, *SEQ[kind].token_shape[1:])
        SEQ[kind].validate(tokens)
    assert torch.isfinite(model.train()(tokens[:, :4], LABELS).loss)  # prefixes train too


# ---- kind-specific pieces -------------------------------------------------------------------------------------
def test_bits_embedding_is_linear_in_the_pm1_bit_vector():
    head = build_head(TokenSpec.bits(4, length=1), 8)
    bits = torch.tensor([[[1, 0, 1, 1]]])
    torch.testing.assert_close(head.embed(bits)[0, 0], head.bit_embedding.weight @ torch.tensor([1.0, -1, 1, 1]))


def test_subvocab_embedding_is_the_sum_of_sub_embeddings():
    head = build_head(TokenSpec.subvocab([4, 8], length=1), 8)
    t = torch.tensor([[[3, 5]]])
    torch.testing.assert_close(head.embed(t)[0, 0], head.tok_embeddings[0].weight[3] + head.tok_embeddings[1].weight[5])


def test_bins_values_are_truncated_gaussian_bin_means_and_the_order_is_tokenbridges():
    values = dequantized_bin_values(64)
    assert values.shape == (64,) and torch.all(values[1:] > values[:-1])
    torch.testing.assert_close(values, -values.flip(0), atol=1e-5, rtol=0)  # symmetric around 0
    # Monte-Carlo check of one bin's conditional mean: samples of N(0,1) that fall in bin 40
    normal = torch.distributions.Normal(0.0, 1.0)
    a, b = normal.icdf(torch.tensor(40 / 64)), normal.icdf(torch.tensor(41 / 64))
    x = torch.randn(2_000_000, generator=seeded(0))
    assert values[40].item() == pytest.approx(x[(x > a) & (x < b)].mean().item(), abs=2e-3)
    head = build_head(TokenSpec.bins(16, 64, length=1), 32, head_width=32, head_depth=1, head_heads=2)
    assert head.channel_ar.order == list(TOKENBRIDGE_ORDER_16)
    codes = head.token_codes(torch.tensor([[[5] * 16]]))
    assert torch.equal(head.nearest_tokens(codes), torch.tensor([[[5] * 16]]))
    torch.testing.assert_close(head.embed(torch.tensor([[[5] * 16]]))[0, 0],
                               head.value_embedding.weight @ torch.full((16,), values[5].item()))


def test_factorized_subvocab_conditions_later_groups_on_earlier_ones():
    model = tiny(GRID["subvocab"])
    h = torch.randn(2, 32)
    a = model.head.forced_logits(h, None, 1.0, torch.tensor([[0, 0], [0, 0]]))
    b = model.head.forced_logits(h, None, 1.0, torch.tensor([[3, 0], [3, 0]]))
    torch.testing.assert_close(a[:, 0], b[:, 0])  # group 0 does not see itself
    assert (a[:, 1] - b[:, 1]).abs().max() > 1e-3  # group 1 sees group 0
    assert F.cross_entropy(a[:, 0], torch.tensor([0, 0])).isfinite()
