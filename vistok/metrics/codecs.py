"""Classical codecs as reference points on the rate–distortion plane: every image is encoded with Pillow's JPEG or
WebP at a quality setting and decoded; the byte count is the measured file size (headers included: that is what a
codec file costs), to set against a tokenizer's bits per image / 8."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from vistok.data.imageio import tensor_to_uint8, uint8_to_tensor

JPEG_QUALITIES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 75, 90)
WEBP_QUALITIES = (0, 1, 2, 5, 10, 20, 30, 50, 75, 90)
CODECS = {"JPEG": ("JPEG", JPEG_QUALITIES), "WebP": ("WEBP", WEBP_QUALITIES)}  # label -> (Pillow format, sweep)


def codec_roundtrip(images: torch.Tensor, fmt: str, quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each image of ``images`` (B, 3, H, W) in [-1, 1] as ``fmt`` ("JPEG" | "WEBP") at ``quality`` with
    Pillow (JPEG: optimized Huffman tables; WebP: method 6, the slowest and smallest); returns (file sizes in bytes
    (B,), decoded images (B, 3, H, W) in [-1, 1])."""
    if fmt not in ("JPEG", "WEBP"):
        raise ValueError(f"fmt must be 'JPEG' or 'WEBP', got {fmt!r}")
    opts = {"quality": quality, "optimize": True} if fmt == "JPEG" else {"quality": quality, "method": 6}
    sizes, decoded = [], []
    for arr in tensor_to_uint8(images).numpy():
        buf = io.BytesIO()
        Image.fromarray(arr, mode="RGB").save(buf, format=fmt, **opts)
        sizes.append(buf.tell())
        buf.seek(0)
        decoded.append(np.array(Image.open(buf).convert("RGB")))
    return torch.tensor(sizes, dtype=torch.float64), uint8_to_tensor(np.stack(decoded))


def interpolate(curve: list[dict[str, float]], nbytes: float, key: str) -> float | None:
    """``key`` of a codec at ``nbytes`` (linear in log-bytes between measured points, on the codec's upper
    envelope); None outside the codec's measured range."""
    pts = sorted((r["bytes"], r[key]) for r in curve)
    envelope, best = [], -math.inf
    for b, v in pts:  # a codec at a larger budget can always do at least as well as at a smaller one
        best = max(best, v)
        envelope.append((b, best))
    if not envelope or nbytes < envelope[0][0] or nbytes > envelope[-1][0]:
        return None
    for (b0, v0), (b1, v1) in zip(envelope, envelope[1:]):
        if b0 <= nbytes <= b1:
            t = 0.0 if b1 == b0 else (math.log(nbytes) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return v0 + t * (v1 - v0)
    return envelope[-1][1]
