"""jaxsparse: exact, jittable sparse training (SET, RigL, Top-KAST, ...) as optax transformations.

Example:
  >>> import jax, optax, jaxsparse as jsp
  >>> algo = jsp.rigl(sparsity=0.9, end_step=1000)
  >>> tx = jsp.sparsify(optax.adam(1e-3), algo, key=jax.random.key(0))
"""

# A private name: the namespace holds only `__all__` and the subpackages (tests/test_cli_output.py).
from importlib import metadata as _metadata

from jaxsparse import (
    algorithms,
    distributed,
    distributions,
    inspection,
    masks,
    one_shot,
    pruning_at_init,
    regularizers,
    schedules,
    scores,
    selection,
    transform,
)
from jaxsparse.algorithms import (
    SparseAlgorithm,
    gap,
    gradual_magnitude,
    imp,
    l1_filter,
    movement,
    nm_sr_ste,
    nm_ste,
    rigl,
    set_,
    snfs,
    srigl,
    ssl,
    static,
    top_kast,
)
from jaxsparse.inspection import layer_stats, summary, total_sparsity
from jaxsparse.masks import MaskPair, SparsityLayout
from jaxsparse.selection import global_top_k_masks, top_k_mask
from jaxsparse.transform import SparsifyState, apply_masks, forward_params, masks_of, sparsify

try:
    __version__ = _metadata.version("jaxsparse")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "MaskPair",
    "SparseAlgorithm",
    "SparsifyState",
    "SparsityLayout",
    "__version__",
    "algorithms",
    "apply_masks",
    "distributed",
    "distributions",
    "forward_params",
    "gap",
    "global_top_k_masks",
    "gradual_magnitude",
    "imp",
    "inspection",
    "l1_filter",
    "layer_stats",
    "masks",
    "masks_of",
    "movement",
    "nm_sr_ste",
    "nm_ste",
    "one_shot",
    "pruning_at_init",
    "regularizers",
    "rigl",
    "schedules",
    "scores",
    "selection",
    "set_",
    "snfs",
    "sparsify",
    "srigl",
    "ssl",
    "static",
    "summary",
    "top_k_mask",
    "top_kast",
    "total_sparsity",
    "transform",
]
