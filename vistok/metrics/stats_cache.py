"""FID statistics files and the content-hash cache of reference features/statistics.

Statistics live in ``.npz`` files with ADM's keys (openai/guided-diffusion ``evaluations/evaluator.py``): ``mu`` (2048,)
and ``sigma`` (2048, 2048) of the pool features, ``mu_s`` (2023,) and ``sigma_s`` (2023, 2023) of the sFID spatial
features. ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``) hold them next to ``arr_0``, the reference
images; their statistics describe the whole dataset, ``arr_0`` only a subset of it. vistok's own stats files
(``write_stats``) use the same keys plus ``vistok_meta`` (a JSON string: number of images, resolution, resize rule,
feature extractor and weights sha256, source). ``--ref stats.npz`` computes FID and sFID against them; KID and
precision/recall need features, so they are unavailable with a stats-only reference.

The cache is torch-fidelity's own file cache (``cache_root``): an input's features and FID statistics are stored
under a name built here from the input's content sha256, its evaluation resolution, the resize rule version and the
feature extractor's weights sha256. Change any image, the resolution or the weights and the name changes, so stale
entries are never read (they are simply not found and recomputed).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
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


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, meta: dict[str, Any],
               mu_s: np.ndarray | None = None, sigma_s: np.ndarray | None = None) -> None:
    """Write ADM's keys (``mu``, ``sigma``, and ``mu_s``/``sigma_s`` when given) plus ``vistok_meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spatial = {} if mu_s is None else {"mu_s": np.asarray(mu_s, np.float64), "sigma_s": np.asarray(sigma_s, np.float64)}
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **spatial,
             vistok_meta=np.array(json.dumps(meta)))


def npz_member_shape(path: str | Path, key: str) -> tuple[int, ...] | None:
    """Shape of array ``key`` in an ``.npz`` read from its header only (``arr_0`` of a reference batch can be GBs),
    or ``None`` when the file has no such member."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is not None:
                return tuple(read_header(f)[0])
        with np.load(path, allow_pickle=False) as data:  # a rarer .npy version: load it to learn the shape
            return tuple(data[key].shape)
    except KeyError:
        return None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e


@dataclass
class ReferenceStatistics:
    """Precomputed statistics of a reference ``.npz`` (ADM layout); ``mu_s``/``sigma_s`` when the file has them."""

    path: str
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None
    sigma_s: np.ndarray | None
    meta: dict[str, Any] | None  # vistok_meta; None for files vistok did not write (ADM's)
    image_shape: tuple[int, ...] | None  # arr_0's shape when the file also holds the images

    @property
    def resolution(self) -> int | None:
        """The resolution the statistics describe: vistok's metadata, else the square size of ``arr_0``."""
        if self.meta and self.meta.get("resolution"):
            return int(self.meta["resolution"])
        if self.image_shape is not None and len(self.image_shape) == 4 and self.image_shape[1] == self.image_shape[2]:
            return int(self.image_shape[1])
        return None


def _checked_pair(path: Any, mu: np.ndarray, sigma: np.ndarray, names: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise DataError(f"{path}: {names} have shapes {mu.shape} and {sigma.shape}, not (D,) and (D, D)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{path}: {names} contain NaN or inf; recompute the statistics")
    return mu, sigma


def load_reference_statistics(path: str | Path) -> ReferenceStatistics | None:
    """The statistics stored in an ``.npz`` reference (ADM layout or vistok's), or ``None`` if it has no ``mu`` and
    ``sigma``. Only the statistics are read; ``arr_0`` is not loaded (its shape is read from the header)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data.files or "sigma" not in data.files:
                return None
            mu, sigma = _checked_pair(path, data["mu"], data["sigma"], "mu/sigma")
            mu_s = sigma_s = None
            if "mu_s" in data.files and "sigma_s" in data.files:
                mu_s, sigma_s = _checked_pair(path, data["mu_s"], data["sigma_s"], "mu_s/sigma_s")
            meta = json.loads(str(data["vistok_meta"])) if "vistok_meta" in data.files else None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e
    return ReferenceStatistics(str(path), mu, sigma, mu_s, sigma_s, meta, npz_member_shape(path, "arr_0"))


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
    stats = load_reference_statistics(path)
    if stats is None:
        raise DataError(f"{path}: no 'mu' and 'sigma' in this .npz; a statistics file holds both")
    return stats.mu, stats.sigma, stats.meta
