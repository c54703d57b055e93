"""Compressed weight layouts, their exact conversions, and the storage each owns.

``formats.get(name)`` gives the :class:`WeightFormat` of "2:4", "unstructured" (the bitmap
format), "csr16" or "dense": compress a dense matrix, the exact dense matrix back, the checks of a
module's tensors, and the checkpoint entry both ways.
"""

from .base import WeightFormat, get, names, register
from .bitmap import BitmapWeight
from .bitmap_tiles import TiledBitmapWeight
from .csr16 import Csr16Weight
from .dense import DenseFormat  # noqa: F401  (registers "dense")
from .semi24 import Semi24Layout, from_semi24, semi24_layout, to_semi24

__all__ = ["BitmapWeight", "Csr16Weight", "Semi24Layout", "TiledBitmapWeight", "WeightFormat", "from_semi24", "get",
           "names", "register", "semi24_layout", "to_semi24"]
