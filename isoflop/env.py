"""isoflop's environment variables, read in one place with one rule: an unset or empty variable is absent, and a
path has ``~`` expanded.

* ``ISOFLOP_HARDWARE``: a user hardware YAML file, added to the GPU catalog (``isoflop.hardware``).
* ``ISOFLOP_CALIBRATION``: the perf-constants calibration file (``isoflop.perf.constants``).
* ``ISOFLOP_CACHE``: the cache folder (tokenized data, CPU peak measurements); default ``~/.cache/isoflop``.
* ``ISOFLOP_GPU``: the catalog name of the GPU the trainer runs on, when its device name does not say.
* ``ISOFLOP_THREADS``: torch threads of a ladder worker.
* ``ISOFLOP_TRAIN_ENTRY``: ``module:function`` a ladder worker runs instead of the trainer.
* ``ISOFLOP_TRAIN_LAUNCHED``: set by ``isoflop train`` around its torchrun launch.
"""

from __future__ import annotations

import os
from pathlib import Path

HARDWARE = "ISOFLOP_HARDWARE"
CALIBRATION = "ISOFLOP_CALIBRATION"
CACHE = "ISOFLOP_CACHE"
GPU = "ISOFLOP_GPU"
THREADS = "ISOFLOP_THREADS"
TRAIN_ENTRY = "ISOFLOP_TRAIN_ENTRY"
TRAIN_LAUNCHED = "ISOFLOP_TRAIN_LAUNCHED"

DEFAULT_CACHE = Path("~/.cache/isoflop")


def get(name: str) -> str | None:
    """The variable's value; ``None`` when unset or empty."""
    return os.environ.get(name) or None


def path(name: str, default: str | Path | None = None) -> Path | None:
    """The variable as a path with ``~`` expanded, else ``default`` (expanded too), else ``None``."""
    value = get(name) or default
    return None if value is None else Path(value).expanduser()


def cache_dir() -> Path:
    """``$ISOFLOP_CACHE``, else ``~/.cache/isoflop``."""
    return path(CACHE, DEFAULT_CACHE)


def repo_pythonpath(environ: dict[str, str] | None = None) -> str:
    """``PYTHONPATH`` with the folder this ``isoflop`` package is imported from first, so that child processes
    (ladder workers, torchrun workers) import the same code whatever their working directory."""
    environ = os.environ if environ is None else environ
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([root, *[p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]])
