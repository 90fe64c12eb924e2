"""Model description and exact accounting (torch-free)."""

from isoflop.spec.accounting import FlopCount, ParamCount, count_flops, count_params
from isoflop.spec.loader import get_model_preset, load_spec, preset_names, spec_from_dict
from isoflop.spec.model import ModelSpec

__all__ = [
    "FlopCount",
    "ModelSpec",
    "ParamCount",
    "count_flops",
    "count_params",
    "load_spec",
    "get_model_preset",
    "preset_names",
    "spec_from_dict",
]
