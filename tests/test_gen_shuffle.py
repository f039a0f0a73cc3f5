"""Token-Shuffle: the window layout round-trips, odd grids fail clearly, the s² tokens of a window are predicted in
one step (steps fall by s²), the KV cache matches recomputation and decoding matches the training forward."""

import pytest
import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.generators import GPT
from vistok.generators.shuffle import from_windows, to_windows
from vistok.spec import TokenSpec

LABELS = torch.tensor([0, 1, 3])


def tiny(spec: TokenSpec, window: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(spec.to_dict(), num_classes=4, dim=32, depth=2, heads=2, window=window)
    for p in model.parameters():
        if p.ndim >= 2:
            nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.mark.parametrize("window", [1, 2, 4])
@pytest.mark.parametrize("grid", [(8, 8), (4, 12)])
def test_shuffle_then_unshuffle_is_the_identity(window, grid):
    L = grid[0] * grid[1]
    tokens = torch.randint(0, 100, (2, L))
    windows = to_windows(tokens, grid, window)
    assert windows.shape == (2, L // window ** 2, window ** 2)
    assert torch.equal(from_windows(windows, grid, window), tokens)
    channels = torch.randint(0, 100, (2, L, 3))  # trailing channel axes ride along
    assert torch.equal(from_windows(to_windows(channels, grid, window), grid, window), channels)
    # window 0 holds the top-left s×s block in raster order
    w = grid[1]
    expected = torch.tensor([r * w + c for r in range(window) for c in range(window)])
    assert torch.equal(to_windows(torch.arange(L)[None], grid, window)[0, 0], expected)


def test_grids_the_window_does_not_tile_get_a_clear_error():
    with pytest.raises(ConfigError, match=r"window=2 does not tile the 5×5 token grid"):
        GPT(TokenSpec.vocab(16, grid=(5, 5)).to_dict(), num_classes=2, dim=32, depth=1, heads=2, window=2)
    with pytest.raises(ConfigError, match=r"window=4 does not tile the 4×6"):
        to_windows(torch.zeros(1, 24), (4, 6), 4)
    with pytest.raises(ConfigError, match="1D sequence"):
        GPT(TokenSpec.vocab(16, length=16).to_dict(), num_classes=2, dim=32, depth=1, heads=2, window=2)


@pytest.mark.parametrize("window", [2, 4])
@pytest.mark.parametrize("spec", [TokenSpec.vocab(16, grid=(4, 8)), TokenSpec.bits(3, grid=(4, 8))],
                         ids=["vocab", "bits"])
def test_kv_cache_steps_and_training_forward(window, spec):
    model = tiny(spec, window).double()
    calls = []
    original = model.backbone
    model.backbone = lambda *a, **k: calls.append(a[0].shape[1]) or original(*a, **k)
    tokens = model.generate(LABELS, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, *spec.token_shape)
    assert len(calls) == 32 // window ** 2  # one prefill + (L/s² − 1) decode steps: steps fall by s²
    model.backbone = original
    cached = model.step_logits(LABELS, tokens, cfg_scale=2.0, use_cache=True)
    full = model.step_logits(LABELS, tokens, cfg_scale=2.0, use_cache=False)
    torch.testing.assert_close(cached, full, atol=1e-8, rtol=0)
    # unguided decoding distributions give exactly the training loss (teacher-forced windows, raster targets)
    logits = model.step_logits(LABELS, tokens)
    if spec.kind == "vocab":
        logits, targets = logits[:, :, None], tokens[..., None]
    else:
        targets = tokens
    nll = -logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1).sum(-1).mean()
    torch.testing.assert_close(model(tokens, LABELS).loss, nll, atol=1e-8, rtol=0)


def test_tokens_of_a_window_are_predicted_from_earlier_windows_only():
    model = tiny(TokenSpec.vocab(16, grid=(4, 4)), 2).double()
    tokens = torch.randint(0, 16, (1, 16), generator=torch.Generator().manual_seed(1))
    base = model.step_logits(LABELS[:1], tokens)
    changed = tokens.clone()
    changed[0, [2, 3, 6, 7]] = (changed[0, [2, 3, 6, 7]] + 1) % 16  # window 1 (top-right 2×2)
    after = model.step_logits(LABELS[:1], changed)
    window_of = to_windows(torch.arange(16)[None], (4, 4), 2)[0]  # (4 windows, 4 tokens)
    for w in (0, 1):  # windows 0 and 1 do not see window 1's tokens
        torch.testing.assert_close(after[0, window_of[w]], base[0, window_of[w]])
    assert (after[0, window_of[2]] - base[0, window_of[2]]).abs().max() > 1e-6


def test_shuffled_gpt_overfits_and_greedy_generation_reproduces():
    torch.manual_seed(0)
    spec = TokenSpec.vocab(16, grid=(4, 4))
    model = GPT(spec.to_dict(), num_classes=4, dim=64, depth=2, heads=4, class_dropout=0.0, window=2)
    seqs, labels = torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(0)), torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(150):
        loss = model(seqs, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(model.eval().generate(labels, temperature=0), seqs)
