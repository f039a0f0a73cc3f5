"""Flow matching for next-X prediction (xAR; Ren et al. 2025, "Beyond Next-Token: Next-X Prediction for
Autoregressive Visual Generation", arXiv 2502.20388, github.com/OliverRensu/xAR).

xAR's own pieces, shared by ``vistok.generators.xar`` (where the transformer itself is the denoiser), follow the
official code (models/xar.py, models/sampler.py). Time runs the other way there: t = 1 is noise, t = 0 data.

- ``logit_normal``: the training times, t = sigmoid(n), n ~ N(0, 1) (``sample_logit_normal``), one per image and
  entity.
- ``TimestepEmbedder``: DiT's sinusoidal embedding of t·1000 (truncated to an integer, as ``(t*1000).long()``)
  followed by Linear → SiLU → Linear.
- ``sde_timesteps`` / ``euler_maruyama``: the sampler of ``euler_maruyama_sampler`` on the linear path
  x_t = (1 − t)·x + t·ε: ``steps`` times linspace(1, 0.04) then 0; at each time the score is derived from the
  velocity, s = −((1 − t)·v + x)/t, the drift is v − ½·g²·s with diffusion g² = 2t, and
  x ← x + drift·dt + g·√|dt|·ε (dt < 0); the last step (0.04 → 0) takes the drift alone.

``FlowMatchingHead`` is the per-token alternative (``entity_head: flow_mlp``): instead of classifying a token,
regress its continuous vector x₁ (the tokenizer's code embedding) with a small network conditioned on the
backbone's output z, as MAR's diffusion head does.

- Network: MAR's "SimpleMLPAdaLN" shape — input Linear, ``depth`` residual MLP blocks modulated by AdaLN
  (shift/scale/gate from z + a sinusoidal time embedding, zero-initialised gates), a final AdaLN + Linear
  (zero-initialised). It runs per token, so every token of an entity is handled in parallel.
- Training (rectified flow / SiT's linear path): x_t = t·x₁ + (1 − t)·ε, ε ~ N(0, I), t ~ U(0, 1); the network
  predicts the velocity v = x₁ − ε; loss = mean squared error. ``batch_mul`` repeats each z with fresh (t, ε)
  (MAR's ``diffusion_batch_mul``) for a lower-variance loss.
- Sampling: Euler integration of dx/dt = v from t = 0 (noise, scaled by ``temperature``) to t = 1 in ``steps``
  steps; classifier-free guidance on the velocity, v_u + s·(v_c − v_u).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vistok.registry import register


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding (DiT/MAR) of t (N,) multiplied by ``scale`` -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def logit_normal(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Times t = sigmoid(n), n ~ N(mean, std²), of ``shape`` (xAR's ``sample_logit_normal``): more mass at mid
    noise levels than U(0, 1), none at the end points."""
    return torch.sigmoid(mean + std * torch.randn(shape, generator=generator, device=device))


class TimestepEmbedder(nn.Module):
    """xAR's (DiT's) timestep embedder: sinusoidal features of ⌊t·1000⌋ -> Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (...) in [0, 1] -> (..., dim)."""
        steps = torch.floor(t.double() * 1000)  # xAR's (t * 1000).long(), without float32 rounding below an integer
        freq = timestep_embedding(steps.flatten(), self.frequency_dim, scale=1.0).view(*t.shape, -1)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


def sde_timesteps(steps: int, t_min: float = 0.04) -> torch.Tensor:
    """xAR's sampling times (float64, ``steps`` + 1): ``steps`` points linspace(1, t_min), then 0."""
    if steps < 2:
        raise ValueError(f"the Euler–Maruyama sampler takes at least 2 steps (1 → {t_min} → 0), got {steps}")
    return torch.cat([torch.linspace(1.0, t_min, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


def euler_maruyama(velocity: Callable[[torch.Tensor, float, int], torch.Tensor], x: torch.Tensor, steps: int,
                   t_min: float = 0.04, generator: torch.Generator | None = None) -> torch.Tensor:
    """xAR's ``euler_maruyama_sampler``: integrate the reverse SDE from x (noise at t = 1) to t = 0.

    velocity(x, t, i) returns the (guided) velocity at x and time t (step i); the velocity is affine in the drift
    at a fixed x, so guiding the velocity equals xAR's guiding of the drift. Returns the sample at t = 0."""
    ts = sde_timesteps(steps, t_min).tolist()
    for i, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        v = velocity(x, t_cur, i)
        dt = t_next - t_cur
        score = -((1 - t_cur) * v + x) / t_cur  # the linear path's score from its velocity
        diffusion = 2 * t_cur  # g² (xAR's compute_diffusion)
        drift = v - 0.5 * diffusion * score
        x = x + drift * dt
        if i < steps - 1:  # the last step (t_min → 0) is the mean alone
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(diffusion) * math.sqrt(abs(dt)) * noise
    return x


class AdaLNResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


@register("entity_head", "flow_mlp")
class FlowMatchingHead(nn.Module):
    """code_dim: size of the regressed vector; cond_dim: the backbone width; width/depth: the MLP's."""

    def __init__(self, code_dim: int, cond_dim: int, width: int = 256, depth: int = 3, batch_mul: int = 1) -> None:
        super().__init__()
        self.code_dim, self.batch_mul, self.time_dim = code_dim, batch_mul, min(256, width)
        self.input_proj = nn.Linear(code_dim, width)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(AdaLNResBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.output = nn.Linear(width, code_dim)
        self.init_weights()

    def init_weights(self) -> None:
        for block in self.blocks:  # AdaLN-Zero: every residual branch starts closed
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.final_modulation[-1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t (N, code_dim), t (N,), z (N, cond_dim) -> predicted velocity (N, code_dim)."""
        c = self.cond_proj(z) + self.time_mlp(timestep_embedding(t, self.time_dim).to(z.dtype))
        h = self.input_proj(x_t)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        return self.output(self.final_norm(h) * (1 + scale) + shift)

    def loss(self, z: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z (N, cond_dim), target x₁ (N, code_dim) -> the flow-matching MSE (scalar)."""
        z, x1 = z.repeat(self.batch_mul, 1), target.repeat(self.batch_mul, 1)
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype, generator=generator)
        noise = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
        x_t = t[:, None] * x1 + (1 - t[:, None]) * noise
        return F.mse_loss(self.velocity(x_t, t, z), x1 - noise)

    @torch.no_grad()
    def sample(self, z_cond: torch.Tensor, z_uncond: torch.Tensor | None = None, cfg_scale: float = 1.0,
               steps: int = 25, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """z (N, cond_dim) [and its unconditional twin] -> samples x₁ (N, code_dim) by ``steps`` Euler steps."""
        N = z_cond.shape[0]
        x = temperature * torch.randn((N, self.code_dim), device=z_cond.device, dtype=z_cond.dtype,
                                      generator=generator)
        z = z_cond if z_uncond is None else torch.cat([z_cond, z_uncond])
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((z.shape[0],), i * dt, device=z.device, dtype=z.dtype)
            v = self.velocity(x if z_uncond is None else torch.cat([x, x]), t, z)
            if z_uncond is not None:
                v_cond, v_uncond = v.chunk(2)
                v = v_uncond + cfg_scale * (v_cond - v_uncond)
            x = x + dt * v
        return x
