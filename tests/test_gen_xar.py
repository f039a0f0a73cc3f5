"""Next-X prediction: entity partitions (cover every token once, in a valid causal order); xAR's denoising
transformer (entity_head "flow": block-causal attention inside and across entities, KV cache = recompute, the
training forward computes what decoding computes, logit-normal times per image and entity, the Euler–Maruyama
schedule and its reverse SDE on a Gaussian, a falling loss on a tiny overfit that samples the training images,
seeded determinism, options and errors); the query-based heads (discrete, flow_mlp) in both layouts (shift, query):
block-causal predictions, KV cache equality, the tokens each decoding step feeds, Noisy Context Learning, and the
per-token flow-matching head on a toy 2D distribution."""

import json
import math

import pytest
import torch
from torch import nn

from vistok.errors import ConfigError
from vistok.generators.entities import build_entities
from vistok.generators.heads.flow import FlowMatchingHead, euler_maruyama, logit_normal, sde_timesteps
from vistok.generators.xar import XAR
from vistok.spec import TokenSpec

LABELS = torch.tensor([0, 2, 3])
SPEC = TokenSpec.vocab(16, grid=(4, 4), code_dim=3)
ENTITIES = ["token", {"name": "cell", "size": 2}, {"name": "subsample", "stride": 2}, "scale", "image"]
IDS = ["token", "cell2", "subsample2", "scale", "image"]
# (entity, layout) pairs: shift needs entities of equal size, so scale only has the query layout
LAYOUTS = [pytest.param(e, lay, id=f"{i}-{lay}") for e, i in zip(ENTITIES, IDS) for lay in ("shift", "query")
           if not (i == "scale" and lay == "shift")]


def tiny(entity, entity_head="discrete", spec=SPEC, seed=0, **kw) -> XAR:
    torch.manual_seed(seed)
    flow = {"width": 32, "depth": 1} if entity_head == "flow_mlp" else None
    model = XAR(spec.to_dict(), num_classes=4, dim=32, depth=2, heads=2, entity=entity, entity_head=entity_head,
                flow=flow, flow_steps=4, **kw)
    for p in model.parameters():
        if p.ndim >= 2:
            nn.init.normal_(p, std=0.2)
    if entity_head != "discrete" and spec.kind == "vocab":
        model.set_codebook(torch.randn(spec.vocab_sizes[0], spec.code_dim, generator=torch.Generator().manual_seed(0)))
    return model.eval()


# ---- partitions ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [(8, 8), (4, 8)])
@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_partitions_cover_every_token_exactly_once(entity, grid):
    spec = TokenSpec.vocab(8, grid=grid)
    parts = build_entities(spec, entity)
    flat = torch.cat(parts)
    assert len(flat) == spec.length and torch.equal(flat.sort().values, torch.arange(spec.length))


def test_partitions_are_the_named_groups():
    spec = TokenSpec.vocab(8, grid=(8, 8))
    cell = build_entities(spec, {"name": "cell", "size": 2})
    assert len(cell) == 16 and cell[0].tolist() == [0, 1, 8, 9] and cell[1].tolist() == [2, 3, 10, 11]
    sub = build_entities(spec, {"name": "subsample", "stride": 2})
    assert len(sub) == 4 and sub[0].tolist() == [r * 8 + c for r in range(0, 8, 2) for c in range(0, 8, 2)]
    assert sub[3].tolist() == [r * 8 + c for r in range(1, 8, 2) for c in range(1, 8, 2)]
    scale = build_entities(spec, "scale")  # strides 4, 2, 1: a 2×2, then 4×4, then the 8×8 image
    assert [len(e) for e in scale] == [4, 12, 48] and scale[0].tolist() == [0, 4, 32, 36]
    seen = torch.cat(scale[:2])
    assert torch.equal(seen.sort().values, torch.tensor([r * 8 + c for r in range(0, 8, 2) for c in range(0, 8, 2)]))
    assert [len(e) for e in build_entities(spec, "image")] == [64]
    assert [e.tolist() for e in build_entities(TokenSpec.vocab(8, length=6), {"name": "cell", "size": 3})] == \
        [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="does not tile the 8×8"):
        build_entities(spec, {"name": "cell", "size": 3})
    with pytest.raises(ConfigError, match=r"unknown entity 'patch'; registered: \['cell', 'image', 'scale'"):
        build_entities(spec, "patch")
    with pytest.raises(ConfigError, match=r"entity 'cell' got unknown options \['stride'\]"):
        build_entities(spec, {"name": "cell", "stride": 2})
    assert [len(e) for e in build_entities(spec, {})] == [1] * 64  # a dict without a name is "token"


