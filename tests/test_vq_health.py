"""VQ codebook health (TiTok / TokenFlow / VQ-VAE-2 tools): k-means initialization, dead-code restart, EMA codebook
updates, and all three under DDP (2 gloo ranks on CPU) giving every rank the same codebook as one process on the
global batch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vistok.errors import ConfigError
from vistok.quantizers.dual import DualCodebookQuantizer
from vistok.quantizers.vq import VectorQuantizer, ema_update_


def clustered(n=512, k=16, d=8, spread=0.05, seed=0):
    """n points around k random centres (a Gaussian mixture)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    return (centres[torch.randint(k, (n,), generator=g)] + spread * torch.randn(n, d, generator=g)).unsqueeze(0)


@pytest.mark.parametrize("l2_norm", [False, True])
def test_kmeans_init_lowers_the_initial_quantization_error(l2_norm):
    z = clustered()
    errors = {}
    for init in (False, True):
        torch.manual_seed(0)
        q = VectorQuantizer(codebook_size=16, code_dim=8, l2_norm=l2_norm, kmeans_init=init)
        q.train()(z)  # the first training batch: k-means runs here when asked
        out = q.eval()(z)
        target = torch.nn.functional.normalize(z, dim=-1) if l2_norm else z
        errors[init] = (out.quantized - target).pow(2).sum(-1).mean().item()
    assert errors[True] < 0.2 * errors[False], errors
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=16, code_dim=8, kmeans_init=True).train()
    q(z)
    first = q.codebook.weight.detach().clone()
    q(clustered(seed=1))  # only once: later batches do not re-cluster
    assert bool(q.initialized) and torch.equal(q.codebook.weight, first)


def test_shared_dual_index_kmeans_init_lowers_the_weighted_cost():
    z = torch.cat([clustered(d=6, seed=2), clustered(d=3, seed=3)], dim=-1)
    cost = {}
    for init in (False, True):
        torch.manual_seed(0)
        q = DualCodebookQuantizer(codebook_size=16, semantic_dim=6, pixel_dim=3, pixel_weight=2.0, kmeans_init=init)
        q.train()(z)
        d_sem, d_pix = q.distances(z[0])
        cost[init] = (d_sem + 2.0 * d_pix).min(1).values.mean().item()
    assert cost[True] < 0.5 * cost[False], cost


def test_dead_code_is_restarted_from_the_batch():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=8, code_dim=4, l2_norm=True, dead_code_steps=2).train()
    z = torch.rand(1, 64, 4) + 0.1  # all in the positive orthant
    with torch.no_grad():
        q.codebook.weight.copy_(torch.rand(8, 4) + 0.1)
        q.codebook.weight[3] = -1.0  # points away from every latent: never picked
    for step in (1, 2):
        out = q(z)
        assert not (out.indices == 3).any() and int(q.unused_steps[3]) == step
    used = torch.unique(out.indices)
    before = q.codebook.weight.detach().clone()
    q(z)  # unused for 2 steps: re-seeded from this batch before the lookup
    restarted = (q.codebook.weight != before).any(1)
    assert restarted[3] and not restarted[used].any()
    flat = torch.nn.functional.normalize(z[0], dim=-1)
    assert torch.cdist(q.codebook.weight[3:4].detach(), flat).min() < 1e-6  # it is one of the batch's latents
    counters, codes = q.unused_steps.clone(), q.codebook.weight.detach().clone()
    q.eval()(-z)  # no restart and no counting outside training
    assert torch.equal(q.unused_steps, counters) and torch.equal(q.codebook.weight, codes)


