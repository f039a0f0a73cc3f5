"""A held-out split of an ImageNet-layout folder by class, made of symbolic links (nothing is copied), so a tokenizer
can be trained on one part and measured on images of classes it never saw."""

from __future__ import annotations

import os
from pathlib import Path

from vistok.errors import DataError


def split_by_class(src: str | Path, dst: str | Path, every: int = 6) -> dict[str, int]:
    """Link the class folders of ``src`` into ``dst/train`` and ``dst/heldout`` (every ``every``-th class, in sorted
    order, held out); returns the number of files in each part. Running it again is a no-op."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder; pass an ImageNet-layout folder (one sub-folder per class)")
    classes = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < every:
        raise DataError(f"{src}: {len(classes)} class folders; a split holding out every {every}th class needs at "
                        f"least {every}")
    counts = {"train": 0, "heldout": 0}
    for i, cls in enumerate(classes):
        part = "heldout" if i % every == every - 1 else "train"
        target = dst / part / cls.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(cls.resolve(), target, target_is_directory=True)
        counts[part] += sum(1 for f in cls.iterdir() if f.is_file())
    return counts
