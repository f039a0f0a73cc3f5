"""Text conditioning: encoders (the bundled all-MiniLM-L6-v2 offline, and a tiny hashed random one), the prompt
prefix with condition dropout and CFG, seeds, and a tiny text-conditioned GPT on captioned shapes that follows
prompts far above chance after a short training."""

import os

import pytest
import torch
import torch.nn.functional as F

from vistok.data.shapes import BACKGROUNDS, COLORS, ShapesDataset
from vistok.errors import ConfigError
from vistok.generators import GPT
from vistok.generators.text import HashTextEncoder, TextConditioning, text_encoder, text_encoder_config
from vistok.registry import list_names
from vistok.spec import TokenSpec

PROMPTS = ["a red circle on a white background", "a blue star on a beige background"]


def test_hash_encoder_is_deterministic_normalized_and_order_aware():
    enc = HashTextEncoder(64)
    a = enc.encode(["a red circle on a blue background", "a blue circle on a red background", "A red circle on a "
                    "blue background!"])
    assert a.shape == (3, 64)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(a[0], a[2])  # case and punctuation do not matter
    assert (a[0] - a[1]).norm() > 0.1  # same words, other order: bigrams tell them apart
    torch.testing.assert_close(HashTextEncoder(64).encode(["x y"]), HashTextEncoder(64).encode(["x y"]))


def test_text_encoders_are_built_through_the_registry():
    import vistok

    assert {"hash", "minilm", "sentence_transformers"} <= set(list_names("text_encoder"))
    built = vistok.build("text_encoder", {"name": "hash", "dim": 16})
    assert isinstance(built, HashTextEncoder) and built.dim == 16
    # the short string and the config section name the same (cached) encoder
    assert text_encoder("hash:16") is text_encoder({"name": "hash", "dim": 16})
    assert text_encoder_config("org/some-model") == {"name": "sentence_transformers", "model": "org/some-model"}
    cond = TextConditioning(8, text_encoder={"name": "hash", "dim": 16}, num_prefix=2)
    assert cond(PROMPTS).shape == (2, 2, 8)
    with pytest.raises(ConfigError, match="text_encoder"):
        text_encoder({"name": "nope"})


def test_bundled_minilm_loads_offline_and_embeds_by_meaning(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = text_encoder("minilm")
    assert enc.dim == 384
    e = enc.encode(["a red circle", "a crimson disk", "a tax form for 2021"])
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3), atol=1e-4, rtol=0)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_text_prefix_condition_dropout_and_cfg():
    torch.manual_seed(0)
    model = GPT(TokenSpec.vocab(16, grid=(2, 2)).to_dict(), num_classes=1, dim=32, depth=1, heads=2,
                class_dropout=1.0, conditioning={"name": "text", "text_encoder": "hash:32", "num_prefix": 3})
    assert isinstance(model.cond, TextConditioning) and model.num_prefix == 3 and model.conditions_on_text
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    prefix = model.cond(PROMPTS)
    assert prefix.shape == (2, 3, 32)
    dropped = model.cond(PROMPTS, torch.tensor([True, False]))
    assert torch.equal(dropped[0], model.cond.null(1)[0]) and torch.equal(dropped[1], prefix[1])
    seen = []
    model.cond.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    model.train()(torch.randint(0, 16, (2, 4)), PROMPTS)  # class_dropout 1: every prompt dropped in training
    assert torch.equal(seen[-1], model.cond.null(2))
    model.eval()
    tokens = model.generate(PROMPTS, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens, model.generate(PROMPTS, cfg_scale=2.0, generator=torch.Generator().manual_seed(0)))
    cond = model.step_logits(PROMPTS, tokens)
    uncond_prompts = model.step_logits(PROMPTS, tokens, cfg_scale=0.0, guidance=True)  # s = 0: the null branch
    torch.testing.assert_close(model.step_logits(PROMPTS, tokens, cfg_scale=2.0), uncond_prompts +
                               2.0 * (cond - uncond_prompts), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="list of prompt strings"):
        model.generate(torch.tensor([0, 1]))


