"""scripts/gpu_check.sh --cpu-smoke: the GPU check's pipeline (torchrun with one rank, so DDP; bf16 autocast; the
256 px recipe's losses with the GAN from half-way) runs on the CPU and writes its JSON from the run's own log."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None or not torch.distributed.is_gloo_available(),
                    reason="needs bash and torch.distributed with gloo")
def test_gpu_check_cpu_smoke_writes_throughput_and_memory_json(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-smoke", "--steps", "4", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["steps"] == 4 and result["gan_start"] == 2 and result["world_size"] == 1
    assert result["img_per_s_vq_lpips"] > 0 and result["img_per_s_vq_lpips_gan"] > 0
    assert result["peak_mem_gib"] == 0.0 and result["lpips_trunk"] == "random"  # no CUDA memory on the CPU
    assert result["heldout"]["num_images"] == 8 and result["heldout"]["psnr"] > 0
    # the JSON's phases are the run's: GAN terms in the log from step gan_start on, never before
    log = [json.loads(line) for line in (tmp_path / "check_run" / "log.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in log if "loss" in r}
    assert "loss/gan" not in steps[2] and "loss/gan" in steps[3] and "loss/lpips" in steps[1]
    state = torch.load(tmp_path / "check_run" / "checkpoints" / "step_0000004" / "state.pt", weights_only=True)
    assert state["world_size"] == 1 and state["parallel"] == "ddp"

    bad = subprocess.run(["bash", "scripts/gpu_check.sh", "--data", str(tmp_path / "missing")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--data must be an ImageNet-layout folder" in bad.stderr
