"""Dermatology imaging pipeline: ISIC-style lesion classification and acne lesion segmentation."""

__version__ = "0.1.0"
