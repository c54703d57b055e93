"""Compressed weight layouts, their exact conversions, and the storage each owns.

``formats.get(name)`` gives the :class:`WeightFormat` of "2:4", "unstructured" (the bitmap
format), "csr16" or "dense": compress a dense matrix, the exact dense matrix back, the checks of a
module's tensors, and the checkpoint entry both ways; :func:`smallest_storage` is the format a
checkpoint stores a weight in (the smallest exact entry).
"""

from .base import WeightFormat, get, names, register
from .bitmap import BitmapWeight
from .bitmap_tiles import TiledBitmapWeight
from .csr16 import Csr16Weight
from .dense import DenseFormat  # noqa: F401  (registers "dense")
from .semi24 import Semi24Layout, from_semi24, semi24_layout, to_semi24
from .storage import checkpoint_sizes, smallest_storage

__all__ = ["BitmapWeight", "Csr16Weight", "Semi24Layout", "TiledBitmapWeight", "WeightFormat", "checkpoint_sizes",
           "from_semi24", "get", "names", "register", "semi24_layout", "smallest_storage", "to_semi24"]
