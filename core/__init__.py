"""Parallel-branch decoding engine.

Decode the independent steps of a model's reasoning concurrently inside one
sequence and one KV cache: plan titled branches, decode one token of every
live branch per forward pass under a tree attention mask, then merge.

    >>> from pbd_core import ParallelBranchDecoder
    >>> decoder = ParallelBranchDecoder.from_pretrained()  # doctest: +SKIP
    >>> result = decoder.generate("Compare cats and dogs.", branches=["Cats", "Dogs"])  # doctest: +SKIP
"""

from .constraints import TokenConstraint
from .decoder import ParallelBranchDecoder
from .executors.forest import AdmissionTimeout
from .options import DecodeOptions
from .prompting import RawPrompt, TokenIds
from .readable import ReadableText
from .reading_order import ReadingOrder
from .types import (
    BranchEndEvent,
    BranchResult,
    BranchStartEvent,
    DecodeResult,
    DecodeStats,
    FinalEvent,
    StreamEvent,
    TokenEvent,
)

__all__ = [
    "AdmissionTimeout",
    "BranchEndEvent",
    "BranchResult",
    "BranchStartEvent",
    "DecodeOptions",
    "DecodeResult",
    "DecodeStats",
    "FinalEvent",
    "ParallelBranchDecoder",
    "RawPrompt",
    "ReadableText",
    "ReadingOrder",
    "StreamEvent",
    "TokenConstraint",
    "TokenEvent",
    "TokenIds",
]

__version__ = "0.1.0"
