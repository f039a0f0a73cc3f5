"""Save/load in the Hugging Face convention, through huggingface_hub's ``PyTorchModelHubMixin``.

``model.save_pretrained(dir)`` writes ``config.json`` (the ``__init__`` arguments, captured by the mixin, plus a
``_vistok`` block naming the registered class) and ``model.safetensors``. ``Cls.from_pretrained(dir)`` rebuilds
the exact model; :func:`load_pretrained` does so without knowing the class. Two changes to the mixin's defaults:
loading is strict (a mismatched checkpoint is an error that names the directory and the differing keys, never a
silent partial load), and each file is written atomically (to a temporary name, then renamed into place;
weights before config).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file

from vistok.errors import CheckpointError
from vistok.registry import lookup


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks (weights files identify models, caches and Inceptions)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

__all__ = ["CheckpointError", "PretrainedModel", "load_pretrained", "load_state_dict_strict", "read_config"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CONFIG_VERSION = 1


class PretrainedModel(torch.nn.Module, PyTorchModelHubMixin, library_name="vistok"):
    """Base of every saveable vistok model (tokenizers and generators)."""

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:  # type: ignore[override]
        """Write ``config.json`` + ``model.safetensors`` to ``save_directory`` atomically."""
        save_directory = Path(save_directory)
        save_directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{save_directory.name}.", dir=save_directory.parent))
        try:
            super().save_pretrained(tmp, **kwargs)
            cfg_path = tmp / CONFIG_NAME
            cfg = json.loads(cfg_path.read_text())
            cfg["_vistok"] = {
                "kind": getattr(type(self), "registry_kind", None),
                "name": getattr(type(self), "registry_name", None),
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "config_version": CONFIG_VERSION,
                "vistok_version": _version(),
            }
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
            # Move file by file (weights first) so the folder may also hold a run's logs and checkpoints.
            save_directory.mkdir(parents=True, exist_ok=True)
            for name in sorted(os.listdir(tmp), key=lambda n: n == CONFIG_NAME):
                os.replace(tmp / name, save_directory / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True, **kwargs: Any):
        """Local folders load strictly from safetensors (no pickle); hub ids go through the mixin's download."""
        init_kwargs = {k: v for k, v in kwargs.items()
                       if k not in ("revision", "cache_dir", "force_download", "local_files_only", "token")}
        if not os.path.isdir(model_id):
            return super()._from_pretrained(model_id=model_id, map_location=map_location, strict=strict, **kwargs)
        weights = Path(model_id) / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{weights}: no weights file; expected a folder written by save_pretrained()")
        model = cls(**init_kwargs)
        load_state_dict_strict(model, load_file(str(weights), device=str(map_location)), source=str(weights))
        return model.eval()


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the file and the first differences."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:2]}")
        raise CheckpointError(f"{source} does not match {type(model).__name__}: {'; '.join(parts)}. "
                              "Was it saved from a different model or config?")
    model.load_state_dict(state, strict=True)


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; pass a folder written by save_pretrained()")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is corrupt") from e


def load_pretrained(directory: str | Path, kind: str | None = None, map_location: str = "cpu") -> Any:
    """Rebuild any vistok model from a ``save_pretrained`` folder, whatever its class."""
    cfg = read_config(directory)
    meta = cfg.get("_vistok") or {}
    if not meta.get("name"):
        raise CheckpointError(f"{Path(directory) / CONFIG_NAME}: no '_vistok' block; not a vistok checkpoint")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{directory} holds a {meta.get('kind')} ({meta['name']}), not a {kind}")
    cls = lookup(meta["kind"], meta["name"])
    return cls.from_pretrained(str(directory), map_location=map_location)


def _version() -> str:
    from vistok import __version__

    return __version__
