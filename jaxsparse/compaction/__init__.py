"""Compaction: remove zero structures for real and run a smaller dense model with the same outputs."""

from jaxsparse.compaction._compact import CompactModel, LeafReport, compact

__all__ = ["CompactModel", "LeafReport", "compact"]
