"""Pure sampling functions: top-k, top-p, temperature, CFG schedules."""

import math

import pytest
import torch

from vistok.generators.sampling import apply_top_k, apply_top_p, cfg_scale_at, sample_logits

PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # ranked: index 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


@pytest.mark.parametrize("p, expected", [(0.3, {1}), (0.5, {1}), (0.75, {1, 3}), (0.9, {1, 3, 2}),
                                         (0.99, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3}), (0.0, {1})])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    logits = PROBS.log()
    out = apply_top_p(logits, p)
    assert kept(out) == expected
    assert torch.equal(out[list(expected)], logits[list(expected)])  # kept logits are untouched


def test_top_p_works_per_row_in_a_batch():
    logits = torch.stack([PROBS.log(), PROBS.flip(0).log()])  # (2, 4); row 1 ranks 2, 0, 1, 3
    out = apply_top_p(logits, 0.75)
    assert kept(out[0]) == {1, 3} and kept(out[1]) == {2, 0}


def test_top_k():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    assert [kept(r) for r in apply_top_k(logits, 2)] == [{1, 3}, {0, 1}]
    assert torch.equal(apply_top_k(logits, 0), logits)
    assert torch.equal(apply_top_k(logits, 10), logits)


def test_temperature_zero_and_top_k_one_are_greedy():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1)
    assert torch.equal(sample_logits(logits, temperature=0.0), greedy)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(sample_logits(logits, temperature=1.0, top_k=1, generator=g), greedy)
    # and plain sampling is not greedy (so the two checks above can fail)
    assert not torch.equal(sample_logits(logits, 1.0, generator=torch.Generator().manual_seed(0)), greedy)


def test_sampling_is_a_function_of_the_seed_and_follows_the_distribution():
    logits = PROBS.log().expand(20000, 4)
    a = sample_logits(logits, generator=torch.Generator().manual_seed(1))
    b = sample_logits(logits, generator=torch.Generator().manual_seed(1))
    c = sample_logits(logits, generator=torch.Generator().manual_seed(2))
    assert a.shape == (20000,) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)
    freq = torch.bincount(a, minlength=4).float() / len(a)
    torch.testing.assert_close(freq, PROBS, atol=0.015, rtol=0)
    # top-p 0.75 renormalizes over {1, 3}: 0.5/0.8 and 0.3/0.8
    d = sample_logits(logits, top_p=0.75, generator=torch.Generator().manual_seed(3))
    freq = torch.bincount(d, minlength=4).float() / len(d)
    torch.testing.assert_close(freq, torch.tensor([0.0, 0.625, 0.0, 0.375]), atol=0.015, rtol=0)


def test_sample_logits_keeps_leading_shape():
    logits = torch.randn(2, 3, 7)
    assert sample_logits(logits, generator=torch.Generator().manual_seed(0)).shape == (2, 3)
    assert sample_logits(logits, temperature=0).shape == (2, 3)


def test_cfg_schedules():
    assert [cfg_scale_at(i, 5, 3.0, "constant") for i in range(5)] == [3.0] * 5
    linear = [cfg_scale_at(i, 5, 3.0, "linear") for i in range(5)]
    assert all(math.isclose(a, b) for a, b in zip(linear, [1.0, 1.5, 2.0, 2.5, 3.0]))
    assert cfg_scale_at(0, 1, 3.0, "linear") == 3.0
    with pytest.raises(ValueError, match="sigmoid"):
        cfg_scale_at(0, 5, 3.0, "sigmoid")
