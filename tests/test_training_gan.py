"""Tokenizer training with perceptual + adversarial losses and EMA weights: the GAN task trains every tokenizer, the
discriminator and EMA are checkpointed and resume exactly, EMA weights are what eval/save/token cache use, gradient
accumulation equals the full batch, bf16 autocast runs the new paths with the quantizer in fp32, and resuming an
older checkpoint says what it re-initializes."""

import json

import pytest
import torch
from safetensors.torch import load_file

import vistok
from vistok.errors import CheckpointError
from vistok.losses.gan import AdversarialLoss
from vistok.training.checkpoint import latest_checkpoint
from vistok.training.config import load_config
from vistok.training.ema import EMA
from vistok.training.run import run_training

CONV = ["model.name=conv2d", "model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
        "model.z_channels=16", "model.mid_attention=false", "model.quantizer.name=vq",
        "model.quantizer.codebook_size=32", "model.quantizer.code_dim=4"]
BASE = ["stage=tokenizer", "data.name=shapes", "data.resolution=32", "data.size=64", "train.batch_size=8",
        "train.lr=1e-3", "train.warmup_steps=2", "train.log_every=1", "train.image_every=0", "eval.num_images=8"]
# LPIPS with the small SqueezeNet trunk, random (no pretrained weights on a CI machine), asked for explicitly
LPIPS = ["loss.perceptual={name: lpips, net: squeeze, backbone: random, weight: 1.0}"]
GAN = ["loss.gan.weight=0.5", "loss.gan.start=1", "loss.gan.discriminator={name: patchgan, channels: 8, num_layers: 2}",
       "loss.gan.lr=2e-4"]
MODELS = {
    "conv2d": CONV,
    "vit1d": ["model.name=vit1d", "model.patch_size=8", "model.num_tokens=8", "model.encoder_size=micro",
              "model.decoder_size=micro", "model.quantizer={name: vq, codebook_size: 32, code_dim: 4}"],
    "dual": ["model.name=dual", "model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
             "model.z_channels=16", "model.mid_attention=false", "model.teacher={name: random, dim: 8}",
             "model.semantic_hidden=16", "model.semantic_decoder_width=16", "model.semantic_decoder_heads=2",
             "model.quantizer={name: dual, codebook_size: 32, semantic_dim: 4, pixel_dim: 4}"],
    "kl_ae": ["model.name=kl_ae", "model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
              "model.z_channels=16", "model.mid_attention=false", "model.latent_dim=4",
              "model.quantizer={name: dimwise, num_bins: 16}"],
}


def _cfg(tmp_path, name, *extra):
    return load_config(None, [*BASE, *extra, f"run_dir={tmp_path / name}"])


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


class Crash(Exception):
    pass


def _crash_after(n):
    def cb(step):
        if step == n:
            raise Crash

    return cb


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gan_task_trains_every_tokenizer(tmp_path, name):
    cfg = _cfg(tmp_path, name, *MODELS[name], *LPIPS, *GAN, "loss.gan.adaptive_weight=true",
               "loss.gan.lecam_weight=0.01", "train.steps=3", "train.ckpt_every=3", "train.batch_size=4")
    run_training(cfg, progress=False)
    log = [r for r in _log(tmp_path / name) if "loss" in r]
    assert "loss/gan" not in log[0] and "gan/d_loss" not in log[0]  # step 0 < disc_start: no GAN at all
    for r in log[1:]:
        assert r["loss/lpips"] > 0 and "loss/gan" in r and r["gan/adaptive_weight"] > 0
        assert "gan/d_loss" in r and "gan/lecam" in r
    ckpt = latest_checkpoint(tmp_path / name)
    disc = load_file(str(ckpt / "discriminator.safetensors"))
    assert "discriminator.main.0.weight" in disc and "lecam_ema_real" in disc and disc["lecam_ema_real"] != 0
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert "disc_optimizer" in state and "disc_scheduler" in state


