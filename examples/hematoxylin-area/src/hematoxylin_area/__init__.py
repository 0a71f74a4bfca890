"""histoia-hematoxylin-area: the hematoxylin-area pipeline for Histo-IA (see pipeline.py)."""

from .pipeline import HematoxylinArea

__all__ = ["HematoxylinArea"]
