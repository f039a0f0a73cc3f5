"""Perceptual and adversarial losses: LPIPS loads real weights or fails with one clear line (never a silent random
trunk), a random trunk only when asked; PatchGAN has taming's layout; the GAN losses, VQGAN's adaptive weight and
LeCAM compute what their formulas say."""

import pytest
import torch
import torch.nn.functional as F

import vistok
from vistok.errors import ConfigError
from vistok.losses.gan import AdversarialLoss, adaptive_weight, hinge_d_loss, hinge_g_loss, non_saturating_d_loss
from vistok.losses.perceptual import PerceptualLoss, torchvision_weights_file


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """torchvision's cache pointed at an empty folder: what an offline machine without downloads looks like."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_lpips_without_weights_is_one_line_naming_the_file_and_where_to_put_it(empty_torch_home, monkeypatch):
    tried = []

    def offline(url, dst, progress=True):  # what the download does on a machine without network
        tried.append(url)
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as e:
        vistok.build("perceptual", {"name": "lpips"})
    msg = str(e.value)
    assert "\n" not in msg and tried == ["https://download.pytorch.org/models/vgg16-397923af.pth"]
    assert str(empty_torch_home / "checkpoints" / "vgg16-397923af.pth") in msg  # the missing file, where it goes
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg and "perceptual.weights=" in msg
    assert "download" in msg and "backbone=random" in msg
    with pytest.raises(ConfigError, match="downloads are off"):
        vistok.build("perceptual", {"name": "lpips", "download": False})
    assert len(tried) == 1
    with pytest.raises(ConfigError, match="does not exist"):
        vistok.build("perceptual", {"name": "lpips", "weights": str(empty_torch_home / "nope.pth")})


def test_lpips_weights_path_to_a_wrong_file_is_a_clear_error(tmp_path, empty_torch_home):
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(ConfigError, match="not a loadable PyTorch weights file"):
        vistok.build("perceptual", {"name": "lpips", "weights": str(text)})
    other = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, other)  # some other network's weights
    with pytest.raises(ConfigError, match="not the weights of LPIPS"):
        vistok.build("perceptual", {"name": "lpips", "weights": str(other)})


def test_lpips_loads_torchvision_weights_from_a_path_or_the_cache(tmp_path, empty_torch_home):
    """The real loading path, exercised with the small SqueezeNet trunk (VGG16's file is 528 MB): the trunk holds
    exactly the file's tensors, found at perceptual.weights=PATH and in torchvision's cache."""
    from torchvision import models

    torch.manual_seed(1)
    state = models.squeezenet1_1().state_dict()
    path = tmp_path / "squeeze.pth"
    torch.save(state, path)
    loss = vistok.build("perceptual", {"name": "lpips", "net": "squeeze", "weights": str(path)})
    trunk = loss.lpips.net.state_dict()
    assert torch.equal(trunk["slice1.0.weight"], state["features.0.weight"])
    assert torch.equal(trunk["slice7.12.expand3x3.weight"], state["features.12.expand3x3.weight"])
    cached, _ = torchvision_weights_file(models.SqueezeNet1_1_Weights.IMAGENET1K_V1)
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    from_cache = vistok.build("perceptual", {"name": "lpips", "net": "squeeze"})
    assert torch.equal(from_cache.lpips.net.slice1[0].weight, state["features.0.weight"])


def test_random_trunk_only_when_asked_and_deterministic():
    vgg = vistok.build("perceptual", {"name": "lpips", "backbone": "random"})  # the default trunk, VGG16
    x, y = _images(seed=0), _images(seed=1)
    assert vgg(x, x).abs().item() < 1e-6 and vgg(x, y).item() > 0
    assert not any(p.requires_grad for p in vgg.parameters())
    a = vistok.build("perceptual", {"name": "lpips", "net": "squeeze", "backbone": "random", "seed": 3})
    b = vistok.build("perceptual", {"name": "lpips", "net": "squeeze", "backbone": "random", "seed": 3})
    c = vistok.build("perceptual", {"name": "lpips", "net": "squeeze", "backbone": "random", "seed": 4})
    assert torch.equal(a(x, y), b(x, y)) and not torch.equal(a(x, y), c(x, y))
    with pytest.raises(ConfigError, match="backbone"):
        vistok.build("perceptual", {"name": "lpips", "backbone": "imagenet"})
    with pytest.raises(ConfigError, match="lpips"):
        vistok.build("perceptual", {"name": "lpipz"})


def test_perceptual_gradient_reaches_the_reconstruction_and_terms_are_weighted():
    loss = PerceptualLoss([{"name": "lpips", "net": "squeeze", "backbone": "random", "weight": 2.0},
                           {"name": "lpips", "net": "squeeze", "backbone": "random", "seed": 1, "weight": 0.5}])
    x = _images()
    recon = _images(seed=5).requires_grad_(True)
    terms = loss(recon, x)
    assert set(terms) == {"lpips", "lpips_1"}
    assert torch.allclose(terms["lpips"], 2.0 * loss.nets[0](recon, x))
    assert torch.allclose(terms["lpips_1"], 0.5 * loss.nets[1](recon, x))
    sum(terms.values()).backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0


def test_convnext_logits_loss_random_trunk():
    loss = vistok.build("perceptual", {"name": "convnext", "backbone": "random", "input_size": 64})
    x, y = _images(), _images(seed=1)
    assert loss(x, x).item() == 0 and loss(x, y).item() > 0


def test_patchgan_has_taming_layout():
    d = vistok.build("discriminator", {"name": "patchgan"})
    # conv 3→64 (+bias); 64→128, 128→256 stride 2 and 256→512 stride 1 without bias, each + BatchNorm; 512→1 (+bias)
    expected = (3 * 64 * 16 + 64) + (64 * 128 * 16 + 2 * 128) + (128 * 256 * 16 + 2 * 256) + \
        (256 * 512 * 16 + 2 * 512) + (512 * 16 + 1)
    assert sum(p.numel() for p in d.parameters()) == expected
    assert d(torch.zeros(2, 3, 256, 256)).shape == (2, 1, 30, 30)  # 70×70 receptive patches at 256 px
    assert d(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)
    plain = vistok.build("discriminator", {"name": "patchgan", "norm": "none", "num_layers": 2, "channels": 8})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    with pytest.raises(ConfigError, match="norm"):
        vistok.build("discriminator", {"name": "patchgan", "norm": "group"})


def test_gan_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3))
    assert non_saturating_d_loss(real, fake).item() == pytest.approx(
        0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean()).item())
    assert hinge_g_loss(fake).item() == pytest.approx(-fake.mean().item())


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer():
    torch.manual_seed(0)
    last = torch.nn.Parameter(torch.randn(4, 3))
    x = torch.randn(5, 4)
    out = x @ last
    nll, g = out.pow(2).mean(), -out.sum() * 0.1
    lam = adaptive_weight(nll, g, last)
    gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, last, retain_graph=True)[0].norm()
    assert lam.item() == pytest.approx((gn / (gg + 1e-4)).item(), rel=1e-6)
    assert adaptive_weight(nll, g * 0, last).item() == pytest.approx(1e4)  # clamped


def test_adversarial_loss_start_lecam_and_no_discriminator_gradients_from_the_generator_side():
    adv = AdversarialLoss({"name": "patchgan", "channels": 8, "num_layers": 2}, weight=0.5, start=3,
                          lecam_weight=0.1, lecam_decay=0.9)
    images, recon = _images(size=32), _images(size=32, seed=2).requires_grad_(True)
    g, logs = adv.generator_loss(recon, recon.pow(2).mean(), step=2, last_layer=None)
    assert g.item() == 0 and logs == {}  # before disc_start: off
    g, logs = adv.generator_loss(recon, recon.pow(2).mean(), step=3, last_layer=None)
    g.backward()
    assert recon.grad.abs().sum() > 0 and all(p.grad is None for p in adv.parameters())
    assert all(p.requires_grad for p in adv.parameters())  # switched back on for the discriminator step
    loss, logs = adv.discriminator_loss(adv, images, recon)
    real, fake = logs["gan/logits_real"], logs["gan/logits_fake"]
    assert "gan/lecam" in logs
    assert adv.lecam_ema_real.item() == pytest.approx(0.1 * real, rel=1e-4)  # EMA from 0 with decay 0.9
    assert adv.lecam_ema_fake.item() == pytest.approx(0.1 * fake, rel=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in adv.parameters())
    with pytest.raises(ConfigError, match="d_loss"):
        AdversarialLoss(d_loss="wasserstein")
