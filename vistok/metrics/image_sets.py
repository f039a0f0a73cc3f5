"""Image sets as torch-fidelity inputs: a Dataset of uint8 (3, R, R) tensors at one evaluation resolution R.

Sources: a folder of images (searched recursively), an ADM-style ``.npz`` reference batch (``arr_0``: uint8 NHWC, as
LlamaGen/VAR/TiTok use for ImageNet 256; its ``mu``/``sigma`` are read by ``stats_cache``), or in-memory images
(uint8 NHWC / NCHW, or float NCHW in [-1, 1]).

Rules, the same for every source and recorded in every result (``RESIZE_RULE``):

- an image already R×R is used as is (no resampling);
- any other image (other size, non-square) is brought to R×R by the ADM center crop
  (``vistok.data.imageio.center_crop_resize``: BOX halving while the short side is ≥ 2R, BICUBIC to short side R,
  center crop), and counted in ``num_resized``;
- inside the feature extractor torch-fidelity resizes R×R → 299×299 with TF1-compatible bilinear interpolation
  (what the standard FID graph does).

Unreadable files are found up front (every file fully decoded once; JPEGs at reduced size, which still reads every
byte), skipped, counted in ``num_skipped`` and listed in ``skipped`` — never silently. The content hash
(:meth:`ImageSet.content_sha256`) covers the bytes of every image used, so caches keyed by it are invalidated when
any image changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vistok.data.imagefolder import IMAGE_EXTENSIONS
from vistok.data.imageio import center_crop_resize, load_rgb, tensor_to_uint8
from vistok.errors import ConfigError, DataError

logger = logging.getLogger("vistok.metrics")

RESIZE_RULE = ("R×R images untouched; others: ADM center crop to R×R (BOX halving while short side ≥ 2R, BICUBIC to "
               "short side R, center crop); then torch-fidelity's TF1-bilinear resize to 299×299 inside Inception")


class ImageSet(Dataset):
    """Base: ``len``, ``__getitem__`` → uint8 (3, R, R), plus what was skipped/resized and a content hash."""

    kind = "images"

    def __init__(self, description: str, resolution: int) -> None:
        self.description, self.resolution = description, int(resolution)
        self.skipped: list[tuple[str, str]] = []
        self.num_resized = 0
        self._sha256: str | None = None

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def content_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self._compute_sha256()
        return self._sha256

    def _compute_sha256(self) -> str:
        raise NotImplementedError

    def _to_chw(self, hwc: np.ndarray) -> torch.Tensor:
        if hwc.shape[0] != self.resolution or hwc.shape[1] != self.resolution:
            hwc = np.asarray(center_crop_resize(Image.fromarray(hwc, mode="RGB"), self.resolution))
        return torch.from_numpy(np.array(hwc, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # a writable copy

    def info(self) -> dict:
        return {"source": self.description, "kind": self.kind, "num_images": len(self), "num_skipped": self.num_skipped,
                "skipped_files": [f"{p} ({r})" for p, r in self.skipped[:20]], "num_resized": self.num_resized}


def _probe(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """(size, None) if the file fully decodes, else (None, reason)."""
    try:
        with Image.open(path) as img:
            size = img.size
            if img.format == "JPEG":
                img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
        return size, None
    # Pillow raises many exception types on corrupt input; each one means the file is unusable.
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def _majority_square_size(sizes: list[tuple[int, int]], what: str) -> int:
    (w, h), _ = Counter(sizes).most_common(1)[0]
    if w != h:
        raise ConfigError(f"{what}: most images are {w}×{h} (not square); pass --resolution R to evaluate at R×R "
                          "(ADM center crop)")
    return w


class FolderImages(ImageSet):
    """Every image file under ``root`` (recursively; extensions as ImageFolder: jpg, png, webp, ...), sorted."""

    kind = "folder"

    def __init__(self, root: str | Path, resolution: int | None = None, progress: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder of images")
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        if not files:
            raise DataError(f"{self.root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
        self.files, sizes, skipped = [], [], []
        for path in tqdm(files, desc=f"checking {self.root.name}", disable=not progress or len(files) < 200):
            size, reason = _probe(path)
            if reason is None:
                self.files.append(path)
                sizes.append(size)
            else:
                skipped.append((path, reason))
        if not self.files:
            raise DataError(f"{self.root}: none of its {len(files)} image files could be read")
        super().__init__(str(self.root), resolution or _majority_square_size(sizes, str(self.root)))
        self.skipped = skipped
        for path, reason in skipped:
            logger.warning("skipping unreadable image %s (%s)", path, reason)
        if skipped:
            logger.warning("%s: skipped %d unreadable files of %d", self.root, len(skipped), len(files))
        self.num_resized = sum(s != (self.resolution, self.resolution) for s in sizes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._to_chw(np.asarray(load_rgb(self.files[i])))

    def _compute_sha256(self) -> str:
        h = hashlib.sha256()
        for path in self.files:
            h.update(os.path.relpath(path, self.root).encode() + b"\0")
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        return h.hexdigest()


class ArrayImages(ImageSet):
    """In-memory uint8 NHWC images (an ADM ``.npz`` batch's ``arr_0``, or tensors handed in from Python)."""

    kind = "array"

    def __init__(self, images: np.ndarray, description: str, resolution: int | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"{description}: expected uint8 images of shape (N, H, W, 3), got {images.dtype} "
                            f"{tuple(images.shape)}")
        if len(images) == 0:
            raise DataError(f"{description}: no images")
        self.images = images
        h, w = images.shape[1:3]
        if resolution is None and h != w:
            raise ConfigError(f"{description}: images are {w}×{h} (not square); pass --resolution R")
        super().__init__(description, resolution or h)
        self.num_resized = len(images) if (h, w) != (self.resolution, self.resolution) else 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._to_chw(self.images[i])

    def _compute_sha256(self) -> str:
        h = hashlib.sha256(str(tuple(self.images.shape)).encode())
        h.update(np.ascontiguousarray(self.images).data)
        return h.hexdigest()


def read_adm_npz(path: str | Path) -> np.ndarray:
    """``arr_0`` of an ADM-style reference/sample batch: uint8 (N, H, W, 3). A reference batch's precomputed
    statistics (``mu``/``sigma``, ``mu_s``/``sigma_s``) are read separately
    (``vistok.metrics.stats_cache.load_reference_statistics``): FID and sFID use them, as ADM's evaluator does."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise DataError(f"{path}: no 'arr_0' (keys: {', '.join(data.files)}); an ADM batch holds uint8 NHWC "
                                "images in arr_0")
            images = data["arr_0"]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: arr_0 must be uint8 (N, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    return images


def images_from_tensor(images: torch.Tensor | np.ndarray, description: str = "tensor",
                       resolution: int | None = None) -> ArrayImages:
    """uint8 NHWC/NCHW or float NCHW in [-1, 1] (the library's convention) → :class:`ArrayImages`."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        if images.dim() == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
            images = images.permute(0, 2, 3, 1)
        arr = images.contiguous().numpy()
    else:
        arr = tensor_to_uint8(images).numpy()
    return ArrayImages(arr, description, resolution)


def open_image_set(source: str | Path | torch.Tensor | np.ndarray | ImageSet, resolution: int | None = None,
                   progress: bool = True) -> ImageSet:
    """A folder, an ADM ``.npz`` (``arr_0``), tensors/arrays, or an :class:`ImageSet` (returned as is)."""
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, torch.Tensor | np.ndarray):
        return images_from_tensor(source, resolution=resolution)
    path = Path(source)
    if path.is_dir():
        return FolderImages(path, resolution, progress=progress)
    if path.suffix == ".npz" and path.is_file():
        return ArrayImages(read_adm_npz(path), str(path), resolution)
    raise DataError(f"{source}: not a folder of images or an .npz file (arr_0 uint8 NHWC)")
