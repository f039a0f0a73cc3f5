"""vistok: interchangeable visual tokenizers, one GPT generator, one evaluation harness."""

__version__ = "0.1.0"

from vistok.registry import build, list_names, register  # noqa: E402
from vistok.spec import TokenSpec  # noqa: E402

__all__ = ["TokenSpec", "build", "list_names", "register", "load", "__version__"]


def load(directory, kind=None, map_location="cpu"):
    """Load any saved vistok model (tokenizer or generator) from a ``save_pretrained`` folder."""
    from vistok.hub import load_pretrained

    return load_pretrained(directory, kind=kind, map_location=map_location)