def test_ema_update_equals_the_closed_form():
    decay, eps = 0.9, 1e-5
    q = VectorQuantizer(codebook_size=3, code_dim=2, l2_norm=False, ema_decay=decay, ema_eps=eps).train()
    e0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    with torch.no_grad():
        q.codebook.weight.copy_(e0)
        q.ema_embed_sum.copy_(e0)  # VQ-VAE's initial moving averages: m = e, N = 0
    z = torch.tensor([[[0.1, -0.1], [0.2, 0.0], [0.9, 1.2], [1.1, 0.8], [1.0, 1.0]]])
    out = q(z)
    assert out.indices.tolist() == [[0, 0, 1, 1, 1]] and "codebook" not in out.losses
    assert not q.codebook.weight.requires_grad
    # by hand: n = (2, 3, 0), s = ((0.3, -0.1), (3.0, 3.0), (0, 0))
    N = [0.1 * 2, 0.1 * 3, 0.0]
    m = [[0.9 * 0 + 0.1 * 0.3, 0.9 * 0 + 0.1 * -0.1], [0.9 + 0.1 * 3.0, 0.9 + 0.1 * 3.0], [0.9 * 5.0, 0.9 * 5.0]]
    total = sum(N)
    smoothed = [(n + eps) / (total + 3 * eps) * total for n in N]
    expected = torch.tensor([[m[k][0] / smoothed[k], m[k][1] / smoothed[k]] for k in range(3)])
    torch.testing.assert_close(q.codebook.weight.detach(), expected)
    # the helper alone, a second step from those averages
    w, n_ema, m_ema = expected.clone(), torch.tensor(N), torch.tensor(m)
    ema_update_(w, n_ema, m_ema, torch.tensor([1.0, 0.0, 4.0]), torch.tensor([[1.0, 1.0], [0.0, 0.0], [8.0, 8.0]]),
                decay, eps)
    N2 = [0.9 * N[0] + 0.1, 0.9 * N[1], 0.9 * N[2] + 0.4]
    torch.testing.assert_close(n_ema, torch.tensor(N2))
    t2 = sum(N2)
    torch.testing.assert_close(w[2], torch.tensor(m[2]) * 0.9 / ((N2[2] + eps) / (t2 + 3 * eps) * t2) + 0.8 /
                               ((N2[2] + eps) / (t2 + 3 * eps) * t2))


def test_ema_codebook_follows_the_data_and_options_are_checked():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 4, generator=g) * 3
    z = (centres.repeat(16, 1) + 0.01 * torch.randn(64, 4, generator=g)).unsqueeze(0)
    q = VectorQuantizer(codebook_size=4, code_dim=4, l2_norm=False, ema_decay=0.5).train()
    with torch.no_grad():  # each code starts near one centre; the EMA pulls it onto its cluster's mean
        q.codebook.weight.copy_(centres + 0.5 * torch.randn(4, 4, generator=g))
        q.ema_embed_sum.copy_(q.codebook.weight)
    first = (q.eval()(z).quantized - z).pow(2).sum(-1).mean()
    for _ in range(20):
        q.train()(z)
    err = (q.eval()(z).quantized - z).pow(2).sum(-1).mean()
    assert err < 1e-2 * first, (first, err)
    for bad in ({"ema_decay": 1.0}, {"ema_decay": -0.1}, {"dead_code_steps": -1}, {"kmeans_iters": 0}):
        with pytest.raises(ConfigError):
            VectorQuantizer(**bad)
    assert "codebook.weight" in dict(VectorQuantizer().state_dict()) and len(VectorQuantizer().state_dict()) == 1
    with pytest.raises(ConfigError, match="separate"):
        DualCodebookQuantizer(ema_decay=0.9)


# ---- DDP: 2 gloo ranks on CPU ---------------------------------------------------------------------------------------

OPTIONS = {"vq": dict(codebook_size=16, code_dim=4, kmeans_init=True, kmeans_iters=3, dead_code_steps=1,
                      ema_decay=0.8),
           "dual": dict(codebook_size=16, semantic_dim=3, pixel_dim=2, kmeans_init=True, kmeans_iters=3,
                        dead_code_steps=1)}
STEPS, PER_RANK = 4, 12


def _batches(rank: int, width: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(PER_RANK, 3, width, generator=g) + step for step in range(STEPS)]


def _build(name: str):
    torch.manual_seed(0)
    cls = VectorQuantizer if name == "vq" else DualCodebookQuantizer
    return cls(**OPTIONS[name]).train()


def _width(name: str) -> int:
    return 4 if name == "vq" else 5


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name in OPTIONS:
            q = _build(name)
            for z in _batches(rank, _width(name)):
                q(z)
            torch.save(q.state_dict(), Path(out_dir) / f"{name}_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_ddp_ranks_keep_identical_codebooks_equal_to_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for name in OPTIONS:
        r0, r1 = (torch.load(tmp_path / f"{name}_{r}.pt") for r in (0, 1))
        for key in r0:
            assert torch.equal(r0[key], r1[key]), (name, key)  # identical on both ranks, bit for bit
        # and the same as one process seeing the global batch (rank 0's rows, then rank 1's)
        q = _build(name)
        for z0, z1 in zip(_batches(0, _width(name)), _batches(1, _width(name))):
            q(torch.cat([z0, z1]))
        for key, value in q.state_dict().items():
            torch.testing.assert_close(r0[key].float(), value.float(), msg=f"{name}: {key}")
        if name == "vq":
            assert int(r0["unused_steps"].max()) <= 1 and bool(r0["initialized"])
