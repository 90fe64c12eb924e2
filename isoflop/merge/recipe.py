"""The merge recipe: mergekit-style YAML (``merge_method``, ``models`` with per-model ``parameters``,
``base_model``, global ``parameters``) or the same built from CLI flags.

A parameter is a number, a *gradient* (a list interpolated over the layers, ``t = layer / (n_layers - 1)``;
tensors outside the layers use ``t = 0``), or a list of ``{filter, value}`` conditions where the first one whose
``filter`` is a substring of the tensor name (or is absent / ``*``) applies: the rules of mergekit 0.1.5's
``evaluate_setting``, so a mergekit recipe means the same thing here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from isoflop.errors import IsoflopError, describe_validation_error
from isoflop.structured import read_json_or_yaml

Scalar = Union[float, int, bool]  # noqa: UP007 (a runtime alias for pydantic)
Setting = Union[Scalar, list[Scalar], list["Condition"]]  # noqa: UP007 (forward reference)


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Scalar | list[Scalar]
    filter: str | None = None


Condition.model_rebuild()

_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, Setting] = {}


class MergeRecipe(BaseModel):
    """What to merge and how; ``models`` may include the base model (as in mergekit), which then only serves
    as the base."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Setting] = {}
    dtype: str | None = None
    seed: int = 0

    @field_validator("models", mode="before")
    @classmethod
    def _plain_paths(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value

    def model_paths(self) -> list[str]:
        """The merged models, base excluded, in recipe order."""
        return [m.model for m in self.models if m.model != self.base_model]

    def entry(self, path: str) -> ModelEntry:
        return next(m for m in self.models if m.model == path)


def read_recipe(path: Path) -> MergeRecipe:
    """A recipe from a YAML/JSON file; model paths are taken relative to the file's folder."""
    if not path.is_file():
        raise IsoflopError(f"merge config {path} not found; pass a YAML recipe or use --method/--models flags")
    raw = read_json_or_yaml(path, "merge config", "fix the YAML (see `isoflop merge --help`)")
    if not isinstance(raw, dict):
        raise IsoflopError(f"merge config {path} is not a mapping; give merge_method, models and parameters")
    try:
        recipe = MergeRecipe.model_validate(raw)
    except ValidationError as exc:
        raise IsoflopError(f"merge config {path}: {describe_validation_error(exc)}") from None

    def rel(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (path.parent / q))

    for m in recipe.models:
        m.model = rel(m.model)
    if recipe.base_model is not None:
        recipe.base_model = rel(recipe.base_model)
    return recipe


def layer_t(name: str, n_layers: int) -> float:
    """mergekit's gradient position: ``layer / (n_layers - 1)`` inside the layers (1 for a single layer), 0 outside."""
    found = _LAYER.search("." + name)
    if not found:
        return 0.0
    return int(found.group(1)) / (n_layers - 1) if n_layers > 1 else 1.0


def evaluate(setting: Setting, name: str, t: float) -> float | None:
    """The value of one parameter for tensor ``name`` at gradient position ``t`` (None: no condition matched)."""
    if isinstance(setting, Condition):
        setting = [setting]
    if isinstance(setting, (bool, int, float)):
        return float(setting)
    if not setting:
        return None
    if all(isinstance(v, (bool, int, float)) for v in setting):
        values = [float(v) for v in setting]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * values[i0] + frac * values[i1]
    for cond in setting:
        if cond.filter in (None, "*") or cond.filter in name:
            return evaluate(cond.value, name, t)
    return None


def resolve(scopes: list[dict[str, Setting]], key: str, name: str, t: float, default: float | None) -> float:
    """The first scope (per-model, then global) that sets ``key`` for ``name``; else ``default``."""
    for scope in scopes:
        if key in scope:
            value = evaluate(scope[key], name, t)
            if value is not None:
                break
    else:
        value = default
    if value is None:
        flag = {"weight": "--weights", "density": "--density"}.get(key, f"--{key}")
        raise IsoflopError(f"no {key} given for tensor {name}; set parameters.{key} in the config (or {flag})")
    if not math.isfinite(value):
        raise IsoflopError(f"{key} for tensor {name} is {value}; give a finite number")
    return value
