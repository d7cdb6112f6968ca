"""Inspecting sparsity: per-layer statistics, summary tables, theoretical FLOPs and the penalty.

Not provided: the "pruned parameter efficiency" metric that Hoefler, Alistarh, Ben-Nun, Dryden and
Peste say they define ("Sparsity in Deep Learning", JMLR 22(241), 2021; arXiv:2102.00554). Its
definition could not be verified against the paper's text, so the library does not guess one; a run's
``summary.json`` reports accuracy, sparsity and the FLOPs ratios side by side instead.
"""

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
