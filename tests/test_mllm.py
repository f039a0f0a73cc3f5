"""The MLLM plug-in with a seeded random 2-layer Llama (offline, seconds): both bridges, every TokenSpec kind, the
sequences' loss masks, constrained decoding, CFG rows, determinism, save → load, learning, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

import vistok  # noqa: E402
from vistok.errors import CheckpointError, ConfigError, VistokError  # noqa: E402
from vistok.mllm import MLLM  # noqa: E402
from vistok.mllm.sequences import IGNORE, ROLES  # noqa: E402

CONV = {"resolution": 8, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8,
        "mid_attention": False}
TOKENIZERS = {  # kind / layout -> a tiny random tokenizer config
    "vocab": {"name": "conv2d", **CONV, "quantizer": {"name": "vq", "codebook_size": 32, "code_dim": 4}},
    "subvocab": {"name": "conv2d", **CONV, "quantizer": {"name": "lfq", "num_groups": 2, "group_dim": 2}},
    "bits": {"name": "conv2d", **CONV, "quantizer": {"name": "binary", "num_bits": 5, "code_dim": 5}},
    "bins": {"name": "kl_ae", **CONV, "latent_dim": 3, "quantizer": {"name": "dimwise", "num_bins": 8}},
    "seq_prefix": {"name": "vit1d", "resolution": 16, "patch_size": 4, "num_tokens": 6,
                   "encoder_size": {"width": 32, "depth": 1, "heads": 2},
                   "decoder_size": {"width": 32, "depth": 1, "heads": 2},
                   "quantizer": {"name": "fsq", "levels": [5, 4, 3]}, "prefix": {"name": "tail_drop"}},
    "dual": {"name": "dual", **CONV, "teacher": {"name": "random", "dim": 8}, "semantic_hidden": 16,
             "semantic_decoder_width": 16,
             "quantizer": {"name": "dual", "codebook_size": 32, "semantic_dim": 4, "pixel_dim": 4}},
}
# (tokenizer, bridge, options): both bridges, every kind
CASES = [("vocab", "vocabulary", {}), ("vocab", "adapter", {}), ("subvocab", "adapter", {}), ("bits", "adapter", {}),
         ("bins", "adapter", {"bridge": {"name": "adapter", "head": {"head_depth": 1, "head_heads": 2}}}),
         ("seq_prefix", "vocabulary", {}), ("seq_prefix", "adapter", {}), ("dual", "vocabulary", {}),
         ("dual", "adapter", {"features": "semantic"}),
         ("vocab", "adapter", {"bridge": {"name": "adapter", "window": 2}}),  # Token-Shuffle: 2×2 tokens per slot
         ("bits", "adapter", {"bridge": {"name": "adapter", "window": 2}})]
IDS = [f"{t}-{b}" + ("-window2" if "window" in str(o) else "") for t, b, o in CASES]


def tokenizer(name: str):
    torch.manual_seed(0)
    return vistok.build("tokenizer", TOKENIZERS[name]).eval()


def images(tok, n: int = 2, seed: int = 0) -> torch.Tensor:
    r = tok.resolution
    return torch.rand(n, 3, r, r, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def build(name: str, bridge: str, options: dict | None = None, **kw) -> MLLM:
    options = dict(options or {})
    options.setdefault("bridge", bridge)
    return MLLM.build(kw.pop("llm", "random:tiny-llama"), tokenizer(name), **options, **kw)


def batch_for(m: MLLM, seed: int = 0) -> dict:
    toks = m.image_tokenizer.encode(images(m.image_tokenizer, 2, seed))
    seqs = [m.builder.understanding(toks[0], "what is it?", "a red circle"),
            m.builder.generation("a red circle", toks[1]), m.builder.text("plain text")]
    return m.collate(seqs)


@pytest.mark.parametrize(("tok", "bridge", "options"), CASES, ids=IDS)
def test_default_bridge_follows_the_token_spec(tok, bridge, options):
    m = build(tok, "auto", {k: v for k, v in options.items() if k != "bridge"})
    assert m.bridge_cfg["name"] == ("vocabulary" if m.spec.kind == "vocab" else "adapter")


@pytest.mark.parametrize(("tok", "bridge", "options"), CASES, ids=IDS)
def test_ids_codes_round_trip_and_loss_backward(tok, bridge, options):
    m = build(tok, bridge, options)
    tokens = m.image_tokenizer.encode(images(m.image_tokenizer))[0]
    ids = m.bridge.image_ids(tokens)
    assert ids[0] == m.bridge.boi and ids[-1] == m.bridge.eoi
    assert len(ids) == m.bridge.segment_length()
    if bridge == "vocabulary":
        assert torch.equal(m.bridge.tokens_from_ids(ids), tokens.long())
        if m.spec.grid:  # <boi> <h> <w> (row <eor>)×h <eoi>
            h, w = m.spec.grid
            assert ids[1:3].tolist() == list(m.bridge.size_ids)
            assert (ids == m.bridge.eor).nonzero().flatten().tolist() == [3 + r * (w + 1) + w for r in range(h)]
    else:  # the slots read projector(code vectors): the code of every index channel enters the LLM
        batch = m.collate([m.builder.understanding(tokens, "what?")])
        embeds = m.bridge.inputs_embeds(m.embed, batch["input_ids"], batch["image_tokens"], batch["num_slots"])
        slots = batch["input_ids"][0] == m.bridge.img
        assert int(slots.sum()) == m.spec.length // m.bridge.per_slot
        torch.testing.assert_close(embeds[0, slots], m.bridge.project(tokens[None])[0])
    m.train()
    loss, stats = m(**batch_for(m))
    assert torch.isfinite(loss)
    loss.backward()
    trained = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trained and all(not n.startswith("image_tokenizer") for n in trained)
    if bridge == "adapter":
        assert "image" in stats and m.bridge.projector[0].weight.grad.abs().sum() > 0


def test_loss_masks_cover_answers_and_images_only():
    m = build("vocab", "vocabulary")
    tokens = m.image_tokenizer.encode(images(m.image_tokenizer))[0]
    und = m.builder.understanding(tokens, "what is it?", "a red circle")
    scored = und.input_ids[und.labels != IGNORE]
    assert m.text_tokenizer.decode(scored, skip_special_tokens=True).strip() == "a red circle"
    assert not torch.isin(und.input_ids[und.labels != IGNORE], m.bridge.interior_ids).any()  # image is input
    gen = m.builder.generation("a red circle", tokens)
    seg = m.bridge.image_ids(tokens)
    scored = gen.input_ids[gen.labels != IGNORE]
    assert torch.equal(scored[: len(seg)], seg)  # the whole image segment, then the end of the turn
    assert "red" not in m.text_tokenizer.decode(scored)
    uncond = m.builder.generation(None, tokens)
    assert (uncond.input_ids == m.bridge.uncond).sum() == 1
    text = m.builder.text("hello")
    assert (text.labels != IGNORE).sum() == len(text.input_ids) - 1  # all but the BOS
    # the adapter scores its slots with the head, never with the LM loss
    a = build("bits", "adapter")
    tokens = a.image_tokenizer.encode(images(a.image_tokenizer))[0]
    gen = a.builder.generation("a red circle", tokens)
    assert not (gen.labels == a.bridge.img).any() and (gen.input_ids == a.bridge.img).sum() == a.spec.length


def test_cfg_prompt_dropout_rate_in_training_data():
    from vistok.mllm.data import MLLMDataset

    m = build("vocab", "vocabulary")
    tokens = torch.zeros(400, *m.spec.token_shape, dtype=torch.long)
    ds = MLLMDataset(m.builder, tokens, ["a red circle"] * 400, ["a red circle"] * 400, {"generation": 1.0},
                     prompt_dropout=0.1, seed=0)
    rate = sum(int((ds[i]["input_ids"] == m.bridge.uncond).any()) for i in range(400)) / 400
    assert 0.05 < rate < 0.16


def test_constrained_decoding_stays_inside_images_and_closes_them():
    from vistok.mllm.decoding import ImageLogitsProcessor

    m = build("vocab", "vocabulary").eval()
    proc = ImageLogitsProcessor(m.bridge, temperature=1.0, generator=torch.Generator().manual_seed(0))
    V = m.vocab_rows
    h, w = m.spec.grid
    prompt = torch.tensor([5, 6, m.bridge.boi])
    ids = prompt.clone()
    for _ in range(m.bridge.segment_length() - 1):  # feed random logits that favour text ids
        scores = torch.randn(1, V) + torch.where(torch.arange(V) < m.base_rows, 10.0, 0.0)
        out = proc(ids[None], scores)
        ids = torch.cat([ids, out.argmax(-1)])
    seg = ids[2:]
    assert torch.equal(seg, m.bridge.image_ids(m.bridge.tokens_from_ids(seg)))  # a well-formed image
    assert len(m.bridge.tokens_from_ids(seg)) == h * w
    # outside an image: text logits untouched, image-only ids masked
    scores = torch.randn(1, V)
    out = proc(torch.tensor([[5, 6]]), scores)
    text = torch.ones(V, dtype=torch.bool)
    text[m.bridge.interior_ids] = False
    assert torch.equal(out[0, text], scores[0, text]) and torch.isinf(out[0, ~text]).all()


def test_generate_through_the_llm_every_kind_deterministic():
    for tok, bridge, options in CASES:
        m = build(tok, bridge, options).eval()
        kw = {"cfg_scale": 2.0, "temperature": 1.5, "top_k": 8, "top_p": 0.9}
        a = m.generate_tokens(["a red circle", "a blue star"], seed=3, **kw)
        b = m.generate_tokens(["a red circle", "a blue star"], seed=3, **kw)
        c = m.generate_tokens(["a red circle", "a blue star"], seed=4, **kw)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"{tok}-{bridge}: same seed, different image"
        assert not all(torch.equal(x, y) for x, y in zip(a, c)), f"{tok}-{bridge}: the seed changes nothing"
        for t in a:
            m.spec.validate(t[None])  # valid indices of the right shape (a prefix for prefix_ok)
        imgs = m.generate_images(["a red circle"], seed=0)
        assert imgs.shape == (1, 3, m.image_tokenizer.resolution, m.image_tokenizer.resolution)


def test_prefix_tokenizer_images_end_at_eoi():
    m = build("seq_prefix", "vocabulary").eval()
    assert m.spec.prefix_ok
    lengths = {len(t) for t in m.generate_tokens([None] * 8, temperature=3.0, seed=0)}
    assert lengths <= set(range(1, m.spec.length + 1))
    assert {len(t) for t in m.generate_tokens(["x"] * 2, num_tokens=3, seed=0)} == {3}
    with pytest.raises(ValueError, match="num_tokens"):
        m.generate_tokens(["x"], num_tokens=m.spec.length + 1)


def test_cfg_rows_combine_conditional_and_unconditional_logits():
    from vistok.mllm.decoding import ImageLogitsProcessor

    m = build("vocab", "vocabulary")
    V, s = m.vocab_rows, 3.0
    proc = ImageLogitsProcessor(m.bridge, cfg_scale=s, cfg_rows=True, temperature=0.0)
    ids = torch.tensor([[5, m.bridge.boi, *m.bridge.size_ids], [7, m.bridge.boi, *m.bridge.size_ids]])  # k = 2
    scores = torch.randn(2, V, generator=torch.Generator().manual_seed(0))
    out = proc(ids, scores)
    lo, hi = m.bridge.img_base, m.bridge.img_base + m.bridge.image_vocab
    guided = scores[1, lo:hi] + s * (scores[0, lo:hi] - scores[1, lo:hi])
    want = lo + int(guided.argmax())
    assert out[0].argmax() == want and out[1].argmax() == want  # both rows of the pair get the same token
    assert torch.isinf(out).sum() == 2 * (V - 1)
    # the adapter: with CFG the batch runs each prompt next to an <uncond> row
    a = build("bits", "adapter").eval()
    batch = a._prompt_batch(["a red circle"], cfg=True)
    assert batch["input_ids"].shape[0] == 2 and (batch["input_ids"][1] == a.bridge.uncond).any()


def test_token_shuffle_window_slots():
    """window 2: a slot holds one 2×2 window of the grid; slots invert exactly, a slot's embedding depends on its own
    window's four tokens only, and generation returns whole grids in raster order."""
    m = build("vocab", "adapter", {"bridge": {"name": "adapter", "window": 2}}).eval()
    tokens = torch.randint(0, 32, (2, 16))
    slots = m.bridge.to_slots(tokens)
    assert slots.shape == (2, 4, 4) and torch.equal(m.bridge.from_slots(slots), tokens)
    assert slots[0, 0].tolist() == tokens[0, [0, 1, 4, 5]].tolist()  # the top-left window of the 4×4 grid
    base = m.bridge.project(tokens)
    changed = tokens.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 32  # in window 0
    diff = (m.bridge.project(changed) - base).abs().sum(-1)
    assert diff[0, 0] > 0 and diff[0, 1:].abs().max() == 0 and diff[1].abs().max() == 0
    out = m.generate_tokens(["a red circle", "a blue star"], temperature=1.0, seed=3, cfg_scale=2.0)
    assert all(t.shape == (16,) for t in out)
    assert all(torch.equal(a, b) for a, b in zip(out, m.generate_tokens(["a red circle", "a blue star"],
                                                                         temperature=1.0, seed=3, cfg_scale=2.0)))
    with pytest.raises(ConfigError, match="window"):
        build("seq_prefix", "adapter", {"bridge": {"name": "adapter", "window": 2}})


