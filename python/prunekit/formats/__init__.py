"""Compressed weight layouts and their exact conversions."""

from .semi24 import Semi24Layout, semi24_layout

__all__ = ["Semi24Layout", "semi24_layout"]
