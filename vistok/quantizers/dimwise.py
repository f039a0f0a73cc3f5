"""Dimension-wise post-training quantization (TokenBridge, Wang et al., ICCV 2025, arXiv 2503.16430).

A continuous autoencoder is trained as usual; afterwards, with no gradient and no retraining, every latent
dimension is quantized on its own into B bins, so a position becomes D bin indices (a vocabulary of B^D that is
never materialised). TokenBridge's rule, as in its code:

1. map the latent to the bins' frame: ``u = clamp((x − center) / scale · R / S, −R, R)`` with R = 3 (``std_range``)
   and S = 5 (``range_sigmas``). TokenBridge uses fixed constants (its KL-16 latent times 0.2325, range [−5, 5]
   → [−3, 3]); here ``center`` and ``scale`` are **fitted per dimension** (mean and standard deviation of the
   dataset's latents), because a freshly trained autoencoder has no agreed latent scale. That is the deviation.
2. Gaussian-quantile bin edges ``b_j = Φ⁻¹(j / B)`` for j = 0..B, clamped to ±R;
3. reconstruction value of each bin: the truncated-normal conditional mean ``(φ(a) − φ(b)) / (Φ(b) − Φ(a))``;
4. assignment: the **nearest reconstruction value** (a Voronoi cell around the conditional means, not a lookup of
   the bin edges), then back through the inverse of step 1.

Options beyond the paper: ``bin_rule="uniform"`` (B equal-width bins on [−R, R]) and ``reconstruction="midpoint"``
(the value of a bin is its midpoint and a value is assigned to the bin that contains it, so the round-trip error
inside the fitted range is at most half that bin's width). Values outside the fitted range clamp to the edge bins.

Fitting: :meth:`DimwiseQuantizer.fit` sets ``center``/``scale`` from a (M, D) tensor of latents in one pass (the
post-training step). Before any fit, :meth:`update_running_stats` (called by the autoencoder's training forward,
under no_grad) keeps BatchNorm-style running estimates, so that encode/decode already work during training.
"""

from __future__ import annotations

import torch

from vistok.errors import ConfigError
from vistok.quantizers.base import Quantizer, QuantizerOutput, usage_stats
from vistok.registry import register

BIN_RULES = ("gaussian", "uniform")
RECONSTRUCTIONS = ("conditional_mean", "midpoint")


def _normal_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5


def bin_edges_and_levels(num_bins: int, std_range: float = 3.0, bin_rule: str = "gaussian",
                         reconstruction: str = "conditional_mean") -> tuple[torch.Tensor, torch.Tensor]:
    """(B + 1,) bin edges on [−R, R] and (B,) reconstruction values, in float64 for exactness."""
    if bin_rule == "gaussian":
        edges = torch.special.ndtri(torch.arange(num_bins + 1, dtype=torch.float64) / num_bins)
        edges = edges.clamp(-std_range, std_range)  # ±inf at the ends become ±R, as in TokenBridge
    else:
        edges = torch.linspace(-std_range, std_range, num_bins + 1, dtype=torch.float64)
    a, b = edges[:-1], edges[1:]
    if reconstruction == "conditional_mean":
        levels = (_normal_pdf(a) - _normal_pdf(b)) / (torch.special.ndtr(b) - torch.special.ndtr(a))
    else:
        levels = (a + b) / 2
    return edges, levels


@register("quantizer", "dimwise")
class DimwiseQuantizer(Quantizer):
    """(B, N, D) latents → (B, N, D) bin indices in [0, num_bins) and their dequantized values.

    TokenSpec: ``bins`` (D dimensions × B bins per position). No losses: it is fitted, not trained.
    """

    kind = "bins"
    renamed_options = {"dim": "code_dim"}

    def __init__(self, code_dim: int = 8, num_bins: int = 64, std_range: float = 3.0, range_sigmas: float = 5.0,
                 bin_rule: str = "gaussian", reconstruction: str = "conditional_mean",
                 momentum: float = 0.01) -> None:
        super().__init__()
        if num_bins < 2:
            raise ConfigError(f"dimwise: num_bins must be >= 2, got {num_bins}")
        if bin_rule not in BIN_RULES:
            raise ConfigError(f"dimwise: bin_rule must be one of {BIN_RULES}, got {bin_rule!r}")
        if reconstruction not in RECONSTRUCTIONS:
            raise ConfigError(f"dimwise: reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
        self.code_dim, self.num_bins = code_dim, num_bins
        self.codebook_sizes = (num_bins,) * code_dim
        self.std_range, self.range_sigmas = std_range, range_sigmas
        self.bin_rule, self.reconstruction, self.momentum = bin_rule, reconstruction, momentum
        edges, levels = bin_edges_and_levels(num_bins, std_range, bin_rule, reconstruction)
        self.register_buffer("edges", edges.float(), persistent=False)
        self.register_buffer("levels", levels.float(), persistent=False)
        # Fitted per-dimension statistics (saved with the tokenizer); ``fitted`` = 1 after :meth:`fit`.
        self.register_buffer("center", torch.zeros(code_dim))
        self.register_buffer("scale", torch.ones(code_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.long))

    # ---- fitting (post-training, no gradient) -----------------------------------------------------------------
    @torch.no_grad()
    def fit(self, latents: torch.Tensor) -> None:
        """Set the per-dimension center/scale from (M, D) latents of a dataset."""
        latents = latents.reshape(-1, self.code_dim).double()
        if latents.shape[0] < 2:
            raise ValueError("dimwise.fit needs at least 2 latent vectors")
        self.center.copy_(latents.mean(0).float())
        self.scale.copy_(latents.std(0).clamp_min(1e-8).float())
        self.fitted.fill_(1)

    @torch.no_grad()
    def update_running_stats(self, latents: torch.Tensor) -> None:
        """BatchNorm-style running mean/std (used only until :meth:`fit` is called)."""
        if int(self.fitted):
            return
        latents = latents.detach().reshape(-1, self.code_dim).float()
        m = self.momentum
        self.center.lerp_(latents.mean(0), m)
        self.scale.lerp_(latents.std(0).clamp_min(1e-8), m)

    @property
    def fitted_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension (low, high) of the latent range the bins cover: center ± range_sigmas · scale."""
        half = self.range_sigmas * self.scale
        return self.center - half, self.center + half

    # ---- maps -------------------------------------------------------------------------------------------------
    def _to_unit(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.center) / self.scale * (self.std_range / self.range_sigmas)
        return u.clamp(-self.std_range, self.std_range)

    def _from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return u * (self.range_sigmas / self.std_range) * self.scale + self.center

    def codes_to_indices(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) latents → (..., D) int64 bin indices."""
        u = self._to_unit(x.float())
        if self.reconstruction == "conditional_mean":
            # nearest reconstruction value: the Voronoi boundaries are the midpoints between adjacent levels
            boundaries = (self.levels[1:] + self.levels[:-1]) / 2
        else:
            boundaries = self.edges[1:-1]  # the bin that contains u
        return torch.bucketize(u.contiguous(), boundaries)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., D) bin indices → (..., D) dequantized latents."""
        return self._from_unit(self.levels[indices.long()])

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"dimwise: expected latents with {self.code_dim} channels, got {z.shape[-1]}")
        indices = self.codes_to_indices(z)
        codes = self.indices_to_codes(indices)
        quantized = z + (codes - z).detach()  # straight-through (only matters if someone fine-tunes through it)
        stats = {**usage_stats(indices, self.codebook_sizes), "fitted": self.fitted.float()}
        return QuantizerOutput(quantized, indices, {}, stats)
