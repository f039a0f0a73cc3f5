"""Quantizers: one module each, all returning :class:`QuantizerOutput` (see ``base.py``)."""

from vistok.quantizers.base import Quantizer, QuantizerOutput
from vistok.quantizers.binary import BinaryQuantizer  # noqa: F401
from vistok.quantizers.dimwise import DimwiseQuantizer  # noqa: F401
from vistok.quantizers.dual import DualCodebookQuantizer  # noqa: F401
from vistok.quantizers.fsq import FiniteScalarQuantizer  # noqa: F401
from vistok.quantizers.lfq import GroupLFQ  # noqa: F401
from vistok.quantizers.vq import VectorQuantizer

__all__ = ["Quantizer", "QuantizerOutput", "VectorQuantizer"]
