"""Reusable building blocks of RADIO models."""

from .conditioner import InputConditioner
from .normalizers import FeatureNormalizer, IntermediateFeatureNormalizer
from .patch_generator import ClsToken, PatchGenerator
from .windows import window_partition, window_unpartition

__all__ = [
    "ClsToken",
    "FeatureNormalizer",
    "InputConditioner",
    "IntermediateFeatureNormalizer",
    "PatchGenerator",
    "window_partition",
    "window_unpartition",
]