@pytest.mark.parametrize("window", [1, 2])
def test_kv_cache_decoding_matches_full_recomputation(window):
    m = build("bits", "adapter", {"bridge": {"name": "adapter", "window": window}}).eval()
    tokens = m.generate_tokens(["a red circle"], temperature=0.0, seed=0)[0]  # greedy, KV-cached
    seq = m.builder.generation("a red circle", tokens)
    batch = m.collate([seq])
    embeds = m.bridge.inputs_embeds(m.embed, batch["input_ids"], batch["image_tokens"], batch["num_slots"])
    with torch.no_grad():
        hidden = m.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[-1]
        pred = m.bridge.predictor_mask(batch["input_ids"], torch.tensor([True]))
        again = m.bridge.sample(hidden[pred], None, 1.0, 0.0, 0, 1.0, None)  # (slots, tokens per slot, bits)
    assert torch.equal(m.bridge.from_slots(again[None])[0], tokens)


@pytest.mark.parametrize(("tok", "bridge", "trainable"), [
    ("vocab", "vocabulary", {"lora": {"r": 4}}), ("bits", "adapter", {"last_blocks": 1}),
    ("subvocab", "adapter", {"all": True}),
    ("vocab", "adapter", {"bridge": "head", "new_rows": False, "last_blocks": 1})],
    ids=["vocabulary-lora", "adapter-blocks", "adapter-all", "adapter-head-blocks"])
