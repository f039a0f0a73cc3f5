"""Training losses beyond a tokenizer's own: perceptual networks (``perceptual``) and the adversarial part
(``discriminator`` + :class:`~vistok.losses.gan.AdversarialLoss`), each built by registry name."""

from vistok.losses.discriminator import PatchGANDiscriminator  # noqa: F401
from vistok.losses.gan import AdversarialLoss
from vistok.losses.perceptual import ConvNeXtLogitsLoss, LPIPSLoss, PerceptualLoss  # noqa: F401

__all__ = ["AdversarialLoss", "PerceptualLoss"]
