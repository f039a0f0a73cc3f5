"""benchmarks/leaderboard.py end to end on a tiny image folder: the class split, two rows trained at the same budget
and measured on held-out classes next to JPEG/WebP, the written table/plot/JSON, and resuming (finished rows are
not run again)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vistok.data.split import split_by_class
from vistok.errors import DataError

_PATH = Path(__file__).parent.parent / "benchmarks" / "leaderboard.py"
_spec = importlib.util.spec_from_file_location("leaderboard", _PATH)
lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lb)


def image_folder(root: Path, classes: int = 12, per_class: int = 2) -> Path:
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(5, 6, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(pixels).resize((96, 80), Image.BICUBIC).save(folder / f"{i}.png")
    return root


def test_split_by_class_holds_out_every_nth_class_and_is_idempotent(tmp_path):
    src = image_folder(tmp_path / "src", classes=12, per_class=2)
    counts = split_by_class(src, tmp_path / "split", every=6)
    assert counts == {"train": 20, "heldout": 4}
    held = sorted(p.name for p in (tmp_path / "split" / "heldout").iterdir())
    assert held == ["n00000005", "n00000011"] and all((tmp_path / "split" / "heldout" / h).is_symlink() for h in held)
    assert split_by_class(src, tmp_path / "split", every=6) == counts
    with pytest.raises(DataError, match="class folders"):
        split_by_class(src, tmp_path / "other", every=20)


def test_leaderboard_trains_measures_publishes_and_resumes(tmp_path, capsys):
    import vistok.metrics.inception as inc

    inception = "packaged" if inc.packaged_torchscript_path() is not None else "none"
    data = image_folder(tmp_path / "data")
    args = ["--data", str(data), "--resolution", "64", "--steps", "2", "--batch-size", "4", "--threads", "1",
            "--rows", "vq_f8", "vit1d_fsq_tail_drop_32", "--inception", inception, "--out", str(tmp_path / "out"),
            "--publish", str(tmp_path / "docs"), "--no-progress"]
    assert lb.main(args) == 0
    results = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert set(results["rows"]) == {"vq_f8", "vit1d_fsq_tail_drop_32"}
    vq = results["rows"]["vq_f8"]
    assert vq["bits_per_image"] == 64 * 10 and vq["bytes_per_image"] == 80 and vq["num_images"] == 4
    assert vq["parameters"] > 0 and vq["encode_images_per_s"] > 0 and vq["decode_images_per_s"] > 0
    assert "train.py --config configs/tokenizer/vq_f8_imagenet64.yaml" in vq["train_command"]
    assert "train.steps=2" in vq["train_command"] and vq["git_commit"]
    if inception == "packaged":
        assert vq["rfid"] >= 0 and 0 <= vq["codebook_usage"] <= 1
    assert {"JPEG", "WebP"} == set(results["codecs"])
    jpeg = results["codecs"]["JPEG"]
    assert jpeg[-1]["psnr"] > jpeg[0]["psnr"] and jpeg[-1]["bytes"] > jpeg[0]["bytes"]
    table = (tmp_path / "docs" / "leaderboard.md").read_text()
    assert "conv2d f8 + VQ" in table and "1D, 32 tokens, FSQ + tail drop" in table
    assert (tmp_path / "docs" / "img" / "leaderboard.png").stat().st_size > 1000

    capsys.readouterr()
    assert lb.main(args) == 0  # resumed: both rows are read back, nothing is trained again
    assert capsys.readouterr().out.count("done earlier, skipped") == 2

    # a row that cannot run (the FlexTok row reads the kl_ae row's autoencoder, not trained here) is listed as
    # failed with the reason, and the others are still published
    rows = args.index("--rows")
    with_flextok = [*args[:rows + 3], "vit1d_fsq_nested_dropout_32", *args[rows + 3:]]
    assert lb.main(with_flextok) == 0
    results = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert set(results["rows"]) == {"vq_f8", "vit1d_fsq_tail_drop_32"}
    assert "run its row first (--rows kl_ae_f8_ptq vit1d_fsq_nested_dropout_32)" in \
        results["failed"]["vit1d_fsq_nested_dropout_32"]
    assert "Not measured: `vit1d_fsq_nested_dropout_32` failed" in (tmp_path / "docs" / "leaderboard.md").read_text()
