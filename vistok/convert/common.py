"""What the converters share: reading a released checkpoint without unpickling code, a strict key map, and the
command line around them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vistok.errors import CheckpointError, VistokError


def read_state_dict(path: str | Path, what: str, containers: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Tensors of ``path``: a ``.safetensors`` file, a torch checkpoint (loaded with ``weights_only=True``; an
    ``argparse.Namespace`` of training arguments is allowed), or a folder holding ``model.safetensors`` or
    ``pytorch_model.bin`` (a hub snapshot). ``containers``: keys of a training checkpoint to take the weights from,
    first present wins (e.g. ``("ema", "model")``)."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"--ckpt {path}: the folder has no model.safetensors or pytorch_model.bin")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"--ckpt {path}: no such file; download the released {what} checkpoint first")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            ckpt = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch and safetensors raise several types for unreadable files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"--ckpt {path}: cannot read it as a weights file ({first})") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"--ckpt {path}: holds a {type(ckpt).__name__}, not a state dict")
    for key in containers:
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


class KeyMap:
    """Builds a converted state dict from ``source`` so that every source tensor is used exactly once (or dropped
    by name): :meth:`take` marks a key used, :meth:`finish` raises on anything left over."""

    def __init__(self, source: dict[str, torch.Tensor], what: str, dropped: tuple[str, ...] = ()) -> None:
        self.source, self.what = source, what
        self.used = set(dropped) & set(source)
        self.out: dict[str, torch.Tensor] = {}

    def take(self, key: str) -> torch.Tensor:
        if key not in self.source:
            raise CheckpointError(f"the {self.what} checkpoint has no {key!r}: its layout differs from the one "
                                  "its other tensors imply")
        self.used.add(key)
        return self.source[key]

    def finish(self) -> dict[str, torch.Tensor]:
        unused = sorted(set(self.source) - self.used)
        if unused:
            raise CheckpointError(f"the {self.what} checkpoint has tensors the key map does not place: "
                                  f"{unused[:4]}{'…' if len(unused) > 4 else ''}")
        return self.out


def converter_parser(name: str, description: str | None, ckpt_help: str) -> argparse.ArgumentParser:
    """``python -m vistok.convert.<name>``'s parser with the ``--ckpt`` and ``--out`` every converter takes."""
    p = argparse.ArgumentParser(prog=f"python -m vistok.convert.{name}", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help=ckpt_help)
    p.add_argument("--out", required=True, help="output folder (a vistok tokenizer, save_pretrained layout)")
    return p


def save_converted(name: str, convert: Callable[[], Any], out: str, describe: Callable[[Any], str]) -> int:
    """A converter command's end: run ``convert`` (a bad checkpoint or option is one line on stderr, exit 2), save
    the tokenizer to ``out`` and print ``wrote <out>: <describe(tokenizer)>``."""
    try:
        tokenizer = convert()
    except (VistokError, ValueError) as e:
        print(f"vistok.convert.{name}: error: {e}", file=sys.stderr)
        return 2
    tokenizer.save_pretrained(out)
    print(f"wrote {out}: {describe(tokenizer)}")
    return 0
