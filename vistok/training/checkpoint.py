"""Atomic, pickle-free training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step_0001000/`` holding the model as ``config.json`` +
``model.safetensors`` (``save_pretrained``), other weights a run carries as ``<name>.safetensors`` (``ema``: the EMA
weights, ``discriminator``: the GAN discriminator and its statistics), and ``state.pt`` with everything else a
resume needs (optimizers, schedulers, step, every rank's RNG state, the world size and batch it was written with):
plain tensors and containers, loaded with ``torch.load(weights_only=True)`` so a checkpoint can never execute code.
The folder is written under a temporary name and renamed into place, then the ``latest`` pointer is replaced
atomically: a run killed at any instant leaves either the previous or the new checkpoint, never a half-written one.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistok.hub import CheckpointError, PretrainedModel, load_state_dict_strict

STATE_NAME = "state.pt"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        # numpy's Mersenne state as tensors so weights_only loading accepts it
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((3, tuple(py[:-1]), py[-1] or None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | Path, step: int, model: PretrainedModel, state: dict[str, Any],
                    keep: int = 2, tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write ``run_dir/checkpoints/step_<step>/`` atomically and point ``latest`` at it; keep the newest ``keep``.
    ``tensors``: named weight dicts written as ``<name>.safetensors`` next to the model."""
    from safetensors.torch import save_file

    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=ckpt_root))
    try:
        model.save_pretrained(tmp / "model")
        for name, weights in (tensors or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / f"{name}.safetensors"))
        torch.save({**state, "step": step}, tmp / STATE_NAME)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _atomic_write_text(ckpt_root / "latest", final.name + "\n")
    for old in sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpt_root = Path(run_dir) / "checkpoints"
    pointer = ckpt_root / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    if not (path / STATE_NAME).is_file():
        raise CheckpointError(f"{pointer} points at {path}, which is missing or incomplete; "
                              "delete the pointer to restart from the previous checkpoint")
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the training state dict.

    A model that defines ``load_checkpoint_weights(folder: Path)`` loads itself from the checkpoint's model folder
    (what its ``save_pretrained`` wrote there; e.g. a model that saves only its trainable part); any other model is
    loaded strictly from ``model/model.safetensors``.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if hasattr(model, "load_checkpoint_weights"):
        model.load_checkpoint_weights(path / "model")
    else:
        weights = path / "model" / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing; {path} is not a complete checkpoint")
        load_state_dict_strict(model, load_file(str(weights)), source=str(weights))
    return load_checkpoint_state(path)


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The training state (``state.pt``) of a checkpoint, loaded without unpickling code."""
    path = Path(path)
    try:
        return torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal or a corrupt file: say which file
        raise CheckpointError(f"{path / STATE_NAME}: cannot be loaded safely ({type(e).__name__}: {e})") from e


def load_checkpoint_tensors(path: str | Path, name: str) -> dict[str, torch.Tensor] | None:
    """The ``<name>.safetensors`` weights of a checkpoint, or None when the checkpoint has none (older runs)."""
    from safetensors.torch import load_file

    file = Path(path) / f"{name}.safetensors"
    return load_file(str(file)) if file.is_file() else None
