"""A folder of images in ImageNet's layout (``root/<class_dir>/**/*.JPEG``), as ``{"image", "label", "caption",
"index"}`` items with the ADM center crop, or with training augmentation (random crop + horizontal flip). Broken
files are found up front (``validate=True``) or on first touch, skipped with one warning each, and listed in
``self.skipped``; they never stop a run.

Augmentation is deterministic: the crop and flip of an item depend only on (``augment.seed``, index, epoch), where
the epoch comes with the index from the training sampler (:class:`DrawIndex`). So workers, resumes and any number of
processes see the same augmented images, and a resumed run still reproduces the uninterrupted one."""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vistok.data.imageio import UnreadableImageError, center_crop_resize, load_rgb, uint8_to_tensor
from vistok.data.imagenet_names import wnid_to_name
from vistok.errors import DataError
from vistok.registry import register

logger = logging.getLogger("vistok.data")

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_PROGRESS_ABOVE = 200  # files; smaller folders validate silently


class DrawIndex(int):
    """A dataset index that also carries the epoch (pass over the data) that drew it, so that random augmentation
    can depend on (index, epoch) alone. Any dataset can take it as a plain int."""

    def __new__(cls, index: int, epoch: int = 0) -> DrawIndex:
        obj = super().__new__(cls, index)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self) -> tuple:  # keep the epoch through DataLoader worker queues
        return DrawIndex, (int(self), self.epoch)


def draw_rng(seed: int, index: int) -> random.Random:
    """The random stream of one draw of item ``index`` (its epoch read from a :class:`DrawIndex`; 0 otherwise)."""
    return random.Random(f"augment/{seed}/{getattr(index, 'epoch', 0)}/{int(index)}")  # str seed: stable


@dataclass(frozen=True)
class Augment:
    """Training augmentation (LlamaGen ``vq_train.py`` / ADM ``random_crop_arr``): the short side is resized to a
    random size in [⌈R·lo⌉, ⌈R·hi⌉] (BOX halving, then BICUBIC, as the ADM center crop) and an R×R window is cut at
    a random place; then a horizontal flip with probability ``hflip``. LlamaGen's tokenizer training uses
    ``crop_scale=(1.0, 1.25)`` (crop fractions 0.8–1.0) and ``hflip=0.5``; ``(1.1, 1.1)`` crops at random from a
    fixed 1.1× resize. ``crop_scale=None`` keeps the ADM center crop."""

    crop_scale: tuple[float, float] | None = None
    hflip: float = 0.0
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Augment | None:
        if not cfg:
            return None
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - {"crop_scale", "hflip", "seed"})
        if unknown:
            raise DataError(f"augment: unknown options {unknown}; it takes crop_scale: [lo, hi], hflip: p, seed")
        scale = cfg.get("crop_scale")
        if scale is not None:
            scale = tuple(float(v) for v in scale)
            if len(scale) != 2 or not 1.0 <= scale[0] <= scale[1]:
                raise DataError(f"augment.crop_scale must be [lo, hi] with 1 <= lo <= hi, got {cfg['crop_scale']}")
        hflip = float(cfg.get("hflip", 0.0))
        if not 0.0 <= hflip <= 1.0:
            raise DataError(f"augment.hflip is a probability in [0, 1], got {hflip}")
        return cls(scale, hflip, int(cfg.get("seed", 0)))

    def base_side(self, resolution: int) -> int:
        """The largest short side a crop resizes to: images can be kept BOX-halved down to < 2× this (exactly the
        intermediate the resize would reach), which is what the decoded-image cache stores."""
        return math.ceil(resolution * (self.crop_scale[1] if self.crop_scale else 1.0))

    def __call__(self, img: Image.Image, resolution: int, rng: random.Random) -> Image.Image:
        if self.crop_scale is None:
            out = center_crop_resize(img, resolution)
        else:
            lo, hi = (math.ceil(resolution * s) for s in self.crop_scale)
            side = rng.randint(lo, hi)
            while min(img.size) >= 2 * side:
                img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
            scale = side / min(img.size)
            img = img.resize(tuple(max(resolution, round(x * scale)) for x in img.size),
                             resample=Image.Resampling.BICUBIC)
            left, top = rng.randint(0, img.width - resolution), rng.randint(0, img.height - resolution)
            out = img.crop((left, top, left + resolution, top + resolution))
        if self.hflip and rng.random() < self.hflip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out


def halve_below(img: Image.Image, side: int) -> Image.Image:
    """BOX-halve while the short side is >= 2·side (the first stage of the ADM resize, shared by every target size
    up to ``side``)."""
    while min(img.size) >= 2 * side:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    return img


