"""Datasets and the image I/O edge: ImageNet-layout folders, WebDataset shards of them, the built-in captioned shapes,
and the one place pixels cross between uint8/PIL and the library's float [-1, 1] NCHW tensors (``imageio``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vistok.data.imagefolder import ImageFolderDataset
from vistok.data.imageio import (
    UnreadableImageError,
    center_crop_resize,
    load_rgb,
    make_pairs_grid,
    pil_to_tensor,
    save_grid,
    save_image,
    tensor_to_uint8,
    to_rgb,
    uint8_to_tensor,
)
from vistok.data.shapes import ShapesDataset
from vistok.data.shards import ShardDataset
from vistok.registry import build


def build_dataset(cfg: Mapping[str, Any] | str, **overrides: Any) -> Any:
    """Build a registered dataset from its config, e.g. ``{"name": "shapes", "resolution": 32}``."""
    return build("dataset", cfg, **overrides)


__all__ = [
    "ImageFolderDataset", "ShapesDataset", "ShardDataset", "UnreadableImageError", "build_dataset",
    "center_crop_resize", "load_rgb", "make_pairs_grid", "pil_to_tensor", "save_grid", "save_image", "tensor_to_uint8",
    "to_rgb", "uint8_to_tensor",
]
