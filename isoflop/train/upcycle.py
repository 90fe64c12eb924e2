"""Start a run from another run's weights: ``isoflop train --init-from RUN [--upcycle EXPERTS,TOPK]``.

``--init-from RUN`` takes ``RUN/config.yaml`` as the new run's config (data, hence the tokenizer, carried
over; ``--set`` and ``--max-steps`` change the rest) and its newest verified checkpoint as the initial
weights. The data continues where that checkpoint stopped (with the same data, ``seq_len`` and seed; from the
start otherwise); the optimizer state and the step count start fresh.

Sparse upcycling (Komatsuzaki et al. 2022): ``--upcycle E,K`` turns a dense run into a mixture of ``E``
experts with top-``K`` routing (other MoE fields, e.g. ``model.router``, through ``--set``). Every expert of a
layer is a copy of that layer's dense MLP (``gate_up`` and ``down``); attention, norms, embeddings and the
output head are carried over unchanged. The router is new, as in the paper: it keeps the trainer's
initialisation of every linear layer, N(0, 0.02) (``model.py``), so the initial routing is close to uniform and
varies by token; the sigmoid router's selection bias starts at 0.

Since the experts are identical and the top-k weights of the softmax (Mixtral) and normalised sigmoid
(DeepSeek-V3) routers sum to 1, the upcycled model computes exactly the dense model's function until
training moves the experts apart. That holds for dropless routing (a ``capacity_factor`` drops some
assignments, which is allowed); shared experts would add an MLP the dense model does not have, and are refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from isoflop.errors import IsoflopError, quote
from isoflop.spec.model import ModelSpec
from isoflop.train.config import TrainConfig, load_train_config

if TYPE_CHECKING:
    from isoflop.train.data.sampler import PackedSampler

RUN_CONFIG = "config.yaml"
_MOE_FIELDS = ("n_experts", "top_k", "n_shared_experts", "router", "capacity_factor")


def parse_upcycle(text: str) -> tuple[int, int]:
    """``"8,2"`` -> ``(8, 2)``: experts and top-k."""
    parts = text.split(",")
    try:
        experts, top_k = (int(part) for part in parts)
    except ValueError:
        raise IsoflopError(f"--upcycle {quote(text)} is not EXPERTS,TOPK; write e.g. --upcycle 8,2") from None
    if not 1 <= top_k <= experts or experts < 2:
        raise IsoflopError(
            f"--upcycle {experts},{top_k} needs at least 2 experts and 1 <= top-k <= experts; write e.g. --upcycle 8,2"
        )
    return experts, top_k


def run_config(run: str | Path) -> tuple[Path, TrainConfig]:
    """The config file of training run folder ``run`` and its contents."""
    path = Path(run) / RUN_CONFIG
    if not path.is_file():
        raise IsoflopError(
            f"{quote(str(run))} is not a training run folder (no {RUN_CONFIG}); give the --out folder of an "
            "`isoflop train` run"
        )
    return path, load_train_config(path)


def init_overrides(run: str | Path, upcycle: str | None) -> tuple[Path, list[str]]:
    """The config path and the ``--set`` overrides that start a run from ``run`` (upcycled when ``upcycle`` is
    ``"E,K"``); the user's own overrides go after these."""
    path, cfg = run_config(run)
    items = [f"train.init_from={json.dumps(str(Path(run).resolve()))}"]
    if upcycle is not None:
        experts, top_k = parse_upcycle(upcycle)
        if cfg.model.is_moe:
            raise IsoflopError(
                f"cannot upcycle {quote(str(run))}: it already trains an MoE model ({cfg.model.n_experts} experts, "
                f"top-{cfg.model.top_k}); --upcycle takes a dense run, drop --upcycle to continue from this one"
            )
        name = json.dumps(f"{cfg.model.name}-upcycled-{experts}x{top_k}")
        items += [f"model.n_experts={experts}", f"model.top_k={top_k}", f"model.name={name}"]
    return path, items


def _dense_shape(spec: ModelSpec) -> dict:
    """The fields that an upcycled model shares with its dense source (everything but the name and MoE fields)."""
    return {k: v for k, v in spec.model_dump().items() if k != "name" and k not in _MOE_FIELDS}


