"""Every registered quantizer inside every tokenizer that can hold it: builds, trains one step (the pixel loss reaches
the encoder), encodes to the tokens its TokenSpec promises and decodes them; tokenizers tied to one quantizer refuse
the others with a clear error. Binary latents with num_bits != code_dim are the case a conv2d once crashed on."""

import pytest
import torch

import vistok
from vistok.errors import ConfigError
from vistok.registry import build, list_names

QUANTIZERS = {
    "vq": {"name": "vq", "codebook_size": 16, "code_dim": 4},
    "lfq": {"name": "lfq", "num_groups": 2, "group_dim": 3},
    "fsq": {"name": "fsq", "levels": [5, 4, 3]},
    "binary": {"name": "binary", "num_bits": 16, "code_dim": 8},  # input width (bits) != code width (embedding)
    "dimwise": {"name": "dimwise", "code_dim": 4, "num_bins": 8},
    "dual": {"name": "dual", "codebook_size": 16, "semantic_dim": 4, "pixel_dim": 2},
}
CONV = {"resolution": 16, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8,
        "mid_attention": False}
TOKENIZERS = {
    "conv2d": ({**CONV}, None),  # (config, the only quantizer it holds; None: any)
    "vit1d": ({"resolution": 16, "patch_size": 4, "num_tokens": 4, "encoder_size": "micro", "decoder_size": "micro"},
              None),
    "kl_ae": ({**CONV, "latent_dim": 4}, "dimwise"),
    "dual": ({**CONV, "teacher": {"name": "random", "dim": 8}, "semantic_hidden": 16, "semantic_decoder_width": 16},
             "dual"),
    # diffusers autoencoders: the KL one holds the post-training quantizer; the VQ one only diffusers' own ("own")
    **{f"diffusers_{k}": ({"resolution": 16, "vae": {"block_out_channels": [8, 16], "norm_num_groups": 4,
                                                      "down_block_types": ["DownEncoderBlock2D"] * 2,
                                                      "up_block_types": ["UpDecoderBlock2D"] * 2}}, only)
       for k, only in (("kl", "dimwise"), ("vq", "own"))},
}


def test_the_matrix_covers_every_registered_part():
    assert set(QUANTIZERS) == set(list_names("quantizer"))
    assert set(TOKENIZERS) == set(list_names("tokenizer"))


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
@pytest.mark.parametrize("tokenizer", sorted(TOKENIZERS))
def test_every_quantizer_in_every_tokenizer(tokenizer, quantizer):
    cfg, only = TOKENIZERS[tokenizer]
    cfg = {"name": tokenizer, **cfg, "quantizer": QUANTIZERS[quantizer]}
    if only is not None and quantizer != only:
        match = r"unknown options \['quantizer'\]" if only == "own" else f"{tokenizer}.*quantizer must be '{only}'"
        with pytest.raises(ConfigError, match=match):
            vistok.build("tokenizer", cfg)
        return
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = tok.train()(x)
    sum(out.losses.values()).backward()
    assert out.reconstruction.shape == x.shape
    encoder = tok.pixel_encoder if tokenizer == "dual" else tok.encoder
    assert sum(p.grad.abs().sum() for p in encoder.parameters() if p.grad is not None) > 0
    tok.eval()
    tokens = tok.encode(x)
    spec = tok.token_spec
    assert tokens.shape == (2, *spec.token_shape) and tokens.dtype == torch.int64
    spec.validate(tokens)
    images = tok.decode(tokens)
    assert images.shape == x.shape and images.abs().max() <= 1


@pytest.mark.parametrize(("name", "old", "new"), [("binary", "embed_dim", "code_dim"),
                                                  ("binary", "temperature", "sample_temperature"),
                                                  ("lfq", "temperature", "entropy_temperature"),
                                                  ("dimwise", "dim", "code_dim")])
def test_renamed_options_name_their_new_name(name, old, new):
    with pytest.raises(ConfigError, match=f"'{old}' is now '{new}'"):
        build("quantizer", {"name": name, old: 8})


@pytest.mark.parametrize(("name", "options", "match"), [("fsq", {"levels": [8, 1]}, "levels"),
                                                        ("lfq", {"codebook_entropy": "max"}, "codebook_entropy"),
                                                        ("binary", {"num_bits": 0}, "num_bits"),
                                                        ("dimwise", {"num_bins": 1}, "num_bins")])
def test_bad_quantizer_options_raise_config_errors(name, options, match):
    with pytest.raises(ConfigError, match=match):
        build("quantizer", {"name": name, **options})
