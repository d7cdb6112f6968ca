"""Exact top-k selection: order keys for floats and radix-select top-k masks."""

from jaxsparse.selection._order_keys import order_keys
from jaxsparse.selection._top_k import global_top_k_masks, top_k_mask

__all__ = [
    "global_top_k_masks",
    "order_keys",
    "top_k_mask",
]
