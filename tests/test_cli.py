"""The CLIs end to end on tiny configs: train.py (both stages) → sample.py → eval/recon.py, and their one-line
errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOK = ["stage=tokenizer", "data.resolution=16", "data.size=64", "model.channels=8", "model.channel_mult=[1,2]",
       "model.num_res_blocks=1", "model.z_channels=16", "model.mid_attention=false",
       "model.quantizer={name: vq, codebook_size: 32, code_dim: 4}", "train.steps=2", "train.batch_size=8",
       "train.image_every=2", "train.ckpt_every=2", "eval.num_images=8"]


def run(*args, check=True):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    run("train.py", *TOK, f"run_dir={tmp / 'tok'}", "--no-progress")
    run("train.py", "--config", "configs/generator/gpt_shapes32.yaml", f"tokenizer={tmp / 'tok'}",
        f"run_dir={tmp / 'gen'}", "data.resolution=16", "data.size=32", "model.dim=32", "model.depth=1",
        "model.heads=2", "train.steps=2", "train.batch_size=8", "train.ckpt_every=2", "train.image_every=0",
        f"token_cache_dir={tmp / 'cache'}", "--no-progress")
    return tmp


def test_sample_writes_pngs_grids_and_manifest_deterministically(trained):
    out1, out2 = trained / "s1", trained / "s2"
    for out in (out1, out2):
        run("sample.py", "--model", trained / "gen", "--prompt", "red circle", "--prompt", "a blue star",
            "--num-per-prompt", "2", "--cfg-scale", "2.0", "--seed", "7", "--out", out)
    manifest = json.loads((out1 / "manifest.json").read_text())
    assert [e["class_name"] for e in manifest["prompts"]] == ["red circle", "blue star"]
    for entry in manifest["prompts"]:
        assert (out1 / entry["grid"]).is_file() and len(entry["files"]) == 2
        for f in entry["files"]:
            assert (out1 / f).read_bytes() == (out2 / f).read_bytes()  # same seed → identical images


def test_sample_bad_prompt_is_one_line(trained):
    proc = run("sample.py", "--model", trained / "gen", "--prompt", "purple elephant", "--out", trained / "x",
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "closest" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run("sample.py", "--model", trained / "gen", "--prompt", " ", check=False)
    assert proc.returncode == 2 and "empty prompt" in proc.stderr


def test_sample_wrong_folder_is_one_line(trained):
    proc = run("sample.py", "--model", trained / "tok", "--prompt", "red circle", check=False)
    assert proc.returncode == 2 and "not a generator" in proc.stderr and "Traceback" not in proc.stderr


def test_recon_report(trained):
    out = trained / "recon"
    run("eval/recon.py", "--tokenizer", trained / "tok", "--data", "shapes", "--num-images", "20", "--out", out)
    report = json.loads((out / "recon.json").read_text())
    assert report["num_images"] == 20 and report["bits_per_image"] == 64 * 5
    assert 0 < report["psnr"] < 100 and 0 <= report["codebook_usage"] <= 1
    assert (out / "pairs.png").is_file() and len((out / "per_image.csv").read_text().splitlines()) == 21


def test_train_bad_override_is_one_line(tmp_path):
    proc = run("train.py", *TOK, "train.stepz=3", f"run_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "stepz" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train.py", *TOK, "model.quantizer.name=vqq", f"run_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "Did you mean" in proc.stderr


def test_console_scripts_point_at_the_same_mains_as_the_scripts(capsys):
    import importlib

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"vistok-train", "vistok-sample", "vistok-eval"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
    from vistok.cli import eval as eval_cli

    assert eval_cli.main([]) == 2
    assert "rfid" in capsys.readouterr().err
    assert eval_cli.main(["recon", "--tokenizer", "no/such/folder"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vistok-eval recon: error: no/such/folder"), err
