"""Masks, their structure, the layout that decides which leaves are sparse, and mask-tree utilities."""

from jaxsparse.masks._layout import LayerPlan, LeafFilter, SparsityLayout, default_filter, leaf_name, natural_key
from jaxsparse.masks._masked import masked
from jaxsparse.masks._masks import (
    MaskPair,
    Masks,
    Params,
    apply_masks,
    check_masks,
    expand_masks,
    mask_leaves,
    masks_from_leaves,
    random_masks,
)
from jaxsparse.masks._structure import OutputChannels, Structure, Unstructured

__all__ = [
    "LayerPlan",
    "LeafFilter",
    "MaskPair",
    "Masks",
    "OutputChannels",
    "Params",
    "SparsityLayout",
    "Structure",
    "Unstructured",
    "apply_masks",
    "check_masks",
    "default_filter",
    "expand_masks",
    "leaf_name",
    "mask_leaves",
    "masked",
    "masks_from_leaves",
    "natural_key",
    "random_masks",
]