def test_every_registered_entity_is_tested():
    from vistok.registry import list_names

    assert list_names("entity") == sorted(e if isinstance(e, str) else e["name"] for e in ENTITIES)


# ---- xAR's denoising transformer (entity_head "flow", the default) --------------------------------------------
def _entity_times(model, t_per_entity):
    """(B, M) times -> the AdaLN conditions (B, M, dim) and groups of a full-sequence ``denoise`` call, conditional
    on LABELS."""
    return model.condition_vector(LABELS)[:, None] + model.time_embed(t_per_entity), model.seq_entity


@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_flow_attention_is_block_causal_over_entities(entity):
    """An entity's tokens see each other and earlier entities only: the mask says so, and perturbing one token of
    entity k changes the velocity of every token of entity k (tokens of an entity interact) and of later entities,
    never of earlier ones."""
    model = tiny(entity, "flow").double()
    ent = model.seq_entity
    assert torch.equal(model.seq_mask, ent[None, :] <= ent[:, None])
    assert [int((ent == m).sum()) for m in range(len(model.entities))] == model.sizes
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 3, generator=g, dtype=torch.float64)
    cond, groups = _entity_times(model, torch.rand(3, len(model.entities), generator=g, dtype=torch.float64))
    with torch.no_grad():
        base = model.denoise(x, cond, groups)
        for k in range(len(model.entities)):
            pos = int(model.offsets[k])  # the first token of entity k in the sequence
            moved = x.clone()
            moved[:, pos] += 1.0
            diff = (model.denoise(moved, cond, groups) - base).abs().amax(dim=(0, 2))  # (L,)
            assert (diff[ent < k] < 1e-12).all()
            assert (diff[ent == k] > 1e-6).all()
            if k + 1 < len(model.entities):
                assert (diff[ent > k] > 1e-6).all()


@pytest.mark.parametrize("entity", ENTITIES, ids=IDS)
def test_flow_kv_cache_matches_full_recompute(entity):
    """The Euler–Maruyama sampling with the KV cache (one clean entity written per entity, the noisy one fed
    alone at later steps) gives the samples of recomputing [clean E_0..E_{m-1}, noisy E_m] at every step, with
    the linear CFG ramp; and the probe velocities (step_outputs) agree."""
    model = tiny(entity, "flow").double()
    kw = {"cfg_scale": 2.0}
    a = model.sample_codes(LABELS, generator=torch.Generator().manual_seed(0), **kw)
    b = model.sample_codes(LABELS, generator=torch.Generator().manual_seed(0), use_cache=False, **kw)
    assert a.shape == (3, 16, 3) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    tokens = model.nearest_tokens(a)
    torch.testing.assert_close(model.step_outputs(LABELS, tokens, **kw),
                               model.step_outputs(LABELS, tokens, use_cache=False, **kw), atol=1e-9, rtol=0)


def test_flow_training_forward_computes_what_decoding_computes():
    """The training pass (one block-causal pass with one time per entity) gives entity m, when the earlier
    entities are clean (t = 0) and entity m is at t = 1 with x = 0, exactly the velocity decoding computes at
    entity m's first step (step_outputs, no guidance)."""
    model = tiny({"name": "cell", "size": 2}, "flow").double()
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    probe = model.step_outputs(LABELS, tokens)[:, model.order]  # generation order
    codes = model.token_codes(tokens)[:, model.order]
    M = len(model.entities)
    for m in range(M):
        a, b = model.offsets[m], model.offsets[m + 1]
        x = codes.clone()
        x[:, a:] = 0  # entity m at x = 0 (later entities cannot matter)
        t = (torch.arange(M) >= m).double().expand(3, M)  # earlier entities clean, entity m (and later) at 1
        with torch.no_grad():
            v = model.denoise(x, *_entity_times(model, t))
        torch.testing.assert_close(v[:, a:b], probe[:, a:b], atol=1e-10, rtol=0)


