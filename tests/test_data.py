"""Data: the ImageFolder reader (modes, EXIF, ADM crop, broken files, empty folders), captioned shapes, class names."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.data import ImageFolderDataset, ShapesDataset, center_crop_resize, load_rgb, tensor_to_uint8
from vistok.data.imagenet_names import imagenet_class_names, imagenet_wnids, wnid_to_name
from vistok.errors import DataError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path))


def test_every_mode_becomes_8bit_rgb_with_the_right_colors(tmp_path):
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 200
    Image.fromarray(red).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(np.full((20, 30), 100, np.uint8), mode="L").save(tmp_path / "gray.png")
    Image.fromarray(np.full((20, 30), 100 * 256, np.uint16)).save(tmp_path / "gray16.png")  # 16-bit PNG
    rgba = np.zeros((20, 30, 4), np.uint8)  # fully transparent: must come out white, not black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    Image.fromarray(red).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "palette.gif")

    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    for name, want in [("gray.png", (100, 100, 100)), ("gray16.png", (100, 100, 100)),
                       ("clear.png", (255, 255, 255)), ("palette.gif", (200, 0, 0))]:
        got = _rgb(tmp_path / name)
        assert got.shape == (20, 30, 3) and got.dtype == np.uint8, name
        assert np.abs(got.astype(int) - want).max() <= 1, (name, got[0, 0])
    cmyk = _rgb(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (20, 30, 3) and abs(int(cmyk[..., 0].mean()) - 200) < 8 and cmyk[..., 1:].max() < 20


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 40, 3), np.uint8)  # wide image, left half red
    arr[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(arr).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=100)
    shown = _rgb(tmp_path / "rotated.jpg")
    assert shown.shape == (40, 10, 3)  # displayed upright: tall
    assert shown[:15, :, 0].mean() > 200 and shown[-15:, :, 0].mean() < 50  # the red half is now on top


def test_adm_center_crop_rule():
    # 1000×600 at 64: halve (BOX) while short side >= 128: 500×300 → 250×150 → 125×75, then bicubic to short
    # side 64 (107×64), then the center 64×64.
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 1000, 3), np.uint8))
    out = center_crop_resize(img, 64)
    assert out.size == (64, 64)
    step = img
    for size in [(500, 300), (250, 150), (125, 75)]:
        step = step.resize(size, Image.Resampling.BOX)
    step = step.resize((107, 64), Image.Resampling.BICUBIC)
    left = (step.width - 64) // 2
    assert np.array_equal(np.asarray(out), np.asarray(step.crop((left, 0, left + 64, 64))))


def _write_folder(root: Path) -> None:
    for c, wnid in enumerate(["n01443537", "n01440764"]):  # goldfish, tench: labels follow sorted folder order
        (root / wnid).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 50, 3), 60 * c + 10 * i, np.uint8)).save(root / wnid / f"{i}.JPEG")


def test_imagefolder_labels_names_and_crop(tmp_path):
    _write_folder(tmp_path)
    ds = ImageFolderDataset(tmp_path, resolution=16)
    assert ds.class_ids == ["n01440764", "n01443537"] and ds.class_names == ["tench", "goldfish"]
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"] == 0 and item["caption"] == "tench"
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert {ds[i]["label"] for i in range(len(ds))} == {0, 1}
    cached = ImageFolderDataset(tmp_path, resolution=16, cache=True)
    for _ in range(2):  # first pass decodes and caches, second pass serves from memory
        assert all(torch.equal(cached[i]["image"], ds[i]["image"]) for i in range(len(ds)))
    assert len(cached._cache) == len(ds)


@pytest.mark.parametrize("validate", [True, False])
def test_imagefolder_skips_broken_files_with_one_warning_each(tmp_path, caplog, validate):
    _write_folder(tmp_path)
    bad = tmp_path / "n01440764"
    (bad / "empty.JPEG").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    good = (tmp_path / "n01443537" / "0.JPEG").read_bytes()
    (bad / "truncated.jpeg").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="vistok.data"):
        ds = ImageFolderDataset(tmp_path, resolution=16, validate=validate)
        items = [ds[i] for i in range(len(ds))]
    assert all(it["image"].shape == (3, 16, 16) for it in items)
    broken = {"empty.JPEG", "text.jpg", "truncated.jpeg"}
    assert {Path(p).name for p, _ in ds.skipped} == broken
    per_file = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert sorted(Path(m.split()[3]).name for m in per_file) == sorted(broken)  # one line per file, naming it
    if validate:
        assert len(ds) == 4 and any("skipped 3 unreadable files of 7" in r.getMessage() for r in caplog.records)


def test_empty_or_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", resolution=16)
    with pytest.raises(DataError, match="no class subfolders"):
        ImageFolderDataset(tmp_path, resolution=16)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="has no images"):
        ImageFolderDataset(tmp_path, resolution=16)
    (tmp_path / "cls" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of its 1 image files could be read"):
        ImageFolderDataset(tmp_path, resolution=16)


def test_imagenet_names_are_the_standard_order():
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert len(wnids) == len(names) == 1000 and list(wnids) == sorted(wnids)
    assert wnid_to_name("n01440764") == "tench" and names[1] == "goldfish" and wnid_to_name("n99999999") is None


def test_shapes_are_deterministic_captioned_and_cover_every_class():
    a, b = ShapesDataset(resolution=24, size=300, seed=3), ShapesDataset(resolution=24, size=300, seed=3)
    assert torch.equal(a[7]["image"], b[7]["image"]) and a[7]["caption"] == b[7]["caption"]
    other = ShapesDataset(resolution=24, size=300, seed=4)
    assert not torch.equal(a[7]["image"], other[7]["image"])
    assert len(a.class_names) == 24 and len(set(a.class_names)) == 24  # 4 shapes × 6 colors
    labels, backgrounds = set(), set()
    for i in range(len(a)):
        it = a[i]
        labels.add(it["label"])
        backgrounds.add(it["background"])
        color, shape = a.COLOR_NAMES[it["color"]], a.SHAPE_NAMES[it["shape"]]
        assert it["caption"].endswith(f"{color} {shape} on a {a.BACKGROUND_NAMES[it['background']]} background")
        assert a.class_names[it["label"]] == f"{color} {shape}"
    assert labels == set(range(24)) and len(backgrounds) >= 4
    # the shape's color is really in the image: its most common non-background color is the named one
    it = a[0]
    pixels = tensor_to_uint8(it["image"]).reshape(-1, 3).numpy().astype(int)
    fg = np.array(list(a.__class__.__init__.__globals__["COLORS"].values())[it["color"]])
    assert (np.abs(pixels - fg).sum(1) < 10).mean() > 0.05
    for res in (8, 17, 64):
        assert ShapesDataset(resolution=res, size=2)[1]["image"].shape == (3, res, res)


def test_upright_shapes_keep_classes_and_draw_axis_aligned_squares():
    from vistok.data.shapes import BACKGROUNDS

    rotated, upright = ShapesDataset(64, 40, seed=3), ShapesDataset(64, 40, seed=3, rotate=False)
    squares = 0
    for i in range(40):
        a, b = rotated[i], upright[i]
        assert (a["label"], a["caption"]) == (b["label"], b["caption"])  # same classes, colors, backgrounds
        if b["shape"] != 1:  # square
            continue
        squares += 1
        bg = torch.tensor(list(BACKGROUNDS.values())[b["background"]], dtype=torch.float32)
        pixels = (b["image"].permute(1, 2, 0) + 1) * 127.5
        fg = (pixels - bg).abs().amax(-1) > 60  # (H, W) shape mask
        rows, cols = fg.any(1).nonzero().flatten(), fg.any(0).nonzero().flatten()
        box = fg[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.9  # an axis-aligned square fills its bounding box (a rotated one: ~0.5-1)
    assert squares > 0

@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"the shared ImageNet sample is not at {SAMPLE} (CI/devs only)")
def test_real_imagenet_sample_loads():
    ds = ImageFolderDataset(SAMPLE, resolution=32)
    assert len(ds) == 712 and not ds.skipped
    batch = torch.stack([ds[i]["image"] for i in range(0, 712, 89)])
    assert batch.shape == (8, 3, 32, 32) and batch.std() > 0.1
