"""FID statistics files and the content-hash cache of reference features/statistics.

A stats file is an ``.npz`` with ``mu`` (D,), ``sigma`` (D, D) (float64) and ``vistok_meta`` (a JSON string: number
of images, resolution, resize rule, feature extractor and weights sha256, source). ``--ref stats.npz`` computes FID
against it; KID and precision/recall need features, so they are unavailable with a stats reference.

The cache is torch-fidelity's own file cache (``cache_root``): an input's features and FID statistics are stored
under a name built here from the input's content sha256, its evaluation resolution, the resize rule version and the
feature extractor's weights sha256. Change any image, the resolution or the weights and the name changes, so stale
entries are never read (they are simply not found and recomputed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vistok.errors import DataError
from vistok.metrics.image_sets import ImageSet

RESIZE_RULE_VERSION = 1  # bump when image_sets.RESIZE_RULE changes: old cache entries then no longer match


def cache_name(images: ImageSet, weights_sha256: str) -> str:
    """torch-fidelity ``input_cache_name`` for an image set (no path separators; content-addressed)."""
    content = images.content_sha256()[:32]
    return f"vistok-{content}-r{images.resolution}-rule{RESIZE_RULE_VERSION}-w{weights_sha256[:12]}"


def cached_feature_file(cache_root: str | Path, name: str, extractor: str, layer: str = "2048") -> Path:
    """Where torch-fidelity stores the cached ``layer`` features of input ``name`` (``utils.py`` naming)."""
    return Path(cache_root) / f"{name}-{extractor}-features-{layer}.pt"


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
             vistok_meta=np.array(json.dumps(meta)))


def is_stats_file(path: str | Path) -> bool:
    """An ``.npz`` holding ``mu`` and ``sigma`` and no images (``arr_0``)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return "mu" in data.files and "sigma" in data.files and "arr_0" not in data.files
    except (OSError, ValueError):
        return False


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
    """(mu, sigma, meta) of a stats file; meta is ``None`` for files vistok did not write."""
    with np.load(path, allow_pickle=False) as data:
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        meta = json.loads(str(data["vistok_meta"])) if "vistok_meta" in data.files else None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{path}: mu/sigma contain NaN or inf; recompute the statistics")
    return mu, sigma, meta
