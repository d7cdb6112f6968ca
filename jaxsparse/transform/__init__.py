"""The optax wrapper: sparse training with any optimizer."""

from jaxsparse.transform._forward import forward_params
from jaxsparse.transform._slots import reset_slots, slot_owners
from jaxsparse.transform._sparsify import sparsify
from jaxsparse.transform._state import SparsifyState, find_sparsify_state, masks_of

__all__ = [
    "SparsifyState",
    "find_sparsify_state",
    "forward_params",
    "masks_of",
    "reset_slots",
    "slot_owners",
    "sparsify",
]
