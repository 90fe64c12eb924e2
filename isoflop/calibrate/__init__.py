"""Calibrate the performance model on measured runs (a ladder registry or a user's CSV/JSON file)."""

from isoflop.calibrate.fit import GpuCalibration, calibrate, write_calibration
from isoflop.calibrate.measured import Measurement, from_file, from_registry

__all__ = ["GpuCalibration", "Measurement", "calibrate", "from_file", "from_registry", "write_calibration"]
