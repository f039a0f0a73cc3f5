"""Data at scale: deterministic random crop + flip (cached or not, with DataLoader workers), WebDataset shards that
read back exactly (by vistok and by webdataset itself), and the token cache with flip / ten-crop views."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import vistok
from vistok.data import ImageFolderDataset, ShardDataset, center_crop_resize, uint8_to_tensor
from vistok.data.imagefolder import DrawIndex
from vistok.data.shards import convert
from vistok.data.shards import main as shards_main
from vistok.data.token_cache import TokenDataset, build_token_cache
from vistok.errors import DataError
from vistok.training.loop import StepBatchSampler

ROOT = Path(__file__).resolve().parent.parent
AUG = {"crop_scale": [1.0, 1.25], "hflip": 0.5, "seed": 7}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six images of two classes, of various shapes and formats, plus one broken file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls in ["n01440764", "n01443537"]:
        (root / cls).mkdir()
        for i, (h, w) in enumerate([(90, 120), (200, 70), (64, 64)]):
            arr = rng.integers(0, 255, (h, w, 3), np.uint8)
            if i == 2:
                Image.fromarray(arr).save(root / cls / f"{i}.png")
            else:
                Image.fromarray(arr).save(root / cls / f"{i}.JPEG", quality=95)
    (root / "n01443537" / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_augmentation_is_a_function_of_seed_index_and_epoch(folder):
    ds = ImageFolderDataset(folder, 32, augment=AUG)
    a, b = ds[DrawIndex(1, epoch=3)]["image"], ds[DrawIndex(1, epoch=3)]["image"]
    assert torch.equal(a, b)
    assert not all(torch.equal(a, ds[DrawIndex(1, epoch=e)]["image"]) for e in range(4, 9))  # epochs differ
    other_seed = ImageFolderDataset(folder, 32, augment={**AUG, "seed": 8})
    assert not all(torch.equal(ds[DrawIndex(1, e)]["image"], other_seed[DrawIndex(1, e)]["image"]) for e in range(5))
    # the cache keeps a BOX-halved image the crops resize from: exactly the same augmented pixels
    cached = ImageFolderDataset(folder, 32, augment=AUG, cache=True)
    for e in range(3):
        for i in range(len(ds)):
            assert torch.equal(cached[DrawIndex(i, e)]["image"], ds[DrawIndex(i, e)]["image"]), (i, e)


def test_crop_scale_one_is_the_center_crop_and_hflip_one_mirrors(folder):
    square = ImageFolderDataset(folder, 32, augment={"crop_scale": [1.0, 1.0], "hflip": 1.0})
    plain = ImageFolderDataset(folder, 32)
    idx = next(i for i, (p, _) in enumerate(plain.samples) if p.endswith(".png"))  # the 64×64 image
    assert torch.equal(square[idx]["image"], plain[idx]["image"].flip(-1))
    assert square[0]["image"].shape == (3, 32, 32)
    with pytest.raises(DataError, match="crop_scale"):
        ImageFolderDataset(folder, 32, augment={"crop_scale": [0.8, 1.0]})
    with pytest.raises(DataError, match="unknown options"):
        ImageFolderDataset(folder, 32, augment={"flip": True})


def test_sampler_draws_carry_the_epoch_and_workers_see_the_same_images(folder):
    draws = [i for batch in StepBatchSampler(5, 4, 3, seed=0) for i in batch]
    assert [d.epoch for d in draws] == [0] * 5 + [1] * 5 + [2] * 2
    restored = pickle.loads(pickle.dumps(DrawIndex(3, 9)))
    assert restored == 3 and restored.epoch == 9
    ds = ImageFolderDataset(folder, 32, augment=AUG)
    sampler = StepBatchSampler(len(ds), 2, 6, seed=1)
    serial = [b["image"] for b in DataLoader(ds, batch_sampler=sampler)]
    parallel = [b["image"] for b in DataLoader(ds, batch_sampler=sampler, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_shards_read_back_exactly(folder, tmp_path):
    out = tmp_path / "wds"
    summary = convert(folder, out, shard_size=2, progress=False)
    assert summary["num_samples"] == 6 and len(summary["shards"]) == 3 and len(summary["skipped"]) == 1
    shards, images = ShardDataset(out, 32), ImageFolderDataset(folder, 32)
    assert len(shards) == len(images) and shards.class_names == images.class_names == ["tench", "goldfish"]
    for i in range(len(images)):
        a, b = shards[i], images[i]
        assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"] and a["caption"] == b["caption"]
    aug_s, aug_i = ShardDataset(out, 32, augment=AUG), ImageFolderDataset(folder, 32, augment=AUG)
    assert torch.equal(aug_s[DrawIndex(2, 5)]["image"], aug_i[DrawIndex(2, 5)]["image"])
    # webdataset's own streaming reader sees the same samples: the original bytes and labels
    import webdataset as wds

    urls = [str(out / name) for name in summary["shards"]]
    streamed = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(streamed) == 6
    for sample, (path, label) in zip(streamed, images.samples, strict=True):
        ext = Path(path).suffix.lower().lstrip(".")
        assert sample[ext] == Path(path).read_bytes() and int(sample["cls"]) == label


def test_shards_cli_and_errors(folder, tmp_path, capsys):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "vistok.data.shards", "--src", str(folder), "--out", str(out),
                           "--shard-size", "4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "wrote 6 images in 2 shards" in proc.stdout
    assert shards_main(["--src", str(folder), "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
    ds = vistok.build("dataset", {"name": "shards", "root": str(out), "resolution": 16})
    assert len(ds) == 6
    with pytest.raises(DataError, match="index.json"):
        ShardDataset(tmp_path, 16)


def _tiny_tokenizer(tmp_path, resolution=16):
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {"name": "conv2d", "resolution": resolution, "channels": 8, "channel_mult": [1, 2],
                                     "num_res_blocks": 1, "z_channels": 8, "mid_attention": False,
                                     "quantizer": {"name": "vq", "codebook_size": 16, "code_dim": 4}}).eval()
    tok.save_pretrained(tmp_path / "tok")
    return tok


def test_token_cache_flip_and_ten_crop_views(tmp_path):
    tok = _tiny_tokenizer(tmp_path)
    data_cfg = {"name": "shapes", "resolution": 16, "size": 6}
    ds = vistok.build("dataset", data_cfg)
    images = torch.stack([ds[i]["image"] for i in range(6)])
    flip = build_token_cache(tok, tmp_path / "tok", ds, data_cfg, tmp_path / "cache", progress=False, augment="flip")
    assert flip.tokens.shape == (6, 2, 64) and flip.num_views == 2
    assert torch.equal(flip.tokens[:, 0].long(), tok.encode(images))
    assert torch.equal(flip.tokens[:, 1].long(), tok.encode(images.flip(-1)))
    drawn = {tuple(flip[DrawIndex(0, e)]["tokens"].tolist()) for e in range(12)}
    assert drawn == {tuple(flip.tokens[0, 0].tolist()), tuple(flip.tokens[0, 1].tolist())}  # both views get drawn
    assert torch.equal(flip[DrawIndex(0, 4)]["tokens"], flip[DrawIndex(0, 4)]["tokens"])
    plain = build_token_cache(tok, tmp_path / "tok", ds, data_cfg, tmp_path / "cache", progress=False)
    assert plain.tokens.shape == (6, 64) and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    big = vistok.build("dataset", {**data_cfg, "resolution": 17})  # ⌊1.1 × 16⌋
    ten = build_token_cache(tok, tmp_path / "tok", big, data_cfg, tmp_path / "cache", progress=False,
                            augment="ten_crop")
    big_images = torch.stack([big[i]["image"] for i in range(6)])
    assert ten.tokens.shape == (6, 10, 64)
    assert torch.equal(ten.tokens[:, 0].long(), tok.encode(big_images[..., :16, :16]))  # top-left crop
    assert torch.equal(ten.tokens[:, 5].long(), tok.encode(big_images.flip(-1)[..., :16, :16]))  # mirrored
    reloaded = build_token_cache(tok, tmp_path / "tok", big, data_cfg, tmp_path / "cache", progress=False,
                                 augment="ten_crop")
    assert isinstance(reloaded, TokenDataset) and reloaded.num_views == 10 and torch.equal(reloaded.tokens, ten.tokens)


def test_generator_trains_on_flipped_token_views(tmp_path):
    from vistok.training.config import load_config
    from vistok.training.run import run_training

    _tiny_tokenizer(tmp_path)
    cfg = load_config(None, ["stage=generator", f"tokenizer={tmp_path / 'tok'}", "data.name=shapes",
                             "data.resolution=16", "data.size=16", "model.name=gpt", "model.dim=32", "model.depth=1",
                             "model.heads=2", "train.steps=2", "train.batch_size=8", "train.image_every=0",
                             "train.ckpt_every=0", "token_cache_augment=ten_crop",
                             f"token_cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'gen'}"])
    run_training(cfg, progress=False)
    (cache,) = (tmp_path / "cache").glob("*.safetensors")
    from safetensors.torch import load_file

    assert load_file(str(cache))["tokens"].shape == (16, 10, 64)


def test_real_sample_random_crops_are_valid():
    sample = ROOT.parent / "shared" / "data" / "imagenet-sample"
    if not sample.is_dir():
        pytest.skip(f"{sample} not present (the shared ImageNet sample)")
    ds = ImageFolderDataset(sample, 64, validate=False, augment={"crop_scale": [1.1, 1.1], "hflip": 0.5})
    for i in range(0, len(ds), 97):
        img = ds[DrawIndex(i, 1)]["image"]
        assert img.shape == (3, 64, 64) and img.min() >= -1 and img.max() <= 1
    center = ImageFolderDataset(sample, 64, validate=False)[0]["image"]
    ref = uint8_to_tensor(np.asarray(center_crop_resize(Image.open(center_path(sample)).convert("RGB"), 64)).copy())
    assert torch.equal(center, ref)


def center_path(sample: Path) -> Path:
    first = sorted(p for p in sample.iterdir() if p.is_dir())[0]
    return sorted(first.iterdir())[0]
