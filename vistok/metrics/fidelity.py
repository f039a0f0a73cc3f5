"""FID, KID, precision/recall and Inception Score between two image sets, on torch-fidelity's feature extractors,
feature cache and metric functions, with every result saying how it was computed.

- FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to the 2048-d pool features,
  ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}), in float64. The trace term is computed exactly from symmetric
  eigendecompositions (or, with fewer images than dimensions, as a nuclear norm) instead of ``scipy.linalg.sqrtm``
  (ADM, TTUR) or eigenvalues of the non-symmetric Σ₁Σ₂ (torch-fidelity): same value, no complex parts, much faster;
  tests check all of them agree.
- KID (Bińkowski et al. 2018): torch-fidelity's unbiased MMD² with the cubic polynomial kernel over random subsets
  (size min(1000, N₁, N₂)); unbiased, so it is the better number for small sets.
- Precision/recall (Kynkäänniemi et al. 2019): torch-fidelity's k-NN manifold estimate (k = 3) on the same 2048-d
  Inception features, as the ADM evaluator does (torch-fidelity's own default for PRC is VGG16, which would need
  another download).
- Inception Score (Salimans et al. 2016): from the classifier's logits, 10 splits; only when the extractor has a
  classifier (the packaged TF-2015 copy has none: the result then says IS is unavailable and why).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.utils import extract_featuresdict_from_input_id_cached

import vistok
from vistok.errors import ConfigError, VistokError
from vistok.metrics.image_sets import RESIZE_RULE, ImageSet, open_image_set
from vistok.metrics.inception import InceptionChoice, default_cache_dir, resolve_inception
from vistok.metrics.stats_cache import cache_name, cached_feature_file, is_stats_file, load_stats, save_stats

logger = logging.getLogger("vistok.metrics")

FEATURE_DIM = 2048
ALL_METRICS = ("fid", "kid", "prc", "isc")


class FeatureError(VistokError, ValueError):
    """Features that cannot give a meaningful metric (NaN/inf, too few images)."""


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^{1/2}) for symmetric PSD Σ₁, Σ₂: with S = Σ₁^{1/2}, Σ₁Σ₂ = S⁻¹(SΣ₂S)S has the eigenvalues of the
    symmetric PSD SΣ₂S, so the trace is Σ√λᵢ(SΣ₂S) (two symmetric eigendecompositions, no complex arithmetic)."""
    w, v = scipy.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = scipy.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}) in float64.

    Deviation from the ADM/TTUR code (``scipy.linalg.sqrtm`` of Σ₁Σ₂, then discard a small imaginary part): the
    trace term is computed exactly from symmetric eigendecompositions (:func:`trace_sqrt_product`), which is stable
    and ~10× faster (``sqrtm`` of a 2048² matrix took minutes on the shared 2-core CI machine). Tests check it
    against ``sqrtm``, torch-fidelity's eigenvalue formula and the closed form on Gaussians.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_features_to_stats(features: torch.Tensor, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID of (N, D) features against given statistics (μ₂, Σ₂) (a stats-file reference). With N ≤ D, Σ₁ = AᵀA
    (A = (X − μ₁)/√(N − 1)) and Tr((Σ₁Σ₂)^{1/2}) = Σ√λᵢ(AΣ₂Aᵀ), an N×N eigenproblem; otherwise the D×D route."""
    x = features.double().cpu().numpy()
    n, d = x.shape
    if n < 2:
        raise FeatureError(f"FID needs at least 2 images, got {n}")
    if n > d:
        return frechet_distance(*feature_statistics(features), mu2, sigma2)
    mu1 = x.mean(0)
    a = (x - mu1) / np.sqrt(n - 1)
    lam = scipy.linalg.eigvalsh(a @ np.asarray(sigma2, np.float64) @ a.T)
    diff = mu1 - np.asarray(mu2, np.float64)
    return float(diff @ diff + (a * a).sum() + np.trace(sigma2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def frechet_distance_from_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID of two (N, D) feature sets (statistics as torch-fidelity/np.cov: unbiased covariance).

    With fewer images than dimensions (N ≤ D) the covariances are Σᵢ = AᵢᵀAᵢ, Aᵢ = (Xᵢ − μᵢ)/√(Nᵢ − 1), and the
    nonzero eigenvalues of Σ₁Σ₂ are the squared singular values of A₁A₂ᵀ (N₁×N₂), so Tr((Σ₁Σ₂)^{1/2}) is the nuclear
    norm of A₁A₂ᵀ: the same number as :func:`frechet_distance`, without any D×D decomposition.
    """
    x1, x2 = features1.double().cpu().numpy(), features2.double().cpu().numpy()
    (n1, d), n2 = x1.shape, len(x2)
    if min(n1, n2) < 2:
        raise FeatureError(f"FID needs at least 2 images per side, got {n1} and {n2}")
    if min(n1, n2) > d:
        return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
    mu1, mu2 = x1.mean(0), x2.mean(0)
    a1, a2 = (x1 - mu1) / np.sqrt(n1 - 1), (x2 - mu2) / np.sqrt(n2 - 1)
    nuclear = scipy.linalg.svdvals(a1 @ a2.T).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2 * nuclear)


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of (N, D) features in float64, via torch-fidelity's ``fid_features_to_statistics``."""
    stats = fid_features_to_statistics(features.double())
    return np.asarray(stats["mu"], np.float64), np.asarray(stats["sigma"], np.float64)


