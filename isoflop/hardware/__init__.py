"""Hardware catalog (torch-free)."""

from isoflop.hardware.catalog import DTYPES, GPU, get_gpu, load_catalog

__all__ = ["DTYPES", "GPU", "get_gpu", "load_catalog"]
