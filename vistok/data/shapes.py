"""Captioned shapes: the built-in, procedurally generated dataset the demo and the tests train on (no download).

Each item is one colored shape (circle, square, triangle, star) in one of six colors on one of six background
colors, of random size, position and rotation; its class is shape × color ("red circle", 24 classes) and its caption
names the background too ("a red circle on a teal background"). An item depends only on ``(seed, index)``, so any
access order, worker count or resume point sees the same images, and another seed gives a held-out set.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vistok.data.imageio import uint8_to_tensor
from vistok.errors import ConfigError
from vistok.registry import register

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "dark blue": (20, 30, 90),
    "beige": (230, 215, 180),
    "teal": (0, 128, 128),
}
# Euclidean RGB distance below which a background is never used with a color (it rules out green on teal, purple,
# green and blue on gray or teal): the shape's color must stay recognizable at any resolution.
MIN_FG_BG_DISTANCE = 120.0
SIZE_RANGE = (0.4, 0.8)  # diameter of the shape's circumscribed circle, as a fraction of the image side
SUPERSAMPLE = 4  # drawn at 4× and box-downsampled: antialiased edges at any resolution

_SYMMETRY = {"circle": 1, "square": 4, "triangle": 3, "star": 5}  # rotations beyond 2π/n repeat the same shape


def rgb_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


_COLOR_RGB = list(COLORS.values())
_BACKGROUND_RGB = list(BACKGROUNDS.values())
ALLOWED_BACKGROUNDS: tuple[tuple[int, ...], ...] = tuple(
    tuple(b for b, bg in enumerate(_BACKGROUND_RGB) if rgb_distance(fg, bg) >= MIN_FG_BG_DISTANCE)
    for fg in _COLOR_RGB)
if not all(ALLOWED_BACKGROUNDS):
    raise RuntimeError("every color needs at least one background at least MIN_FG_BG_DISTANCE away")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape inscribed in the circle (cx, cy, r), rotated by ``angle`` radians."""
    if shape == "star":
        points = [(r if k % 2 == 0 else 0.45 * r, angle - math.pi / 2 + k * math.pi / 5) for k in range(10)]
    else:
        n = 4 if shape == "square" else 3
        points = [(r, angle - math.pi / 2 + k * 2 * math.pi / n) for k in range(n)]
    return [(cx + rad * math.cos(a), cy + rad * math.sin(a)) for rad, a in points]


@register("dataset", "shapes")
class ShapesDataset(Dataset):
    """``size`` captioned-shape images at ``resolution``×``resolution``, deterministic by ``(seed, index)``.

    Items: ``{"image": float (3, R, R) in [-1, 1], "label": shape * num_colors + color, "caption": str,
    "index", "shape", "color", "background"}``. ``cache=True`` renders every item once up front (uint8 in memory)
    for epochs over a fixed set. ``rotate=False`` draws every shape upright (triangles and stars point up, squares
    are axis-aligned): the same classes and captions, an easier geometry (the demo uses it so that a CPU-minutes
    generator learns the shapes; see configs/demo/).
    """

    SHAPE_NAMES = SHAPES
    COLOR_NAMES = tuple(COLORS)
    BACKGROUND_NAMES = tuple(BACKGROUNDS)

    def __init__(self, resolution: int = 32, size: int = 10000, seed: int = 0, cache: bool = False,
                 rotate: bool = True) -> None:
        if resolution < 8 or size < 1:
            raise ConfigError(f"shapes needs resolution >= 8 and size >= 1, got resolution={resolution}, size={size}")
        self.resolution, self.size, self.seed = int(resolution), int(size), int(seed)
        self.rotate = bool(rotate)
        self.num_shapes, self.num_colors = len(SHAPES), len(COLORS)
        self.class_names = [f"{c} {s}" for s in SHAPES for c in COLORS]
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        if cache:
            images = torch.empty(self.size, self.resolution, self.resolution, 3, dtype=torch.uint8)
            meta = torch.empty(self.size, 3, dtype=torch.long)
            for i in tqdm(range(self.size), desc="rendering shapes", disable=self.size < 20000):
                arr, *m = self.render(i)
                images[i] = torch.from_numpy(arr)
                meta[i] = torch.tensor(m)
            self._cache = images, meta

    def render(self, index: int) -> tuple[np.ndarray, int, int, int]:
        """Draw item ``index``: (uint8 (R, R, 3) array, shape index, color index, background index)."""
        rng = random.Random(f"shapes/{self.seed}/{index}")  # str seeds hash with SHA-512: stable across runs
        shape, color = rng.randrange(self.num_shapes), rng.randrange(self.num_colors)
        background = rng.choice(ALLOWED_BACKGROUNDS[color])
        side = self.resolution * SUPERSAMPLE
        r = rng.uniform(*SIZE_RANGE) * side / 2
        cx, cy = rng.uniform(r, side - r), rng.uniform(r, side - r)
        angle = rng.uniform(0, 2 * math.pi / _SYMMETRY[SHAPES[shape]])  # drawn either way: same sizes/positions
        if not self.rotate:
            angle = 0.0 if SHAPES[shape] != "square" else math.pi / 4  # upright: point up, square edges on the axes
        img = Image.new("RGB", (side, side), _BACKGROUND_RGB[background])
        draw = ImageDraw.Draw(img)
        if SHAPES[shape] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_COLOR_RGB[color])
        else:
            draw.polygon(_polygon(SHAPES[shape], cx, cy, r, angle), fill=_COLOR_RGB[color])
        return np.array(img.reduce(SUPERSAMPLE)), shape, color, background

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} shapes")
        index %= self.size
        if self._cache is not None:
            pixels = self._cache[0][index]
            shape, color, background = self._cache[1][index].tolist()
        else:
            arr, shape, color, background = self.render(index)
            pixels = torch.from_numpy(arr)
        color_name = self.COLOR_NAMES[color]
        article = "an" if color_name[0] in "aeiou" else "a"
        return {
            "image": uint8_to_tensor(pixels), "label": shape * self.num_colors + color, "index": index,
            "caption": f"{article} {color_name} {SHAPES[shape]} on a {self.BACKGROUND_NAMES[background]} background",
            "shape": shape, "color": color, "background": background,
        }
