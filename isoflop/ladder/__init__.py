"""IsoFLOP ladders: design a grid, run it (resumably, concurrently), fit approaches 2 and 3, predict and verify a
held-out run (``run_pipeline``); the registry, runner and fits are importable on their own."""

from isoflop.ladder.grid import GridPoint, LadderDesign, design_grid
from isoflop.ladder.presets import PRESETS, get_ladder_preset
from isoflop.ladder.registry import Registry, RunRecord

__all__ = ["GridPoint", "LadderDesign", "PRESETS", "Registry", "RunRecord", "design_grid", "get_ladder_preset"]
