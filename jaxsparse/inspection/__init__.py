"""Inspecting sparsity: per-layer statistics, summary tables, theoretical FLOPs and the penalty."""

from jaxsparse.inspection._flops import inference_flops_ratio, layer_flops, training_flops_ratio
from jaxsparse.inspection._penalty import penalty
from jaxsparse.inspection._summary import LayerStats, layer_stats, summary, total_sparsity

__all__ = [
    "LayerStats",
    "inference_flops_ratio",
    "layer_flops",
    "layer_stats",
    "penalty",
    "summary",
    "total_sparsity",
    "training_flops_ratio",
]
