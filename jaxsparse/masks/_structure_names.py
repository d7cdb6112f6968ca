"""Structures by name: the spellings ``jaxsparse train --structure`` and the benchmarks accept.

========================  ===============================================================
name                      structure
========================  ===============================================================
``unstructured``          :class:`Unstructured` (single weights; the default)
``N:M`` (``2:4``, ...)    :class:`NM` ``(N, M)`` along the reduction axis
``block:BHxBW``           :class:`Blocks` ``((BH, BW))`` over a kernel's last two axes
``channel``               :class:`OutputChannels`: neurons of dense layers, filters of convs
``input_channel``         :class:`InputChannels`
``heads``                 :func:`attention_heads`: heads in attention, neurons elsewhere
``fan_in``                :class:`FanIn`: constant fan-in
========================  ===============================================================
"""

from __future__ import annotations

import re

from jaxsparse.masks._layout import StructureSpec
from jaxsparse.masks._structure import NM, Blocks, FanIn, InputChannels, OutputChannels, Unstructured, attention_heads

__all__ = ["STRUCTURE_NAMES", "parse_structure"]

STRUCTURE_NAMES = ("unstructured", "N:M", "block:BHxBW", "channel", "input_channel", "heads", "fan_in")
"""The accepted spellings (``N:M`` and ``block:BHxBW`` stand for numbers, e.g. ``2:4``, ``block:8x8``)."""

_FIXED = {
    "unstructured": Unstructured,
    "channel": OutputChannels,
    "input_channel": InputChannels,
    "heads": attention_heads,
    "fan_in": FanIn,
}


def parse_structure(name: str) -> StructureSpec:
    """The structure called ``name`` (see the module docstring).

    Raises:
      ValueError: an unknown name, or numbers that do not make a structure (``4:2``); the message
        lists the spellings.

    Example:
      >>> parse_structure("2:4"), parse_structure("block:8x8")
      (NM(n=2, m=4, axis=None), Blocks(block=(8, 8), axes=(-2, -1)))
    """
    text = str(name).strip()
    if text in _FIXED:
        return _FIXED[text]()
    try:
        if match := re.fullmatch(r"(\d+):(\d+)", text):
            return NM(int(match[1]), int(match[2]))
        if match := re.fullmatch(r"block:(\d+)x(\d+)", text):
            return Blocks((int(match[1]), int(match[2])))
    except ValueError as error:
        raise ValueError(f"structure {text!r}: {error}") from None
    raise ValueError(
        f"unknown structure {text!r}; choose one of {', '.join(STRUCTURE_NAMES)} "
        "(N:M and block:BHxBW with numbers, e.g. 2:4, 1:4, 2:8, 1:16, block:8x8)."
    )
