"""Masks, their structure, the layout that decides which leaves are sparse, and mask-tree utilities."""

from jaxsparse.masks._layout import (
    LayerPlan,
    LeafFilter,
    SparsityLayout,
    StructureSpec,
    default_filter,
    fixed_sparsity,
    leaf_name,
    leaf_names,
    natural_key,
    structures_of,
)
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
from jaxsparse.masks._scored import masks_from_scores
from jaxsparse.masks._structure import (
    NM,
    Blocks,
    FanIn,
    Heads,
    InputChannels,
    OutputChannels,
    Structure,
    Unstructured,
    attention_heads,
)
from jaxsparse.masks._structure_names import STRUCTURE_NAMES, parse_structure

__all__ = [
    "NM",
    "STRUCTURE_NAMES",
    "Blocks",
    "FanIn",
    "Heads",
    "InputChannels",
    "LayerPlan",
    "LeafFilter",
    "MaskPair",
    "Masks",
    "OutputChannels",
    "Params",
    "SparsityLayout",
    "Structure",
    "StructureSpec",
    "Unstructured",
    "attention_heads",
    "apply_masks",
    "check_masks",
    "default_filter",
    "expand_masks",
    "fixed_sparsity",
    "leaf_name",
    "leaf_names",
    "mask_leaves",
    "masked",
    "masks_from_leaves",
    "masks_from_scores",
    "natural_key",
    "parse_structure",
    "random_masks",
    "structures_of",
]
