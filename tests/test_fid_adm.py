"""The ADM evaluator's rules in the harness, without a network: a reference .npz with ADM's layout (arr_0 + mu/sigma +
mu_s/sigma_s) is scored with its own statistics for FID/sFID and with its arr_0 images for KID and precision/recall;
the JSON says which; IS uses ADM's contiguous 5,000-sample splits; KID draws torch-fidelity's default subsets.

A tiny deterministic stand-in for the Inception (registered in torch-fidelity's registry like the real one) keeps this
fast; tests/test_fid_inception.py checks the real spatial layer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from vistok.errors import ConfigError
from vistok.metrics.fidelity import (
    feature_statistics,
    fid,
    frechet_distance_from_features,
    inception_score,
    metrics_from_features,
    write_stats,
)
from vistok.metrics.inception import SPATIAL_FEATURE, InceptionChoice

FAKE = "vistok-test-fake-inception"


class FakeInception(FeatureExtractorBase):
    """Deterministic features of uint8 images: 24-d "pool" features, 27-d "spatial" ones, 10 logits."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.proj = torch.nn.Parameter(torch.randn(24, 10, generator=torch.Generator().manual_seed(0)),
                                       requires_grad=False)

    def forward(self, x):
        x = x.float() / 255
        pooled = F.adaptive_avg_pool2d(x, 2).flatten(1)
        out = {"2048": torch.cat([pooled, pooled ** 2], 1),
               SPATIAL_FEATURE: F.adaptive_avg_pool2d(x, 3).permute(0, 2, 3, 1).flatten(1)}
        out["logits_unbiased"] = 4 * out["2048"] @ self.proj
        return tuple(out[f] for f in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "2048", SPATIAL_FEATURE, "logits_unbiased"


if FAKE not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(FAKE, FakeInception)
CHOICE = InceptionChoice("fake", "path", FAKE, "", "f" * 64, True, "test stand-in")


def _features(images: np.ndarray) -> dict[str, torch.Tensor]:
    fe = FakeInception(FAKE, ["2048", SPATIAL_FEATURE, "logits_unbiased"])
    return dict(zip(fe.features_list, fe(torch.from_numpy(images).permute(0, 3, 1, 2))))


def _images(seed: int, n: int, low: int, high: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def sets():
    """arr_0 images A, another set B (its statistics go into the file), samples S: three different distributions."""
    return _images(0, 40, 0, 256), _images(1, 60, 120, 256), _images(2, 30, 40, 220)


def _adm_file(path, arr_0, stats_from, spatial=True):
    f = _features(stats_from)
    mu, sigma = feature_statistics(f["2048"])
    keys = {"mu": mu, "sigma": sigma}
    if spatial:
        keys["mu_s"], keys["sigma_s"] = feature_statistics(f[SPATIAL_FEATURE])
    np.savez(path, **({"arr_0": arr_0} if arr_0 is not None else {}), **keys)
    return path


def _run(samples, ref, **kw):
    return fid(torch.from_numpy(samples), ref, inception=CHOICE, use_cache=False, progress=False, **kw)


def test_adm_file_fid_uses_its_mu_sigma_and_kid_prc_its_arr_0(sets, tmp_path):
    a, b, s = sets
    path = _adm_file(tmp_path / "VIRTUAL_like.npz", a, b)
    r = _run(s, str(path))
    fs, fa, fb = _features(s), _features(a), _features(b)
    assert r["fid"] == pytest.approx(frechet_distance_from_features(fs["2048"], fb["2048"]), rel=1e-5)
    assert abs(r["fid"] - frechet_distance_from_features(fs["2048"], fa["2048"])) > 0.05 * r["fid"]
    assert r["sfid"] == pytest.approx(frechet_distance_from_features(fs[SPATIAL_FEATURE], fb[SPATIAL_FEATURE]),
                                      rel=1e-5)
    direct = metrics_from_features(fs, fa, metrics=("kid", "prc"))
    assert r["kid"] == pytest.approx(direct["kid"], rel=1e-6)
    assert (r["precision"], r["recall"]) == pytest.approx((direct["precision"], direct["recall"]))
    assert r["inception_score"] == pytest.approx(inception_score(fs["logits_unbiased"])["inception_score"], rel=1e-6)
    used = r["ref_statistics"]
    assert used["fid"] == {"from": "file", "keys": ["mu", "sigma"], "path": str(path)}
    assert used["sfid"]["from"] == "file" and used["sfid"]["keys"] == ["mu_s", "sigma_s"]
    assert used["kid"]["from"] == used["prc"]["from"] == "images" and used["kid"]["num_images"] == len(a)
    assert "isc" not in used and r["unavailable"] == {}
    assert r["ref"]["statistics"]["keys"] == ["mu", "sigma", "mu_s", "sigma_s"] and r["ref"]["statistics"]["note"]

    # --ref-stats images: the old rule, every statistic from arr_0
    r2 = _run(s, str(path), ref_statistics="images")
    assert r2["fid"] == pytest.approx(frechet_distance_from_features(fs["2048"], fa["2048"]), rel=1e-5)
    assert r2["ref_statistics"]["fid"]["from"] == "images" and r2["kid"] == pytest.approx(r["kid"])

    # FID and sFID alone never touch arr_0
    r3 = _run(s, str(path), metrics=("fid", "sfid"))
    assert r3["fid"] == pytest.approx(r["fid"]) and r3["num_images"]["ref"] is None
    assert {u["from"] for u in r3["ref_statistics"].values()} == {"file"}


def test_adm_file_sets_the_evaluation_resolution(sets, tmp_path):
    a, b, _ = sets
    path = _adm_file(tmp_path / "ref.npz", a, b)  # arr_0 is 8×8: the statistics describe 8×8 images
    big = _images(3, 12, 0, 256, size=16)
    r = _run(big, str(path), metrics=("fid",))
    assert r["resolution"] == 8 and r["samples"]["num_resized"] == 12
    with pytest.raises(ConfigError, match=r"describe 8×8 images, --resolution is 16; pass --resolution 8"):
        _run(big, str(path), metrics=("fid",), resolution=16)
    r = _run(big, str(path), metrics=("fid",), resolution=16, ref_statistics="images")  # arr_0 brought to 16
    assert r["resolution"] == 16 and r["ref_statistics"]["fid"]["from"] == "images"


def test_stats_only_and_partial_adm_files(sets, tmp_path):
    a, b, s = sets
    fs, fa, fb = _features(s), _features(a), _features(b)
    only = _adm_file(tmp_path / "stats_only.npz", None, b)
    r = _run(s, str(only))
    assert r["fid"] == pytest.approx(frechet_distance_from_features(fs["2048"], fb["2048"]), rel=1e-5)
    assert r["sfid"] == pytest.approx(frechet_distance_from_features(fs[SPATIAL_FEATURE], fb[SPATIAL_FEATURE]),
                                      rel=1e-5)
    assert {"kid", "prc"} <= set(r["unavailable"]) and r["num_images"]["ref"] is None
    with pytest.raises(ConfigError, match="needs reference images"):
        _run(s, str(only), ref_statistics="images")
    # mu/sigma without mu_s/sigma_s: FID from the file, sFID from arr_0's spatial features (and a warning)
    partial = _adm_file(tmp_path / "partial.npz", a, b, spatial=False)
    r = _run(s, str(partial), metrics=("fid", "sfid"))
    assert r["ref_statistics"]["fid"]["from"] == "file" and r["ref_statistics"]["sfid"]["from"] == "images"
    assert r["sfid"] == pytest.approx(frechet_distance_from_features(fs[SPATIAL_FEATURE], fa[SPATIAL_FEATURE]),
                                      rel=1e-5)
    assert any("no mu_s/sigma_s" in w for w in r["warnings"])


def test_write_stats_uses_adm_keys(sets, tmp_path):
    a, _, s = sets
    meta = write_stats(torch.from_numpy(a), tmp_path / "a_stats.npz", inception=CHOICE, cache_dir=tmp_path,
                       progress=False)
    with np.load(tmp_path / "a_stats.npz") as data:
        assert {"mu", "sigma", "mu_s", "sigma_s", "vistok_meta"} <= set(data.files)
        assert data["mu_s"].shape == (27,) and data["sigma_s"].shape == (27, 27)
    assert meta["num_images"] == len(a)
    r = _run(s, str(tmp_path / "a_stats.npz"), metrics=("fid", "sfid"))
    direct = _run(s, torch.from_numpy(a), metrics=("fid", "sfid"))
    assert r["fid"] == pytest.approx(direct["fid"], rel=1e-5) and r["sfid"] == pytest.approx(direct["sfid"], rel=1e-5)


def _adm_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """openai/guided-diffusion evaluations/evaluator.py, compute_inception_score, restated in numpy."""
    z = logits - logits.max(1, keepdims=True)
    preds = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_inception_score_uses_adm_contiguous_splits():
    gen = torch.Generator().manual_seed(0)
    # 11,000 samples whose first 5,000 are confidently classified and the rest are not: split placement matters
    logits = torch.cat([6 * torch.randn(5000, 10, generator=gen), 0.5 * torch.randn(6000, 10, generator=gen)])
    expected = _adm_inception_score(logits.double().numpy())
    got = metrics_from_features({"2048": torch.zeros(11000, 2), "logits_unbiased": logits}, None, metrics=("isc",),
                                has_logits=True)
    assert got["inception_score"] == pytest.approx(expected, rel=1e-9)
    assert got["inception_score_splits"] == 3 and got["inception_score_split_size"] == 5000
    shuffled_ten = isc_features_to_metric(logits, splits=10, shuffle=True)["inception_score_mean"]  # torch-fidelity
    assert abs(shuffled_ten - expected) > 0.05 * expected


def test_kid_defaults_match_torch_fidelity():
    gen = torch.Generator().manual_seed(1)
    f, g = torch.randn(60, 16, generator=gen), torch.randn(50, 16, generator=gen) + 0.3
    ours = metrics_from_features({"2048": f}, {"2048": g}, metrics=("kid",), kid_subsets=7, kid_subset_size=20)
    theirs = kid_features_to_metric(f, g, kid_subsets=7, kid_subset_size=20, verbose=False)  # its default seed
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-12)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-12)
    prc = prc_features_to_metric(f, g, prc_neighborhood=3, verbose=False)
    mine = metrics_from_features({"2048": f}, {"2048": g}, metrics=("prc",))
    assert (mine["precision"], mine["recall"]) == (prc["precision"], prc["recall"])
