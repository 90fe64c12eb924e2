"""Scaling laws (torch-free): law forms and presets (``forms``), the three fitting approaches of Hoffmann et al.
2022 (``fit``), bootstrap intervals (``bootstrap``), compute-optimal allocation and hyperparameter recommendations.

Imports run one way: ``forms`` (pure math) <- ``fit`` (``fit.fit(law, *runs)``) <- ``bootstrap``
(``bootstrap.bootstrap(law, R)``)."""

from isoflop.laws.forms import (
    PRESETS,
    AllocationLaw,
    ChinchillaLaw,
    DataConstrainedLaw,
    KaplanLaw,
    Law,
    PowerLaw,
    SaturatingPowerLaw,
    get_law_preset,
    law_from_dict,
    load_law,
)
from isoflop.laws.moe import GranularityLaw, RoutedLaw  # registers the MoE forms and presets

__all__ = [
    "PRESETS",
    "AllocationLaw",
    "ChinchillaLaw",
    "DataConstrainedLaw",
    "KaplanLaw",
    "Law",
    "PowerLaw",
    "SaturatingPowerLaw",
    "law_from_dict",
    "load_law",
    "get_law_preset",
    "GranularityLaw",
    "RoutedLaw",
]
