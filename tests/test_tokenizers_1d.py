"""1D tokenizer (TiTok-style ViT), FSQ, binary latents, tail token drop, nested dropout, adaptive-length encoding."""

import itertools
from pathlib import Path

import pytest
import torch

import vistok
from vistok.metrics.recon import psnr, to_unit_range
from vistok.quantizers.binary import BinaryQuantizer
from vistok.quantizers.fsq import FiniteScalarQuantizer
from vistok.tokenizers.prefix import NestedDropout, TailTokenDrop

K = 6  # latent tokens of the test models
QUANTIZERS = {
    "vq": {"name": "vq", "codebook_size": 32, "code_dim": 4},
    "fsq": {"name": "fsq", "levels": [4, 3, 5]},
    "binary": {"name": "binary", "num_bits": 5, "code_dim": 8},
}
PREFIXES = {
    "tail_drop": {"name": "tail_drop"},
    "nested_dropout": {"name": "nested_dropout", "mode": "uniform"},
    "none": {"name": "none"},
}


def micro(quantizer="vq", prefix="tail_drop", **kw):
    cfg = {"name": "vit1d", "resolution": 16, "patch_size": 4, "num_tokens": K, "encoder_size": "micro",
           "decoder_size": "micro", "quantizer": QUANTIZERS[quantizer], "prefix": PREFIXES[prefix], **kw}
    return vistok.build("tokenizer", cfg)


