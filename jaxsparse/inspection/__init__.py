"""Inspecting sparsity: per-layer statistics and summary tables."""

from jaxsparse.inspection._summary import LayerStats, layer_stats, summary, total_sparsity

__all__ = [
    "LayerStats",
    "layer_stats",
    "summary",
    "total_sparsity",
]
