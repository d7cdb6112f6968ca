"""Scores ranking weights: magnitude, gradient magnitude and random."""

from jaxsparse.scores._scores import Score, gradient_magnitude, magnitude, random

__all__ = [
    "Score",
    "gradient_magnitude",
    "magnitude",
    "random",
]