def images(n=3, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- the tokenizer ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
@pytest.mark.parametrize("prefix", list(PREFIXES))
def test_every_prefix_length_decodes_batched(quantizer, prefix):
    torch.manual_seed(0)
    tok = micro(quantizer, prefix).eval()
    x = images(3)
    full = tok.encode(x)
    spec = tok.token_spec
    assert spec.layout == "seq" and spec.length == K and spec.prefix_ok == (prefix != "none")
    assert full.shape == (3, *spec.token_shape)
    for k in range(1, K + 1):
        tokens = tok.encode(x, num_tokens=k)
        assert torch.equal(tokens, full[:, :k])  # a prefix is the head of the full sequence
        out = tok.decode(tokens)
        assert out.shape == (3, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match="num_tokens"):
        tok.encode(x, num_tokens=K + 1)
    with pytest.raises(ValueError, match="positions"):
        tok.decode(torch.cat([full, full[:, :1]], dim=1))


def test_prefix_changes_the_image_and_full_length_is_the_default():
    torch.manual_seed(0)
    tok = micro("fsq", "nested_dropout").eval()
    x = images(2)
    assert torch.equal(tok.decode(tok.encode(x)), tok.decode(tok.encode(x, num_tokens=K)))
    assert not torch.equal(tok.decode(tok.encode(x, num_tokens=1)), tok.decode(tok.encode(x)))


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
def test_encode_decode_deterministic_in_eval(quantizer):
    torch.manual_seed(0)
    tok = micro(quantizer, "nested_dropout").eval()
    x = images(4)
    t1, t2 = tok.encode(x), tok.encode(x)
    assert torch.equal(t1, t2)
    assert torch.equal(tok.decode(t1), tok.decode(t2))
    # the eval forward is the same function as encode→decode (no dropout, no sampling, no truncation)
    with torch.no_grad():
        out = tok(x)
    torch.testing.assert_close(out.reconstruction.clamp(-1, 1), tok.decode(t1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("quantizer,prefix", [("vq", "tail_drop"), ("fsq", "nested_dropout"), ("binary", "tail_drop")])
def test_save_load_round_trip_identical_tokens_and_images(tmp_path, quantizer, prefix):
    torch.manual_seed(0)
    tok = micro(quantizer, prefix).eval()
    # train one step so no parameter sits at its init value (a missed buffer/parameter would then show)
    opt = torch.optim.SGD(tok.parameters(), lr=0.1)
    tok.train()
    sum(tok(images(2)).losses.values()).backward()
    opt.step()
    tok.eval()
    tok.save_pretrained(tmp_path / "m")
    loaded = vistok.load(tmp_path / "m")
    assert type(loaded) is type(tok) and loaded.token_spec == tok.token_spec
    x = images(3, seed=1)
    for k in (1, 3, K):
        tokens = tok.encode(x, num_tokens=k)
        assert torch.equal(loaded.encode(x, num_tokens=k), tokens)
        assert torch.equal(loaded.decode(tokens), tok.decode(tokens))


def test_training_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    tok = micro("fsq", "none")
    # low-frequency images (2×2 colour blocks): learnable from 6 tokens within a few steps
    x = torch.nn.functional.interpolate(images(4)[:, :, :2, :2], size=16, mode="nearest")
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = sum(tok(x).losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0]


def test_bad_config_errors_name_the_option():
    with pytest.raises(ValueError, match="patch_size"):
        micro(patch_size=5)
    with pytest.raises(ValueError, match="encoder_size"):
        micro(encoder_size="huge")
    with pytest.raises(ValueError, match="mode"):
        vistok.build("prefix", {"name": "nested_dropout", "mode": "x"}, num_tokens=4, width=8)
    with pytest.raises(ValueError, match="levels"):
        FiniteScalarQuantizer([8, 1])


# ---- tail token drop ----------------------------------------------------------------------------------------------
def test_tail_drop_one_k_per_batch_removes_the_tail():
    torch.manual_seed(0)
    drop = TailTokenDrop(num_tokens=K, width=8).train()
    latents = torch.randn(5, K, 8)
    seen = set()
    for _ in range(300):
        out = drop(latents)
        k = out.shape[1]
        assert k == drop.last_k and 1 <= k <= K
        assert torch.equal(out, latents[:, :k])  # the head untouched, the tail gone, the same k for all images
        seen.add(k)
    assert seen == set(range(1, K + 1))  # k ~ U{1..K}: K itself included (One-D-Piece's off-by-one fix)
    assert torch.equal(drop.eval()(latents), latents)


def test_tail_drop_decoder_sees_the_shortened_sequence():
    torch.manual_seed(0)
    tok = micro("vq", "tail_drop").train()
    lengths = []
    handle = tok.decoder.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    for _ in range(5):
        out = tok(images(2))
        assert lengths[-1] == tok.prefix_regularizer.last_k == out.stats["kept_tokens"]
    handle.remove()


# ---- nested dropout -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", NestedDropout.MODES)
def test_nested_dropout_masks_exactly_the_tail_per_image(mode):
    torch.manual_seed(0)
    drop = NestedDropout(num_tokens=8, width=4, mode=mode).train()
    latents = torch.randn(64, 8, 4)
    out = drop(latents)
    keep = drop.last_keep
    assert keep.shape == (64,) and keep.min() >= 1 and keep.max() <= 8
    assert len(set(keep.tolist())) > 1  # k is drawn per image, not per batch
    for b in range(64):
        k = int(keep[b])
        assert torch.equal(out[b, :k], latents[b, :k])  # kept positions untouched
        assert torch.equal(out[b, k:], drop.mask_token.detach().expand(8 - k, 4))  # dropped: exactly the mask token
    if mode != "uniform":
        assert set(keep.tolist()) <= {1, 2, 4, 8}
    # eval: no dropout; a k-prefix is padded to K slots with the mask token
    drop.eval()
    assert torch.equal(drop(latents), latents)
    padded = drop.prefix(latents[:, :3])
    assert torch.equal(padded, drop.apply_mask(latents, torch.full((64,), 3)))


def test_nested_dropout_pow2_distribution():
    torch.manual_seed(0)
    keep = NestedDropout(num_tokens=32, width=4, mode="pow2").sample_keep(60_000, torch.device("cpu"))
    counts = torch.bincount(keep, minlength=33)[[1, 2, 4, 8, 16, 32]].float()
    assert counts.sum() == 60_000
    torch.testing.assert_close(counts / 60_000, torch.full((6,), 1 / 6), atol=0.01, rtol=0)
    # K not a power of two: K itself is still an option, so the full code is trained
    assert 12 in set(NestedDropout(num_tokens=12, width=4, mode="pow2").sample_keep(500, "cpu").tolist())


def test_nested_dropout_mask_token_gets_gradient_in_the_tokenizer():
    torch.manual_seed(0)
    tok = micro("fsq", "nested_dropout").train()
    tok(images(8)).losses["recon"].backward()
    assert tok.prefix_regularizer.mask_token.grad.abs().sum() > 0


# ---- FSQ ----------------------------------------------------------------------------------------------------------
def test_fsq_flextok_levels_and_index_layout_match_brute_force():
    q = FiniteScalarQuantizer([8, 8, 8, 5, 5, 5])
    assert q.codebook_size == 64_000 and q.code_dim == 6
    assert q._basis.tolist() == [1, 8, 64, 512, 2560, 12800]
    small = FiniteScalarQuantizer([4, 3, 2])
    grids = [torch.arange(L, dtype=torch.float32) - L // 2 for L in (4, 3, 2)]
    all_codes = torch.stack([torch.stack([g[i] / (L // 2) for g, i, L in zip(grids, idx, (4, 3, 2))])
                             for idx in itertools.product(*[range(L) for L in (4, 3, 2)])])
    indices = small.codes_to_indices(all_codes)
    assert sorted(indices.tolist()) == list(range(24))  # a bijection between the grid and 0..∏L−1
    torch.testing.assert_close(small.indices_to_codes(torch.arange(24)), all_codes[indices.argsort()])


def test_fsq_rounds_to_the_nearest_level_and_round_trips():
    torch.manual_seed(0)
    q = FiniteScalarQuantizer([8, 5, 3])
    z = torch.randn(4, 50, 3) * 3
    out = q(z)
    # the codes are the rounded bounded latents, one of L values per channel, in [-1, 1]
    bounded = q.bound(z)
    torch.testing.assert_close(out.quantized * q._half_width, bounded.round())
    for d, L in enumerate((8, 5, 3)):
        assert len(torch.unique(out.quantized[..., d])) <= L
        assert (bounded[..., d].round().unique().numel() <= L)
    assert out.quantized.abs().max() <= 1
    assert out.indices.min() >= 0 and out.indices.max() < 120
    torch.testing.assert_close(q.indices_to_codes(out.indices), out.quantized, rtol=0, atol=1e-6)
    # straight-through: the gradient of the codes w.r.t. z is the derivative of the bound (rounding skipped)
    z.requires_grad_(True)
    q(z).quantized.sum().backward()
    levels = torch.tensor([8.0, 5.0, 3.0])
    half_l = (levels - 1) * (1 + q.eps) / 2
    shift = torch.atanh(torch.tensor([0.5, 0.0, 0.0]) / half_l)
    expected = (1 - torch.tanh(z.detach() + shift) ** 2) * half_l / torch.floor(levels / 2)
    torch.testing.assert_close(z.grad, expected)


def test_fsq_even_levels_use_every_value():
    q = FiniteScalarQuantizer([8, 4])
    z = torch.linspace(-6, 6, 2001)[:, None].repeat(1, 2)[None]
    codes = q(z).quantized[0]
    assert codes[:, 0].unique().numel() == 8 and codes[:, 1].unique().numel() == 4


# ---- binary latents -----------------------------------------------------------------------------------------------
def test_binary_codes_are_bits_and_eval_thresholds_at_half():
    torch.manual_seed(0)
    q = BinaryQuantizer(num_bits=7, code_dim=5).eval()
    z = torch.randn(3, 4, 7)
    out = q(z)
    assert out.indices.dtype == torch.int64 and set(out.indices.unique().tolist()) <= {0, 1}
    assert torch.equal(out.indices, (z > 0).long())  # sigmoid(z) > 0.5
    # the embedding of a token is the sum of its active bits' learned vectors
    brute = torch.stack([sum((q.bit_embedding[j] for j in range(7) if out.indices[b, n, j]), torch.zeros(5))
                         for b in range(3) for n in range(4)]).view(3, 4, 5)
    torch.testing.assert_close(out.quantized, brute)
    torch.testing.assert_close(q.indices_to_codes(out.indices), out.quantized)
    assert out.losses == {}


def test_binary_training_samples_tempered_bernoulli():
    torch.manual_seed(0)
    q = BinaryQuantizer(num_bits=4, code_dim=2, sample_temperature=0.5, aux_weight=0.3).train()
    logits = torch.tensor([-1.0, -0.2, 0.3, 1.5])
    z = logits.expand(20_000, 1, 4).clone()
    out = q(z)
    assert set(out.indices.unique().tolist()) <= {0, 1}
    torch.testing.assert_close(out.indices.float().mean((0, 1)), torch.sigmoid(logits / 0.5), atol=0.015, rtol=0)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(out.losses["binary_aux"], 0.3 * (p * (1 - p)).mean())


def test_binary_straight_through_uses_the_untempered_sigmoid():
    torch.manual_seed(0)
    q = BinaryQuantizer(num_bits=3, code_dim=2, sample_temperature=0.1, aux_weight=0.0).train()
    z = torch.randn(2, 5, 3, requires_grad=True)
    q(z).quantized.sum().backward()
    p = torch.sigmoid(z.detach())
    expected = p * (1 - p) * q.bit_embedding.detach().sum(1)  # d/dz [Σ_j p_j E_j]·1 = p(1−p) Σ_d E_jd
    torch.testing.assert_close(z.grad, expected)


def test_binary_gradient_reaches_the_encoder_and_spec_is_bits():
    torch.manual_seed(0)
    tok = micro("binary", "tail_drop").train()
    out = tok(images(2))
    out.losses["recon"].backward()  # the pixel loss alone: its only path to the encoder is straight-through
    assert sum(p.grad.abs().sum() for p in tok.encoder.parameters() if p.grad is not None) > 0
    spec = tok.token_spec
    assert spec.kind == "bits" and spec.channels == 5 and spec.bits_per_token == 5 and spec.prefix_ok
    tokens = tok.eval().encode(images(2))
    assert tokens.shape == (2, K, 5) and set(tokens.unique().tolist()) <= {0, 1}


# ---- adaptive length ----------------------------------------------------------------------------------------------
def test_encode_adaptive_known_answer():
    """A decoder that is exact once image i has ``need[i]`` tokens and wrong before: the answer is ``need``."""
    tok = micro("vq", "tail_drop").eval()
    x = images(4)
    need = torch.tensor([1, 4, 6, 2])
    tok.encode = lambda imgs, num_tokens=None: torch.arange(len(imgs))[:, None].repeat(1, K)  # token = image id
    originals = x.clone()

    def fake_decode(tokens):
        ids = tokens[:, 0]
        exact = tokens.shape[1] >= need[ids]
        return torch.where(exact[:, None, None, None], originals[ids], -originals[ids])

    tok.decode = fake_decode
    result = tok.encode_adaptive(x, target_psnr=40.0)
    assert result.num_tokens.tolist() == need.tolist() and result.met.all()
    assert [len(t) for t in result.tokens] == need.tolist()
    assert torch.isinf(result.quality).all()
    need[2] = K + 1  # image 2 is never exact: it gets all K tokens, flagged as missing the target
    miss = tok.encode_adaptive(x, target_psnr=40.0)
    assert miss.num_tokens.tolist() == [1, 4, K, 2] and miss.met.tolist() == [True, True, False, True]
    assert miss.quality[2] < 40


def test_encode_adaptive_matches_brute_force_on_a_real_model():
    torch.manual_seed(0)
    tok = micro("fsq", "nested_dropout").eval()
    x = images(5)
    full = tok.encode(x)
    table = torch.stack([psnr(to_unit_range(x), to_unit_range(tok.decode(full[:, :k]))) for k in range(1, K + 1)], 1)
    target = float(table.median())
    result = tok.encode_adaptive(x, target_psnr=target)
    for i in range(5):
        ok = (table[i] >= target).nonzero().flatten()
        want = int(ok[0]) + 1 if len(ok) else K
        assert int(result.num_tokens[i]) == want and bool(result.met[i]) == bool(len(ok))
        assert torch.equal(result.tokens[i], full[i, :want])
    with pytest.raises(ValueError, match="exactly one"):
        tok.encode_adaptive(x)


# ---- FlexTok's causal registers ---------------------------------------------------------------------------------
def test_causal_register_mask_is_flextoks_causal_last():
    from vistok.tokenizers.vit1d import causal_register_mask

    m = causal_register_mask(3, 4)
    for q, kv in itertools.product(range(7), range(7)):
        # FlexTok's prefix-LM rule: causal (kv <= q) or the key is in the prefix
        assert bool(m[q, kv]) == (kv <= q or kv < 3), (q, kv)
    assert not m[:3, 3:].any()  # the patches never read a register


@pytest.mark.parametrize("causal", [True, False])
def test_causal_registers_earlier_outputs_ignore_later_registers(causal):
    torch.manual_seed(0)
    tok = micro("fsq", "nested_dropout", causal_registers=causal).eval()
    enc = tok.encoder
    x = images(2)
    with torch.no_grad():
        before = enc(x)
        j = 3
        enc.latent_tokens[:, j] += torch.randn_like(enc.latent_tokens[:, j])  # change register j's input
        after = enc(x)
    assert not torch.allclose(after[:, j], before[:, j])  # register j itself sees its new input
    if causal:
        torch.testing.assert_close(after[:, :j], before[:, :j], rtol=0, atol=0)
    else:  # the control: with full attention every register reads register j
        assert not torch.allclose(after[:, :j], before[:, :j])


def test_causal_registers_prefix_tokens_are_those_of_a_shorter_encoder():
    """With causal registers, the first k tokens of a K-token encoder equal those of the same encoder cut to k
    registers: the prefix is computed without the tail."""
    torch.manual_seed(0)
    tok = micro("fsq", "nested_dropout", causal_registers=True).eval()
    enc, x = tok.encoder, images(2)
    with torch.no_grad():
        full = enc(x)
        k = 2
        enc.latent_tokens.data, enc.latent_pos_embed.data = enc.latent_tokens[:, :k], enc.latent_pos_embed[:, :k]
        enc.num_tokens = k
        short = enc(x)
    torch.testing.assert_close(short, full[:, :k], rtol=1e-5, atol=1e-6)


# ---- FlexTok's latent space: a frozen continuous autoencoder as the pixel side -------------------------------------
TINY_AE = {"name": "kl_ae", "resolution": 16, "channels": 8, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
           "z_channels": 8, "mid_attention": False, "latent_dim": 4}  # 16×16 → a 4×4 × 4 latent grid


def latent_micro(ae, prefix="nested_dropout", **kw):
    return micro("fsq", prefix, patch_size=2, autoencoder=ae, causal_registers=True, **kw)


@pytest.fixture
def ae_folder(tmp_path):
    torch.manual_seed(1)
    ae = vistok.build("tokenizer", TINY_AE)
    ae.save_pretrained(tmp_path / "ae")
    return tmp_path / "ae"


def test_latent_model_round_trips_shapes_and_decodes_every_prefix(ae_folder):
    torch.manual_seed(0)
    tok = latent_micro(str(ae_folder)).eval()
    ae = tok.autoencoder
    assert tok.encoder.patch_embed.in_channels == 4 and tok.encoder.pos_embed.shape[1] == 2 * 2 + 1
    x = images(3)
    full = tok.encode(x)
    assert full.shape == (3, K)
    assert float(tok.latent_scale) > 0  # set from the first batch (scale_by_std)
    outs = []
    for k in range(1, K + 1):
        out = tok.decode(tok.encode(x, num_tokens=k))
        assert out.shape == (3, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
        outs.append(out)
    assert not torch.equal(outs[0], outs[-1])
    # the pixels are the frozen AE's decoding of the grid the ViT decoder writes
    with torch.no_grad():
        grid = tok._decode_latents(tok.post_quant_proj(tok.quantizer.indices_to_codes(full)))
        assert grid.shape == (3, 4, 4, 4)
        z = grid.flatten(2).transpose(1, 2) / tok.latent_scale
        torch.testing.assert_close(ae.decode_latents(z).clamp(-1, 1), outs[-1])
        # the eval forward is encode → decode, and its recon loss is in latent space
        out = tok(x)
        torch.testing.assert_close(out.reconstruction.clamp(-1, 1), outs[-1], rtol=0, atol=1e-5)
        target = ae.encode_latents(x) * tok.latent_scale
        expected = torch.nn.functional.mse_loss(grid.flatten(2).transpose(1, 2), target)
        torch.testing.assert_close(out.losses["recon"], expected)


def test_latent_model_trains_only_itself_and_the_ae_stays_frozen(ae_folder):
    torch.manual_seed(0)
    tok = latent_micro(str(ae_folder), pixel_weight=0.5)
    ae_before = {k: v.clone() for k, v in tok.autoencoder.state_dict().items()}
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=1e-2)
    tok.train()
    assert not tok.autoencoder.training  # the frozen AE stays in eval mode
    out = tok(images(2))
    assert set(out.losses) >= {"recon", "pixel"} and out.reconstruction.shape == (2, 3, 16, 16)
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in tok.autoencoder.parameters())
    assert tok.decoder.head.weight.grad is not None and tok.decoder.head.weight.grad.abs().sum() > 0
    opt.step()
    for k, v in tok.autoencoder.state_dict().items():
        assert torch.equal(v, ae_before[k]), k
    # without pixel_weight the loss is latent only; the pixels are decoded (with gradient) when read
    tok2 = latent_micro(str(ae_folder)).train()
    out2 = tok2(images(2))
    assert "pixel" not in out2.losses
    assert out2.reconstruction.shape == (2, 3, 16, 16) and out2.reconstruction.requires_grad


def test_latent_model_save_load_identical_and_stand_alone(tmp_path, ae_folder):
    import shutil

    torch.manual_seed(0)
    tok = latent_micro(str(ae_folder))
    opt = torch.optim.SGD([p for p in tok.parameters() if p.requires_grad], lr=0.1)
    tok.train()
    sum(tok(images(2)).losses.values()).backward()
    opt.step()
    tok.eval()
    tok.save_pretrained(tmp_path / "m")
    shutil.rmtree(ae_folder)  # the saved model carries its own copy of the frozen AE
    loaded = vistok.load(tmp_path / "m")
    assert loaded.autoencoder is not None and float(loaded.latent_scale) == float(tok.latent_scale)
    x = images(3, seed=1)
    for k in (1, 3, K):
        tokens = tok.encode(x, num_tokens=k)
        assert torch.equal(loaded.encode(x, num_tokens=k), tokens)
        assert torch.equal(loaded.decode(tokens), tok.decode(tokens))


def test_latent_model_bad_autoencoder_errors(tmp_path):
    from vistok.errors import ConfigError

    with pytest.raises(ConfigError, match="no saved tokenizer"):
        latent_micro(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="resolution"):
        latent_micro({**TINY_AE, "resolution": 32})
    with pytest.raises(ConfigError, match="no continuous latents"):
        latent_micro({"name": "vit1d", "resolution": 16, "patch_size": 4, "num_tokens": 2,
                      "encoder_size": "micro", "decoder_size": "micro"})
    with pytest.raises(ValueError, match="pixel_weight"):
        micro(pixel_weight=1.0)


# ---- configs --------------------------------------------------------------------------------------------------
CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/tokenizer/vit1d_*.yaml"))


def test_configs_exist_for_every_combination():
    names = {p.stem for p in CONFIGS}
    for stem in ("vit1d_vq_tail_drop", "vit1d_fsq_nested_dropout", "vit1d_binary"):
        assert {f"{stem}_imagenet64", f"{stem}_imagenet256"} <= names, stem


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("64")], ids=lambda p: p.stem)
def test_cpu_configs_train_on_an_image_folder(tmp_path, path):
    """Their default data is an ImageNet-layout folder (tests/test_configs.py runs every config on shapes)."""
    from PIL import Image

    from vistok.training.config import load_config
    from vistok.training.run import run_training

    folder = tmp_path / "images" / "n01440764"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray((torch.rand(80, 96, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    quick = ["train.steps=1", "train.batch_size=4", "train.log_every=1", "train.image_every=0", "train.ckpt_every=0",
             "eval.num_images=4"]
    cfg = load_config(path, [f"run_dir={tmp_path / 'run'}", *quick, f"data.root={tmp_path / 'images'}"])
    assert cfg.data.name == "imagefolder"
    if isinstance(cfg.model.get("autoencoder"), str):  # latent space: its autoencoder config, one step, first
        ae_config = Path(__file__).parent.parent / "configs" / "tokenizer" / f"{Path(cfg.model.autoencoder).name}.yaml"
        run_training(load_config(ae_config, [f"run_dir={tmp_path / 'ae'}", *quick,
                                             f"data.root={tmp_path / 'images'}"]), progress=False)
        cfg.model.autoencoder = str(tmp_path / "ae")
    model = run_training(cfg, progress=False)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    tokens = model.encode(torch.zeros(1, 3, 64, 64), num_tokens=3)
    assert model.decode(tokens).shape == (1, 3, 64, 64)
