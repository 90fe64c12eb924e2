"""Scaling laws (torch-free): law forms and presets, the three fitting approaches of Hoffmann et al. 2022,
bootstrap intervals, compute-optimal allocation and hyperparameter recommendations."""

from isoflop.laws.forms import (
    PRESETS, AllocationLaw, ChinchillaLaw, DataConstrainedLaw, KaplanLaw, Law, SaturatingPowerLaw, law_from_dict,
    load_law, preset_law,
)

__all__ = [
    "PRESETS", "AllocationLaw", "ChinchillaLaw", "DataConstrainedLaw", "KaplanLaw", "Law", "SaturatingPowerLaw",
    "law_from_dict", "load_law", "preset_law",
]