def test_save_load_gives_identical_outputs(tok, bridge, trainable, tmp_path):
    llm = "random:tiny-llama-untied" if bridge == "vocabulary" else "random:tiny-llama"
    m = build(tok, bridge, trainable=trainable, llm=llm)
    assert m.tied == (llm == "random:tiny-llama")
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    rows_before = m.llm.get_input_embeddings().weight[: m.base_rows].detach().clone()
    for _ in range(2):
        loss, _ = m(**batch_for(m))
        loss.backward()
        opt.step()
        opt.zero_grad()
    if not trainable.get("all"):  # the LLM's own rows never move
        assert torch.equal(m.llm.get_input_embeddings().weight[: m.base_rows], rows_before)
    m.eval()
    m.save_pretrained(tmp_path / "mllm")
    cfg = json.loads((tmp_path / "mllm" / "config.json").read_text())
    assert cfg["_vistok"]["kind"] == "mllm" and (tmp_path / "mllm" / "tokenizer" / "model.safetensors").is_file()
    assert (tmp_path / "mllm" / "text_tokenizer").is_dir()
    assert (tmp_path / "mllm" / "lora_adapter").is_dir() == bool(trainable.get("lora"))
    back = vistok.load(tmp_path / "mllm")
    assert isinstance(back, MLLM)
    batch = batch_for(m, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(back(**batch)[0], m(**batch)[0], rtol=0, atol=0)
    kw = {"cfg_scale": 2.0, "seed": 5}
    assert all(torch.equal(x, y) for x, y in zip(back.generate_tokens(["a red circle"], **kw),
                                                   m.generate_tokens(["a red circle"], **kw)))


def test_head_only_bridge_with_last_blocks_keeps_gradients_in_the_top():
    """trainable {bridge: head, last_blocks: 1, new_rows: output}: the head, the last block and the marker rows (from
    the output side) train; the projector and the lower blocks get no gradient, so backward stops at the top."""
    from vistok.mllm.model import _decoder_layers

    m = build("vocab", "adapter", trainable={"bridge": "head", "new_rows": "output", "last_blocks": 1})
    blocks = list(_decoder_layers(m.llm))
    seen = []
    blocks[0].register_forward_hook(lambda mod, args, out: seen.append((out[0] if isinstance(out, tuple) else out)
                                                                       .requires_grad))
    loss, _ = m(**batch_for(m))
    loss.backward()
    assert seen == [False]
    assert m.bridge.head.output.weight.grad is not None  # (its input embedding is unused: the projector feeds)
    assert all(p.grad is not None for p in blocks[-1].parameters())
    frozen = [*m.bridge.projector.parameters(), *blocks[0].parameters()]
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    grad = m.llm.get_input_embeddings().weight.grad  # the marker rows learn from the output side alone
    assert grad[m.base_rows:].abs().sum() > 0 and grad[: m.base_rows].abs().sum() == 0
    with pytest.raises(ConfigError, match="adapter bridge"):
        build("vocab", "vocabulary", trainable={"bridge": "head"})


def test_output_side_rows_with_last_blocks_keep_gradients_in_the_top():
    """Vocabulary bridge, trainable {new_rows: output, last_blocks: 1, lora: none}: the new rows learn (from the output
    side) and the last block trains, but no gradient runs through the lower blocks."""
    from vistok.mllm.model import _decoder_layers

    m = build("vocab", "vocabulary", trainable={"new_rows": "output", "last_blocks": 1})
    blocks = list(_decoder_layers(m.llm))
    seen = []
    blocks[0].register_forward_hook(lambda mod, args, out: seen.append((out[0] if isinstance(out, tuple) else out)
                                                                       .requires_grad))
    loss, _ = m(**batch_for(m))
    loss.backward()
    assert seen == [False]  # the lowest block's output carries no graph: backward never runs through it
    grad = m.llm.get_input_embeddings().weight.grad
    assert grad[m.base_rows:].abs().sum() > 0 and grad[: m.base_rows].abs().sum() == 0
    assert all(p.grad is not None for p in blocks[-1].parameters())
    assert all(p.grad is None and not p.requires_grad for p in blocks[0].parameters())


@pytest.mark.parametrize("tok", ["vocab", "seq_prefix"])
def test_codebook_image_loss_is_the_softmax_decoding_samples_from(tok):
    """bridge.image_softmax=codebook: an image-code target is scored by a softmax over the ids decoding may draw there
    (the codes; plus <eoi> for prefix images), every other target by the whole vocabulary; the rest is unchanged."""
    import torch.nn.functional as F

    full = build(tok, "vocabulary").eval()
    cut = build(tok, "vocabulary", {"bridge": {"name": "vocabulary", "image_softmax": "codebook"}}).eval()
    cut.load_state_dict(full.state_dict())
    batch = batch_for(full)
    with torch.no_grad():
        out = full.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits, targets = out.logits[:, :-1].float(), batch["labels"][:, 1:]
    allowed = cut.bridge.sampled_ids
    assert (eoi_allowed := bool((allowed == cut.bridge.eoi).any())) == (tok == "seq_prefix")
    keep = targets != IGNORE
    inside = torch.isin(targets, allowed) & keep
    assert inside.sum() >= 4 and (keep & ~inside).any()
    expected = torch.zeros_like(targets, dtype=torch.float32)
    expected[keep & ~inside] = F.cross_entropy(logits[keep & ~inside], targets[keep & ~inside], reduction="none")
    index = torch.searchsorted(allowed[:-1] if eoi_allowed else allowed, targets[inside])
    if eoi_allowed:
        index = torch.where(targets[inside] == cut.bridge.eoi, len(allowed) - 1, index)
    expected[inside] = F.cross_entropy(logits[inside][:, allowed], index, reduction="none")
    with torch.no_grad():
        got_full, _ = full(**batch)
        got_cut, _ = cut(**batch)
    assert torch.allclose(got_cut, expected[keep].mean(), atol=1e-4)
    assert got_cut < got_full  # fewer competitors at the image positions
    with pytest.raises(ConfigError, match="image_softmax"):
        build(tok, "vocabulary", {"bridge": {"name": "vocabulary", "image_softmax": "partial"}})


def test_answers_are_text_and_untrained_rows_do_not_leak():
    m = build("vocab", "vocabulary").eval()
    answers = m.answer(images(m.image_tokenizer, 2), "What is in this image?", max_new_tokens=6)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    for a in answers:
        assert "<img_" not in a and "<eoi>" not in a


def _shapes(n: int, resolution: int = 8):
    from vistok.data.shapes import SHAPES, ShapesDataset

    ds = ShapesDataset(resolution=resolution, size=n, seed=0, rotate=False)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), [SHAPES[it["shape"]] for it in items]


