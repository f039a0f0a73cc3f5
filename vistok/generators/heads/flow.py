"""The flow-matching head of xAR (Ren et al. 2025, "Beyond Next-Token: Next-X Prediction for Autoregressive Visual
Generation"): instead of classifying a token, regress its continuous vector x₁ (the tokenizer's code embedding)
with a small network conditioned on the backbone's output z.

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

import torch
import torch.nn.functional as F
from torch import nn

from vistok.registry import register


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (DiT/MAR) of t (N,) in [0, 1] scaled to [0, 1000] -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AdaLNResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


@register("entity_head", "flow")
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
