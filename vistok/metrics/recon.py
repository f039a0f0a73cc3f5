"""Reconstruction metrics: PSNR and SSIM, per image, on images quantized to uint8 as they would be saved.

SSIM follows Wang et al. 2004 with the settings of ``skimage.metrics.structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)``: an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, computed per
channel on the valid region (no padding) and averaged over channels. Tests check both against scikit-image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images → [0, 1], quantized to the 256 levels a saved PNG has."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) tensors in [0, data_range]; identical images give +inf."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # skimage/scipy's rule: 11 taps for σ = 1.5
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM of (B, C, H, W) tensors in [0, data_range] (images must be ≥ 11×11)."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(sigma).to(x.device)
    if x.shape[-1] < g.numel() or x.shape[-2] < g.numel():
        raise ValueError(f"SSIM needs images of at least {g.numel()}×{g.numel()} pixels, got {tuple(x.shape[-2:])}")
    kh = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    kw = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)
