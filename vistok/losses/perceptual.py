"""Perceptual losses, built by registry name: ``build("perceptual", {"name": "lpips", ...})``.

- ``lpips``: LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
  arXiv 1801.03924) from the ``lpips`` package, VGG16 trunk by default, as VQGAN (taming-transformers) and LlamaGen
  train with it. The package ships its small linear calibration layers; the trunk is torchvision's ImageNet
  classifier, whose weights torchvision downloads on first use.
- ``convnext``: the ConvNeXt-S logits loss TiTok's training adds (bytedance/1d-tokenizer ``perceptual_loss.py``):
  MSE between torchvision ConvNeXt-Small ImageNet logits of the two images, resized to 224.

Trunk weights are read from ``weights=PATH`` or from torchvision's cache (``$TORCH_HOME/hub/checkpoints/<file>``),
downloaded there first when missing and the network allows (``download=false`` forbids it). Offline and absent,
construction fails with one line naming the missing file and where to put it; it never falls back to a random
network. ``backbone: random`` asks for a seeded random trunk
explicitly (tests, plumbing checks). Inputs are images in [-1, 1]; the networks are frozen and always in eval mode.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import ConfigError
from vistok.registry import register

BACKBONES = ("pretrained", "random")


def torchvision_weights_file(weights_enum: Any) -> tuple[Path, str]:
    """(where torchvision caches these weights, the URL it downloads them from)."""
    url = weights_enum.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def find_weights_file(weights_enum: Any, path: str | Path | None, what: str, download: bool = True) -> Path:
    """``path``, or torchvision's cache file for ``weights_enum`` (downloaded there first when missing, if
    ``download`` and the network allow, as torchvision itself does); a one-line ConfigError when it is not there."""
    default, url = torchvision_weights_file(weights_enum)
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"perceptual.weights={file} does not exist; {what} needs {url.rsplit('/', 1)[-1]} "
                              f"from {url}")
        return file
    if not default.is_file() and download:
        import socket

        default.parent.mkdir(parents=True, exist_ok=True)
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            torch.hub.download_url_to_file(url, str(default), progress=True)
        except Exception as e:  # offline, proxy, HTTP error: report below with what to do
            reason = f"the download from {url} failed ({type(e).__name__})"
        finally:
            socket.setdefaulttimeout(old)
    else:
        reason = "downloads are off (perceptual.download=false)"
    if not default.is_file():
        raise ConfigError(f"{what} needs torchvision's pretrained weights: {default} is missing and {reason}; "
                          f"put {url.rsplit('/', 1)[-1]} from {url} there (or anywhere, then pass "
                          f"perceptual.weights=PATH). A random trunk must be asked for explicitly with "
                          f"perceptual.backbone=random")
    return default


def load_checked_state(file: Path, weights_enum: Any, expected: dict[str, torch.Tensor],
                       what: str) -> dict[str, torch.Tensor]:
    """Load a torchvision checkpoint without unpickling code and check it has ``expected``'s keys and shapes; every
    failure is a one-line ConfigError naming the file and the file it should be."""
    _, url = torchvision_weights_file(weights_enum)
    name = url.rsplit("/", 1)[-1]
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusal, truncated file, not a checkpoint at all
        raise ConfigError(f"perceptual.weights={file}: not a loadable PyTorch weights file "
                          f"({type(e).__name__}); expected {name} from {url}") from e
    if not isinstance(state, dict):
        raise ConfigError(f"perceptual.weights={file}: holds a {type(state).__name__}, not a state dict; expected "
                          f"{name} from {url}")
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        detail = f"missing {missing[:2]}" if missing else f"shape of {wrong[0]}: {tuple(state[wrong[0]].shape)}"
        raise ConfigError(f"perceptual.weights={file}: not the weights of {what} ({detail}); expected {name} "
                          f"from {url}")
    return state


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ConfigError(f"perceptual.backbone must be one of {BACKBONES}, got {backbone!r}")


@register("perceptual", "lpips")
class LPIPSLoss(nn.Module):
    """Mean LPIPS distance of a batch (the ``lpips`` package; ``net`` vgg as LlamaGen/taming, or alex/squeeze).

    ``weights``: the torchvision trunk checkpoint (default: torchvision's cache). ``lin_weights``: the LPIPS
    linear layers (default: the ones shipped in the ``lpips`` package, version 0.1).
    """

    NETS = {"vgg": "VGG16_Weights", "alex": "AlexNet_Weights", "squeeze": "SqueezeNet1_1_Weights"}

    def __init__(self, net: str = "vgg", weights: str | None = None, backbone: str = "pretrained", seed: int = 0,
                 lin_weights: str | None = None, download: bool = True) -> None:
        super().__init__()
        import lpips
        from torchvision import models

        _check_backbone(backbone)
        if net not in self.NETS:
            raise ConfigError(f"perceptual lpips: net must be one of {sorted(self.NETS)}, got {net!r}")
        if lin_weights is not None and not Path(lin_weights).is_file():
            raise ConfigError(f"perceptual.lin_weights={lin_weights} does not exist")
        weights_enum = getattr(models, self.NETS[net]).IMAGENET1K_V1
        file = find_weights_file(weights_enum, weights, f"LPIPS ({net})", download) if backbone == "pretrained" \
            else None
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", UserWarning)  # torchvision's notice about the `pretrained` argument
            torch.manual_seed(seed)
            # pnet_rand: build the trunk without torchvision's download; its weights are loaded below
            self.lpips = lpips.LPIPS(net=net, pnet_rand=True, verbose=False, model_path=lin_weights)
        if file is not None:
            trunk = self.lpips.net  # keys sliceK.<i>.<param> hold torchvision's features.<i>.<param>
            own = {f"features.{k.split('.', 1)[1]}": v for k, v in trunk.state_dict().items()}
            state = load_checked_state(file, weights_enum, own, f"LPIPS ({net})")
            trunk.load_state_dict({k: state[f"features.{k.split('.', 1)[1]}"] for k in trunk.state_dict()})
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPSLoss:  # frozen: dropout in the linear layers stays off
        return super().train(False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lpips(reconstruction.contiguous(), target.contiguous()).mean()


@register("perceptual", "convnext")
class ConvNeXtLogitsLoss(nn.Module):
    """MSE between ConvNeXt-Small ImageNet logits of reconstruction and target, both resized to 224 (TiTok)."""

    def __init__(self, weights: str | None = None, backbone: str = "pretrained", seed: int = 0,
                 input_size: int = 224, download: bool = True) -> None:
        super().__init__()
        from torchvision import models

        _check_backbone(backbone)
        weights_enum = models.ConvNeXt_Small_Weights.IMAGENET1K_V1
        file = find_weights_file(weights_enum, weights, "ConvNeXt-S", download) if backbone == "pretrained" else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = models.convnext_small()
        if file is not None:
            self.net.load_state_dict(load_checked_state(file, weights_enum, self.net.state_dict(), "ConvNeXt-S"))
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> ConvNeXtLogitsLoss:
        return super().train(False)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((images + 1) / 2, size=self.input_size, mode="bilinear", align_corners=False,
                          antialias=True)
        return self.net((x - self.mean) / self.std)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self._logits(reconstruction), self._logits(target))


class PerceptualLoss(nn.Module):
    """A weighted sum of perceptual terms from config: ``{"name": ..., "weight": w, ...}`` or a list of those
    (TiTok's "lpips-convnext_s-1.0-0.1" is ``[{name: lpips, weight: 1.0}, {name: convnext, weight: 0.1}]``)."""

    def __init__(self, cfg: dict[str, Any] | list[dict[str, Any]]) -> None:
        super().__init__()
        from vistok.registry import build

        terms = [cfg] if isinstance(cfg, dict) else list(cfg)
        self.weights: list[float] = []
        nets = []
        for term in terms:
            term = dict(term)
            self.weights.append(float(term.pop("weight", 1.0)))
            nets.append(build("perceptual", term))
        self.nets = nn.ModuleList(nets)
        names = [str(dict(t)["name"]) for t in terms]
        # log/loss keys: the registry name, numbered when a name repeats (lpips, lpips_1)
        self.names = [n if names[:i].count(n) == 0 else f"{n}_{names[:i].count(n)}" for i, n in enumerate(names)]

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named weighted terms, e.g. ``{"lpips": w·LPIPS}`` (under bf16 autocast the trunk runs in bf16, as in
        LlamaGen's mixed-precision training; the result is returned in fp32)."""
        return {name: w * net(reconstruction, target).float()
                for name, w, net in zip(self.names, self.weights, self.nets)}