def check_finite(features: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(features).all(dim=1)
    if bad.any():
        first = bad.nonzero()[:5].flatten().tolist()
        raise FeatureError(f"{what}: {int(bad.sum())} of {len(features)} images gave NaN/inf Inception features "
                           f"(first indices {first}); check the feature-extractor weights (--inception) and the "
                           "images (all-NaN generator outputs?)")


def small_set_warning(n: int, what: str) -> str | None:
    if n >= FEATURE_DIM:
        return None
    msg = (f"{what}: {n} images < {FEATURE_DIM} (the feature dimension): the covariance is rank-deficient and FID is "
           "unreliable and biased upward at this size; compare FIDs only at equal N (papers use 50,000) and prefer KID")
    warnings.warn(msg, stacklevel=3)
    return msg


def extract_features(images: ImageSet, extractor: torch.nn.Module, *, batch_size: int = 64,
                     device: torch.device | str = "cpu", cache_root: str | Path | None = None,
                     weights_sha256: str = "", progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Features of every image through torch-fidelity's ``extract_featuresdict_from_input_id_cached``.

    With ``cache_root`` the features are cached in torch-fidelity's file cache under a content-addressed name
    (:func:`vistok.metrics.stats_cache.cache_name`). Batches go to the extractor's device (``device`` is kept for
    call compatibility). Returns (features by layer, cache info).
    """
    device = next(extractor.parameters()).device  # where InceptionChoice.create put it (CPU unless CUDA)
    name = cache_name(images, weights_sha256) if cache_root is not None else None
    hit = name is not None and cached_feature_file(cache_root, name, extractor.get_name()).is_file()
    feats = extract_featuresdict_from_input_id_cached(
        1, extractor, input1=images, input1_cache_name=name, cache=name is not None,
        cache_root=str(cache_root) if cache_root is not None else None, batch_size=batch_size,
        cuda=device.type == "cuda", verbose=progress,
        save_cpu_ram=len(images) < 256)  # no DataLoader worker processes for small sets: starting them costs more
    return feats, {"cache_name": name, "cache_hit": bool(hit)}


def _provenance(choice: InceptionChoice, seed: int, resolution: int, generator: str | None,
                tokenizer: str | None) -> dict[str, Any]:
    import torch_fidelity

    return {"resolution": resolution, "resize_rule": RESIZE_RULE, "feature_extractor": choice.to_dict(),
            "seed": seed, "vistok_version": vistok.__version__, "torch_fidelity_version": torch_fidelity.__version__,
            "generator": generator, "tokenizer": tokenizer}


def metrics_from_features(samples: dict[str, torch.Tensor], ref: dict[str, torch.Tensor] | None, *,
                          ref_stats: tuple[np.ndarray, np.ndarray] | None = None,
                          metrics: tuple[str, ...] = ALL_METRICS,
                          has_logits: bool = False, seed: int = 0, kid_subsets: int = 100,
                          kid_subset_size: int = 1000, prc_neighborhood: int = 3) -> dict[str, Any]:
    """The metric values from extracted features (``samples``/``ref``: {"2048": (N, 2048), ["logits_unbiased"]});
    ``ref_stats`` (μ, Σ) replaces ``ref`` for a stats-file reference (FID only)."""
    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    f1 = samples["2048"]
    f2 = ref["2048"] if ref is not None else None
    if "fid" in metrics:
        if ref_stats is not None:
            out["fid"] = frechet_distance_features_to_stats(f1, *ref_stats)
        else:
            out["fid"] = frechet_distance_from_features(f1, f2)
    if "kid" in metrics:
        if f2 is None:
            unavailable["kid"] = "the reference is a stats file (mu, sigma); KID needs its features"
        else:
            size = min(kid_subset_size, len(f1), len(f2))
            kid = kid_features_to_metric(f1, f2, kid_subsets=kid_subsets, kid_subset_size=size, rng_seed=seed,
                                         verbose=False)
            out.update(kid=kid["kernel_inception_distance_mean"], kid_std=kid["kernel_inception_distance_std"],
                       kid_subset_size=size, kid_subsets=kid_subsets)
    if "prc" in metrics:
        if f2 is None:
            unavailable["prc"] = "the reference is a stats file (mu, sigma); precision/recall need its features"
        elif min(len(f1), len(f2)) <= prc_neighborhood:
            unavailable["prc"] = (f"precision/recall need more than k = {prc_neighborhood} images per side, got "
                                  f"{len(f1)} and {len(f2)}")
        else:
            prc = prc_features_to_metric(f1, f2, prc_neighborhood=prc_neighborhood, verbose=False)
            out.update(precision=prc["precision"], recall=prc["recall"], f_score=prc["f_score"],
                       prc_neighborhood=prc_neighborhood, prc_features="inception 2048")
    if "isc" in metrics:
        if not has_logits or "logits_unbiased" not in samples:
            unavailable["isc"] = ("Inception Score needs the classifier's logits; the feature extractor that ran (the "
                                  "packaged TF-2015 FID Inception) has no classifier. Use --inception download or a "
                                  "weights file with fc")
        else:
            isc = isc_features_to_metric(samples["logits_unbiased"], splits=10, shuffle=True, rng_seed=seed)
            out.update(inception_score=isc["inception_score_mean"], inception_score_std=isc["inception_score_std"])
    out["unavailable"] = unavailable
    return out


def fid(samples: Any, ref: Any, *, inception: str | InceptionChoice = "auto", metrics: tuple[str, ...] = ALL_METRICS,
        resolution: int | None = None, batch_size: int = 64, device: torch.device | str = "cpu", seed: int = 0,
        kid_subsets: int = 100, kid_subset_size: int = 1000, prc_neighborhood: int = 3,
        cache_dir: str | Path | None = None, use_cache: bool = True, cache_samples: bool = False,
        progress: bool = True, generator: str | None = None, tokenizer: str | None = None) -> dict[str, Any]:
    """FID (+ KID, precision/recall, IS) of ``samples`` against ``ref``.

    ``samples``: a folder, an ADM ``.npz`` (``arr_0`` uint8 NHWC), tensors (uint8, or float in [-1, 1]) or an
    :class:`ImageSet`. ``ref``: the same kinds, or a stats file (``mu``, ``sigma``) written by :func:`write_stats`
    (FID only). Both sides are evaluated at ``resolution`` (default: the samples' size) by the rule in
    ``image_sets.RESIZE_RULE``. Reference features are cached by content hash under ``cache_dir`` (default
    ``~/.cache/vistok``); the samples' too with ``cache_samples``.
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ConfigError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")
    choice = inception if isinstance(inception, InceptionChoice) else resolve_inception(inception, cache_dir)
    cache_root = Path(cache_dir or default_cache_dir()) / "fidelity" if use_cache else None
    sample_set = open_image_set(samples, resolution, progress=progress)
    resolution = sample_set.resolution
    layers = ["2048"] + (["logits_unbiased"] if "isc" in metrics and choice.has_logits else [])
    extractor = choice.create(layers, device)
    warn = [w for w in [small_set_warning(len(sample_set), "samples")] if w]
    feats_s, cache_s = extract_features(sample_set, extractor, batch_size=batch_size, device=device,
                                        cache_root=cache_root if cache_samples else None,
                                        weights_sha256=choice.weights_sha256, progress=progress)
    check_finite(feats_s["2048"], f"samples ({sample_set.description})")
    ref_info: dict[str, Any]
    if isinstance(ref, str | Path) and is_stats_file(ref):
        mu, sigma, meta = load_stats(ref)
        _check_stats_meta(ref, meta, choice, resolution)
        feats_r, ref_stats = None, (mu, sigma)
        n_ref = meta.get("num_images") if meta else None
        ref_info = {"source": str(ref), "kind": "stats", "num_images": n_ref, "stats_meta": meta}
        if n_ref is not None:
            warn += [w for w in [small_set_warning(int(n_ref), "reference")] if w]
    else:
        ref_set = open_image_set(ref, resolution, progress=progress)
        warn += [w for w in [small_set_warning(len(ref_set), "reference")] if w]
        feats_r, cache_r = extract_features(ref_set, extractor, batch_size=batch_size, device=device,
                                            cache_root=cache_root, weights_sha256=choice.weights_sha256,
                                            progress=progress)
        check_finite(feats_r["2048"], f"reference ({ref_set.description})")
        ref_stats = None
        ref_info = {**ref_set.info(), **cache_r, "content_sha256": ref_set.content_sha256()}
    values = metrics_from_features(feats_s, feats_r, ref_stats=ref_stats, metrics=tuple(metrics),
                                   has_logits=choice.has_logits, seed=seed, kid_subsets=kid_subsets,
                                   kid_subset_size=kid_subset_size, prc_neighborhood=prc_neighborhood)
    return {**values, "num_images": {"samples": len(sample_set), "ref": ref_info["num_images"]},
            "samples": {**sample_set.info(), **cache_s}, "ref": ref_info, "warnings": warn,
            **_provenance(choice, seed, resolution, generator, tokenizer)}


def _check_stats_meta(path: Any, meta: dict[str, Any] | None, choice: InceptionChoice, resolution: int) -> None:
    if meta is None:
        logger.warning("%s: a stats file without vistok metadata; cannot check it came from the same Inception "
                       "weights and resolution", path)
        return
    theirs = meta.get("feature_extractor", {}).get("weights_sha256")
    if theirs and theirs != choice.weights_sha256:
        # The downloaded and packaged weights are the same network in two file formats (different sha256): allow
        # that pairing, refuse anything else.
        sources = {meta["feature_extractor"].get("source"), choice.source}
        if not sources <= {"download", "packaged"}:
            raise ConfigError(f"--ref {path}: statistics were computed with Inception weights {theirs[:12]}…, this run "
                              f"uses {choice.weights_sha256[:12]}…; recompute the reference statistics")
    if meta.get("resolution") not in (None, resolution):
        raise ConfigError(f"--ref {path}: statistics are at {meta['resolution']}×{meta['resolution']}, the samples at "
                          f"{resolution}×{resolution}; pass --resolution {meta['resolution']} or recompute them")


def write_stats(source: Any, out_path: str | Path, *, inception: str | InceptionChoice = "auto",
                resolution: int | None = None, batch_size: int = 64, device: torch.device | str = "cpu",
                cache_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Compute and save FID statistics (μ, Σ + how they were computed) of an image set; returns the metadata."""
    choice = inception if isinstance(inception, InceptionChoice) else resolve_inception(inception, cache_dir)
    images = open_image_set(source, resolution, progress=progress)
    extractor = choice.create(["2048"], device)
    feats, cache = extract_features(images, extractor, batch_size=batch_size, device=device,
                                    cache_root=Path(cache_dir or default_cache_dir()) / "fidelity",
                                    weights_sha256=choice.weights_sha256, progress=progress)
    check_finite(feats["2048"], images.description)
    mu, sigma = feature_statistics(feats["2048"])
    meta = {**images.info(), "content_sha256": images.content_sha256(), **cache,
            **_provenance(choice, 0, images.resolution, None, None)}
    save_stats(out_path, mu, sigma, meta)
    return meta
