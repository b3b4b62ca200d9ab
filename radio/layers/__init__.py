"""Reusable building blocks of RADIO models."""

from .conditioner import InputConditioner
from .mlp import NormMlp, SwiGLU
from .normalizers import FeatureNormalizer, IntermediateFeatureNormalizer
from .norms import DyT, ScaledLayerNorm
from .patch_generator import ClsToken, PatchGenerator
from .windows import window_partition, window_unpartition

__all__ = [
    "ClsToken",
    "DyT",
    "FeatureNormalizer",
    "InputConditioner",
    "IntermediateFeatureNormalizer",
    "NormMlp",
    "PatchGenerator",
    "ScaledLayerNorm",
    "SwiGLU",
    "window_partition",
    "window_unpartition",
]
