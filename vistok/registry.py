"""One registry for every buildable part (timm-style): ``@register("quantizer", "vq")`` on a class, then
``build("quantizer", {"name": "vq", ...})`` anywhere. Adding a method is a new file plus one decorator line.

Kinds (``list_kinds()`` lists what is registered): ``quantizer``, ``tokenizer``, ``prefix`` (1D tokenizers' prefix
regularizers), ``generator``, ``head`` (token heads per TokenSpec kind), ``entity`` (xAR's groups), ``entity_head`` (its
per-entity heads), ``conditioning`` (class labels, text), ``text_encoder`` (the frozen prompt encoders of text
conditioning), ``teacher`` (the dual tokenizer's frozen feature extractors), ``dataset``, ``perceptual`` and
``discriminator`` (training losses), ``mllm`` (an LLM with a vistok tokenizer plugged in) and ``mllm_bridge`` (how
its images enter and leave).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from vistok.errors import ConfigError

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``obj`` buildable as ``build(kind, {"name": name, ...})``."""

    def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name]} and {obj})")
        table[name] = obj
        obj.registry_name = name  # type: ignore[attr-defined]
        obj.registry_kind = kind  # type: ignore[attr-defined]
        return obj

    return deco


def _ensure_imported() -> None:
    # Importing the subpackages runs their @register decorators.
    import vistok.data  # noqa: F401
    import vistok.generators  # noqa: F401
    import vistok.losses  # noqa: F401
    import vistok.mllm  # noqa: F401
    import vistok.quantizers  # noqa: F401
    import vistok.tokenizers  # noqa: F401


def list_kinds() -> list[str]:
    _ensure_imported()
    return sorted(_REGISTRY)


def list_names(kind: str) -> list[str]:
    _ensure_imported()
    return sorted(_REGISTRY.get(kind, {}))


def lookup(kind: str, name: str) -> Callable[..., Any]:
    _ensure_imported()
    table = _REGISTRY.get(kind, {})
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ConfigError(f"unknown {kind} {name!r}; registered: {sorted(table)}.{hint}")
    return table[name]


def build(kind: str, cfg: Mapping[str, Any] | str, **overrides: Any) -> Any:
    """Build a registered object from a config section ``{"name": ..., **kwargs}`` (or just a name)."""
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    if "name" not in cfg:
        raise ConfigError(f"{kind} config needs a 'name' key (one of {list_names(kind)}); got keys {sorted(cfg)}")
    name = cfg.pop("name")
    cls = lookup(kind, name)
    kwargs = {**cfg, **overrides}
    renamed = sorted(set(kwargs) & set(getattr(cls, "renamed_options", {})))
    if renamed:
        hints = ", ".join(f"{old!r} is now {cls.renamed_options[old]!r}" for old in renamed)
        raise ConfigError(f"{kind} {name!r}: renamed options: {hints}; update the config")
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(f"{kind} {name!r} got unknown options {unknown}; it accepts {sorted(params)}")
    return cls(**kwargs)
