"""Model definitions."""

from .allcnn import AllCNN

__all__ = ["AllCNN"]
