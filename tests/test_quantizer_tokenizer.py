"""VQ quantizer and 2D conv tokenizer: round trips, gradients, save/load, overfitting."""

import pytest
import torch

import vistok
from vistok.errors import CheckpointError, ConfigError
from vistok.quantizers.vq import VectorQuantizer

TINY = {"name": "conv2d", "resolution": 16, "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
        "z_channels": 32, "quantizer": {"name": "vq", "codebook_size": 64, "code_dim": 4}}


@pytest.mark.parametrize("l2_norm", [True, False])
def test_vq_indices_codes_round_trip(l2_norm):
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=32, code_dim=4, l2_norm=l2_norm).eval()
    torch.nn.init.normal_(q.codebook.weight)
    out = q(torch.randn(3, 10, 4))
    assert out.indices.shape == (3, 10) and out.indices.dtype == torch.int64
    # indices → codes reproduces exactly what forward returned, and codes → nearest index is the identity
    torch.testing.assert_close(q.indices_to_codes(out.indices), out.quantized, rtol=0, atol=1e-6)
    again = q(q.indices_to_codes(out.indices))
    assert torch.equal(again.indices, out.indices)
    # the chosen code is the nearest one (checked by brute force)
    z = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1) if l2_norm else torch.randn(5, 4)
    idx = q(z[None]).indices[0]
    brute = torch.cdist(z, q._codes()).argmin(1)
    assert torch.equal(idx, brute)


def test_vq_losses_and_stats():
    q = VectorQuantizer(codebook_size=16, code_dim=4).train()
    out = q(torch.randn(2, 8, 4))
    assert set(out.losses) == {"codebook", "commitment"}
    # commitment is β × the codebook term in value (same squared distance), β = 0.25
    torch.testing.assert_close(out.losses["commitment"], 0.25 * out.losses["codebook"])
    assert 0 < out.stats["usage"] <= 1 and 1 <= out.stats["perplexity"] <= 16
    assert q.eval()(torch.randn(2, 8, 4)).losses == {}


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", TINY)
    out = tok(torch.rand(2, 3, 16, 16) * 2 - 1)
    out.losses["recon"].backward()  # the pixel loss alone: its only path to the encoder is straight-through
    enc_grad = sum(p.grad.abs().sum() for p in tok.encoder.parameters() if p.grad is not None)
    assert enc_grad > 0
    assert tok.quantizer.codebook.weight.grad is None or tok.quantizer.codebook.weight.grad.abs().sum() == 0


def test_encode_decode_shapes_and_spec():
    tok = vistok.build("tokenizer", TINY).eval()
    spec = tok.token_spec
    assert spec.kind == "vocab" and spec.grid == (8, 8) and spec.vocab_sizes == (64,) and spec.code_dim == 4
    tokens = tok.encode(torch.rand(3, 3, 16, 16) * 2 - 1)
    assert tokens.shape == (3, *spec.token_shape)
    images = tok.decode(tokens)
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    with pytest.raises(ValueError, match="16×16"):
        tok.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode(torch.full((1, 64), 64))


def test_save_load_identical_outputs(tmp_path):
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", TINY).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tok.save_pretrained(tmp_path / "tok")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    for loaded in (vistok.load(tmp_path / "tok"), type(tok).from_pretrained(tmp_path / "tok")):
        assert torch.equal(loaded.encode(x), tok.encode(x))
        assert torch.equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    vistok.build("tokenizer", TINY).save_pretrained(tmp_path / "a")
    bigger = {**TINY, "quantizer": {"name": "vq", "codebook_size": 128, "code_dim": 4}}
    with pytest.raises(CheckpointError, match="shape mismatch"):
        type(vistok.build("tokenizer", bigger)).from_pretrained(tmp_path / "a", quantizer=bigger["quantizer"])
    with pytest.raises(CheckpointError, match="not found"):
        vistok.load(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="not a generator"):
        vistok.load(tmp_path / "a", kind="generator")


def test_registry_errors_are_clear():
    with pytest.raises(ConfigError, match="Did you mean"):
        vistok.build("tokenizer", {"name": "conv2"})
    with pytest.raises(ConfigError, match="unknown options"):
        vistok.build("quantizer", {"name": "vq", "codebook_sz": 3})
    assert "vq" in vistok.list_names("quantizer") and "conv2d" in vistok.list_names("tokenizer")


def test_tiny_tokenizer_overfits_8_images():
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {**TINY, "quantizer": {"name": "vq", "codebook_size": 256, "code_dim": 4}})
    x = torch.rand(8, 3, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3) * 2 - 1  # blocky, learnable
    opt = torch.optim.AdamW(tok.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        out = tok(x)
        loss = sum(out.losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(out.losses["recon"].item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