# ---- a tiny text-to-image model follows prompts -----------------------------------------------------------------
PALETTE = torch.tensor(list(COLORS.values()) + list(BACKGROUNDS.values()), dtype=torch.float32) / 127.5 - 1


def palette_tokens(images: torch.Tensor) -> torch.Tensor:
    """A fixed 'tokenizer' for the test: 2×2 average pooling of 16×16 shapes, then the nearest of the 12 dataset
    colors per cell -> (B, 64) tokens in [0, 12): 0..5 shape colors, 6..11 backgrounds."""
    cells = F.avg_pool2d(images, 2).flatten(2).transpose(1, 2)  # (B, 64, 3)
    return torch.cdist(cells, PALETTE.expand(len(cells), -1, -1)).argmin(-1)


def test_tiny_text_conditioned_model_follows_prompts_above_chance():
    """Prompt accuracy read off the generated tokens exactly: the prompted shape color is the most frequent
    shape-color token and the prompted background the most frequent background token. Chance for both together
    is about 1/6 · 1/4.5 ≈ 4%. (The shape itself is left to the CNN judge in benchmarks/generation.py.)"""
    torch.manual_seed(0)
    data = ShapesDataset(resolution=16, size=900, seed=0)
    items = [data[i] for i in range(len(data))]
    tokens = palette_tokens(torch.stack([it["image"] for it in items]))
    captions = [it["caption"] for it in items]
    model = GPT(TokenSpec.vocab(12, grid=(8, 8)).to_dict(), num_classes=1, dim=64, depth=2, heads=4,
                class_dropout=0.1, conditioning={"name": "text", "text_encoder": "hash:64", "num_prefix": 2})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(180):
        idx = torch.randint(0, len(items), (32,), generator=gen)
        loss = model(tokens[idx], [captions[i] for i in idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    held_out = ShapesDataset(resolution=16, size=24, seed=1)
    prompts = [held_out[i] for i in range(len(held_out))]
    samples = model.generate([p["caption"] for p in prompts], cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    counts = F.one_hot(samples, 12).sum(1)  # (24, 12)
    color_ok = counts[:, :6].argmax(-1) == torch.tensor([p["color"] for p in prompts])
    background_ok = counts[:, 6:].argmax(-1) == torch.tensor([p["background"] for p in prompts])
    accuracy = (color_ok & background_ok).float().mean().item()
    assert accuracy > 0.3, f"prompt accuracy {accuracy:.2f} (chance ≈ 0.04)"  # measured: 0.58


def test_generator_stage_prompt_class_trains_on_class_names(tmp_path, monkeypatch):
    """prompt=class: a text-conditional GPT trains on "a red circle" (the MLLM recipes' prompts), not the caption."""
    from pathlib import Path

    import vistok
    import vistok.training.run as run
    from vistok.training.config import load_config

    torch.manual_seed(0)
    tok = {"name": "conv2d", "resolution": 8, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
           "z_channels": 8, "mid_attention": False, "quantizer": {"name": "vq", "codebook_size": 16, "code_dim": 4}}
    vistok.build("tokenizer", tok).save_pretrained(tmp_path / "tok")
    seen = {}

    class Recording(run.GeneratorTask):
        def __init__(self, *args, **kwargs):
            seen["prompts"] = kwargs.get("sample_prompts")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(run, "GeneratorTask", Recording)
    config = Path(__file__).resolve().parent.parent / "configs" / "generator" / "text_shapes32.yaml"
    overrides = [f"tokenizer={tmp_path / 'tok'}", f"run_dir={tmp_path / 'gpt'}", f"token_cache_dir={tmp_path / 'c'}",
                 "data.resolution=8", "data.size=6", "train.steps=1", "train.batch_size=2", "train.image_every=0",
                 "train.ckpt_every=0", "model.conditioning.text_encoder=hash:16", "prompt=class"]
    run.run_training(load_config(config, overrides), progress=False)
    assert seen["prompts"] and all(p.split()[0] in ("a", "an") and " on a " not in p for p in seen["prompts"])
    with pytest.raises(ConfigError, match="prompt"):
        load_config(config, overrides[:-1] + ["prompt=title"])
