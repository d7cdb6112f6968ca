"""The optax wrapper: sparse training with any optimizer."""

from jaxsparse.transform._forward import forward_params
from jaxsparse.transform._slots import reset_slots, slot_owners
from jaxsparse.transform._sparsify import SparsifyState, masks_of, sparsify

__all__ = [
    "SparsifyState",
    "forward_params",
    "masks_of",
    "reset_slots",
    "slot_owners",
    "sparsify",
]
