"""What the dual tokenizer shares with the other tokenizers: the pixel reconstruction loss (``recon_loss``) and the
:class:`GridTokenizer` grid, TokenSpec and reshapes."""

import pytest
import torch
import torch.nn.functional as F

import vistok
from vistok.errors import ConfigError
from vistok.spec import TokenSpec
from vistok.tokenizers.base import GridTokenizer

TINY = {"name": "dual", "resolution": 16, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
        "z_channels": 8, "mid_attention": False, "teacher": {"name": "random", "dim": 8}, "semantic_hidden": 16,
        "semantic_decoder_width": 16,
        "quantizer": {"name": "dual", "codebook_size": 32, "semantic_dim": 4, "pixel_dim": 4}}


def images(n=2):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("name, loss", [("mse", F.mse_loss), ("l1", F.l1_loss)])
def test_recon_loss_picks_the_pixel_term(name, loss):
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {**TINY, "recon_loss": name, "recon_weight": 0.5}).eval()
    x = images()
    out = tok(x)
    assert torch.allclose(out.losses["recon"], 0.5 * loss(out.reconstruction, x))
    other = F.l1_loss if name == "mse" else F.mse_loss
    assert not torch.allclose(out.losses["recon"], 0.5 * other(out.reconstruction, x))


def test_recon_loss_default_is_mse():
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", TINY)
    assert tok.recon_loss == "mse"


def test_bad_recon_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="recon_loss"):
        vistok.build("tokenizer", {**TINY, "recon_loss": "huber"})


SEPARATE = {"name": "dual", "index": "separate", "semantic_codebook_size": 8, "pixel_codebook_size": 32,
            "semantic_dim": 4, "pixel_dim": 4}


@pytest.mark.parametrize("quantizer, expected", [
    # TokenFlow's shared index: one vocabulary of K per position
    (TINY["quantizer"], TokenSpec.vocab(32, grid=(8, 8), code_dim=8)),
    # DualToken's separate indices: (semantic, pixel) sub-vocabularies of their own sizes
    (SEPARATE, TokenSpec.subvocab([8, 32], grid=(8, 8), code_dim=8))])
def test_grid_tokenizer_spec_is_the_dual_spec_in_both_index_modes(quantizer, expected):
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {**TINY, "quantizer": quantizer}).eval()
    assert isinstance(tok, GridTokenizer) and tok.grid == (8, 8)
    assert tok.token_spec == expected
    x = images()
    tokens = tok.encode(x)
    tok.token_spec.validate(tokens)
    assert tuple(tokens.shape) == (2, *expected.token_shape)
    assert tok.decode(tokens).shape == x.shape


def test_separate_usage_is_the_mean_of_the_two_sub_vocabularies():
    from vistok.quantizers.dual import DualCodebookQuantizer

    torch.manual_seed(0)
    q = DualCodebookQuantizer(index="separate", semantic_codebook_size=8, pixel_codebook_size=32, semantic_dim=6,
                              pixel_dim=4)
    out = q(torch.randn(3, 50, 10))
    sem, pix = out.indices[..., 0], out.indices[..., 1]
    assert torch.isclose(out.stats["usage"], torch.tensor((sem.unique().numel() / 8 + pix.unique().numel() / 32) / 2))
    for name in ("usage", "perplexity"):
        assert torch.equal(out.stats[name], (out.stats[f"semantic_{name}"] + out.stats[f"pixel_{name}"]) / 2)
