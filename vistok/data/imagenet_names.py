"""ImageNet-1k class ids (wnids) and human names, from lists already installed with timm and torchvision (no
download): index i is the standard ImageNet-1k label i (sorted wnids)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in label order (timm's ``data/_info/imagenet_synsets.txt``)."""
    text = (files("timm.data") / "_info" / "imagenet_synsets.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(wnids) != 1000:
        raise RuntimeError(f"timm's imagenet_synsets.txt lists {len(wnids)} wnids, expected 1000")
    return wnids


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 human class names in label order (torchvision's bundled ``_IMAGENET_CATEGORIES``, unique names)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


@cache
def _wnid_to_name() -> dict[str, str]:
    return dict(zip(imagenet_wnids(), imagenet_class_names(), strict=True))


def wnid_to_name(wnid: str) -> str | None:
    """Human name of an ImageNet-1k wnid, or ``None`` if ``wnid`` is not one of the 1000."""
    return _wnid_to_name().get(wnid)
