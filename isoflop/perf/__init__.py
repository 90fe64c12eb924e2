"""Performance model (torch-free): memory per GPU, step time, MFU, and the parallel-layout search."""

from isoflop.perf.constants import PerfConstants, calibratable, calibration_path, load_constants
from isoflop.perf.estimate import Estimate, estimate, evaluate
from isoflop.perf.layout import Layout, LayoutArrays, validate
from isoflop.perf.search import fit_hints, search_layouts
from isoflop.perf.workload import Workload

__all__ = [
    "Estimate",
    "Layout",
    "LayoutArrays",
    "PerfConstants",
    "Workload",
    "calibratable",
    "calibration_path",
    "estimate",
    "evaluate",
    "fit_hints",
    "load_constants",
    "search_layouts",
    "validate",
]
