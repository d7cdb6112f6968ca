"""Sparse-training algorithms: immutable values bundling pure mask-update rules."""

from jaxsparse.algorithms._base import SparseAlgorithm
from jaxsparse.algorithms._drop_and_grow import DropAndGrow
from jaxsparse.algorithms._factories import gradual_magnitude, rigl, set_, static, top_kast
from jaxsparse.algorithms._gradual_magnitude import GradualMagnitude
from jaxsparse.algorithms._top_kast import TopKast

__all__ = [
    "DropAndGrow",
    "GradualMagnitude",
    "SparseAlgorithm",
    "TopKast",
    "gradual_magnitude",
    "rigl",
    "set_",
    "static",
    "top_kast",
]
