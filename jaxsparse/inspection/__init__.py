"""Inspecting sparsity: per-layer statistics, summary tables and theoretical FLOPs."""

from jaxsparse.inspection._flops import inference_flops_ratio, layer_flops, training_flops_ratio
from jaxsparse.inspection._summary import LayerStats, layer_stats, summary, total_sparsity

__all__ = [
    "LayerStats",
    "inference_flops_ratio",
    "layer_flops",
    "layer_stats",
    "summary",
    "total_sparsity",
    "training_flops_ratio",
]
