"""The adversarial part of tokenizer training (VQGAN, Esser et al., arXiv 2012.09841; taming-transformers'
``vqperceptual.py``; LlamaGen's ``vq_loss.py``; bytedance/1d-tokenizer's ``losses.py``; Open-MAGVIT2).

:class:`AdversarialLoss` owns the discriminator (any registered ``discriminator``, PatchGAN by default) and the
LeCAM statistics, and gives the two sides of each iteration:

- generator side: ``weight · λ · g_loss(D(x̂))`` where g_loss is ``hinge`` (−mean D(x̂), LlamaGen/TiTok) or
  ``non_saturating`` (mean softplus(−D(x̂))); λ = 1, or with ``adaptive_weight`` VQGAN's
  λ = ‖∇_last L_nll‖ / (‖∇_last L_G‖ + 1e−4) clamped to [0, 1e4], the ratio of gradient norms at the decoder's
  last layer (L_nll = pixel + perceptual terms). Zero before ``start`` (taming's ``adopt_weight``).
- discriminator side: d_loss(D(x), D(sg(x̂))) with ``hinge`` 0.5·(mean relu(1 − D(x)) + mean relu(1 + D(x̂))) or
  ``non_saturating`` 0.5·(mean softplus(−D(x)) + mean softplus(D(x̂))), plus optionally LeCAM regularization
  (Tseng et al., arXiv 2104.03310, as 1d-tokenizer/Open-MAGVIT2):
  ``lecam_weight · (relu(mean D(x) − ema_fake)² + relu(ema_real − mean D(x̂))²)`` with EMAs (decay 0.999) of the
  batch-mean logits, updated after the loss (once per micro-batch under gradient accumulation). Nothing is
  trained before ``start``.

With several processes the adaptive weight uses the gradients of the global-batch loss (the per-rank gradients at
the last layer are averaged before their norms are taken) and the LeCAM statistics use the global-batch means, so
N ranks × B compute what one process computes on N·B images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import ConfigError
from vistok.training import distributed


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def non_saturating_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


def non_saturating_g_loss(fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake).mean()


D_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss, "non_saturating": non_saturating_d_loss}
G_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_g_loss, "non_saturating": non_saturating_g_loss}


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's λ = ‖∇_last L_nll‖ / (‖∇_last L_G‖ + 1e−4), clamped to [0, max_weight], detached. Across ranks
    the two gradients are averaged first (the gradient of the global-batch loss)."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0].float()
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0].float()
    grads = distributed.all_reduce_mean_(torch.stack([nll_grad, g_grad]))
    return (grads[0].norm() / (grads[1].norm() + 1e-4)).clamp(0.0, max_weight).detach()


class AdversarialLoss(nn.Module):
    """Discriminator + GAN loss settings; its ``state_dict`` (discriminator weights and LeCAM statistics) is saved
    with the run. It is the module the training loop optimizes as the discriminator (and wraps in DDP): its
    ``forward`` runs the discriminator on the real and the fake batch in one call, so a DDP wrapper sees one
    forward per backward."""

    def __init__(self, discriminator: dict[str, Any] | None = None, weight: float = 0.5, start: int = 0,
                 d_loss: str = "hinge", g_loss: str = "hinge", adaptive_weight: bool = False,
                 adaptive_weight_max: float = 1e4, lecam_weight: float = 0.0, lecam_decay: float = 0.999) -> None:
        super().__init__()
        from vistok.registry import build

        if d_loss not in D_LOSSES or g_loss not in G_LOSSES:
            raise ConfigError(f"loss.gan: d_loss must be one of {sorted(D_LOSSES)} and g_loss one of "
                              f"{sorted(G_LOSSES)}, got {d_loss!r}, {g_loss!r}")
        self.discriminator = build("discriminator", dict(discriminator or {"name": "patchgan"}))
        self.weight, self.start = float(weight), int(start)
        self.d_loss_name, self.g_loss_name = d_loss, g_loss
        self.adaptive, self.adaptive_max = bool(adaptive_weight), float(adaptive_weight_max)
        self.lecam_weight, self.lecam_decay = float(lecam_weight), float(lecam_decay)
        self.register_buffer("lecam_ema_real", torch.zeros(()))
        self.register_buffer("lecam_ema_fake", torch.zeros(()))

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discriminator(real), self.discriminator(fake)

    def active(self, step: int) -> bool:
        """Whether the GAN terms are on at ``step`` (0-based index of the step being computed)."""
        return step >= self.start

    def generator_loss(self, reconstruction: torch.Tensor, nll_loss: torch.Tensor, step: int,
                       last_layer: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted generator term and its logs (zero before ``start``)."""
        if not self.active(step) or self.weight == 0:
            return reconstruction.new_zeros(()), {}
        self.discriminator.requires_grad_(False)  # the generator step must not accumulate D gradients
        try:
            g = G_LOSSES[self.g_loss_name](self.discriminator(reconstruction).float())
        finally:
            self.discriminator.requires_grad_(True)
        lam = torch.ones((), device=g.device)
        if self.adaptive:
            if last_layer is None:
                raise ConfigError("loss.gan.adaptive_weight needs the tokenizer's decoder last layer "
                                  "(a `last_layer` property); set loss.gan.adaptive_weight=false")
            lam = adaptive_weight(nll_loss, g, last_layer, self.adaptive_max)
        return self.weight * lam * g, {"gan/g_loss": float(g.detach()), "gan/adaptive_weight": float(lam)}

    def discriminator_loss(self, pair: nn.Module, images: torch.Tensor,
                           reconstruction: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminator's loss on real images and detached reconstructions, through ``pair`` (``self`` or its
        DDP wrapper)."""
        real, fake = pair(images.detach(), reconstruction.detach())
        real, fake = real.float(), fake.float()
        loss = D_LOSSES[self.d_loss_name](real, fake)
        logs = {"gan/d_loss": float(loss.detach()), "gan/logits_real": float(real.detach().mean()),
                "gan/logits_fake": float(fake.detach().mean())}
        if self.lecam_weight > 0:
            # batch-mean logits over the global batch (differentiably), so every rank keeps the same statistics
            real_mean = distributed.batch_mean(real.flatten(1)).mean()
            fake_mean = distributed.batch_mean(fake.flatten(1)).mean()
            lecam = F.relu(real_mean - self.lecam_ema_fake).pow(2) + F.relu(self.lecam_ema_real - fake_mean).pow(2)
            loss = loss + self.lecam_weight * lecam
            with torch.no_grad():
                self.lecam_ema_real.lerp_(real_mean.detach(), 1 - self.lecam_decay)
                self.lecam_ema_fake.lerp_(fake_mean.detach(), 1 - self.lecam_decay)
            logs["gan/lecam"] = float(lecam.detach())
        return loss, logs
