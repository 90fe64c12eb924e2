"""isoflop: compute-optimal LLM training, planned before it is paid for and checked after."""

__version__ = "0.1.0"
