"""The training loop: resume after a crash reproduces an uninterrupted run; checkpoints are atomic and pickle-free;
the generator stage caches tokens; config errors are clear."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vistok.errors import ConfigError
from vistok.training.checkpoint import latest_checkpoint
from vistok.training.config import load_config
from vistok.training.loop import StepBatchSampler
from vistok.training.run import run_training

TOKENIZER = [
    "stage=tokenizer", "data.name=shapes", "data.resolution=16", "data.size=64",
    "model.name=conv2d", "model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
    "model.z_channels=16", "model.mid_attention=false", "model.quantizer.name=vq",
    "model.quantizer.codebook_size=32", "model.quantizer.code_dim=4",
    "train.batch_size=8", "train.lr=1e-3", "train.warmup_steps=2", "train.log_every=1", "train.image_every=0",
    "eval.num_images=16",
]


class Crash(Exception):
    pass


def _crash_after(n):
    def cb(step):
        if step == n:
            raise Crash

    return cb


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    common = TOKENIZER + ["train.steps=8", "train.ckpt_every=3"]
    full = run_training(load_config(None, common + [f"run_dir={tmp_path / 'full'}"]), progress=False)

    crashed = load_config(None, common + [f"run_dir={tmp_path / 'crashed'}"])
    with pytest.raises(Crash):
        run_training(crashed, callbacks=[_crash_after(5)], progress=False)  # killed after step 5: 4 and 5 are lost
    assert latest_checkpoint(tmp_path / "crashed").name == "step_0000003"
    with pytest.raises(ConfigError, match="--resume"):
        run_training(crashed, progress=False)  # refusing to silently overwrite a run
    steps_seen = []
    resumed = run_training(crashed, resume=True, callbacks=[steps_seen.append], progress=False)
    assert steps_seen == [4, 5, 6, 7, 8]  # continued at the right step
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    log = [json.loads(line) for line in (tmp_path / "crashed" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 8 and "psnr" in log[-1]["eval"]


def test_checkpoints_are_complete_and_load_without_pickle(tmp_path):
    cfg = load_config(None, TOKENIZER + ["train.steps=4", "train.ckpt_every=2", "train.keep_checkpoints=1",
                                         f"run_dir={tmp_path}"])
    model = run_training(cfg, progress=False)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith("."))
    assert ckpts == ["latest", "step_0000004"]  # keep=1 pruned step 2; no temporary folders left behind
    state = torch.load(tmp_path / "checkpoints" / "step_0000004" / "state.pt", weights_only=True)
    assert state["step"] == 4 and "optimizer" in state and "rng" in state
    final = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "config.json").is_file()


def test_step_batch_sampler_is_a_function_of_the_step():
    whole = list(StepBatchSampler(10, 4, 7, seed=3))
    tail = list(StepBatchSampler(10, 4, 7, seed=3, start_step=4))
    assert whole[4:] == tail
    flat = [i for b in whole[:5] for i in b]  # 20 items = two epochs, each a permutation
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_generator_stage_caches_tokens_and_trains(tmp_path):
    tok_dir = tmp_path / "tok"
    run_training(load_config(None, TOKENIZER + ["train.steps=2", f"run_dir={tok_dir}"]), progress=False)
    gen = ["stage=generator", f"tokenizer={tok_dir}", "data.name=shapes", "data.resolution=16", "data.size=32",
           "model.name=gpt", "model.dim=32", "model.depth=1", "model.heads=2", "train.steps=3",
           "train.batch_size=8", "train.image_every=3", "train.ckpt_every=3", "sample.num_images=4",
           f"token_cache_dir={tmp_path / 'cache'}"]
    run_training(load_config(None, gen + [f"run_dir={tmp_path / 'g1'}"]), progress=False)
    caches = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(caches) == 1 and load_file(str(caches[0]))["tokens"].shape == (32, 64)
    mtime = caches[0].stat().st_mtime_ns
    run_training(load_config(None, gen + [f"run_dir={tmp_path / 'g2'}"]), progress=False)
    assert caches[0].stat().st_mtime_ns == mtime  # reused, not recomputed
    assert (tmp_path / "g1" / "tokenizer" / "model.safetensors").is_file()
    assert (tmp_path / "g1" / "images" / "step_0000003.png").is_file()


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="stpes"):
        load_config(None, ["train.stpes=3"])
    with pytest.raises(ConfigError, match="tokenizer="):
        load_config(None, ["stage=generator"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: many}\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="train.parallel must be 'ddp' or 'fsdp', got 'zero3'"):
        load_config(None, ["train.parallel=zero3"])
    with pytest.raises(ConfigError, match="adaptive_weight .* does not combine with train.parallel=fsdp"):
        load_config(None, ["train.parallel=fsdp", "loss.gan.weight=0.5", "loss.gan.adaptive_weight=true"])
    assert load_config(None, ["train.parallel=fsdp", "loss.gan.weight=0.5"]).train.parallel == "fsdp"