@pytest.mark.parametrize("bridge", ["vocabulary", "adapter"])
def test_tiny_model_learns_to_caption_four_shapes(bridge):
    """A 2-layer random Llama + a random tokenizer learn to name 4 shapes: the loss falls and the greedy answers are
    right far above chance (1/4) on the training images."""
    torch.manual_seed(0)
    m = build("vocab", bridge, trainable={"all": True}).train()
    imgs, names = _shapes(16)
    tokens = m.image_tokenizer.encode(imgs)
    seqs = [m.builder.understanding(t, "shape?", n) for t, n in zip(tokens, names)]
    batch = m.collate(seqs)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(120):
        loss, _ = m(**batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    m.eval()
    answers = m.answer(imgs, "shape?", max_new_tokens=10)
    acc = sum(a.strip() == n for a, n in zip(answers, names)) / len(names)
    assert acc >= 0.75, (acc, answers, names)


def test_understanding_and_generation_share_one_batch():
    m = build("subvocab", "adapter")
    batch = batch_for(m)
    assert batch["role"].tolist() == [ROLES.index("understanding"), ROLES.index("generation"), ROLES.index("text")]
    loss, stats = m(**batch)
    assert {"lm_understanding", "lm_generation", "lm_text", "image"} <= set(stats)


# ---- bad input: one-line errors that say what to do ---------------------------------------------------------------
def _one_line(e: BaseException) -> bool:
    return "\n" not in str(e) and len(str(e)) < 400


def test_vocabulary_overflow_is_a_config_error():
    with pytest.raises(ConfigError, match="adapter") as e:
        build("vocab", "vocabulary", {"bridge": {"name": "vocabulary", "max_image_vocab": 16}})
    assert _one_line(e.value)
    with pytest.raises(ConfigError, match="adapter"):
        build("bits", "vocabulary")


def test_missing_corrupt_and_non_causal_llms(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as e:
        build("vocab", "auto", llm=str(tmp_path / "missing.gguf"))
    assert _one_line(e.value)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(VistokError) as e:
        build("vocab", "auto", llm=str(bad))
    assert _one_line(e.value)
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "num_layers": 1}))
    with pytest.raises(ConfigError, match="causal") as e:
        build("vocab", "auto", llm=str(folder))
    assert _one_line(e.value)
    with pytest.raises(CheckpointError, match="config.json"):
        build("vocab", "auto", llm=str(tmp_path))


