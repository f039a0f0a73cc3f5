"""Turn a CLI ``--data`` argument into a dataset config: ``shapes`` (the built-in captioned shapes, held-out seed)
or a folder in ImageFolder layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vistok.errors import DataError

HELD_OUT_SHAPES_SEED = 1000


def data_cfg_from_arg(data: str, resolution: int, num_images: int | None = None) -> dict[str, Any]:
    if data == "shapes":
        return {"name": "shapes", "resolution": resolution, "size": num_images or 1000, "seed": HELD_OUT_SHAPES_SEED}
    if not Path(data).is_dir():
        raise DataError(f"--data {data}: not a folder; pass an ImageFolder-layout folder (root/<class>/*.jpg) "
                        "or 'shapes'")
    return {"name": "imagefolder", "root": str(data), "resolution": resolution}
