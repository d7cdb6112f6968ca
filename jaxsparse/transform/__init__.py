"""The optax wrapper: sparse training with any optimizer."""

from jaxsparse.transform._forward import apply_masks, forward_params
from jaxsparse.transform._slots import reset_slots, slot_owners
from jaxsparse.transform._sparsify import sparsify
from jaxsparse.transform._state import SparsifyState, find_sparsify_state, masks_of, resolve_masks

__all__ = [
    "SparsifyState",
    "apply_masks",
    "find_sparsify_state",
    "forward_params",
    "masks_of",
    "reset_slots",
    "resolve_masks",
    "slot_owners",
    "sparsify",
]
