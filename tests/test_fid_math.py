"""FID/KID arithmetic without a network: Fréchet distance vs closed forms, agreement of the trace formulas with
scipy's sqrtm and torch-fidelity's, self-distance, order invariance; image-set inputs (ADM .npz, unreadable files,
resize rule); NaN features and small-set warnings."""

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch_fidelity.metric_fid import fid_statistics_to_metric

from vistok.errors import DataError
from vistok.metrics.fidelity import (
    FeatureError,
    check_finite,
    feature_statistics,
    frechet_distance,
    frechet_distance_features_to_stats,
    frechet_distance_from_features,
    metrics_from_features,
    small_set_warning,
)
from vistok.metrics.image_sets import ArrayImages, FolderImages, open_image_set, read_adm_npz
from vistok.metrics.stats_cache import is_stats_file, load_stats, save_stats


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("d", [1, 8, 64])
def test_frechet_distance_closed_forms(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    sigma = _random_spd(d, rng)
    dmu = float((mu1 - mu2) @ (mu1 - mu2))
    # same covariance: only the means differ
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(dmu, rel=1e-3, abs=1e-9)
    # Σ₂ = c²Σ₁ (non-diagonal, commuting): Tr(Σ₁ + c²Σ₁ − 2cΣ₁) = (1 − c)² Tr Σ₁
    c = 1.7
    expected = dmu + (1 - c) ** 2 * np.trace(sigma)
    assert frechet_distance(mu1, sigma, mu2, c * c * sigma) == pytest.approx(expected, rel=1e-3)
    # diagonal covariances: Σ (√a − √b)²
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = dmu + float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("n1,n2", [(12, 20), (300, 200)])  # fewer and more images than dimensions (D = 32)
def test_trace_formulas_agree_with_sqrtm_and_torch_fidelity(n1, n2):
    rng = np.random.default_rng(0)
    f1 = torch.from_numpy(rng.standard_normal((n1, 32)))
    f2 = torch.from_numpy(rng.standard_normal((n2, 32)) * 1.3 + 0.2)
    (mu1, s1), (mu2, s2) = feature_statistics(f1), feature_statistics(f2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # the ADM / TTUR formula
    reference = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert ours == pytest.approx(reference, rel=1e-6)
    assert ours == pytest.approx(tf["frechet_inception_distance"], rel=1e-6)
    assert frechet_distance_from_features(f1, f2) == pytest.approx(ours, rel=1e-6)


def test_fid_self_is_zero_and_order_invariant():
    rng = np.random.default_rng(1)
    f = torch.from_numpy(rng.standard_normal((50, 16)))
    g = torch.from_numpy(rng.standard_normal((40, 16)) + 0.5)
    assert abs(frechet_distance_from_features(f, f)) < 1e-9
    assert abs(frechet_distance(*feature_statistics(f), *feature_statistics(f))) < 1e-9
    perm = torch.from_numpy(rng.permutation(50))
    assert frechet_distance_from_features(f[perm], g) == pytest.approx(frechet_distance_from_features(f, g), rel=1e-9)
    m1 = metrics_from_features({"2048": f.float()}, {"2048": g.float()}, metrics=("fid", "kid"))
    m2 = metrics_from_features({"2048": f[perm].float()}, {"2048": g.float()}, metrics=("fid", "kid"))
    assert m1["fid"] == pytest.approx(m2["fid"], rel=1e-5) and m1["fid"] > 0.1
    assert m1["unavailable"] == {}


def test_stats_reference_gives_fid_only():
    rng = np.random.default_rng(2)
    f, g = torch.from_numpy(rng.standard_normal((30, 8))), torch.from_numpy(rng.standard_normal((30, 8)) + 1)
    m = metrics_from_features({"2048": f}, None, ref_stats=feature_statistics(g), metrics=("fid", "kid", "prc", "isc"))
    assert m["fid"] == pytest.approx(frechet_distance_from_features(f, g), rel=1e-6)
    assert set(m["unavailable"]) == {"kid", "prc", "isc"}
    few = f[:5]  # fewer images than dimensions: the N×N route
    assert frechet_distance_features_to_stats(few, *feature_statistics(g)) == pytest.approx(
        frechet_distance(*feature_statistics(few), *feature_statistics(g)), rel=1e-6)


def test_nan_features_and_small_sets():
    f = torch.randn(5, 2048)
    check_finite(f, "ok")
    f[3, 7] = float("nan")
    f[4, 0] = float("inf")
    with pytest.raises(FeatureError, match=r"samples: 2 of 5 images gave NaN/inf.*\[3, 4\]"):
        check_finite(f, "samples")
    with pytest.warns(UserWarning, match="FID is unreliable"):
        assert "100 images < 2048" in small_set_warning(100, "samples")
    assert small_set_warning(2048, "samples") is None


def test_adm_npz_reader(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=images, arr_1=np.arange(5))  # the published files: images in arr_0 (+ labels in arr_1)
    assert np.array_equal(read_adm_npz(path), images)
    s = open_image_set(path)
    assert len(s) == 5 and s.resolution == 16 and torch.equal(s[2], torch.from_numpy(images[2]).permute(2, 0, 1))
    np.savez(tmp_path / "bad.npz", arr_0=images.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        read_adm_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "nokey.npz", images=images)
    with pytest.raises(DataError, match="no 'arr_0' .*images"):
        read_adm_npz(tmp_path / "nokey.npz")
    assert not is_stats_file(path)


def test_stats_file_roundtrip(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = rng.standard_normal(6), _random_spd(6, rng)
    save_stats(tmp_path / "s.npz", mu, sigma, {"num_images": 10, "resolution": 32})
    assert is_stats_file(tmp_path / "s.npz")
    mu2, sigma2, meta = load_stats(tmp_path / "s.npz")
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2) and meta["num_images"] == 10


def test_folder_skips_unreadable_and_resizes_by_rule(tmp_path, caplog):
    rng = np.random.default_rng(5)
    square = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(square).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(tmp_path / "c.png")  # 70×40
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    s = FolderImages(tmp_path, progress=False)
    assert s.resolution == 32  # the majority square size
    assert len(s) == 3 and s.num_skipped == 1 and "broken.jpg" in s.skipped[0][0]
    assert "skipping unreadable image" in caplog.text
    assert s.num_resized == 1 and s[2].shape == (3, 32, 32) and s[2].dtype == torch.uint8
    assert torch.equal(s[0], torch.from_numpy(square).permute(2, 0, 1))  # R×R images are not resampled
    info = s.info()
    assert info["num_skipped"] == 1 and info["num_resized"] == 1
    # ArrayImages: other sizes go through the same ADM rule
    a = ArrayImages(np.stack([square, square]), "arr", resolution=16)
    assert a[0].shape == (3, 16, 16) and a.num_resized == 2
