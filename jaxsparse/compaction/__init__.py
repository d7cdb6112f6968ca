"""Compaction: remove zero structures for real and run a smaller dense model with the same outputs."""

from jaxsparse.compaction._compact import CompactModel, LeafReport, compact
from jaxsparse.compaction._coupled_leaves import coupled_leaves
from jaxsparse.compaction._files import DamagedCompactedModelError, load_compacted, save_compacted

__all__ = [
    "CompactModel",
    "DamagedCompactedModelError",
    "LeafReport",
    "compact",
    "coupled_leaves",
    "load_compacted",
    "save_compacted",
]
