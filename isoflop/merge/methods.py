"""The merge methods by name, with their inputs contract and parameter defaults (those of mergekit 0.1.5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from isoflop.errors import IsoflopError
from isoflop.merge.dare import drop_and_rescale
from isoflop.merge.linear import linear
from isoflop.merge.slerp import slerp
from isoflop.merge.task_arithmetic import task_arithmetic
from isoflop.merge.ties import trim


@dataclass(frozen=True)
class Method:
    name: str
    needs_base: bool
    normalize: bool  # default of the ``normalize`` parameter
    rescale: bool  # default of the ``rescale`` parameter (DARE)
    sparsify: str | None = None  # "trim" (TIES) or "drop" (DARE)
    consensus: bool = False  # TIES sign election
    two_models: bool = False  # SLERP: the base and exactly one other model
    negative_weights: bool = False  # task arithmetic: a negated task vector "forgets" (Ilharco et al. 2023, Sec. 3)


METHODS = {
    m.name: m
    for m in (
        Method("linear", needs_base=False, normalize=True, rescale=False),
        Method("slerp", needs_base=True, normalize=False, rescale=False, two_models=True),
        Method("task_arithmetic", needs_base=True, normalize=False, rescale=False, negative_weights=True),
        Method("ties", needs_base=True, normalize=True, rescale=False, sparsify="trim", consensus=True),
        Method("dare_ties", needs_base=True, normalize=False, rescale=True, sparsify="drop", consensus=True),
        Method("dare_linear", needs_base=True, normalize=False, rescale=True, sparsify="drop"),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise IsoflopError(f"unknown merge method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


@dataclass(frozen=True)
class TensorParams:
    """The parameters resolved for one tensor (per merged model where a list)."""

    weights: list[float]
    densities: list[float]
    t: float
    lam: float
    normalize: bool
    rescale: bool


def merge_tensor(
    method: Method,
    base: torch.Tensor | None,
    tensors: list[torch.Tensor],
    p: TensorParams,
    generator: torch.Generator,
) -> torch.Tensor:
    """One merged tensor, computed in float32 (float64 for float64 inputs)."""
    if method.name == "linear":
        return linear(tensors, p.weights, p.normalize)
    assert base is not None
    if method.name == "slerp":
        return slerp(p.t, base, tensors[0])
    sparsify = None
    if method.sparsify == "trim":
        sparsify = lambda d, i: trim(d, p.densities[i])
    elif method.sparsify == "drop":
        sparsify = lambda d, i: drop_and_rescale(d, p.densities[i], p.rescale, generator)
    return task_arithmetic(
        base, tensors, p.weights, lam=p.lam, normalize=p.normalize, sparsify=sparsify, consensus=method.consensus
    )
