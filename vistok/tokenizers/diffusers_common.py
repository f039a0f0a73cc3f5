"""Loading and rebuilding 🤗 diffusers autoencoders inside vistok tokenizers (``diffusers_kl``, ``diffusers_vq``).

A wrapped model is built either from pretrained weights (``pretrained``: a hub id or a local folder written by
diffusers' ``save_pretrained``, with ``subfolder`` for a pipeline's ``vae``/``vqvae`` folder) or from scratch from
a diffusers config (``vae``: the keyword arguments of ``AutoencoderKL``/``VQModel``). After a pretrained load the
tokenizer's recorded config is rewritten to the full diffusers config with ``pretrained`` cleared, so a vistok
``save_pretrained`` folder is self-contained: loading it rebuilds the architecture and reads vistok's own weights,
never the original hub id or folder again (``loaded_from`` keeps the origin for the record).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from vistok.errors import CheckpointError, ConfigError


def _plain(value: Any) -> Any:
    """JSON-friendly copy of a diffusers config value (FrozenDicts, tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_diffusers_model(class_name: str, owner: str, pretrained: str | None, subfolder: str | None,
                         vae: Mapping[str, Any] | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build ``diffusers.<class_name>`` from ``pretrained`` (hub id | folder) or from the config ``vae``; return the
    model and its full config (plain JSON types, diffusers' private ``_*`` keys dropped)."""
    try:
        import diffusers
    except ImportError as e:
        raise ConfigError(f"tokenizer {owner!r} wraps diffusers.{class_name}, but diffusers is not installed: "
                          "pip install 'vistok[interop]'") from e
    cls = getattr(diffusers, class_name)
    if pretrained is not None:
        if vae:
            raise ConfigError(f"{owner}: give either pretrained= (weights to load) or vae= (a config to build "
                              f"from scratch), not both; got pretrained={pretrained!r} and vae keys {sorted(vae)}")
        try:
            model = cls.from_pretrained(str(pretrained), subfolder=subfolder)
        except (OSError, ValueError) as e:
            where = f"{pretrained}" + (f" (subfolder {subfolder!r})" if subfolder else "")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{owner}: cannot load a diffusers {class_name} from {where}: {first}. Pass a "
                                  "hub id or a folder written by diffusers' save_pretrained, and subfolder= for a "
                                  "pipeline's vae folder") from e
    else:
        try:
            model = cls(**_plain(dict(vae or {})))
        except TypeError as e:
            raise ConfigError(f"{owner}: vae= is not a valid diffusers {class_name} config for diffusers "
                              f"{diffusers.__version__}: {e} (a folder saved with another diffusers version may "
                              "need that version)") from e
    config = {k: _plain(v) for k, v in model.config.items() if not k.startswith("_")}
    return model.float(), config


def record_config(module: Any, config: dict[str, Any], pretrained: str | None, subfolder: str | None) -> None:
    """Make the config the hub mixin saves self-contained (see the module docstring)."""
    recorded = dict(getattr(module, "_hub_mixin_config", None) or {})
    origin = recorded.get("loaded_from")
    if pretrained is not None:
        origin = str(pretrained) + (f"/{subfolder}" if subfolder else "")
    recorded.update(pretrained=None, subfolder=None, vae=config, loaded_from=origin)
    module._hub_mixin_config = recorded


def downsampling_factor(config: Mapping[str, Any]) -> int:
    """diffusers' Encoder halves the resolution after every down block but the last."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def check_resolution(resolution: int, config: Mapping[str, Any], owner: str) -> int:
    factor = downsampling_factor(config)
    if resolution % factor:
        raise ConfigError(f"{owner}: resolution {resolution} is not divisible by the autoencoder's downsampling "
                          f"factor {factor} (2^(len(block_out_channels) - 1))")
    return factor


W = TypeVar("W", bound="DiffusersWrapper")


class DiffusersWrapper:
    """What the diffusers tokenizers share besides loading (mixed in before their tokenizer base): construction
    around a pretrained model, and the wrapped ``vae``'s encoder and last decoder weight under the names vistok's
    other tokenizers use."""

    vae: torch.nn.Module

    @classmethod
    def from_diffusers(cls: type[W], pretrained: str, subfolder: str | None = None, **options: Any) -> W:
        """The tokenizer around diffusers' ``from_pretrained(pretrained, subfolder=subfolder)`` (a hub id or a
        folder), in eval mode; ``options`` are this class's other options (``resolution``, …)."""
        return cls(pretrained=pretrained, subfolder=subfolder, **options).eval()

    @property
    def encoder(self) -> torch.nn.Module:
        """The VAE's encoder (named as in vistok's other tokenizers)."""
        return self.vae.encoder

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight (VQGAN's adaptive GAN weight compares gradient norms here)."""
        return self.vae.decoder.conv_out.weight