def test_discriminator_is_untouched_before_disc_start(tmp_path):
    cfg = _cfg(tmp_path, "run", *CONV, *GAN, "loss.gan.start=5", "train.steps=2", "train.ckpt_every=2")
    run_training(cfg, progress=False)
    torch.manual_seed(0)  # what run_training does before building the model, then the discriminator
    vistok.build("tokenizer", {**dict(cfg.model), "resolution": 32})
    fresh = AdversarialLoss({"name": "patchgan", "channels": 8, "num_layers": 2}).state_dict()
    saved = load_file(str(latest_checkpoint(tmp_path / "run") / "discriminator.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in fresh.items())
    assert all("gan/d_loss" not in r for r in _log(tmp_path / "run"))


def test_resume_with_gan_ema_and_accumulation_reproduces_the_uninterrupted_run(tmp_path):
    common = [*CONV, *LPIPS, *GAN, "loss.gan.adaptive_weight=true", "loss.gan.lecam_weight=0.01",
              "train.ema.decay=0.9", "train.ema.start=1", "train.grad_accum=2", "train.batch_size=4", "train.steps=4",
              "train.ckpt_every=2"]
    full = run_training(_cfg(tmp_path, "full", *common), progress=False)
    crashed = _cfg(tmp_path, "crashed", *common)
    with pytest.raises(Crash):
        run_training(crashed, callbacks=[_crash_after(3)], progress=False)  # step 3 is lost
    resumed = run_training(crashed, resume=True, progress=False)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # the EMA weights (the outputs)
    for part in ("non_ema/model.safetensors", "checkpoints/step_0000004/discriminator.safetensors",
                 "checkpoints/step_0000004/ema.safetensors"):
        a, b = load_file(str(tmp_path / "full" / part)), load_file(str(tmp_path / "crashed" / part))
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_ema_math():
    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)  # frozen parts are not averaged (e.g. an MLLM's language model)
    ema = EMA(model, decay=0.5, start=2, every=2)
    assert set(ema.shadow) == {"weight"}
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, 1)  # before start: follows the weights
    assert torch.equal(ema.shadow["weight"], torch.ones(1, 2))
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model, 3)  # not a multiple of every: no update
    assert torch.equal(ema.shadow["weight"], torch.ones(1, 2))
    ema.update(model, 4)
    assert torch.equal(ema.shadow["weight"], torch.full((1, 2), 2.0))  # 0.5·1 + 0.5·3
    with ema.swapped(model):
        assert torch.equal(model.weight, torch.full((1, 2), 2.0))
    assert torch.equal(model.weight, torch.full((1, 2), 3.0))
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_outputs_and_token_cache_use_the_ema_weights(tmp_path):
    tok_dir = tmp_path / "tok"
    run_training(_cfg(tmp_path, "tok", *CONV, "train.ema.decay=0.8", "train.steps=4", "train.ckpt_every=4"),
                 progress=False)
    ckpt = latest_checkpoint(tok_dir)
    ema, raw = load_file(str(ckpt / "ema.safetensors")), load_file(str(ckpt / "model" / "model.safetensors"))
    saved, non_ema = load_file(str(tok_dir / "model.safetensors")), load_file(str(tok_dir / "non_ema" /
                                                                                    "model.safetensors"))
    assert all(torch.equal(saved[k], ema[k]) for k in ema) and all(torch.equal(non_ema[k], raw[k]) for k in raw)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    # the generator stage encodes its data with the tokenizer folder's (EMA) weights, and trains with EMA too
    gen = ["stage=generator", f"tokenizer={tok_dir}", "data.name=shapes", "data.resolution=32", "data.size=16",
           "model.name=gpt", "model.dim=32", "model.depth=1", "model.heads=2", "train.steps=2", "train.batch_size=8",
           "train.image_every=0", "train.ckpt_every=2", "train.ema.decay=0.9", f"token_cache_dir={tmp_path / 'c'}",
           f"run_dir={tmp_path / 'gen'}"]
    run_training(load_config(None, gen), progress=False)
    cached = load_file(str(next((tmp_path / "c").glob("*.safetensors"))))["tokens"]
    tokenizer = vistok.load(tok_dir)
    images = torch.stack([vistok.build("dataset", {"name": "shapes", "resolution": 32, "size": 16})[i]["image"]
                          for i in range(16)])
    assert torch.equal(cached.long(), tokenizer.encode(images))
    assert (latest_checkpoint(tmp_path / "gen") / "ema.safetensors").is_file()
    assert (tmp_path / "gen" / "non_ema" / "model.safetensors").is_file()


