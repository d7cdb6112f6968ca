"""Masks, the layout that decides which leaves are sparse, and mask-tree utilities."""

from jaxsparse.masks._layout import LayerPlan, LeafFilter, SparsityLayout, default_filter, leaf_name
from jaxsparse.masks._masks import (
    MaskPair,
    Masks,
    Params,
    apply_masks,
    check_masks,
    forward_masks,
    masks_from_leaves,
    random_masks,
    trainable_masks,
)

__all__ = [
    "LayerPlan",
    "LeafFilter",
    "MaskPair",
    "Masks",
    "Params",
    "SparsityLayout",
    "apply_masks",
    "check_masks",
    "default_filter",
    "forward_masks",
    "leaf_name",
    "masks_from_leaves",
    "random_masks",
    "trainable_masks",
]
