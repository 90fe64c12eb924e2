"""Model description and exact accounting (torch-free)."""

from isoflop.spec.accounting import FlopCount, ParamCount, count_flops, count_params
from isoflop.spec.loader import load_spec, preset, preset_names, spec_from_dict
from isoflop.spec.model import ModelSpec

__all__ = [
    "FlopCount",
    "ModelSpec",
    "ParamCount",
    "count_flops",
    "count_params",
    "load_spec",
    "preset",
    "preset_names",
    "spec_from_dict",
]
