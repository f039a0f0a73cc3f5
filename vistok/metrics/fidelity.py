"""FID, sFID, KID, precision/recall and Inception Score between two image sets, on torch-fidelity's feature
extractors, feature cache and metric functions, following the ADM evaluator (Dhariwal & Nichol 2021, "Diffusion Models
Beat GANs on Image Synthesis", arXiv 2105.05233; openai/guided-diffusion ``evaluations/evaluator.py``), which LlamaGen,
VAR, TiTok and Open-MAGVIT2 report with. Every result says how it was computed.

- FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to the 2048-d pool features,
  ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}), in float64. The trace term is computed exactly from symmetric
  eigendecompositions (or, with fewer images than dimensions, as a nuclear norm) instead of ``scipy.linalg.sqrtm``
  (ADM, TTUR) or eigenvalues of the non-symmetric Σ₁Σ₂ (torch-fidelity): same value, no complex parts, much faster;
  tests check all of them agree. A reference ``.npz`` that holds ``mu``/``sigma`` (ADM's reference batches: statistics
  of the whole training set) is scored against those statistics, as ADM's ``read_statistics`` does; its ``arr_0``
  images serve KID and precision/recall.
- sFID (Nash et al. 2021): the same distance on ADM's spatial feature, ``mixed_6/conv`` channels 0..6 flattened to
  2023-d (``vistok.metrics.inception.SPATIAL_FEATURE``), against the file's ``mu_s``/``sigma_s`` when it has them.
- KID (Bińkowski et al. 2018): torch-fidelity's unbiased MMD² with the cubic polynomial kernel over 100 random subsets
  drawn with torch-fidelity's default seed (2020), of size min(1000, N₁, N₂) (torch-fidelity refuses N < 1000);
  unbiased, so it is the better number for small sets. ADM has no KID.
- Precision/recall (Kynkäänniemi et al. 2019): torch-fidelity's k-NN manifold estimate (k = 3) on the 2048-d Inception
  features, the same definition as ADM's ``ManifoldEstimator`` (radius: distance to the 3rd nearest other reference
  point; a point counts if it is within any radius, ``<=``); ADM computes distances in float16 where they are finite,
  torch-fidelity in float32. (torch-fidelity's own default for PRC is VGG16, which would need another download.)
- Inception Score (Salimans et al. 2016), as ADM: softmax of the classifier's logits without bias, exp(E KL(p(y|x) ‖
  p(y))) on contiguous splits of 5,000 samples in input order, averaged (torch-fidelity shuffles into 10 equal
  splits). Only when the extractor has a classifier (the packaged TF-2015 copy has none: the result then says IS is
  unavailable and why).
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
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.utils import extract_featuresdict_from_input_id_cached

import vistok
from vistok.errors import ConfigError, VistokError
from vistok.metrics.image_sets import RESIZE_RULE, ImageSet, open_image_set
from vistok.metrics.inception import SPATIAL_FEATURE, InceptionChoice, default_cache_dir, resolve_inception
from vistok.metrics.stats_cache import (
    ReferenceStatistics,
    cache_name,
    cached_feature_file,
    is_stats_file,
    load_reference_statistics,
    save_stats,
)

logger = logging.getLogger("vistok.metrics")

FEATURE_DIM = 2048
POOL_FEATURE = "2048"
ALL_METRICS = ("fid", "sfid", "kid", "prc", "isc")
DEFAULT_SEED = 2020  # torch-fidelity's rng_seed: the same KID subsets as torch_fidelity.calculate_metrics
ISC_SPLIT_SIZE = 5000  # ADM's compute_inception_score(split_size=5000)
REF_STATISTICS = ("file", "images")


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


def inception_score(logits: torch.Tensor, split_size: int = ISC_SPLIT_SIZE) -> dict[str, Any]:
    """Inception Score as ADM's ``compute_inception_score``: p(y|x) = softmax of the classifier's logits (without
    bias, torch-fidelity's ``logits_unbiased``, as ADM multiplies pool features by ``softmax/logits`` weights only);
    per contiguous split of ``split_size`` samples in input order (the last split may be shorter),
    exp(mean_x KL(p(y|x) ‖ mean_x p(y|x))); the mean over splits (float64 here, float32 in ADM)."""
    log_p = logits.double().log_softmax(dim=1)
    scores = []
    for part in log_p.split(split_size):
        log_marginal = part.exp().mean(0, keepdim=True).log()
        scores.append(float((part.exp() * (part - log_marginal)).sum(1).mean().exp()))
    return {"inception_score": float(np.mean(scores)), "inception_score_std": float(np.std(scores)),
            "inception_score_splits": len(scores), "inception_score_split_size": split_size}


def metrics_from_features(samples: dict[str, torch.Tensor], ref: dict[str, torch.Tensor] | None, *,
                          ref_stats: tuple[np.ndarray, np.ndarray] | None = None,
                          ref_spatial_stats: tuple[np.ndarray, np.ndarray] | None = None,
                          metrics: tuple[str, ...] = ALL_METRICS, has_logits: bool = False, seed: int = DEFAULT_SEED,
                          kid_subsets: int = 100, kid_subset_size: int = 1000, prc_neighborhood: int = 3,
                          isc_split_size: int = ISC_SPLIT_SIZE) -> dict[str, Any]:
    """The metric values from extracted features (``samples``/``ref``: {"2048": (N, 2048), ["spatial_2023"],
    ["logits_unbiased"]}). ``ref_stats`` (μ, Σ) is used for FID instead of ``ref``'s features, ``ref_spatial_stats``
    (μ_s, Σ_s) for sFID: a stats file, or the precomputed statistics of an ADM reference batch."""
    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    f1 = samples[POOL_FEATURE]
    f2 = ref[POOL_FEATURE] if ref is not None else None
    if "fid" in metrics:
        if ref_stats is not None:
            out["fid"] = frechet_distance_features_to_stats(f1, *ref_stats)
        elif f2 is not None:
            out["fid"] = frechet_distance_from_features(f1, f2)
        else:
            unavailable["fid"] = "no reference statistics (mu, sigma) and no reference images"
    if "sfid" in metrics:
        s1 = samples.get(SPATIAL_FEATURE)
        s2 = ref.get(SPATIAL_FEATURE) if ref is not None else None
        if s1 is None:
            unavailable["sfid"] = "the spatial features (mixed_6/conv) of the samples were not extracted"
        elif ref_spatial_stats is not None:
            out["sfid"] = frechet_distance_features_to_stats(s1, *ref_spatial_stats)
        elif s2 is not None:
            out["sfid"] = frechet_distance_from_features(s1, s2)
        else:
            unavailable["sfid"] = ("the reference has neither spatial statistics (mu_s, sigma_s) nor images; "
                                   "recompute its stats file with this version (eval/fid.py --write-stats)")
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
            out.update(inception_score(samples["logits_unbiased"], isc_split_size))
    out["unavailable"] = unavailable
    return out


def _reference_statistics(ref: Any, ref_statistics: str) -> ReferenceStatistics | None:
    """The precomputed statistics of an ``.npz`` reference (``--ref-stats file``), else ``None``."""
    if ref_statistics not in REF_STATISTICS:
        raise ConfigError(f"--ref-stats {ref_statistics}: choose 'file' (the reference's own mu/sigma when it has "
                          "them, as ADM) or 'images' (compute every statistic from its images)")
    if not isinstance(ref, str | Path) or Path(ref).suffix != ".npz" or not Path(ref).is_file():
        return None
    if is_stats_file(ref) and ref_statistics == "images":
        raise ConfigError(f"--ref {ref}: a statistics file without images (no arr_0); --ref-stats images needs "
                          "reference images")
    return load_reference_statistics(ref) if ref_statistics == "file" else None


def _evaluation_resolution(stats: ReferenceStatistics, requested: int | None) -> int | None:
    """Precomputed statistics describe images at one resolution; the samples are evaluated at that one."""
    theirs = stats.resolution
    if theirs is None:
        logger.warning("%s: the resolution its statistics describe is unknown (no arr_0, no vistok metadata); "
                       "evaluating the samples at %s", stats.path, requested or "their own size")
        return requested
    if requested not in (None, theirs):
        raise ConfigError(f"--ref {stats.path}: its mu/sigma describe {theirs}×{theirs} images, --resolution is "
                          f"{requested}; pass --resolution {theirs} (or none), or --ref-stats images to compute every "
                          f"statistic from its images at {requested}")
    return theirs


def fid(samples: Any, ref: Any, *, inception: str | InceptionChoice = "auto", metrics: tuple[str, ...] = ALL_METRICS,
        resolution: int | None = None, ref_statistics: str = "file", batch_size: int = 64,
        device: torch.device | str = "cpu", seed: int = DEFAULT_SEED, kid_subsets: int = 100,
        kid_subset_size: int = 1000, prc_neighborhood: int = 3, isc_split_size: int = ISC_SPLIT_SIZE,
        cache_dir: str | Path | None = None, use_cache: bool = True, cache_samples: bool = False,
        progress: bool = True, generator: str | None = None, tokenizer: str | None = None) -> dict[str, Any]:
    """FID (+ sFID, KID, precision/recall, IS) of ``samples`` against ``ref``.

    ``samples``: a folder, an ADM ``.npz`` (``arr_0`` uint8 NHWC), tensors (uint8, or float in [-1, 1]) or an
    :class:`ImageSet`. ``ref``: the same kinds, an ADM reference batch (``arr_0`` + ``mu``/``sigma``/``mu_s``/
    ``sigma_s``), or a stats file (``mu``, ``sigma`` [, ``mu_s``, ``sigma_s``]) written by :func:`write_stats`.
    With ``ref_statistics="file"`` (ADM's rule) FID and sFID use the file's statistics when it has them, and KID and
    precision/recall its ``arr_0`` images; ``"images"`` computes every statistic from ``arr_0``. The result's
    ``ref_statistics`` says which was used for each metric. Both sides are evaluated at ``resolution`` (default: the
    reference statistics' resolution, else the samples' size) by the rule in ``image_sets.RESIZE_RULE``. Reference
    features are cached by content hash under ``cache_dir`` (default ``~/.cache/vistok``); the samples' too with
    ``cache_samples``.
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ConfigError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")
    stats = _reference_statistics(ref, ref_statistics)
    stats_only = isinstance(ref, str | Path) and is_stats_file(ref)
    choice = inception if isinstance(inception, InceptionChoice) else resolve_inception(inception, cache_dir)
    if stats is not None:
        resolution = _evaluation_resolution(stats, resolution)
        _check_stats_meta(stats.path, stats.meta, choice)
    cache_root = Path(cache_dir or default_cache_dir()) / "fidelity" if use_cache else None
    sample_set = open_image_set(samples, resolution, progress=progress)
    resolution = sample_set.resolution
    layers = ([POOL_FEATURE] + ([SPATIAL_FEATURE] if "sfid" in metrics else [])
              + (["logits_unbiased"] if "isc" in metrics and choice.has_logits else []))
    extractor = choice.create(layers, device)
    warn = [w for w in [small_set_warning(len(sample_set), "samples")] if w]
    feats_s, cache_s = extract_features(sample_set, extractor, batch_size=batch_size, device=device,
                                        cache_root=cache_root if cache_samples else None,
                                        weights_sha256=choice.weights_sha256, progress=progress)
    check_finite(feats_s[POOL_FEATURE], f"samples ({sample_set.description})")
    has_spatial_stats = stats is not None and stats.mu_s is not None
    from_images = [m for m in metrics if m in ("kid", "prc") or (m == "fid" and stats is None)
                   or (m == "sfid" and not has_spatial_stats)]
    used: dict[str, dict[str, Any]] = {}
    if "fid" in metrics and stats is not None:
        used["fid"] = {"from": "file", "keys": ["mu", "sigma"], "path": stats.path}
    if has_spatial_stats and "sfid" in metrics:
        used["sfid"] = {"from": "file", "keys": ["mu_s", "sigma_s"], "path": stats.path}
    feats_r = None
    ref_info: dict[str, Any] = {"source": str(ref), "kind": "statistics",
                                "num_images": (stats.meta or {}).get("num_images") if stats is not None else None}
    if from_images and not stats_only:
        ref_set = open_image_set(ref, resolution, progress=progress)
        if "fid" in from_images:
            warn += [w for w in [small_set_warning(len(ref_set), "reference")] if w]
        feats_r, cache_r = extract_features(ref_set, extractor, batch_size=batch_size, device=device,
                                            cache_root=cache_root, weights_sha256=choice.weights_sha256,
                                            progress=progress)
        check_finite(feats_r[POOL_FEATURE], f"reference ({ref_set.description})")
        ref_info = {**ref_set.info(), **cache_r, "content_sha256": ref_set.content_sha256()}
        used.update({m: {"from": "images", "source": ref_set.description, "num_images": len(ref_set)}
                     for m in from_images})
        if "sfid" in from_images and stats is not None:
            warn.append(f"{stats.path} has mu/sigma but no mu_s/sigma_s: sFID uses the spatial features of its "
                        f"{len(ref_set)} images, FID the file's statistics")
    if stats is not None:
        ref_info["statistics"] = {"path": stats.path, "keys": ["mu", "sigma"] + (["mu_s", "sigma_s"]
                                                                                 if has_spatial_stats else []),
                                  "resolution": stats.resolution, "meta": stats.meta,
                                  "note": "" if stats.meta else "precomputed outside vistok (ADM's reference "
                                  "batches: the TF graph over the whole training set); vistok cannot check "
                                  "the network or the number of images"}
        if stats.meta and stats.meta.get("num_images") is not None and "fid" in used:
            warn += [w for w in [small_set_warning(int(stats.meta["num_images"]), "reference statistics")] if w]
    values = metrics_from_features(
        feats_s, feats_r, metrics=tuple(metrics), has_logits=choice.has_logits, seed=seed, kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size, prc_neighborhood=prc_neighborhood, isc_split_size=isc_split_size,
        ref_stats=(stats.mu, stats.sigma) if stats is not None else None,
        ref_spatial_stats=(stats.mu_s, stats.sigma_s) if has_spatial_stats else None)
    used = {m: u for m, u in used.items() if m not in values["unavailable"]}
    return {**values, "ref_statistics": used,
            "num_images": {"samples": len(sample_set), "ref": ref_info["num_images"]},
            "samples": {**sample_set.info(), **cache_s}, "ref": ref_info, "warnings": warn,
            **_provenance(choice, seed, resolution, generator, tokenizer)}


def _check_stats_meta(path: Any, meta: dict[str, Any] | None, choice: InceptionChoice) -> None:
    if meta is None:
        logger.info("%s: statistics without vistok metadata (e.g. ADM's reference batch); cannot check they came "
                    "from the same Inception weights", path)
        return
    theirs = meta.get("feature_extractor", {}).get("weights_sha256")
    if theirs and theirs != choice.weights_sha256:
        # The downloaded and packaged weights are the same network in two file formats (different sha256): allow
        # that pairing, refuse anything else.
        sources = {meta["feature_extractor"].get("source"), choice.source}
        if not sources <= {"download", "packaged"}:
            raise ConfigError(f"--ref {path}: statistics were computed with Inception weights {theirs[:12]}…, this run "
                              f"uses {choice.weights_sha256[:12]}…; recompute the reference statistics")


def write_stats(source: Any, out_path: str | Path, *, inception: str | InceptionChoice = "auto",
                resolution: int | None = None, batch_size: int = 64, device: torch.device | str = "cpu",
                cache_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Compute and save an image set's statistics with ADM's keys (``mu``/``sigma`` of the pool features,
    ``mu_s``/``sigma_s`` of the sFID spatial features) + how they were computed; returns the metadata."""
    choice = inception if isinstance(inception, InceptionChoice) else resolve_inception(inception, cache_dir)
    images = open_image_set(source, resolution, progress=progress)
    extractor = choice.create([POOL_FEATURE, SPATIAL_FEATURE], device)
    feats, cache = extract_features(images, extractor, batch_size=batch_size, device=device,
                                    cache_root=Path(cache_dir or default_cache_dir()) / "fidelity",
                                    weights_sha256=choice.weights_sha256, progress=progress)
    check_finite(feats[POOL_FEATURE], images.description)
    mu, sigma = feature_statistics(feats[POOL_FEATURE])
    mu_s, sigma_s = feature_statistics(feats[SPATIAL_FEATURE])
    meta = {**images.info(), "content_sha256": images.content_sha256(), **cache,
            **_provenance(choice, 0, images.resolution, None, None)}
    save_stats(out_path, mu, sigma, meta, mu_s=mu_s, sigma_s=sigma_s)
    return meta
