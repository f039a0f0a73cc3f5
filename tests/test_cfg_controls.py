"""Sampling controls of LlamaGen, Token-Shuffle and xAR: LlamaGen's ``cfg_interval`` (the steps it guides, checked
against its decoding loop restated), the increasing CFG schedules over decoding steps (a token, a token-shuffle
window, a next-X entity), and xAR's linear-across-entities default."""

import math

import pytest
import torch
from torch import nn

from vistok.generate import SamplingSettings
from vistok.generators import GPT
from vistok.generators.sampling import cfg_guided_at, cfg_scale_at, guidance_plan
from vistok.generators.xar import XAR
from vistok.spec import TokenSpec

GRID = TokenSpec.vocab(16, grid=(4, 4), code_dim=3)
LABELS = torch.tensor([0, 1, 3])


def _randomized(model):
    for p in model.parameters():
        if p.ndim >= 2:
            nn.init.normal_(p, std=0.2)  # the zero-initialised heads would make every path agree trivially
    return model.eval()


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return _randomized(GPT(GRID.to_dict(), num_classes=4, dim=32, depth=2, heads=2, **kw)).double()


def tiny_xar(**kw) -> XAR:
    torch.manual_seed(0)
    return _randomized(XAR(GRID.to_dict(), num_classes=4, dim=32, depth=2, heads=2,
                           entity={"name": "cell", "size": 2}, **kw)).double()


def _llamagen_guided_tokens(num_tokens: int, cfg_interval: int) -> list[bool]:
    """FoundationVision/LlamaGen autoregressive/models/generate.py, restated: the prefill samples token 0 with CFG;
    decode_n_tokens then samples token i + 1 at loop step i, dropping CFG once ``cfg_interval > -1 and i >
    cfg_interval``."""
    flags, cfg_flag = [True], True
    for i in range(num_tokens - 1):
        if cfg_interval > -1 and i > cfg_interval:
            cfg_flag = False
        flags.append(cfg_flag)
    return flags


@pytest.mark.parametrize("interval", [-1, 0, 1, 5, 30])
def test_cfg_interval_guides_the_steps_llamagen_guides(interval):
    assert [cfg_guided_at(i, interval) for i in range(16)] == _llamagen_guided_tokens(16, interval)
    with pytest.raises(ValueError, match="cfg_interval"):
        cfg_guided_at(0, -2)


def test_schedules_rise_from_one_to_the_scale():
    for schedule in ("linear", "cosine"):
        ramp = [cfg_scale_at(i, 9, 4.0, schedule) for i in range(9)]
        assert ramp[0] == 1.0 and math.isclose(ramp[-1], 4.0) and ramp == sorted(ramp)
    assert math.isclose(cfg_scale_at(4, 9, 4.0, "linear"), 2.5) and math.isclose(cfg_scale_at(4, 9, 4.0, "cosine"), 2.5)
    assert math.isclose(cfg_scale_at(2, 9, 4.0, "cosine"), 1 + 3 * (1 - math.cos(math.pi / 4)) / 2)
    assert guidance_plan(3, 2.0, "linear", cfg_interval=0) == [(1.0, True), (1.5, True), (2.0, False)]


def test_gpt_cfg_interval_switches_to_conditional_logits():
    model = tiny_gpt()
    tokens = model.generate(LABELS, cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    guided = model.step_logits(LABELS, tokens, cfg_scale=3.0)
    conditional = model.step_logits(LABELS, tokens, cfg_scale=1.0)
    assert (guided - conditional).abs().amax(-1).min() > 1e-3  # guidance changes every step's logits
    for interval, use_cache in ((0, True), (3, True), (3, False)):
        cut = model.step_logits(LABELS, tokens, cfg_scale=3.0, cfg_interval=interval, use_cache=use_cache)
        torch.testing.assert_close(cut[:, :interval + 2], guided[:, :interval + 2])
        torch.testing.assert_close(cut[:, interval + 2:], conditional[:, interval + 2:])
    a = model.generate(LABELS, cfg_scale=3.0, cfg_interval=2, generator=torch.Generator().manual_seed(1))
    b = model.generate(LABELS, cfg_scale=3.0, cfg_interval=2, generator=torch.Generator().manual_seed(1),
                       use_cache=False)
    assert torch.equal(a, b)


def test_token_shuffle_schedule_runs_over_windows():
    """With a 2×2 window the 4 tokens of a window come from one step and share its scale: the linear ramp is 1 on the
    first window (the conditional logits) and the full scale on the last."""
    model = tiny_gpt(window=2)
    tokens = model.generate(LABELS, generator=torch.Generator().manual_seed(2))
    conditional = model.step_logits(LABELS, tokens, cfg_scale=1.0)
    full = model.step_logits(LABELS, tokens, cfg_scale=3.0)
    for schedule in ("linear", "cosine"):
        ramp = model.step_logits(LABELS, tokens, cfg_scale=3.0, cfg_schedule=schedule)
        first = model.to_units(torch.arange(16)[None])[0, 0]  # the raster positions of the first window
        last = model.to_units(torch.arange(16)[None])[0, -1]
        torch.testing.assert_close(ramp[:, first], conditional[:, first])
        torch.testing.assert_close(ramp[:, last], full[:, last])
        assert not torch.allclose(ramp, full)


def test_xar_defaults_to_a_linear_rise_across_entities():
    model, gpt = tiny_xar(), tiny_gpt()
    assert model.default_cfg_schedule == "linear" and gpt.default_cfg_schedule == "constant"
    tokens = model.generate(LABELS, cfg_scale=3.0, generator=torch.Generator().manual_seed(3))
    default = model.step_outputs(LABELS, tokens, cfg_scale=3.0)
    torch.testing.assert_close(default, model.step_outputs(LABELS, tokens, cfg_scale=3.0, cfg_schedule="linear"))
    constant = model.step_outputs(LABELS, tokens, cfg_scale=3.0, cfg_schedule="constant")
    conditional = model.step_outputs(LABELS, tokens, cfg_scale=1.0)
    first, last = model.entities[0], model.entities[-1]
    torch.testing.assert_close(default[:, first], conditional[:, first])  # entity 0: scale 1
    torch.testing.assert_close(default[:, last], constant[:, last])  # the last entity: the full scale
    assert not torch.allclose(default[:, first], constant[:, first])
    # the GPT keeps LlamaGen's constant default
    gtok = gpt.generate(LABELS, cfg_scale=3.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(gpt.step_logits(LABELS, gtok, cfg_scale=3.0),
                               gpt.step_logits(LABELS, gtok, cfg_scale=3.0, cfg_schedule="constant"))
    # and sample.py's settings leave the choice to the model unless told
    assert SamplingSettings().cfg_schedule is None and SamplingSettings().cfg_interval == -1