def _check_decodable(path: str, resolution: int) -> str | None:
    """``None`` if ``path`` fully decodes, else the reason. JPEGs decode at reduced size (``draft``), which still
    reads every byte of the file but makes validating a large folder several times faster."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (resolution, resolution))
            img.load()
    # Pillow raises many exception types on corrupt input; each one means the file is unusable (see load_rgb).
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


@register("dataset", "imagefolder")
class ImageFolderDataset(Dataset):
    """Images under ``root/<class_dir>/`` (searched recursively; extensions in ``IMAGE_EXTENSIONS``, any case).

    Labels are the index of the class folder in sorted order, as torchvision's ``ImageFolder`` assigns them (hidden
    folders such as ``.ipynb_checkpoints`` are ignored). ``class_ids`` are the folder names; ``class_names`` are
    ImageNet-1k human names for wnid folders, otherwise the folder name with ``_`` → space.

    ``validate=True`` decodes every file once at construction and drops the unreadable ones. With
    ``validate=False`` a file that fails in ``__getitem__`` is warned about once, recorded in ``skipped``, and the
    next readable index (wrapping around) is served instead; the item's ``index`` is then the one served.

    ``cache=True`` keeps each image, once decoded and cropped, in memory as uint8 (3·R² bytes each: 12 KiB at 64×64,
    so a few thousand images cost little), so epochs after the first skip JPEG decoding, which dominates small-model
    training on raw ImageNet files. With a random crop the cache keeps the image BOX-halved to just above the
    largest crop size instead (about 4× the pixels). Each DataLoader worker holds its own cache; leave it off for
    full ImageNet.

    ``augment={"crop_scale": [lo, hi], "hflip": 0.5, "seed": 0}``: random crop and flip (:class:`Augment`); for
    training data only (the held-out set keeps the center crop).
    """

    def __init__(self, root: str | Path, resolution: int, validate: bool = True, cache: bool = False,
                 augment: dict[str, Any] | None = None) -> None:
        self.root, self.resolution = Path(root), int(resolution)
        self.augment = Augment.from_config(augment)
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist; pass a folder in ImageFolder layout "
                            "(root/<class>/*.jpg)")
        self.class_ids = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not self.class_ids:
            raise DataError(f"image folder {self.root} has no class subfolders; put images in "
                            "root/<class>/*.jpg (ImageFolder layout)")
        self.class_names = [wnid_to_name(c) or c.replace("_", " ") for c in self.class_ids]
        self.samples: list[tuple[str, int]] = [
            (path, label) for label, class_id in enumerate(self.class_ids) for path in self._files(class_id)]
        if not self.samples:
            raise DataError(f"image folder {self.root} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in its "
                            f"{len(self.class_ids)} class subfolders; put images in root/<class>/")
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()
        if validate:
            self._validate()

    def _files(self, class_id: str) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root / class_id, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        return found

    def _validate(self) -> None:
        total = len(self.samples)
        kept = []
        for sample in tqdm(self.samples, desc=f"checking {self.root}", disable=total <= _PROGRESS_ABOVE):
            reason = _check_decodable(sample[0], self.resolution)
            if reason is None:
                kept.append(sample)
            else:
                self._skip(sample[0], reason)
        if self.skipped:
            logger.warning("skipped %d unreadable files of %d in %s", len(self.skipped), total, self.root)
        if not kept:
            raise DataError(f"image folder {self.root}: none of its {total} image files could be read")
        self.samples = kept

    def _skip(self, path: str, reason: str) -> None:
        logger.warning("skipping unreadable image %s (%s)", path, reason)
        self.skipped.append((path, reason))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        rng = draw_rng(self.augment.seed, index) if self.augment else None
        index %= n
        for offset in range(n):
            i = (index + offset) % n
            if i in self._bad:
                continue
            path, label = self.samples[i]
            if self._cache is not None and i in self._cache:
                if self.augment is None:  # the cached center crop is the item
                    return self._item(uint8_to_tensor(self._cache[i]), label, i)
                return self._item(self._pixels(Image.fromarray(self._cache[i].numpy()), rng), label, i)
            try:
                img = load_rgb(path)
            except UnreadableImageError as e:
                self._bad.add(i)
                self._skip(path, e.reason)
                continue
            if self._cache is not None:
                kept = halve_below(img, self.augment.base_side(self.resolution)) if self.augment else \
                    center_crop_resize(img, self.resolution)
                self._cache[i] = torch.from_numpy(np.asarray(kept, dtype=np.uint8).copy())
            return self._item(self._pixels(img, rng), label, i)
        raise DataError(f"image folder {self.root}: none of its {n} image files could be read")

    def _pixels(self, img: Image.Image, rng: random.Random | None) -> torch.Tensor:
        """The item's (3, R, R) image: augmented, or the ADM center crop."""
        out = self.augment(img, self.resolution, rng) if self.augment else center_crop_resize(img, self.resolution)
        return uint8_to_tensor(np.asarray(out, dtype=np.uint8).copy())

    def _item(self, image: torch.Tensor, label: int, index: int) -> dict[str, Any]:
        return {"image": image, "label": label, "caption": self.class_names[label], "index": index}
