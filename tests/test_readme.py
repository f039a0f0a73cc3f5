"""The README's "From Python" block runs as written, against tiny stand-ins for the folders `make demo` writes
(the demo's configs at the demo's resolution, shrunk, trained for one step)."""

import re
from pathlib import Path

import torch

import vistok

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_from_python_block_runs(tmp_path, monkeypatch):
    blocks = [b for b in python_blocks((ROOT / "README.md").read_text()) if "runs/demo/tokenizer" in b]
    assert blocks, "README.md has no python block that loads runs/demo/tokenizer"
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {"name": "conv2d", "resolution": 32, "channels": 8, "channel_mult": [1, 2, 2],
                                     "num_res_blocks": 1, "z_channels": 8, "mid_attention": False,
                                     "quantizer": {"name": "vq", "codebook_size": 64, "code_dim": 4}})
    gpt = vistok.build("generator", {"name": "gpt", "dim": 32, "depth": 1, "heads": 2},
                       token_spec=tok.token_spec.to_dict(), num_classes=24)
    tok.save_pretrained(tmp_path / "runs/demo/tokenizer")
    gpt.save_pretrained(tmp_path / "runs/demo/generator")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        assert namespace["images"].shape == (2, 3, 32, 32)
        assert namespace["tokens"].shape == (2, *tok.token_spec.token_shape)


def test_readme_tokenizer_folders_are_written_by_a_config():
    """Every ``tokenizer=runs/<name>`` in the README is the run_dir of a tokenizer config (or the demo's)."""
    from omegaconf import OmegaConf

    run_dirs = {str(OmegaConf.load(p).get("run_dir")) for p in (ROOT / "configs").rglob("*.yaml")}
    named = set(re.findall(r"tokenizer=(runs/[\w/]+)", (ROOT / "README.md").read_text()))
    assert named, "the README names no tokenizer folder"
    assert not named - run_dirs - {"runs/demo/tokenizer"}, sorted(named - run_dirs)