def test_flow_training_times_are_logit_normal_per_image_and_entity():
    """Every image and entity draws one t ~ logit-normal(0, 1) (xAR's sample_logit_normal): the time embedder sees
    (B, M) times whose logits are standard normal, each entity's tokens get their entity's condition, and the
    noised input is (1 − t)·x + t·ε with the velocity target ε − x."""
    model = tiny({"name": "cell", "size": 2}, "flow").train()
    times, calls = [], []
    embed, denoise = model.time_embed.forward, model.denoise
    model.time_embed.forward = lambda t: times.append(t.detach().clone()) or embed(t)
    model.denoise = lambda x, cond, groups, *a: calls.append((x.detach().clone(), groups)) or denoise(x, cond,
                                                                                                        groups, *a)
    tokens = torch.randint(0, 16, (256, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    noise_seed = torch.get_rng_state()
    model(tokens, torch.arange(256) % 4)
    t = times[0]
    assert t.shape == (256, 4) and ((t > 0) & (t < 1)).all()
    logit = torch.log(t / (1 - t)).flatten()
    assert abs(logit.mean().item()) < 0.1 and abs(logit.std().item() - 1) < 0.07
    from scipy.stats import kstest

    assert kstest(logit.double().numpy(), "norm").pvalue > 0.01
    x_t, groups = calls[0]
    assert torch.equal(groups, model.seq_entity)
    # the noise: the draw after the times from the same RNG stream
    torch.set_rng_state(noise_seed)
    t_again = logit_normal((256, 4))
    torch.testing.assert_close(t_again, t)
    eps = torch.randn(256, 16, 3)
    tt = t[:, model.seq_entity, None]
    torch.testing.assert_close(x_t, (1 - tt) * model.token_codes(tokens)[:, model.order] + tt * eps)
    model.eval()  # evaluation draws are fixed: the same loss every call
    assert torch.equal(model(tokens[:8], LABELS.repeat(3)[:8]).loss, model(tokens[:8], LABELS.repeat(3)[:8]).loss)


def test_sde_schedule_and_sampler():
    """xAR's schedule: 50 steps from t = 1 down to 0.04, then 0; the velocity is evaluated at every time but the
    last; integrating the reverse SDE with the exact velocity of Gaussian data N(μ, s²) reaches that Gaussian."""
    ts = sde_timesteps(50)
    assert len(ts) == 51 and ts[0] == 1.0 and math.isclose(ts[-2].item(), 0.04) and ts[-1] == 0.0
    assert (ts[1:] < ts[:-1]).all()
    with pytest.raises(ValueError, match="at least 2 steps"):
        sde_timesteps(1)
    mu, s = torch.tensor([1.5, -0.5]), 0.3
    seen = []

    def velocity(x, t, i):  # E[ε − x₀ | x_t] for x₀ ~ N(μ, s²), x_t = (1 − t)·x₀ + t·ε
        seen.append(t)
        var = (1 - t) ** 2 * s * s + t * t
        centred = x - (1 - t) * mu
        return t / var * centred - (mu + (1 - t) * s * s / var * centred)

    g = torch.Generator().manual_seed(0)
    x = euler_maruyama(velocity, torch.randn(4000, 2, generator=g), 50, generator=g)
    assert seen == ts[:-1].tolist()
    assert (x.mean(0) - mu).abs().max() < 0.03
    assert (x.std(0) - s).abs().max() < 0.03


def test_flow_loss_falls_on_a_tiny_overfit_and_samples_the_training_images():
    torch.manual_seed(0)
    spec = TokenSpec.vocab(8, grid=(2, 2), code_dim=2)
    model = XAR(spec.to_dict(), num_classes=2, dim=64, depth=2, heads=2, entity={"name": "cell", "size": 1},
                class_dropout=0.0, flow_steps=20)
    model.set_codebook(torch.tensor([[math.cos(a), math.sin(a)] for a in torch.arange(8) * math.pi / 4]))
    images = torch.tensor([[0, 2, 4, 6], [7, 5, 3, 1]])  # one token map per class
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = model(images.repeat(16, 1), torch.tensor([0, 1]).repeat(16)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.3 * sum(losses[:20]) / 20
    model.eval()
    samples = model.generate(torch.tensor([0, 1]).repeat(8), generator=torch.Generator().manual_seed(0))
    hits = (samples == images.repeat(8, 1)).float().mean()
    assert hits > 0.8  # the tokens of each class's training image (chance 1/8)


def test_flow_sampling_is_seeded():
    model = tiny({"name": "cell", "size": 2}, "flow")
    a = model.generate(LABELS, cfg_scale=2.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, model.generate(LABELS, cfg_scale=2.0, generator=torch.Generator().manual_seed(5)))
    c1 = model.sample_codes(LABELS, generator=torch.Generator().manual_seed(5))
    c2 = model.sample_codes(LABELS, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(c1, c2)
    cold = model.sample_codes(LABELS, temperature=0.0, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(cold, c1)  # temperature scales the initial noise only; the SDE noise remains


def test_flow_is_the_default_where_tokens_have_codes_and_options_are_checked():
    spec = SPEC.to_dict()
    assert XAR(spec, num_classes=4, dim=32, depth=1, heads=2).entity_head == "flow"
    assert XAR(TokenSpec.bits(4, grid=(4, 4)).to_dict(), num_classes=4, dim=32, depth=1, heads=2).entity_head == "flow"
    sub = TokenSpec.subvocab([4, 8], grid=(4, 4)).to_dict()
    assert XAR(sub, num_classes=4, dim=32, depth=1, heads=2).entity_head == "discrete"
    with pytest.raises(ValueError, match="no code vectors for TokenSpec kind 'subvocab'"):
        XAR(sub, num_classes=4, dim=32, depth=1, heads=2, entity_head="flow")
    model = XAR(spec, num_classes=4, size="gpt_tiny", heads=4, depth=1)
    assert (model.dim, model.depth, model.heads) == (256, 1, 4)  # a named size, explicit values winning
    mlp = XAR(spec, num_classes=4, dim=32, depth=1, heads=2, entity_head="flow_mlp", flow={"width": 16})
    assert model.flow_steps == 50 and mlp.flow_steps == 25
    assert isinstance(mlp.flow, FlowMatchingHead) and mlp.flow.input_proj.out_features == 16  # the registered head
    with pytest.raises(ConfigError, match=r"entity_head 'flow_mlp' got unknown options \['widht'\]"):
        XAR(spec, num_classes=4, dim=32, depth=1, heads=2, entity_head="flow_mlp", flow={"widht": 16})
    for bad, match in [({"window": 2}, "token-shuffle is not combined"), ({"flow": {"width": 8}}, "per-token head"),
                       ({"noisy_context": False}, "noised by construction"), ({"layout": "shift"}, "query-based"),
                       ({"entity_head": "mlp"}, "entity_head must be one of")]:
        with pytest.raises(ConfigError, match=match):
            XAR(spec, num_classes=4, dim=32, depth=1, heads=2, **bad)
    with pytest.raises(ConfigError, match="unknown GPT size"):
        XAR(spec, num_classes=4, size="gpt_s")


def test_flow_model_round_trips_and_old_flow_folders_load_as_flow_mlp(tmp_path):
    model = tiny({"name": "cell", "size": 2}, "flow", size="gpt_tiny")
    model.save_pretrained(tmp_path / "new")
    loaded = XAR.from_pretrained(tmp_path / "new")
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    assert loaded.entity_head == "flow"
    torch.testing.assert_close(loaded.step_outputs(LABELS, tokens), model.step_outputs(LABELS, tokens))
    # a folder written when entity_head "flow" meant the per-token head (raw codes, no code_norm option)
    old = tiny({"name": "cell", "size": 2}, "flow_mlp", layout="shift", code_norm=False)
    old.save_pretrained(tmp_path / "old")
    cfg_file = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["entity_head"] = "flow"
    del cfg["code_norm"]
    cfg_file.write_text(json.dumps(cfg))
    again = XAR.from_pretrained(tmp_path / "old")
    assert again.entity_head == "flow_mlp" and not again.code_norm
    torch.testing.assert_close(again.step_outputs(LABELS, tokens), old.step_outputs(LABELS, tokens))


@pytest.mark.parametrize("entity, layout", LAYOUTS)
def test_predictions_depend_on_earlier_entities_only(entity, layout):
    """Valid causal order: changing the tokens of entity k leaves the predictions of entities 0..k unchanged and
    changes a later entity's; the teacher-forced decoding gives exactly the training loss."""
    model = tiny(entity, layout=layout).double()
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    base = model.step_outputs(LABELS, tokens)
    ents = model.entities
    for k in range(len(ents)):
        changed = tokens.clone()
        changed[:, ents[k]] = (changed[:, ents[k]] + 1) % 16
        after = model.step_outputs(LABELS, changed)
        earlier = torch.cat(ents[:k + 1])
        torch.testing.assert_close(after[:, earlier], base[:, earlier], atol=1e-10, rtol=0)
        if k + 1 < len(ents):
            assert (after[:, ents[k + 1]] - base[:, ents[k + 1]]).abs().max() > 1e-6
    nll = -base.log_softmax(-1).gather(-1, tokens[..., None]).mean()
    torch.testing.assert_close(model(tokens, LABELS).loss, nll, atol=1e-8, rtol=0)


# ---- layouts -------------------------------------------------------------------------------------------------------
def test_layout_choice():
    assert tiny({"name": "cell", "size": 2}).layout == "shift"  # auto: equal sizes
    assert tiny("scale").layout == "query"  # auto: unequal sizes
    assert tiny("token", layout="query").layout == "query"
    with pytest.raises(ValueError, match="layout 'shift' needs entities of equal size"):
        tiny("scale", layout="shift")
    with pytest.raises(ValueError, match="layout must be"):
        tiny("token", layout="next")


@pytest.mark.parametrize("layout, per_step, train_len", [("shift", [1 + 4] + [4] * 3, 1 + 16),
                                                         ("query", [1, 4] + [8] * 3, 1 + 12 + 16)])
def test_tokens_fed_per_step(layout, per_step, train_len):
    """Next-cell 2×2 on 4×4 tokens (4 cells, 1 class token): shift feeds N = 4 new tokens per step (the first step
    with the prefix), query 2N (content + query slots) after prefilling the prefix; training sequences P + L vs
    P + 2L - N."""
    model = tiny({"name": "cell", "size": 2}, layout=layout)
    fed = []
    backbone = model.backbone
    model.backbone = lambda x, *a, **kw: fed.append(x.shape[1]) or backbone(x, *a, **kw)
    model.generate(LABELS, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert fed == per_step
    fed.clear()
    model(torch.zeros(3, 16, dtype=torch.long), LABELS)
    assert fed == [train_len]


def test_folders_saved_before_layouts_existed_load_in_the_query_layout(tmp_path):
    model = tiny({"name": "cell", "size": 2}, layout="query")
    model.save_pretrained(tmp_path / "old")
    cfg_file = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    del cfg["layout"]
    cfg_file.write_text(json.dumps(cfg))
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    loaded = XAR.from_pretrained(tmp_path / "old")
    assert loaded.layout == "query"
    torch.testing.assert_close(loaded.step_outputs(LABELS, tokens), model.step_outputs(LABELS, tokens))
    model.save_pretrained(tmp_path / "new")  # new folders keep their layout
    assert XAR.from_pretrained(tmp_path / "new").layout == "query"
    assert XAR.from_pretrained(tmp_path / "old", layout="auto").layout == "shift"


# ---- generation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entity_head", ["discrete", "flow_mlp"])
@pytest.mark.parametrize("entity, layout", LAYOUTS)
def test_kv_cache_matches_full_recompute(entity, layout, entity_head):
    model = tiny(entity, entity_head, layout=layout).double()
    kw = {"cfg_scale": 2.0, "cfg_schedule": "linear"}
    tokens = model.generate(LABELS, generator=torch.Generator().manual_seed(0), **kw)
    assert tokens.shape == (3, 16)
    torch.testing.assert_close(model.step_outputs(LABELS, tokens, use_cache=True, **kw),
                               model.step_outputs(LABELS, tokens, use_cache=False, **kw), atol=1e-8, rtol=0)
    again = model.generate(LABELS, generator=torch.Generator().manual_seed(0), use_cache=False, **kw)
    assert torch.equal(tokens, again)


@pytest.mark.parametrize("entity, layout", [p for p in LAYOUTS if p.id.startswith(("cell2", "scale"))])
def test_flow_training_regresses_what_decoding_computes(entity, layout):
    """With clean context (eval), the outputs the flow loss regresses each token's code from are the hidden states
    that decoding samples that token from (both in raster order), and the targets are the tokens' codes."""
    model = tiny(entity, "flow_mlp", layout=layout).double()
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    seen = []
    model.flow.loss = lambda h, x1: seen.append((h, x1)) or h.sum()
    model(tokens, LABELS)
    hidden, codes = (t.view(3, 16, -1) for t in seen[0])
    order = model.order
    torch.testing.assert_close(hidden[:, order.argsort()], model.step_outputs(LABELS, tokens), atol=1e-10, rtol=0)
    torch.testing.assert_close(codes[:, order.argsort()], model.token_codes(tokens).double())
    book = model.token_codes(torch.arange(16)[None])[0]  # standardized: centred, unit spread overall
    torch.testing.assert_close(book.mean(0), torch.zeros(3, dtype=book.dtype), atol=1e-10, rtol=0)
    assert math.isclose(book.pow(2).mean().item(), 1.0, rel_tol=1e-9)
    assert torch.equal(model.nearest_tokens(model.token_codes(tokens)), tokens)


@pytest.mark.parametrize("spec", [TokenSpec.bits(4, grid=(4, 4)), TokenSpec.bins(2, 8, grid=(4, 4))],
                         ids=["bits", "bins"])
def test_other_kinds_with_both_entity_heads(spec):
    for entity_head, layout in [("discrete", "shift"), ("flow_mlp", "shift"), ("flow_mlp", "query"),
                                ("flow", "auto")]:
        model = tiny({"name": "cell", "size": 2}, entity_head, spec=spec, head=None if spec.kind == "bits" else
                     {"head_width": 32, "head_depth": 1, "head_heads": 2}, layout=layout).double()
        tokens = model.generate(LABELS, cfg_scale=2.0, generator=torch.Generator().manual_seed(1))
        spec.validate(tokens)
        torch.testing.assert_close(model.step_outputs(LABELS, tokens, cfg_scale=2.0),
                                   model.step_outputs(LABELS, tokens, cfg_scale=2.0, use_cache=False), atol=1e-8,
                                   rtol=0)
        assert torch.isfinite(model.train()(tokens, LABELS).loss)


@pytest.mark.parametrize("layout", ["shift", "query"])
def test_noisy_context_learning_noises_every_context_entity_at_its_own_level(layout):
    model = tiny({"name": "cell", "size": 2}, "flow_mlp", layout=layout).train()
    seen = []
    original = model._content
    model._content = lambda x, t=None: seen.append((x.detach().clone(), t)) or original(x, t)
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    model(tokens, LABELS)
    x, t = seen[-1]
    ctx = torch.cat(model.entities[:-1])  # context tokens in sequence order
    clean = model.token_codes(tokens[:, ctx])
    assert t.shape == (3, 12) and ((t > 0) & (t < 1)).all()
    per_entity = t.view(3, 3, 4)  # 3 context cells × 4 tokens: one level per image and entity
    assert torch.equal(per_entity, per_entity[..., :1].expand_as(per_entity))
    assert per_entity[:, :, 0].unique().numel() > 3
    assert (x - clean).abs().max() > 1e-3  # never the clean ground truth
    model.eval()(tokens, LABELS)
    x, t = seen[-1]
    assert (t == 1).all() and torch.allclose(x, clean)  # evaluation (and sampling) uses clean context
    model.noisy_context = False
    model.train()(tokens, LABELS)
    assert (seen[-1][1] == 1).all()


# ---- the flow-matching head ---------------------------------------------------------------------------------------
def test_flow_head_learns_a_toy_2d_distribution_and_its_sampler_reaches_it():
    """Condition 0: two modes (±2, 0); condition 1: two modes (0, ±2); σ = 0.1."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    modes = torch.tensor([[[2.0, 0.0], [-2.0, 0.0]], [[0.0, 2.0], [0.0, -2.0]]])
    head = FlowMatchingHead(code_dim=2, cond_dim=2, width=64, depth=2)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    losses = []
    for _ in range(800):
        cond = torch.randint(0, 2, (256,), generator=gen)
        x = modes[cond, torch.randint(0, 2, (256,), generator=gen)] + 0.1 * torch.randn(256, 2, generator=gen)
        loss = head.loss(nn.functional.one_hot(cond, 2).float(), x, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the flow-matching loss has a floor (the velocity target is random given x_t); it still falls by a third
    assert sum(losses[-50:]) / 50 < 0.7 * sum(losses[:50]) / 50
    for c in (0, 1):
        z = nn.functional.one_hot(torch.full((400,), c), 2).float()
        samples = head.sample(z, steps=50, generator=gen)
        dist = torch.cdist(samples, modes[c]).min(-1)
        assert (dist.values < 0.5).float().mean() > 0.85  # the samples land on this condition's modes
        share = (dist.indices == 0).float().mean()
        assert 0.25 < share < 0.75  # both modes, not their mean
