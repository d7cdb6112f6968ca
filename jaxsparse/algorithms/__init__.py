# ruff: noqa: I001 (the imports register the algorithms, in this order: the registry order)
"""Sparse-training algorithms: immutable values bundling pure mask-update rules, and their registry.

Each algorithm is one module (its final class, its factory and one ``register`` call); importing
the module below registers it.
"""

from jaxsparse.algorithms._base import (
    AlgorithmState,
    ParamReset,
    SparseAlgorithm,
    grown_values,
    layer_key,
    masked_backward_cost,
    newly_active,
    sparse_forward_cost,
)
from jaxsparse.algorithms._registry import Method, ModelSpec, Option, Settings, lookup, register, registered
from jaxsparse.algorithms._magnitude_pruning import SCOPES
from jaxsparse.algorithms._static import Static, static
from jaxsparse.algorithms._drop_and_grow import DropAndGrow, drop_and_regrow, drop_count, rigl, set_
from jaxsparse.algorithms._top_kast import ExplorationPenalty, TopKast, top_kast
from jaxsparse.algorithms._gradual_magnitude import GRADUAL_CRITERIA, GradualMagnitude, GradualState, gradual_magnitude
from jaxsparse.algorithms._gap import GapState, GrowAndPrune, gap, gap_partitions
from jaxsparse.algorithms._parallel_gap import ParallelGrowAndPrune, parallel_gap, replica_axes
from jaxsparse.algorithms._srigl import GAMMA_SAL, StructuredRigL, srigl
from jaxsparse.algorithms._nm_ste import NMSte, SparseRefinedDecay, magnitude_masks, nm_sr_ste, nm_ste
from jaxsparse.algorithms._imp import REWINDS, ImpState, IterativeMagnitude, imp, imp_sparsity, parse_rewind
from jaxsparse.algorithms._snfs import SparseMomentum, SparseMomentumState, prune_count, regrowth_counts, snfs
from jaxsparse.algorithms._movement import MOVEMENT_VARIANTS, MovementPruning, MovementState, movement
from jaxsparse.algorithms._ssl import FINETUNE_STEPS, StructuredSparsityLearning, finetune_start, ssl
from jaxsparse.algorithms._l1_filter import l1_filter

__all__ = [
    "FINETUNE_STEPS",
    "GAMMA_SAL",
    "GRADUAL_CRITERIA",
    "MOVEMENT_VARIANTS",
    "REWINDS",
    "SCOPES",
    "AlgorithmState",
    "DropAndGrow",
    "ExplorationPenalty",
    "GapState",
    "GradualMagnitude",
    "GradualState",
    "GrowAndPrune",
    "ImpState",
    "IterativeMagnitude",
    "Method",
    "ModelSpec",
    "MovementPruning",
    "MovementState",
    "NMSte",
    "Option",
    "ParallelGrowAndPrune",
    "ParamReset",
    "Settings",
    "SparseAlgorithm",
    "SparseMomentum",
    "SparseMomentumState",
    "SparseRefinedDecay",
    "Static",
    "StructuredRigL",
    "StructuredSparsityLearning",
    "TopKast",
    "drop_and_regrow",
    "drop_count",
    "finetune_start",
    "gap",
    "gap_partitions",
    "gradual_magnitude",
    "grown_values",
    "imp",
    "imp_sparsity",
    "l1_filter",
    "layer_key",
    "lookup",
    "magnitude_masks",
    "masked_backward_cost",
    "movement",
    "newly_active",
    "nm_sr_ste",
    "nm_ste",
    "parallel_gap",
    "parse_rewind",
    "prune_count",
    "register",
    "registered",
    "regrowth_counts",
    "replica_axes",
    "rigl",
    "set_",
    "snfs",
    "sparse_forward_cost",
    "srigl",
    "ssl",
    "static",
    "top_kast",
]
