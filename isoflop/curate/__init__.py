"""Data curation on datatrove (``isoflop data curate``): quality filters, exact and MinHash deduplication,
n-gram decontamination, and shards that ``isoflop train`` and ``isoflop ladder --data`` read.

The recipe, manifest and mixing modules import without datatrove; the pipeline needs the ``curate`` extra.
"""

from __future__ import annotations

from isoflop.errors import IsoflopError


def require_datatrove() -> None:
    """Raise the one-line missing-extra error when datatrove (the ``curate`` extra) is absent."""
    try:
        import datatrove  # noqa: F401
    except ImportError:
        raise IsoflopError("data curation needs the 'curate' extra; pip install isoflop[curate]") from None
