"""Layer-wise sparsity distributions (uniform, Erdős–Rényi, Erdős–Rényi-Kernel)."""

from jaxsparse.distributions._densities import DISTRIBUTIONS, layer_sparsities, validate_sparsity, zeros_count

__all__ = [
    "DISTRIBUTIONS",
    "layer_sparsities",
    "validate_sparsity",
    "zeros_count",
]
