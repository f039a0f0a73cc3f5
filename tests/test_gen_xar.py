"""Next-X prediction: entity partitions (cover every token once, in a valid causal order), block-causal
predictions and KV cache equality for both layouts (shift, query) and both entity heads, the tokens each decoding
step feeds, Noisy Context Learning, and the flow-matching head on a toy 2D distribution."""

import json

import pytest
import torch
from torch import nn

from vistok.generators.entities import build_entities
from vistok.generators.heads.flow import FlowMatchingHead
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
    flow = {"width": 32, "depth": 1} if entity_head == "flow" else None
    model = XAR(spec.to_dict(), num_classes=4, dim=32, depth=2, heads=2, entity=entity, entity_head=entity_head,
                flow=flow, flow_steps=4, **kw)
    for p in model.parameters():
        if p.ndim >= 2:
            nn.init.normal_(p, std=0.2)
    if entity_head == "flow" and spec.kind == "vocab":
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
    with pytest.raises(ValueError, match="unknown entity"):
        build_entities(spec, "patch")


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
@pytest.mark.parametrize("entity_head", ["discrete", "flow"])
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
    model = tiny(entity, "flow", layout=layout).double()
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    seen = []
    model.flow.loss = lambda h, x1: seen.append((h, x1)) or h.sum()
    model(tokens, LABELS)
    hidden, codes = (t.view(3, 16, -1) for t in seen[0])
    order = model.order
    torch.testing.assert_close(hidden[:, order.argsort()], model.step_outputs(LABELS, tokens), atol=1e-10, rtol=0)
    torch.testing.assert_close(codes[:, order.argsort()], model.codebook[tokens].double())


@pytest.mark.parametrize("spec", [TokenSpec.bits(4, grid=(4, 4)), TokenSpec.bins(2, 8, grid=(4, 4))],
                         ids=["bits", "bins"])
def test_other_kinds_with_both_entity_heads(spec):
    for entity_head, layout in [("discrete", "shift"), ("flow", "shift"), ("flow", "query")]:
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
    model = tiny({"name": "cell", "size": 2}, "flow", layout=layout).train()
    seen = []
    original = model._content
    model._content = lambda x, t=None: seen.append((x.detach().clone(), t)) or original(x, t)
    tokens = torch.randint(0, 16, (3, 16), generator=torch.Generator().manual_seed(0))
    model(tokens, LABELS)
    x, t = seen[-1]
    ctx = torch.cat(model.entities[:-1])  # context tokens in sequence order
    clean = model.codebook[tokens[:, ctx]]
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
