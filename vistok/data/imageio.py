"""The one place images cross the uint8/PIL ↔ tensor boundary (design: inside the library images are float tensors
in [-1, 1], NCHW). Loading (any file mode → RGB), the ADM center crop, and writing PNGs / grids all live here, so
every data path and every metric sees pixels converted by the same rules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.utils import make_grid

from vistok.errors import DataError

_WHITE = (255, 255, 255)


class UnreadableImageError(DataError):
    """A file that cannot be decoded as an image (truncated, empty, not an image, unsupported mode)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with alpha on white (transparent pixels become white, not black)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _gray_array_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(gray, 0, 255).round().astype(np.uint8), mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without losing brightness.

    Pillow's own ``convert("RGB")`` clips 16-bit and float images (almost everything turns white) and drops alpha
    onto black; here 16-bit integer modes (``I;16*``, and ``I``, which Pillow uses for 16-bit PNG/TIFF/PGM data)
    are divided by 256, float images in [0, 1] are scaled by 255 (others are taken as 0..255), and images with
    transparency are composited on white.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        return _gray_array_to_rgb(np.asarray(img).astype(np.float64) / 256.0)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        return _gray_array_to_rgb(arr * 255.0 if arr.size and arr.max() <= 1.0 else arr)
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette is not None and img.palette.mode == "RGBA"
        return _on_white(img) if has_alpha else img.convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        return _on_white(img)
    if mode in ("L", "1") and "transparency" in img.info:
        return _on_white(img)
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, ...; raises ValueError for modes Pillow cannot convert


def load_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` fully decoded, EXIF orientation applied, as 8-bit RGB (see :func:`to_rgb` for the mode rules).

    Raises :class:`UnreadableImageError` for truncated, empty or non-image files: the full decode (``load()``) runs
    here, so a broken file fails at this line and not later inside a resize. Truncated files are never padded
    (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off).
    """
    try:
        with Image.open(path) as img:
            img.load()
            oriented = ImageOps.exif_transpose(img)
            return to_rgb(oriented)
    # Pillow's decoders raise many exception types on corrupt input (OSError, SyntaxError, struct.error,
    # ValueError, DecompressionBombError, ...); all of them mean "this file is not a usable image".
    except Exception as e:
        raise UnreadableImageError(path, f"{type(e).__name__}: {e}") from e


def center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Square ``resolution``×``resolution`` crop by the ADM rule (guided-diffusion ``center_crop_arr``), the
    preprocessing that ImageNet FID reference statistics and most tokenizers assume.

    Rule: while the short side is ≥ 2·resolution, halve both sides (integer division) with BOX filtering; then
    resize with BICUBIC so the short side equals ``resolution`` (long side rounded); then crop the center
    (offsets ``(size - resolution) // 2``).
    """
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def uint8_to_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 channels-last pixels → float in [-1, 1], channels first: (H, W, 3) → (3, H, W), (B, H, W, 3) →
    (B, 3, H, W); v ↦ v / 127.5 - 1."""
    x = torch.as_tensor(pixels)
    if x.dtype != torch.uint8 or x.dim() not in (3, 4) or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) or (B, H, W, 3) pixels, got {x.dtype} {tuple(x.shape)}")
    return x.movedim(-1, -3).float().div_(127.5).sub_(1.0)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image (any mode, via :func:`to_rgb`) → float tensor (3, H, W) in [-1, 1]."""
    return uint8_to_tensor(np.array(to_rgb(img), dtype=np.uint8))


def tensor_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] → uint8, channels last: (B, 3, H, W) → (B, H, W, 3), or (3, H, W) → (H, W, 3).

    Rounds ``(x + 1) * 127.5`` to the nearest integer and clamps to 0..255 (the inverse of :func:`pil_to_tensor`,
    exact on its outputs).
    """
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected (B, 3, H, W) or (3, H, W) images, got shape {tuple(images.shape)}")
    x = images.detach().float().cpu()
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).movedim(-3, -1)


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Write one (3, H, W) image in [-1, 1] as a PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tensor_to_uint8(image).numpy(), mode="RGB").save(path)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> None:
    """Write (B, 3, H, W) images in [-1, 1] as one PNG grid, ``nrow`` images per row (default ⌈√B⌉), separated
    by ``padding`` white pixels."""
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty (B, 3, H, W) batch, got shape {tuple(images.shape)}")
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=padding, pad_value=1.0)
    save_image(grid, path)


def make_pairs_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path,
                    pairs_per_row: int = 8, padding: int = 2) -> None:
    """Write originals and their reconstructions as one PNG, in alternating rows: a row of up to
    ``pairs_per_row`` originals, then directly below it a row with their reconstructions in the same columns,
    and so on (a short last row is filled with white)."""
    if originals.shape != reconstructions.shape or originals.dim() != 4:
        raise ValueError(f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)} "
                         "must be (B, 3, H, W) batches of the same shape")
    n = len(originals)
    per_row = min(pairs_per_row, n)
    rows = []
    for start in range(0, n, per_row):
        for batch in (originals, reconstructions):
            chunk = batch[start:start + per_row].detach().float().cpu()
            fill = torch.ones(per_row - len(chunk), *chunk.shape[1:])
            rows.append(torch.cat([chunk, fill]))
    save_grid(torch.cat(rows), path, nrow=per_row, padding=padding)
