"""Run a merge: check every input and parameter first, then stream tensor by tensor into a hidden folder next to
the output, and rename it into place (a failed merge leaves no output folder)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from isoflop.errors import IsoflopError
from isoflop.merge.methods import Method, TensorParams, get_method, merge_tensor
from isoflop.merge.recipe import MergeRecipe, layer_t, resolve
from isoflop.merge.sources import ST_DTYPES, ModelSource, check_compatible, open_model
from isoflop.merge.writer import Planned, ShardWriter, plan_shards

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Carried from the base (or first) model: the tokenizer in any of its formats, and generation defaults.
CARRIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


@dataclass(frozen=True)
class MergeResult:
    out: str
    method: str
    base: str | None
    models: list[str]
    tensors: int
    shards: int
    bytes: int
    seconds: float


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed: the same draws for a tensor whatever order tensors are merged in."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _params(method: Method, recipe: MergeRecipe, merged: list[str], name: str, n_layers: int) -> TensorParams:
    t = layer_t(name, n_layers)
    shared = [recipe.parameters]
    per = [[recipe.entry(m).parameters, recipe.parameters] for m in merged]
    weights = [resolve(s, "weight", name, t, 1.0 if method.name in ("linear", "slerp") else None) for s in per]
    densities = [resolve(s, "density", name, t, 1.0) for s in per]
    where = f"tensor {name}"
    for w in weights:
        if w < 0 and not method.negative_weights:
            raise IsoflopError(
                f"negative weight {w} for {where}; {method.name} takes weights >= 0 (negate task vectors with "
                "task_arithmetic)"
            )
    if method.name != "slerp" and all(w == 0 for w in weights):
        raise IsoflopError(f"all weights are zero for {where}; give at least one model a positive weight")
    for d in densities:
        if not 0 < d <= 1:
            raise IsoflopError(f"density {d} for {where} is outside (0, 1]; keep a fraction of the task vector")
    slerp_t = resolve(shared, "t", name, t, None) if method.two_models else 0.0
    if not 0 <= slerp_t <= 1:
        raise IsoflopError(f"SLERP t={slerp_t} for {where} is outside [0, 1]; 0 is the base, 1 the other model")
    return TensorParams(
        weights=weights,
        densities=densities,
        t=slerp_t,
        lam=resolve(shared, "lambda", name, t, 1.0),
        normalize=bool(resolve(shared, "normalize", name, t, float(method.normalize))),
        rescale=bool(resolve(shared, "rescale", name, t, float(method.rescale))),
    )


def _check_models(method: Method, recipe: MergeRecipe) -> list[str]:
    merged = [m.model for m in recipe.models] if method.name == "linear" else recipe.model_paths()
    if method.needs_base and recipe.base_model is None:
        raise IsoflopError(f"{method.name} needs a base model; pass --base (or base_model: in the config)")
    if not merged:
        raise IsoflopError("no models to merge; pass --models A B (or models: in the config)")
    if method.two_models and len(merged) != 1:
        raise IsoflopError(f"slerp merges the base with exactly one other model, got {len(merged)}; pass one model")
    if method.name == "linear" and len(merged) < 2:
        raise IsoflopError("linear merging needs at least two models; pass --models A B")
    return merged


def prepare_out(out: Path, force: bool) -> Path:
    """A hidden working folder next to ``out`` (mode from the umask); ``out`` must be new unless ``force``."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise IsoflopError(f"{out} exists; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Move the finished folder into place (an old ``out`` is replaced only after the new one is complete)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def carry_files(source: Path, tmp: Path, config: dict, dtype: torch.dtype) -> None:
    """``config.json`` (``torch_dtype`` set to the output's) and the tokenizer files of ``source``."""
    config = dict(config)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in CARRIED:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)


def run_merge(
    recipe: MergeRecipe, out: str | Path, *, max_shard_bytes: int = 2**30, force: bool = False
) -> MergeResult:
    """Merge per ``recipe`` into ``out`` (an HF folder: safetensors shards, config.json, tokenizer, merge.json)."""
    start = time.perf_counter()
    method = get_method(recipe.merge_method)
    merged = _check_models(method, recipe)
    if recipe.dtype is not None and recipe.dtype not in DTYPES:
        raise IsoflopError(f"unknown dtype {recipe.dtype!r}; choose one of {', '.join(DTYPES)}")
    base = open_model(recipe.base_model) if recipe.base_model is not None else None
    models = [open_model(m) for m in merged]
    reference = base or models[0]
    check_compatible(reference, [m for m in [*models, base] if m is not None and m is not reference])
    names = list(reference.shapes)
    params = {name: _params(method, recipe, merged, name, reference.n_layers) for name in names}
    plan = [Planned(n, reference.shapes[n], _out_dtype(recipe, reference.dtypes[n])) for n in names]
    shards = plan_shards(plan, max_shard_bytes)
    out = Path(out)
    tmp = prepare_out(out, force)
    try:
        writer = ShardWriter(tmp, shards)
        for shard in shards:
            for planned in shard:
                writer.write(planned.name, _merge_one(method, base, models, planned, params[planned.name], recipe.seed))
        writer.finish()
        carry_files(reference.path, tmp, reference.config, plan[0].dtype if plan else torch.float32)
        result = MergeResult(
            out=str(out),
            method=method.name,
            base=str(base.path) if base else None,
            models=[str(m.path) for m in models],
            tensors=len(plan),
            shards=len(shards),
            bytes=sum(p.nbytes for p in plan),
            seconds=0.0,
        )
        (tmp / "merge.json").write_text(
            json.dumps({"recipe": recipe.model_dump(), "result": result.__dict__}, indent=2) + "\n"
        )
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(**{**result.__dict__, "seconds": time.perf_counter() - start})


def _out_dtype(recipe: MergeRecipe, stored: str) -> torch.dtype:
    """The recipe's dtype for floating-point tensors; integer buffers keep theirs (copied from the base)."""
    dtype = ST_DTYPES[stored]
    return DTYPES[recipe.dtype] if recipe.dtype and dtype.is_floating_point else dtype


def _merge_one(
    method: Method,
    base: ModelSource | None,
    models: list[ModelSource],
    planned: Planned,
    params: TensorParams,
    seed: int,
) -> torch.Tensor:
    name = planned.name
    base_t = base.tensor(name) if base is not None else None
    if not (base_t if base_t is not None else models[0].tensor(name)).is_floating_point():
        return (base or models[0]).tensor(name)
    tensors = [m.tensor(name) for m in models]
    for source, tensor in zip([*models, base], [*tensors, base_t]):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise IsoflopError(f"tensor {name} of {source.path} holds NaN or inf; merge finite models only")
    generator = torch.Generator().manual_seed(tensor_seed(seed, name))
    result = merge_tensor(method, base_t, tensors, params, generator)
    return result.to(planned.dtype)