def test_wrong_image_size_and_empty_question():
    m = build("vocab", "vocabulary").eval()
    with pytest.raises(ValueError, match="8, 8") as e:
        m.answer(torch.zeros(1, 3, 16, 16), "what?")
    assert _one_line(e.value)
    with pytest.raises(ValueError, match="empty") as e:
        m.answer(images(m.image_tokenizer, 1), "  ")
    assert _one_line(e.value)


@pytest.mark.parametrize("bridge", ["vocabulary", "adapter"])
def test_left_padded_batches_decode_as_single_prompts(bridge):
    """Prompts of different lengths share a left-padded batch (and the KV cache) without changing each other's
    greedy images."""
    m = build("vocab", bridge).eval()
    alone = m.generate_tokens(["a red circle"], temperature=0.0)[0]
    batched = m.generate_tokens(["a red circle", "a much longer prompt about a purple star"], temperature=0.0)[0]
    assert torch.equal(alone, batched)


@pytest.mark.parametrize("llm", ["random:tiny-llama", "random:tiny-llama-untied"])
def test_training_logits_at_labelled_positions_are_the_llms_own(llm):
    m = build("vocab", "vocabulary", llm=llm, trainable={"lora": {"r": 4}}).eval()
    batch = batch_for(m)
    with torch.no_grad():
        out = m.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        torch.testing.assert_close(m._lm_logits(out.hidden_states[-1]), out.logits.float())


def test_name_ranks_place_the_closest_class_name_first():
    from vistok.mllm.evaluation import name_ranks

    names = ["tench", "goldfish", "great white shark", "tiger shark"]
    right = name_ranks(["tench", "a goldfish", "great white shark"], ["tench", "goldfish", "great white shark"],
                       names, encoder="hash:64")
    assert right["top1"] == 1.0 and right["median_rank"] == 1 and right["chance_top1"] == 0.25
    wrong = name_ranks(["tench"], ["goldfish"], names, encoder="hash:64")
    assert wrong["top1"] == 0.0 and wrong["median_rank"] > 1


def test_adapter_slots_start_at_the_scale_of_text_embeddings():
    m = build("vocab", "adapter").eval()
    text_rms = m.embed.weight[: m.base_rows].pow(2).mean().sqrt()
    slots = m.bridge.project(m.image_tokenizer.encode(images(m.image_tokenizer)))
    torch.testing.assert_close(slots.pow(2).mean(-1).sqrt(), torch.full(slots.shape[:2], float(text_rms)),
                               rtol=1e-3, atol=1e-4)
