"""The ``mllm`` training stage from YAML with the seeded tiny Llama: it trains, logs perplexity before/after, writes
atomic checkpoints, and a run killed mid-way and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

import vistok  # noqa: E402
from vistok.errors import ConfigError  # noqa: E402
from vistok.training.config import load_config  # noqa: E402
from vistok.training.run import run_training  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "mllm" / "vocab_smollm2_shapes32.yaml"
TOKENIZER = {"name": "conv2d", "resolution": 8, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
             "z_channels": 8, "mid_attention": False, "quantizer": {"name": "vq", "codebook_size": 16, "code_dim": 4}}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    vistok.build("tokenizer", TOKENIZER).save_pretrained(path)
    return str(path)


def _overrides(tmp_path: Path, tokenizer_dir: str, run: str, **extra: str) -> list[str]:
    overrides = {"tokenizer": tokenizer_dir, "run_dir": str(tmp_path / run), "token_cache_dir": str(tmp_path / "c"),
                 "llm.source": "random:tiny-llama", "data.resolution": 8, "data.size": 16, "train.steps": 4,
                 "train.batch_size": 4, "train.ckpt_every": 2, "train.log_every": 1, "train.device": "cpu",
                 "eval.every": 0, "mllm_eval.understanding_images": 4, "mllm_eval.text_chunks": 2,
                 "mllm_eval.generation_images": 0, "train.precision": "fp32", "train.threads": 0, **extra}
    return [f"{k}={v}" for k, v in overrides.items()]


def _cfg(tmp_path: Path, tokenizer_dir: str, run: str, config: Path = CONFIG, **extra: str):
    return load_config(config, _overrides(tmp_path, tokenizer_dir, run, **extra))


def test_mllm_stage_trains_logs_perplexity_and_saves(tmp_path, tokenizer_dir):
    cfg = _cfg(tmp_path, tokenizer_dir, "run")
    assert cfg.stage == "mllm"
    run_training(cfg, progress=False)
    run = tmp_path / "run"
    ppl = json.loads((run / "text_ppl.json").read_text())
    assert ppl["before"] > 1 and ppl["after"] > 1
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    final = [r["eval"] for r in log if "eval" in r][-1]
    assert 0 <= final["understanding_acc"] <= 1
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000002", "step_0000004"]
    model = vistok.load(run)
    assert model.registry_kind == "mllm" and model.trainable["lora"]["r"] == 16


def test_killed_and_resumed_run_matches_the_uninterrupted_one(tmp_path, tokenizer_dir):
    full = run_training(_cfg(tmp_path, tokenizer_dir, "full"), progress=False)

    def crash(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(tmp_path, tokenizer_dir, "cut"), callbacks=[crash], progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        run_training(_cfg(tmp_path, tokenizer_dir, "cut"), progress=False)
    resumed = run_training(_cfg(tmp_path, tokenizer_dir, "cut"), resume=True, progress=False)
    a, b = full.delta_state(), resumed.delta_state()
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_adapter_config_trains_a_multichannel_kind(tmp_path):
    torch.manual_seed(0)
    tok = {**TOKENIZER, "quantizer": {"name": "lfq", "num_groups": 2, "group_dim": 2}}
    path = tmp_path / "lfq"
    vistok.build("tokenizer", tok).save_pretrained(path)
    cfg = _cfg(tmp_path, str(path), "lfq", ROOT / "configs" / "mllm" / "adapter_bits_smollm2_shapes32.yaml")
    model = run_training(cfg, progress=False)
    assert model.bridge_cfg["name"] == "adapter" and model.spec.kind == "subvocab"
    log = [json.loads(line) for line in (tmp_path / "lfq" / "log.jsonl").read_text().splitlines()]
    assert any("image" in r for r in log)  # the head's loss on generated sub-tokens is logged


def test_evaluation_judges_generated_images_and_records_cpu_seconds(tmp_path, tokenizer_dir):
    from vistok.cli.train import main

    overrides = {"mllm_eval.generation_images": 5, "mllm_eval.judge_steps": 3, "mllm_eval.judge_train_size": 64,
                 "train.steps": 2, "text_chars": 60}
    argv = ["--config", str(CONFIG), "--no-progress", *_overrides(tmp_path, tokenizer_dir, "gen", **overrides)]
    assert main(argv) == 0
    run = tmp_path / "gen"
    final = [json.loads(line)["eval"] for line in (run / "log.jsonl").read_text().splitlines() if "eval" in line][-1]
    for key in ("generation_acc", "generation_shape", "generation_color", "judge_held_out_acc"):
        assert 0 <= final[key] <= 1, key
    assert final["generation_acc"] <= min(final["generation_shape"], final["generation_color"])
    assert float((run / "cpu_seconds").read_text()) > 0


def test_weight_decay_with_partial_embedding_training_is_refused(tmp_path, tokenizer_dir):
    with pytest.raises(ConfigError, match="weight_decay"):
        _cfg(tmp_path, tokenizer_dir, "wd", **{"train.weight_decay": 0.1})
