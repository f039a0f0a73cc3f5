"""Multi-process training with torchrun (2 gloo ranks on CPU): 2 ranks × B images per step give the weights of
1 rank × 2B (GAN with adaptive weight and LeCAM, LPIPS, VQ with its codebook-entropy term, EMA), the 2-rank run
resumes from a checkpoint to the same weights, and its checkpoint resumes on 1 process with the global batch kept;
the same with the model sharded (FSDP)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from vistok.training.config import load_config
from vistok.training.run import run_training

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")

ARGS = ["stage=tokenizer", "data.name=shapes", "data.resolution=32", "data.size=64", "train.batch_size=8",
        "train.steps=3", "train.ckpt_every=1",
        "train.keep_checkpoints=3", "train.log_every=1", "train.image_every=0", "train.lr=1e-3",
        "train.warmup_steps=1", "train.eps=1e-3", "train.threads=1", "eval.num_images=8",
        "model.name=conv2d", "model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
        "model.z_channels=16", "model.mid_attention=false", "model.quantizer.name=vq",
        "model.quantizer.codebook_size=32", "model.quantizer.code_dim=4", "model.quantizer.entropy_weight=0.1",
        "loss.perceptual.name=lpips", "loss.perceptual.net=squeeze", "loss.perceptual.backbone=random",
        "loss.gan.weight=0.5", "loss.gan.start=1", "loss.gan.adaptive_weight=true", "loss.gan.lecam_weight=0.01",
        "loss.gan.discriminator.channels=8", "loss.gan.discriminator.num_layers=2",
        "loss.gan.discriminator.norm=none", "train.ema.decay=0.8"]
# (BatchNorm in the discriminator would normalize each rank's half-batch on its own, as in the anchors' DDP runs;
# Adam's eps 1e-3: see test_grad_accumulation_equals_the_full_batch)
PARTS = ("model/model.safetensors", "ema.safetensors", "discriminator.safetensors")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "train.py", *args, "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _close(a_dir: Path, b_dir: Path, step: int, exact: bool = False) -> None:
    """The model, EMA and discriminator weights of two runs' checkpoints at ``step``: equal, or within
    floating-point tolerance. (Compared after a step or two: a VQ lookup near a tie can flip on a 1e-7 difference
    and then the runs part ways, as any two float runs eventually do.)"""
    for part in PARTS:
        a = load_file(str(a_dir / "checkpoints" / f"step_{step:07d}" / part))
        b = load_file(str(b_dir / "checkpoints" / f"step_{step:07d}" / part))
        assert a.keys() == b.keys(), part
        for k in a:
            if exact:
                assert torch.equal(a[k], b[k]), f"{part}: {k}"
            else:
                assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), f"{part}: {k}"


def _records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_ranks_match_one_rank_with_twice_the_batch_and_resume(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    run_training(load_config(None, [*ARGS, "train.batch_size=8", f"run_dir={one}"]), progress=False)
    proc = _torchrun(2, *ARGS, "train.batch_size=4", "train.batch_scope=per_rank", f"run_dir={two}")
    assert proc.stdout.count("saved to") == 1  # only rank 0 speaks and writes
    _close(one, two, step=2)
    # logged scalars are averaged over ranks, codebook statistics are over the global batch: the same numbers
    for r1, r2 in list(zip(_records(one), _records(two), strict=True))[:2]:
        for key in ("loss", "loss/recon", "loss/entropy", "loss/gan", "batch_codebook_usage", "gan/d_loss"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6), (r1["step"], key)
    state = torch.load(two / "checkpoints" / "step_0000003" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2 and state["global_batch"] == 8

    # a crash during step 3: the last checkpoint is step 2; both ranks resume from it and reach the same weights
    resumed = tmp_path / "resumed"
    _copy_up_to_step_2(two, resumed)
    proc = _torchrun(2, *ARGS, "train.batch_size=4", "train.batch_scope=per_rank", f"run_dir={resumed}", "--resume")
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    _close(two, resumed, step=3, exact=True)

    # the 2-rank checkpoint on one process: allowed, with the global batch (and so the data order) kept
    single = tmp_path / "single"
    _copy_up_to_step_2(two, single)
    capsys.readouterr()
    run_training(load_config(None, [*ARGS, f"run_dir={single}"]), resume=True, progress=False)
    assert "written by 2 process(es), resuming on 1" in capsys.readouterr().out
    _close(two, single, step=3)


def _copy_up_to_step_2(src: Path, dst: Path) -> None:
    """The run folder as a crash during step 3 leaves it: checkpoints up to step 2, no final weights."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("step_0000003", "non_ema"))
    (dst / "model.safetensors").unlink()
    (dst / "checkpoints" / "latest").write_text("step_0000002\n")


FSDP_ARGS = [*ARGS, "loss.gan.adaptive_weight=false"]  # needs the whole last layer (a config error under fsdp)


def test_fsdp_two_ranks_match_one_rank_and_checkpoints_are_full(tmp_path):
    """train.parallel=fsdp: weights, gradients and AdamW moments sharded over 2 ranks make the same update as one
    process with the whole batch; its checkpoints hold full tensors and an optimizer state keyed by names."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_training(load_config(None, [*FSDP_ARGS, f"run_dir={one}"]), progress=False)
    _torchrun(2, *FSDP_ARGS, "train.parallel=fsdp", f"run_dir={two}")
    _close(one, two, step=2)
    state = torch.load(two / "checkpoints" / "step_0000003" / "state.pt", weights_only=True)
    assert state["parallel"] == "fsdp" and "encoder.conv_in.weight" in state["optimizer"]["state"]  # by name
    assert state["optimizer"]["state"]["encoder.conv_in.weight"]["exp_avg"].shape == (8, 3, 3, 3)  # full, not a shard
    for a, b in list(zip(_records(one), _records(two), strict=True))[:2]:  # rank 0 logs the global step's loss
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert (two / "model.safetensors").is_file() and (two / "non_ema" / "model.safetensors").is_file()


@pytest.mark.slow
def test_fsdp_resumes_exactly_on_two_ranks_and_on_one_process(tmp_path):
    two = tmp_path / "two"
    _torchrun(2, *FSDP_ARGS, "train.parallel=fsdp", f"run_dir={two}")
    resumed = tmp_path / "resumed"
    _copy_up_to_step_2(two, resumed)
    proc = _torchrun(2, *FSDP_ARGS, "train.parallel=fsdp", f"run_dir={resumed}", "--resume")
    assert "at step 2" in proc.stdout
    _close(two, resumed, step=3, exact=True)
    single = tmp_path / "single"  # the sharded run's checkpoint on one process (name-keyed optimizer state)
    _copy_up_to_step_2(two, single)
    run_training(load_config(None, [*FSDP_ARGS, f"run_dir={single}"]), resume=True, progress=False)
    _close(two, single, step=3)
    one, sharded = tmp_path / "one", tmp_path / "sharded"  # a 1-process checkpoint (optimizer keyed by number)
    run_training(load_config(None, [*FSDP_ARGS, f"run_dir={one}"]), progress=False)  # resumes sharded on 2 ranks
    _copy_up_to_step_2(one, sharded)
    _torchrun(2, *FSDP_ARGS, "train.parallel=fsdp", f"run_dir={sharded}", "--resume")
    _close(one, sharded, step=3)