def test_grad_accumulation_equals_the_full_batch(tmp_path):
    # Adam's eps 1e-3 here: biases just before a one-channel GroupNorm have an exactly-zero gradient, whose
    # rounding noise Adam would otherwise blow up to ±lr, differently in the two runs
    common = [*CONV, *LPIPS, *GAN, "loss.gan.start=0", "loss.gan.discriminator.norm=none", "train.steps=2",
              "train.ckpt_every=0", "train.eps=1e-3"]
    one = run_training(_cfg(tmp_path, "one", *common), progress=False)
    two = run_training(_cfg(tmp_path, "two", *common, "train.grad_accum=2"), progress=False)
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=2e-5, rtol=1e-4), name


def test_bf16_autocast_runs_the_gan_path_and_quantizers_stay_fp32(tmp_path):
    z = torch.randn(2, 5, 4)
    for quantizer in ({"name": "vq", "codebook_size": 16, "code_dim": 4}, {"name": "lfq", "num_groups": 2,
                                                                          "group_dim": 2}):
        q = vistok.build("quantizer", quantizer).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = q(z.bfloat16())
        assert out.quantized.dtype == torch.float32 and all(v.dtype == torch.float32 for v in out.losses.values())
    cfg = _cfg(tmp_path, "bf16", *CONV, *LPIPS, *GAN, "loss.gan.adaptive_weight=true", "train.precision=bf16",
               "train.steps=2", "train.ckpt_every=0")
    run_training(cfg, progress=False)
    log = [r for r in _log(tmp_path / "bf16") if "loss" in r]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log) and "gan/d_loss" in log[-1]


def test_resuming_an_older_checkpoint_says_what_it_reinitializes(tmp_path, capsys):
    plain = _cfg(tmp_path, "run", *CONV, "train.steps=2", "train.ckpt_every=2")
    run_training(plain, progress=False)
    capsys.readouterr()
    richer = _cfg(tmp_path, "run", *CONV, *GAN, "train.ema.decay=0.9", "train.steps=3", "train.ckpt_every=3")
    run_training(richer, resume=True, progress=False)
    out = capsys.readouterr().out
    assert "no EMA weights: the EMA re-initializes from the model's weights at step 2" in out
    assert "no discriminator state: the discriminator, its optimizer and its schedule re-initialize at step 2" in out


def test_resume_with_another_world_size(tmp_path, capsys):
    run_training(_cfg(tmp_path, "run", *CONV, "train.steps=2", "train.ckpt_every=2"), progress=False)
    path = latest_checkpoint(tmp_path / "run") / "state.pt"
    state = torch.load(path, weights_only=True)
    torch.save({**state, "world_size": 2, "rng_per_rank": state["rng_per_rank"] * 2}, path)  # as if from 2 ranks
    capsys.readouterr()
    with pytest.raises(CheckpointError, match="written by 2 process"):
        run_training(_cfg(tmp_path, "run", *CONV, "train.steps=3", "train.batch_scope=per_rank"), resume=True,
                     progress=False)
    run_training(_cfg(tmp_path, "run", *CONV, "train.steps=3"), resume=True, progress=False)
    assert "written by 2 process(es), resuming on 1: the global batch (8) and the data order are kept" in \
        capsys.readouterr().out
