"""TiTok's single-stage VQ releases into vistok's vit1d: a state dict from a re-declaration of TiTok's modules
(tests/titok_reference.py) converts and loads strictly, and the vistok tokenizer gives TiTok's tokens and images
(TiTok works in [0, 1], vistok in [−1, 1]; the conversion folds the change in exactly). The released bl64/sl256
layouts map key for key; the paper's two-stage checkpoints and the VAEs are refused with the reason."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import vistok
from vistok.convert import titok
from vistok.errors import CheckpointError

_spec = importlib.util.spec_from_file_location("titok_reference", Path(__file__).parent / "titok_reference.py")
ref_modules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref_modules)


def _reference(use_l2_norm: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    ref = ref_modules.TiTok(image_size=16, patch_size=4, num_latent_tokens=6, token_size=4, codebook_size=32,
                            use_l2_norm=use_l2_norm, encoder=(32, 2, 2), decoder=(48, 1, 4)).eval()
    with torch.no_grad():  # LayerNorms and biases away from their 1/0 init, codes spread like the latents
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ref.quantize.embedding.weight.normal_(0, 0.3)
    return ref


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("use_l2_norm", [False, True])
def test_cli_converts_titok_and_matches_it(use_l2_norm, tmp_path):
    ref = _reference(use_l2_norm)
    torch.save(ref.state_dict(), tmp_path / "tokenizer_titok_tiny.bin")
    argv = ["--ckpt", str(tmp_path / "tokenizer_titok_tiny.bin"), "--out", str(tmp_path / "tok"), "--heads", "2", "4"]
    assert titok.main(argv + (["--l2-norm"] if use_l2_norm else [])) == 0
    tok = vistok.load(tmp_path / "tok")
    assert tok.token_spec == vistok.TokenSpec.vocab(32, length=6, code_dim=4)

    x = _images()
    with torch.no_grad():
        _, indices = ref.encode((x + 1) / 2)
        tokens = tok.encode(x)
        assert torch.equal(tokens, indices.squeeze(1)) and tokens.unique().numel() > 1
        expected = 2 * ref.decode_tokens(indices) - 1
        got = tok._decode_latents(tok.post_quant_proj(tok.quantizer.indices_to_codes(tokens)))
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
        assert torch.allclose(tok.decode(tokens), expected.clamp(-1, 1), atol=1e-4)


@pytest.mark.parametrize(("enc", "dec", "k", "sizes"), [((768, 12, 12), (1024, 24, 16), 64, ("base", "large")),
                                                        ((512, 8, 8), (1024, 24, 16), 256, ("small", "large"))])
def test_released_single_stage_layouts_map_key_for_key(enc, dec, k, sizes):
    with torch.device("meta"):  # titok_bl64_vq8k / titok_sl256_vq8k at full size, without memory or time
        state = ref_modules.TiTok(num_latent_tokens=k, encoder=enc, decoder=dec).state_dict()
        arch = titok.architecture(state)
        tok = vistok.build("tokenizer", {"name": "vit1d", **arch})
    assert (arch["encoder_size"], arch["decoder_size"]) == sizes
    assert arch["resolution"] == 256 and arch["patch_size"] == 16 and arch["num_tokens"] == k
    assert arch["quantizer"]["codebook_size"] == 8192 and arch["quantizer"]["code_dim"] == 64
    converted, own = titok.convert_state_dict(state), tok.state_dict()
    assert sorted(converted) == sorted(own)
    assert all(converted[key].shape == own[key].shape for key in own)


def test_two_stage_and_vae_checkpoints_are_refused_with_the_reason(tmp_path, capsys):
    state = _reference().state_dict()
    legacy = {**state, "decoder.ffn.2.weight": torch.zeros(1024, 96, 1, 1), "pixel_decoder.conv_in.weight":
              torch.zeros(1)}
    with pytest.raises(CheckpointError, match="two-stage .*MaskGIT"):
        titok.convert(legacy, heads=(2, 4))
    vae = {k: v for k, v in state.items() if not k.startswith("quantize.")}
    torch.save(vae, tmp_path / "vae.bin")
    assert titok.main(["--ckpt", str(tmp_path / "vae.bin"), "--out", str(tmp_path / "o"), "--heads", "2", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VAE" in err[0]
    with pytest.raises(CheckpointError, match="--heads"):
        titok.architecture(state)  # width 32 is none of TiTok's sizes: the head count must be given
