"""LlamaGen's VQ checkpoints into vistok's conv2d: a state dict from a re-declaration of LlamaGen's modules
(tests/llamagen_reference.py) converts and loads strictly; the vistok tokenizer then gives LlamaGen's tokens and
images on the same input; the released VQ-16/VQ-8 layouts map key for key onto the llamagen_f16/llamagen_f8 sizes."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

import vistok
from vistok.convert import llamagen
from vistok.errors import CheckpointError, ConfigError

_spec = importlib.util.spec_from_file_location("llamagen_reference", Path(__file__).parent / "llamagen_reference.py")
ref_modules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref_modules)


def _reference(seed: int = 0):
    """A small LlamaGen VQModel (GroupNorm(32) needs channels in multiples of 32) with every weight perturbed, so
    that norms, biases and the attention's q/k/v order all matter."""
    torch.manual_seed(seed)
    ref = ref_modules.VQModel(codebook_size=64, codebook_embed_dim=4, ch_mult=(1, 2, 2), z_channels=32, ch=32,
                              num_res_blocks=1).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref


def _images(n: int = 2, side: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_cli_converts_a_llamagen_checkpoint_that_then_matches_llamagen(tmp_path):
    ref = _reference()
    ckpt = tmp_path / "vq_tiny.pt"
    # the layout of LlamaGen's training checkpoints, argparse args included (loaded with weights_only=True)
    torch.save({"model": ref.state_dict(), "steps": 10, "args": argparse.Namespace(vq_model="VQ-tiny")}, ckpt)
    assert llamagen.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "tok"), "--resolution", "16"]) == 0
    tok = vistok.load(tmp_path / "tok")
    assert tok.token_spec == vistok.TokenSpec.vocab(64, grid=(4, 4), code_dim=4)

    x = _images()
    with torch.no_grad():
        quant, indices = ref.encode(x)
        tokens = tok.encode(x)
        assert torch.equal(tokens, indices.view(2, 16)) and tokens.unique().numel() > 1
        expected = ref.decode_code(indices, (2, 4, 4, 4))
        got = tok._decode_codes(tok.quantizer.indices_to_codes(tokens))
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
        assert torch.allclose(tok.decode(tokens), expected.clamp(-1, 1), atol=1e-4)


def test_converted_tokenizer_fine_tunes_every_parameter():
    tok = llamagen.convert(_reference().state_dict(), resolution=16).train()
    out = tok(_images())
    sum(out.losses.values()).backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize(("factory", "size", "grid"), [("VQ_16", "llamagen_f16", 16), ("VQ_8", "llamagen_f8", 32)])
def test_released_layouts_map_key_for_key_onto_the_named_sizes(factory, size, grid):
    with torch.device("meta"):  # full size (≈72M parameters) without the memory or the time
        state = getattr(ref_modules, factory)().state_dict()
        arch = llamagen.architecture(state)
        tok = vistok.build("tokenizer", {"name": "conv2d", "resolution": 256, "size": size,
                                         "quantizer": arch["quantizer"]})
    converted = llamagen.convert_state_dict(state, arch["channel_mult"], arch["num_res_blocks"])
    own = tok.state_dict()
    assert sorted(converted) == sorted(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    assert tok.grid == (grid, grid) and arch["quantizer"]["codebook_size"] == 16384
    n = sum(p.numel() for p in tok.parameters())
    assert n == sum(v.numel() for k, v in state.items() if k != "quantize.codebook_used")


def test_bad_checkpoints_are_one_line_errors(tmp_path, capsys):
    assert llamagen.main(["--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    torch.save({"model": {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}}, tmp_path / "other.pt")
    assert llamagen.main(["--ckpt", str(tmp_path / "other.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such file" in err[0] and "LlamaGen" in err[0]
    assert "not a LlamaGen VQ state dict" in err[1]
    state = _reference().state_dict()
    state["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="encoder.extra.weight"):
        llamagen.convert(state, resolution=16)


def test_conv_sizes_and_explicit_options():
    defaults = vistok.build("tokenizer", {"name": "conv2d", "resolution": 16, "channels": 8, "channel_mult": [1, 2],
                                          "num_res_blocks": 1, "z_channels": 8})
    assert not any("qkv" in k for k in defaults.encoder.down.state_dict())  # no level attention by default
    assert all(not getattr(m, "asymmetric", False) for m in defaults.encoder.modules())
    tok = vistok.build("tokenizer", {"name": "conv2d", "resolution": 32, "size": "llamagen_f8", "channels": 32,
                                     "quantizer": {"name": "vq", "codebook_size": 16, "code_dim": 4}})
    assert tok.encoder.conv_in.out_channels == 32 and tok.downsample == 8  # explicit channels win over the size
    with pytest.raises(ConfigError, match="llamagen_f16"):
        vistok.build("tokenizer", {"name": "conv2d", "size": "llamagen_f32"})


def test_asymmetric_downsample_pads_bottom_right_only():
    from vistok.tokenizers.conv_nets import Downsample

    torch.manual_seed(0)
    sym, asym = Downsample(4), Downsample(4, asymmetric=True)
    asym.load_state_dict(sym.state_dict())
    x = torch.randn(1, 4, 8, 8)
    # symmetric output (i, j) reads rows 2i-1..2i+1; asymmetric reads 2i..2i+2: shifted by one input pixel
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.allclose(sym(x), torch.nn.functional.conv2d(padded, sym.weight, sym.bias, stride=2))
    assert torch.allclose(asym(x), torch.nn.functional.conv2d(padded[..., 1:, 1:], sym.weight, sym.bias, stride=2))
    assert sym(x).shape == asym(x).shape == (1, 4, 4, 4)
