"""Compressed weight layouts and their exact conversions."""

from .bitmap import BitmapWeight, from_semi24, to_semi24
from .csr16 import Csr16Weight
from .semi24 import Semi24Layout, semi24_layout

__all__ = ["BitmapWeight", "Csr16Weight", "Semi24Layout", "from_semi24", "semi24_layout", "to_semi24"]
