"""TokenSpec contract, PSNR/SSIM against scikit-image, codebook usage, prompt resolution."""

import math

import numpy as np
import pytest
import torch

from vistok.generators.prompts import PromptError, resolve_prompt
from vistok.metrics.codebook import CodebookUsage
from vistok.metrics.recon import psnr, ssim, to_unit_range
from vistok.spec import TokenSpec


def test_spec_kinds_and_serialization():
    specs = [TokenSpec.vocab(1024, grid=(16, 16), code_dim=8), TokenSpec.subvocab([64, 4096], grid=(4, 4)),
             TokenSpec.bits(16, length=32, prefix_ok=True), TokenSpec.bins(16, 64, grid=(8, 8))]
    for s in specs:
        assert TokenSpec.from_dict(s.to_dict()) == s
    assert specs[0].bits_per_image() == 256 * 10 and specs[0].token_shape == (256,)
    assert specs[1].bits_per_token == 18 and specs[1].token_shape == (16, 2)
    assert specs[2].bits_per_image(num_tokens=4) == 64
    assert specs[3].channels == 16 and math.isclose(specs[3].bits_per_token, 96)
    with pytest.raises(ValueError):
        TokenSpec.vocab(10, grid=(4, 4), length=16)
    with pytest.raises(ValueError):
        TokenSpec("vocab", (10,), "grid", 16, (4, 4), prefix_ok=True)


def test_spec_validate():
    s = TokenSpec.bits(8, length=6, prefix_ok=True)
    s.validate(torch.randint(0, 2, (2, 3, 8)))
    with pytest.raises(ValueError, match="outside"):
        s.validate(torch.full((2, 3, 8), 2))
    with pytest.raises(ValueError, match="positions"):
        s.validate(torch.zeros(2, 7, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="takes 16"):
        TokenSpec.vocab(4, grid=(4, 4)).validate(torch.zeros(1, 8, dtype=torch.long))


def test_psnr_ssim_match_scikit_image():
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image is the independent reference")
    torch.manual_seed(0)
    x = to_unit_range(torch.rand(3, 3, 24, 20) * 2 - 1)
    y = to_unit_range((x * 2 - 1) + 0.2 * torch.randn_like(x))
    ours_p, ours_s = psnr(x, y), ssim(x, y)
    for i in range(3):
        a = x[i].permute(1, 2, 0).numpy().astype(np.float64)
        b = y[i].permute(1, 2, 0).numpy().astype(np.float64)
        ref_s = skm.structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0)
        assert abs(ours_s[i].item() - ref_s) < 1e-4
        assert abs(ours_p[i].item() - skm.peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-4
    assert torch.isinf(psnr(x, x)).all() and torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_codebook_usage_per_channel():
    u = CodebookUsage(TokenSpec.subvocab([4, 8], length=3))
    u.update(torch.tensor([[[0, 0], [1, 0], [2, 0]], [[3, 0], [0, 0], [1, 0]]]))
    r = u.result()
    assert r["codebook_usage"] == pytest.approx((4 / 4 + 1 / 8) / 2)
    # channel 0 counts (2,2,1,1) → perplexity exp(H); channel 1 one code → perplexity 1
    p = np.array([2, 2, 1, 1]) / 6
    assert r["codebook_perplexity"] == pytest.approx((math.exp(-(p * np.log(p)).sum()) + 1) / 2)


NAMES = ["red circle", "blue square", "goldfish", "great white shark", "tench"]


@pytest.mark.parametrize("prompt,expected", [
    ("goldfish", 2), ("Goldfish", 2), ("  red   circle ", 0), ("a red circle on a blue background", 0),
    ("2", 2), ("n01443537", 1), ("great white shrk", 3), ("a photo of a tench", 4)])
def test_resolve_prompt(prompt, expected):
    assert resolve_prompt(prompt, NAMES, class_ids=["x", "n01443537", "y", "z", "w"]) == expected


@pytest.mark.parametrize("prompt,message", [("", "empty"), ("purple elephant", "closest"), ("17", "out of range"),
                                            ("red circle and blue square", "ambiguous")])
def test_resolve_prompt_errors(prompt, message):
    with pytest.raises(PromptError, match=message):
        resolve_prompt(prompt, NAMES)
