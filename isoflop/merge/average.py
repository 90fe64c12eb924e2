"""Checkpoint averaging along one run: LAWA, LAtest Weight Averaging (Kaddour 2022; Sanyal et al. 2023, Sec. 3):
the uniform average of the last ``K`` checkpoints of a pretraining run, exported as a Hugging Face folder.

The run's DCP checkpoints are read one at a time into a running sum, so memory holds two copies of the weights
(the sum and the checkpoint being read), not ``K``. The run must have kept ``K`` checkpoints
(``train.keep_checkpoints >= K`` with ``train.ckpt_every`` set)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from isoflop.errors import IsoflopError
from isoflop.merge.engine import CARRIED, prepare_out, publish


@dataclass(frozen=True)
class AverageResult:
    out: str
    run: str
    steps: list[int]
    tensors: int
    seconds: float


def run_checkpoints(run: Path, last: int) -> list[tuple[int, Path]]:
    """The last ``last`` complete checkpoints of ``run``, oldest first."""
    from isoflop.train.checkpoint import complete_checkpoints

    if last < 1:
        raise IsoflopError(f"--last {last} is not a positive count; average at least one checkpoint")
    if not (run / "config.yaml").is_file():
        raise IsoflopError(f"{run} is not an isoflop run folder (no config.yaml); pass the --out of `isoflop train`")
    found = complete_checkpoints(run / "checkpoints")
    if len(found) < last:
        raise IsoflopError(
            f"{run} has {len(found)} complete checkpoints but --last {last} needs {last}; lower --last, or retrain "
            f"with train.ckpt_every set and train.keep_checkpoints >= {last}"
        )
    return found[-last:]


def load_weights(model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The model weights of one DCP checkpoint (optimizer state not read), keyed like ``model.state_dict()``."""
    import torch.distributed.checkpoint as dcp

    from isoflop.train.checkpoint import SafeFileSystemReader, _quiet

    reader = SafeFileSystemReader(str(path))
    reader.read_metadata()
    state = {"model": {k: torch.empty_like(v) for k, v in model.state_dict().items()}}
    with _quiet():
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))
    return state["model"]


def average_weights(model: torch.nn.Module, paths: list[Path]) -> dict[str, torch.Tensor]:
    """The uniform average of the checkpoints' weights (float32 running sum, one checkpoint in memory at a time)."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        for k, v in load_weights(model, path).items():
            if k in total:
                total[k].add_(v.float())
            else:
                total[k] = v.float().clone()
    return {k: v / len(paths) for k, v in total.items()}


def average_run(run: str | Path, last: int, out: str | Path, force: bool = False) -> AverageResult:
    """Average the last ``last`` checkpoints of ``run`` into the HF folder ``out`` (with the run's tokenizer)."""
    from isoflop.train.config import load_train_config
    from isoflop.train.export import export_hf
    from isoflop.train.model import build_model

    start = time.perf_counter()
    run, out = Path(run), Path(out)
    chosen = run_checkpoints(run, last)
    cfg = load_train_config(run / "config.yaml")
    model = build_model(cfg.model, "cpu")
    averaged = average_weights(model, [p for _, p in chosen])
    model.load_state_dict(averaged, strict=True)
    tmp = prepare_out(out, force)
    try:
        export_hf(model, tmp)
        hf = run / "hf"
        for name in CARRIED:
            if (hf / name).is_file():
                shutil.copyfile(hf / name, tmp / name)
        if (hf / "config.json").is_file():  # the run's own export carries its tokenizer's BOS/EOS ids
            shutil.copyfile(hf / "config.json", tmp / "config.json")
        result = AverageResult(str(out), str(run), [s for s, _ in chosen], len(averaged), 0.0)
        (tmp / "merge.json").write_text(json.dumps({"average": result.__dict__}, indent=2) + "\n")
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AverageResult(**{**result.__dict__, "seconds": time.perf_counter() - start})
