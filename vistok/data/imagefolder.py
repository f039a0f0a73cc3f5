"""A folder of images in ImageNet's layout (``root/<class_dir>/**/*.JPEG``), as ``{"image", "label", "caption",
"index"}`` items with the ADM center crop. Broken files are found up front (``validate=True``) or on first touch,
skipped with one warning each, and listed in ``self.skipped``; they never stop a run."""

from __future__ import annotations

import logging
import os
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
    training on raw ImageNet files. Each DataLoader worker holds its own cache; leave it off for full ImageNet.
    """

    def __init__(self, root: str | Path, resolution: int, validate: bool = True, cache: bool = False) -> None:
        self.root, self.resolution = Path(root), int(resolution)
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
        index %= n
        for offset in range(n):
            i = (index + offset) % n
            if i in self._bad:
                continue
            path, label = self.samples[i]
            if self._cache is not None and i in self._cache:
                return self._item(uint8_to_tensor(self._cache[i]), label, i)
            try:
                img = load_rgb(path)
            except UnreadableImageError as e:
                self._bad.add(i)
                self._skip(path, e.reason)
                continue
            pixels = torch.from_numpy(np.asarray(center_crop_resize(img, self.resolution), dtype=np.uint8).copy())
            if self._cache is not None:
                self._cache[i] = pixels
            return self._item(uint8_to_tensor(pixels), label, i)
        raise DataError(f"image folder {self.root}: none of its {n} image files could be read")

    def _item(self, image: torch.Tensor, label: int, index: int) -> dict[str, Any]:
        return {"image": image, "label": label, "caption": self.class_names[label], "index": index}
