"""``isoflop data curate``: filter, deduplicate and decontaminate a corpus with datatrove; ``isoflop data mix``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from isoflop.cli.app import app
from isoflop.cli.output import JSON_OPTION, emit
from isoflop.errors import IsoflopError

data_app = typer.Typer(
    name="data", help="Curate and mix training data (datatrove; the 'curate' extra).", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@data_app.command()
def curate(
    source: str = typer.Argument(..., help="File or folder: JSONL (.gz/.zst), Parquet, save_to_disk folder, text."),
    out: str = typer.Option(..., "--out", help="Output folder: data/ shards, stats.json, manifest.json."),
    recipe: str = typer.Option("fineweb", "--recipe", help="minimal, gopher, c4, fineweb, code, or a YAML file."),
    executor: str = typer.Option("local", "--executor", help="local, slurm or ray (datatrove executors)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Parallel worker processes (local) or array slots."),
    tasks: int | None = typer.Option(None, "--tasks", min=1, help="Shards per stage (default: --workers)."),
    decontaminate: list[str] = typer.Option(
        [], "--decontaminate", help="Evaluation file/folder; documents sharing an n-gram with it are removed."
    ),
    keep_removed: bool = typer.Option(False, "--keep-removed", help="Write removed documents to DIR/.removed/."),
    fmt: str = typer.Option("jsonl", "--format", help="Kept documents as jsonl or parquet."),
    text_field: str = typer.Option("text", "--text-field", help="Key/column with the text in JSONL/Parquet."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer.json to count manifest tokens."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard an earlier curation in --out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Slurm: write and check the sbatch scripts, submit none."),
    partition: str = typer.Option("cpu", "--partition", help="Slurm partition."),
    time_limit: str = typer.Option("04:00:00", "--time", help="Slurm time limit per task."),
    venv: str | None = typer.Option(None, "--venv", help="Slurm: virtualenv activate script to source."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Quality filters, exact and MinHash deduplication and n-gram decontamination, on datatrove; a rerun resumes."""
    from isoflop.curate.pipeline import CurateRequest, SlurmOptions
    from isoflop.curate.recipe import load_recipe
    from isoflop.curate.run import curate as run_curate

    if executor not in ("local", "slurm", "ray"):
        raise IsoflopError(f"--executor {executor!r} is unknown; use local, slurm or ray")
    if fmt not in ("jsonl", "parquet"):
        raise IsoflopError(f"--format {fmt!r} is unknown; use jsonl or parquet")
    if dry_run and executor != "slurm":
        raise IsoflopError("--dry-run applies to --executor slurm; drop it or add --executor slurm")
    src = Path(source).expanduser()
    if not src.exists():
        raise IsoflopError(f"source {source!r} does not exist; give a file or folder of text/JSONL/Parquet data")
    evals = tuple(Path(p).expanduser() for p in decontaminate)
    for p in evals:
        if not p.exists():
            raise IsoflopError(f"--decontaminate {str(p)!r} does not exist; give an evaluation file or folder")
    tok = Path(tokenizer).expanduser() if tokenizer else None
    if tok is not None and not tok.is_file():
        raise IsoflopError(f"--tokenizer {tokenizer!r} is not a file; give a tokenizer.json")
    req = CurateRequest(
        source=src,
        out=Path(out).expanduser(),
        recipe=load_recipe(recipe),
        executor=executor,  # type: ignore[arg-type]
        workers=workers,
        tasks=tasks,
        eval_files=evals,
        keep_removed=keep_removed,
        text_field=text_field,
        output_format=fmt,  # type: ignore[arg-type]
        slurm=SlurmOptions(partition=partition, time=time_limit, venv_path=venv),
    )
    result = run_curate(req, overwrite=overwrite, dry_run=dry_run, tokenizer=tok)
    data = {
        "out": str(result.out),
        "stats": result.stats.model_dump() if result.stats else None,
        "manifest": result.manifest.model_dump() if result.manifest else None,
        "slurm_scripts": [str(p) for p in result.slurm_scripts],
    }

    def render(console) -> None:
        if result.slurm_scripts:
            console.print(f"dry run: {len(result.slurm_scripts)} sbatch scripts written, none submitted:")
            for p in result.slurm_scripts:
                console.print(f"  {p}")
            return
        if result.manifest is None:
            console.print(f"submitted to {executor}; rerun with --executor local on the output to write the manifest")
            return
        s, m = result.stats, result.manifest
        t = Table(title=f"curation of {source} ({recipe})")
        for col in ("stage", "docs in", "docs out", "removed", "seconds"):
            t.add_column(col)
        for st in s.stages:
            removed = ", ".join(f"{k} {v}" for k, v in st.removed.items()) or "-"
            t.add_row(st.name, str(st.documents_in), str(st.documents_out), removed, f"{st.seconds:.1f}")
        console.print(t)
        skipped = ", ".join(f"{k} {v}" for k, v in s.skipped_inputs.items()) or "none"
        console.print(f"skipped inputs: {skipped}")
        console.print(
            f"kept {m.documents} of {s.documents_read} documents, {m.bytes} bytes, {m.tokens} tokens ({m.tokenizer}); "
            f"train on it with data.source: {result.out}"
        )

    emit(data, as_json, render)


def _pairs(text: str | None, flag: str) -> dict[str, float] | None:
    """``a=0.5,b=2`` as a dict; one-line error otherwise."""
    if text is None:
        return None
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise IsoflopError(f"{flag} {text!r} is not name=number[,name=number...]; e.g. {flag} web=0.7,code=0.3")
    return out


@data_app.command()
def mix(
    folder: str = typer.Argument(..., help="A curated folder (its manifest.json has per-domain tokens)."),
    tokens: float = typer.Option(..., "--tokens", help="Training tokens to draw (e.g. the plan's tokens)."),
    weights: str | None = typer.Option(None, "--weights", help="Given weights, e.g. web=0.7,code=0.3."),
    temperature: float | None = typer.Option(None, "--temperature", help="Temperature sampling, w ∝ U^(1/T)."),
    upsample: str | None = typer.Option(None, "--upsample", help="Upsample domains by a factor, e.g. code=3."),
    out: str | None = typer.Option(None, "--out", help="Write the mix as JSON."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Per-domain weights, epochs repeated and effective tokens (Muennighoff et al. 2023) for a training run."""
    from dataclasses import asdict

    from isoflop.atomic import atomic_write_json
    from isoflop.curate.manifest import read_manifest
    from isoflop.curate.mix import plan_mix

    manifest = read_manifest(Path(folder).expanduser())
    plan = plan_mix(
        manifest,
        tokens,
        weights=_pairs(weights, "--weights"),
        temperature=temperature,
        upsample=_pairs(upsample, "--upsample"),
    )
    data = asdict(plan)
    if out:
        atomic_write_json(out, data)

    def render(console) -> None:
        t = Table(title=f"mix of {folder}: {tokens:.4g} tokens, {plan.method}")
        for col in ("domain", "unique tokens", "weight", "tokens drawn", "epochs", "effective tokens"):
            t.add_column(col)
        for s in plan.domains:
            t.add_row(
                s.domain,
                f"{s.unique_tokens:.4g}",
                f"{s.weight:.4f}",
                f"{s.tokens_drawn:.4g}",
                f"{s.epochs:.2f}",
                f"{s.effective_tokens:.4g}",
            )
        console.print(t)
        console.print(
            f"effective tokens {plan.effective_tokens:.4g} of {tokens:.4g} drawn "
            f"(Muennighoff et al. 2023 Eq. 5, R_D* = {plan.r_d_star:.1f})"
        )

    emit(data, as_json, render)
