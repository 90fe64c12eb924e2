"""``isoflop merge``: merge models (linear, SLERP, task arithmetic, TIES, DARE) or average a run's checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError

_LISTS = ("--models", "--weights", "--density")


def _split_lists(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``--models A B --weights 0.5 0.5``: each list option takes the values up to the next ``--option``."""
    lists: dict[str, list[str]] = {}
    rest: list[str] = []
    current: str | None = None
    for arg in args:
        if arg.startswith("--"):
            if arg not in _LISTS:
                raise IsoflopError(f"unknown option {arg}; see `isoflop merge --help`")
            current = arg
            lists.setdefault(arg, [])
        elif current is not None:
            lists[current].append(arg)
        else:
            rest.append(arg)
    return lists, rest


def _floats(values: list[str], what: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise IsoflopError(f"{what} takes numbers, got {' '.join(values)}; e.g. {what} 0.5 0.5") from None


def _recipe_from_flags(method: str | None, lists: dict[str, list[str]], base: str | None, shared: dict, seed: int):
    from isoflop.merge.recipe import MergeRecipe

    if method is None:
        raise IsoflopError(
            "no merge method; pass --method (linear, slerp, task_arithmetic, ties, dare_ties, "
            "dare_linear) or a YAML config"
        )
    models = lists.get("--models", [])
    entries = []
    for key in ("--weights", "--density"):
        values = _floats(lists.get(key, []), key)
        if values and len(values) not in (1, len(models)):
            raise IsoflopError(f"{key} has {len(values)} values for {len(models)} models; give one per model")
        lists[key] = values * len(models) if len(values) == 1 else values
    for i, path in enumerate(models):
        params = {f: lists[k][i] for k, f in (("--weights", "weight"), ("--density", "density")) if lists[k]}
        entries.append({"model": path, "parameters": params})
    return MergeRecipe(
        merge_method=method,
        models=entries,
        base_model=base,
        parameters={k: v for k, v in shared.items() if v is not None},
        seed=seed,
    )


@app.command(
    "merge",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def merge_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (a loadable Hugging Face model)."),
    method: str = typer.Option(
        None, "--method", help="linear, slerp, task_arithmetic, ties, dare_ties or dare_linear."
    ),
    base: str = typer.Option(None, "--base", help="Base model (task arithmetic, TIES, DARE; SLERP's t = 0 end)."),
    t: float = typer.Option(None, "--t", help="SLERP interpolation factor in [0, 1]."),
    lam: float = typer.Option(None, "--lambda", help="Scale of the merged task vector (default 1)."),
    normalize: bool = typer.Option(
        None, "--normalize/--no-normalize", help="Divide by the summed weights (method default)."
    ),
    rescale: bool = typer.Option(None, "--rescale/--no-rescale", help="DARE: rescale what is kept (default on)."),
    seed: int = typer.Option(0, "--seed", help="Seed of DARE's random drops."),
    dtype: str = typer.Option(None, "--dtype", help="Output dtype: fp32, bf16 or fp16 (default: as stored)."),
    shard_size: float = typer.Option(1.0, "--shard-size", help="Largest output shard, GiB."),
    average: Path = typer.Option(None, "--average", help="An isoflop run folder: average its last checkpoints."),
    last: int = typer.Option(None, "--last", help="With --average: how many of the last checkpoints (LAWA)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Merge models from a YAML CONFIG (mergekit's format) or from flags:

    isoflop merge --method linear --models A B --weights 0.5 0.5 --out DIR

    isoflop merge --method ties --base BASE --models A B --weights 1 1 --density 0.5 0.5 --out DIR

    isoflop merge recipe.yaml --out DIR

    isoflop merge --average RUN --last 4 --out DIR   (LAWA: mean of a run's last 4 checkpoints)

    List options take several values: --models PATH..., --weights W... and --density D... (one per model, or one
    for all). Models are Hugging Face folders or isoflop run folders (their hf/ export). Tensors stream one at a time.
    """
    lists, rest = _split_lists(list(ctx.args))
    try:
        import safetensors  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise IsoflopError("merging needs the 'train' extra (torch, safetensors); pip install isoflop[train]") from None
    if out is None:
        raise IsoflopError("no output folder; pass --out DIR")
    if average is not None:
        if rest or lists or method:
            raise IsoflopError("--average takes a run and --last only; merge other models in a separate command")
        if last is None:
            raise IsoflopError("--average needs --last K (how many of the run's last checkpoints to average)")
        from isoflop.merge.average import average_run

        result = average_run(average, last, out, force)
        data = result.__dict__

        def render_avg(console) -> None:
            console.print(f"averaged steps {result.steps} of {result.run} -> {result.out} ({result.seconds:.1f} s)")

        emit(data, as_json, render_avg)
        return
    from isoflop.merge.engine import run_merge
    from isoflop.merge.recipe import read_recipe

    if len(rest) > 1:
        raise IsoflopError(f"unexpected arguments {' '.join(rest[1:])}; give one CONFIG file")
    shared = {"t": t, "lambda": lam, "normalize": normalize, "rescale": rescale}
    if rest:
        if lists or method or base:
            raise IsoflopError("give a CONFIG file or --method/--models/--base flags, not both")
        recipe = read_recipe(Path(rest[0]))
        recipe.parameters.update({k: v for k, v in shared.items() if v is not None})
    else:
        recipe = _recipe_from_flags(method, lists, base, shared, seed)
    if dtype is not None:
        recipe.dtype = dtype
    if shard_size <= 0:
        raise IsoflopError(f"--shard-size {shard_size} is not positive; give GiB, e.g. 1")
    result = run_merge(recipe, out, max_shard_bytes=int(shard_size * 2**30), force=force)

    def render(console) -> None:
        table = Table(title=f"isoflop merge: {result.method}")
        table.add_column("field")
        table.add_column("value")
        for key in ("out", "base", "tensors", "shards", "bytes", "seconds"):
            value = getattr(result, key)
            table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
        table.add_row("models", ", ".join(result.models))
        console.print(table)

    emit(result.__dict__, as_json, render)
