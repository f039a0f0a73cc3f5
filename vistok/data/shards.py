"""An image folder as WebDataset tar shards (the format bytedance/1d-tokenizer trains TiTok from), and a dataset that
reads them.

    python -m vistok.data.shards --src /data/imagenet/train --out /data/imagenet-wds/train --shard-size 1000

Conversion (``webdataset.ShardWriter``): every readable image of ``--src`` (ImageFolder layout; unreadable files are
skipped with a warning, as ``dataset/imagefolder`` does) becomes one sample ``<key>.<ext>`` (the original file bytes,
not re-encoded), ``<key>.cls`` (the label: the class folder's index in sorted order) and ``<key>.json`` (class
folder and source path), in ``shard-000000.tar``, ``shard-000001.tar``, … of ``--shard-size`` samples each. The
shards are plain WebDataset tars: ``webdataset.WebDataset`` and other tar readers stream them.

``index.json`` next to the shards lists them with the class folders, and ``index.npz`` holds each sample's shard,
byte offset, size and label, so :class:`ShardDataset` (``dataset/shards``) opens any sample directly. Random access
keeps vistok's training order (a function of seed and step, split across ranks, resumable) instead of the streaming
order of a shard shuffle buffer; on a local or network file system a seek per image costs nothing next to decoding
it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vistok.data.imagefolder import Augment, ImageFolderDataset, draw_rng
from vistok.data.imageio import UnreadableImageError, center_crop_resize, to_rgb, uint8_to_tensor
from vistok.data.imagenet_names import wnid_to_name
from vistok.errors import DataError
from vistok.registry import register

if __name__ == "__main__":  # `python -m vistok.data.shards`: the package already imported this file as a module;
    from vistok.data.shards import main as _main  # run that one, not a second copy that would register again

    sys.exit(_main())

INDEX_JSON, INDEX_NPZ = "index.json", "index.npz"
FORMAT = "vistok-webdataset-1"


def convert(src: str | Path, out: str | Path, shard_size: int = 1000, prefix: str = "shard",
            validate: bool = True, progress: bool = True) -> dict[str, Any]:
    """Write ``src`` (ImageFolder layout) as WebDataset shards + index under ``out``; returns the index summary."""
    import webdataset as wds

    if shard_size < 1:
        raise DataError(f"--shard-size must be >= 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob(f"{prefix}-*.tar")):
        raise DataError(f"{out} already holds {prefix}-*.tar shards; choose an empty --out folder")
    folder = ImageFolderDataset(src, resolution=64, validate=validate)  # lists, labels and checks the files
    pattern = str(out / f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for i, (path, label) in enumerate(tqdm(folder.samples, desc=f"writing {out}", disable=not progress)):
            ext = Path(path).suffix.lower().lstrip(".")
            sink.write({"__key__": f"{i:09d}", ext: Path(path).read_bytes(), "cls": label,
                        "json": {"class_id": folder.class_ids[label], "path": os.path.relpath(path, src)}})
    shards = sorted(p.name for p in out.glob(f"{prefix}-*.tar"))
    columns = {"shard": [], "offset": [], "size": [], "label": []}
    exts: list[str] = []
    for s, name in enumerate(shards):  # byte offsets of each image member, read from the tar headers
        with tarfile.open(out / name) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                if ext in ("cls", "json"):
                    continue
                label = folder.samples[int(key)][1]
                exts.append(ext)
                for col, v in zip(columns, (s, member.offset_data, member.size, label)):
                    columns[col].append(v)
    np.savez(out / INDEX_NPZ, **{k: np.asarray(v, dtype=np.int64) for k, v in columns.items()},
             ext=np.asarray(exts))
    summary = {"format": FORMAT, "source": str(src), "num_samples": len(exts), "shard_size": shard_size,
               "shards": shards, "class_ids": folder.class_ids, "skipped": [p for p, _ in folder.skipped]}
    (out / INDEX_JSON).write_text(json.dumps(summary, indent=1))
    return summary


@register("dataset", "shards")
class ShardDataset(Dataset):
    """Images from shards written by :func:`convert`, as ``{"image", "label", "caption", "index"}`` items like
    ``dataset/imagefolder`` (ADM center crop, or ``augment`` as there). Shard files are opened lazily in each
    process (DataLoader workers each open their own)."""

    def __init__(self, root: str | Path, resolution: int, augment: dict[str, Any] | None = None) -> None:
        self.root, self.resolution = Path(root), int(resolution)
        self.augment = Augment.from_config(augment)
        meta_path, arrays_path = self.root / INDEX_JSON, self.root / INDEX_NPZ
        if not meta_path.is_file() or not arrays_path.is_file():
            raise DataError(f"{self.root}: no {INDEX_JSON}/{INDEX_NPZ}; write shards with "
                            "python -m vistok.data.shards --src <imagefolder> --out <dir>")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise DataError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        arrays = np.load(arrays_path)
        self.shards = [self.root / name for name in meta["shards"]]
        missing = [str(p) for p in self.shards if not p.is_file()]
        if missing:
            raise DataError(f"{self.root}: shard files listed in {INDEX_JSON} are missing: {missing[:3]}")
        self.shard, self.offset, self.size = arrays["shard"], arrays["offset"], arrays["size"]
        self.labels, self.exts = arrays["label"], arrays["ext"]
        self.class_ids = list(meta["class_ids"])
        self.class_names = [wnid_to_name(c) or c.replace("_", " ") for c in self.class_ids]
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:  # open files stay in their process
        return {**self.__dict__, "_files": {}}

    def read_bytes(self, index: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker: never share a file offset with the parent
            self._files, self._pid = {}, os.getpid()
        s = int(self.shard[index])
        f = self._files.get(s)
        if f is None:
            f = self._files[s] = open(self.shards[s], "rb")  # noqa: SIM115 - kept open for the dataset's lifetime
        f.seek(int(self.offset[index]))
        return f.read(int(self.size[index]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        rng = draw_rng(self.augment.seed, index) if self.augment else None
        i = int(index) % n
        try:
            with Image.open(io.BytesIO(self.read_bytes(i))) as raw:
                raw.load()
                img = to_rgb(ImageOps.exif_transpose(raw))
        # Pillow raises many exception types on corrupt input; each one means the sample is unusable
        except Exception as e:
            shard = self.shards[int(self.shard[i])]
            raise UnreadableImageError(f"{shard} (sample {i})", f"{type(e).__name__}: {e}") from e
        out = self.augment(img, self.resolution, rng) if self.augment else center_crop_resize(img, self.resolution)
        label = int(self.labels[i])
        return {"image": uint8_to_tensor(np.asarray(out, dtype=np.uint8).copy()), "label": label,
                "caption": self.class_names[label], "index": i}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="image folder in ImageFolder layout (root/<class>/*.JPEG)")
    p.add_argument("--out", required=True, help="output folder for the .tar shards and the index")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    p.add_argument("--prefix", default="shard", help="shard file name prefix")
    p.add_argument("--no-validate", action="store_true", help="do not decode every file first (faster; a broken "
                   "file then fails at training time)")
    args = p.parse_args(argv)
    try:
        summary = convert(args.src, args.out, args.shard_size, args.prefix, validate=not args.no_validate)
    except DataError as e:
        print(f"shards: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['num_samples']} images in {len(summary['shards'])} shards to {args.out} "
          f"({len(summary['skipped'])} unreadable files skipped)")
    return 0

