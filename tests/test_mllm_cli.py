"""The MLLM's CLIs on a saved tiny MLLM (seeded random Llama): sample.py --model, eval/mllm.py, and
python -m vistok.mllm.chat; bad input gets one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

import vistok  # noqa: E402
from vistok.mllm import MLLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = {"name": "conv2d", "resolution": 8, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
             "z_channels": 8, "mid_attention": False, "quantizer": {"name": "vq", "codebook_size": 16, "code_dim": 4}}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("/", "_"), ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mllm_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mllm") / "model"
    MLLM.build("random:tiny-llama", vistok.build("tokenizer", TOKENIZER)).save_pretrained(path)
    return path


def test_sample_py_generates_through_the_llm(mllm_dir, tmp_path, capsys):
    sample = _script("sample.py")
    args = ["--model", str(mllm_dir), "--prompt", "a red circle", "--num-per-prompt", "2", "--cfg-scale", "2",
            "--out", str(tmp_path / "s")]
    assert sample.main(args) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert len(manifest["prompts"][0]["files"]) == 2 and manifest["settings"]["cfg_scale"] == 2.0
    first = (tmp_path / "s" / manifest["prompts"][0]["files"][0]).read_bytes()
    assert sample.main(args[:-1] + [str(tmp_path / "s2")]) == 0  # same seed, same image
    assert (tmp_path / "s2" / manifest["prompts"][0]["files"][0]).read_bytes() == first
    assert sample.main(["--model", str(mllm_dir), "--prompt", " ", "--out", str(tmp_path / "x")]) == 2
    assert "empty prompt" in capsys.readouterr().err


def test_eval_mllm_reports_understanding_and_generation(mllm_dir, tmp_path):
    ev = _script("eval/mllm.py")
    out = tmp_path / "m.json"
    assert ev.main(["--model", str(mllm_dir), "--data", "shapes", "--num-images", "4", "--per-prompt", "1",
                    "--judge-steps", "2", "--judge-train-size", "64", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert 0 <= report["understanding"]["accuracy"] <= 1 and report["understanding"]["num_images"] == 4
    assert report["generation"]["num_images"] == 24 and 0 <= report["generation"]["both"] <= 1
    assert out.with_suffix(".png").is_file()
    assert ev.main(["--model", str(tmp_path), "--out", str(out)]) == 2  # not an MLLM folder


def test_chat_answers_about_an_image(mllm_dir, tmp_path, capsys):
    from vistok.data.imageio import save_image
    from vistok.mllm.chat import main

    image = tmp_path / "a.png"
    save_image(torch.rand(3, 20, 24) * 2 - 1, image)  # any size: center-cropped and resized
    assert main(["--model", str(mllm_dir), "--image", str(image), "what is in this picture?",
                 "--max-new-tokens", "4"]) == 0
    capsys.readouterr()  # a random LLM's answer: any text
    assert main(["--model", str(mllm_dir), "--image", str(image), "  "]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["--model", str(mllm_dir), "--image", str(tmp_path / "missing.png"), "what?"]) == 2
    assert main(["--model", str(mllm_dir), "hello?", "--max-new-tokens", "3"]) == 0