def upcycle_state(dense: dict[str, Tensor], moe: dict[str, Tensor], spec: ModelSpec) -> dict[str, Tensor]:
    """The MoE model's state dict from a dense one: ``moe`` (the MoE model's own, initialised state) with every
    tensor but the routers (and their selection biases) replaced by the dense model's; each layer's experts are
    ``n_experts`` copies of its dense ``mlp.gate_up.weight`` (``mlp.up.weight`` for GELU) and ``mlp.down.weight``."""
    out = dict(moe)
    expert_keys = set()
    for i in range(spec.n_layers):
        p = f"layers.{i}.mlp."
        for name in ("gate_up", "up", "down"):  # gate_up for SwiGLU, up for GELU
            if p + name + ".weight" in dense:
                weight = dense[p + name + ".weight"]
                out[p + "experts." + name] = weight.unsqueeze(0).expand(spec.n_experts, *weight.shape).clone()
                expert_keys.add(p + name + ".weight")
    for key, value in dense.items():
        if key not in expert_keys:
            out[key] = value
    unknown = sorted(set(out) - set(moe))
    if unknown:
        raise IsoflopError(f"the dense checkpoint has tensors the MoE model lacks ({', '.join(unknown[:3])})")
    return out


def latest_weights(run: str | Path, spec: ModelSpec) -> tuple[Path, dict[str, Tensor]]:
    """The model weights (CPU, as saved) of the newest checkpoint of ``run`` that verifies; other runs'
    checkpoints are read only (an invalid one is skipped, never renamed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from isoflop.train.checkpoint import (
        CheckpointInvalid,
        SafeFileSystemReader,
        TensorOnlyLoadPlanner,
        _first_error,
        _quiet,
        complete_checkpoints,
        verify,
    )
    from isoflop.train.model import Transformer

    root = Path(run) / "checkpoints"
    with torch.device("meta"):
        shapes = Transformer(spec).state_dict()
    for _, path in reversed(complete_checkpoints(root)):
        try:
            verify(path)
        except CheckpointInvalid:
            continue
        state = {"model": {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shapes.items()}}
        with _quiet():  # DCP warns that it loads in one process: it is meant to (every rank reads the full weights)
            reader = SafeFileSystemReader(str(path))
            try:
                dcp.load(state, storage_reader=reader, planner=TensorOnlyLoadPlanner(), no_dist=True)
            except (Exception, CheckpointException) as exc:  # DCP's CheckpointException is a BaseException
                raise IsoflopError(
                    f"cannot read the model weights of {path} ({_first_error(exc)}); check that it is a checkpoint "
                    "of the run's own model"
                ) from None
        return path, state["model"]
    raise IsoflopError(f"{quote(str(run))} has no complete checkpoint that verifies; finish or resume that run first")


@torch.no_grad()
def init_from_run(model: nn.Module, run: str | Path) -> Path:
    """Load ``run``'s newest checkpoint into ``model`` (an unwrapped ``Transformer``), upcycling a dense
    checkpoint when ``model`` is an MoE; returns the checkpoint loaded."""
    _, source_cfg = run_config(run)
    source, target = source_cfg.model, model.spec
    if _dense_shape(source) != _dense_shape(target):
        differ = sorted(k for k, v in _dense_shape(source).items() if _dense_shape(target).get(k) != v)
        raise IsoflopError(
            f"cannot initialise from {quote(str(run))}: its model differs in {', '.join(differ)}; "
            "keep the source run's model fields (only the MoE fields may change, through --upcycle)"
        )
    path, weights = latest_weights(run, source)
    if target.is_moe and not source.is_moe:
        if target.n_shared_experts:
            raise IsoflopError(
                f"upcycling gives routed experts only; drop n_shared_experts={target.n_shared_experts} (set it to 0)"
            )
        weights = upcycle_state(weights, model.state_dict(), target)
    elif (source.n_experts, source.top_k, source.n_shared_experts) != (
        target.n_experts,
        target.top_k,
        target.n_shared_experts,
    ):
        raise IsoflopError(
            f"cannot initialise a {target.n_experts}-expert model from {quote(str(run))} "
            f"({source.n_experts} experts); keep its expert fields, or upcycle a dense run"
        )
    model.load_state_dict(weights, strict=True)
    return path


def continue_data(sampler: PackedSampler, checkpoint: Path, say: Callable[[str], None]) -> None:
    """Move ``sampler`` to the data position of ``checkpoint``, so the new run trains on the
    data that follows instead of replaying it; a run on other data, ``seq_len`` or seed starts at the beginning."""
    from isoflop.train.checkpoint import read_trainer_state

    try:
        sampler.load_state_dict(read_trainer_state(checkpoint, ("sampler",))["sampler"])
    except IsoflopError as exc:
        say(f"note: the data starts from the beginning: {str(exc).split(';')[0]}")
        return
    say(f"data continues after {checkpoint.name} (epoch {sampler.epoch}, window {sampler.pos})")
