"""The curation pipeline as datatrove stages, run by datatrove's Local, Slurm or Ray executor.

Stages (each a datatrove executor; a stage starts when the one before it completed):

0. ``decont_index`` n-gram hashes of the ``--decontaminate`` files (only when given; one task)
1. ``filter``       read SOURCE, tag domains, quality filters, decontamination -> ``.curate/filtered``
2. ``exact_sig``    whole-document hashes (datatrove ``ExactDedupSignature``)
3. ``exact_find``   duplicate ids (``ExactFindDedups``; one task)
4. ``minhash_sig``  drop exact duplicates, MinHash signatures (``MinhashDedupSignature``)
5. ``minhash_bkt``  LSH buckets (``MinhashDedupBuckets``; one task per band)
6. ``minhash_chk``  candidate pairs checked by exact shingle Jaccard (``MinhashVerifyCandidates``; one task)
7. ``minhash_clu``  duplicate clusters (``MinhashDedupCluster``; one task)
8. ``write``        drop exact and near duplicates, write the kept documents to ``DIR/data``

Every task writes a completion marker under ``DIR/.curate/logs/<stage>/completions``; a rerun skips finished tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from isoflop.atomic import atomic_write_text
from isoflop.curate.recipe import Recipe
from isoflop.errors import IsoflopError

Executor = Literal["local", "slurm", "ray"]
OutputFormat = Literal["jsonl", "parquet"]
WORK = ".curate"
REMOVED = ".removed"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson")


@dataclass(frozen=True)
class SlurmOptions:
    partition: str = "cpu"
    time: str = "04:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    venv_path: str | None = None


@dataclass(frozen=True)
class CurateRequest:
    source: Path
    out: Path
    recipe: Recipe
    executor: Executor = "local"
    workers: int = 2
    tasks: int | None = None
    eval_files: tuple[Path, ...] = ()
    keep_removed: bool = False
    text_field: str = "text"
    output_format: OutputFormat = "jsonl"
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    @property
    def n_tasks(self) -> int:
        return self.tasks or self.workers


@dataclass(frozen=True)
class Stage:
    name: str
    pipeline: list[Any]
    tasks: int


def source_readers(source: Path, text_field: str) -> list[Any]:
    """datatrove readers for every format found in ``source`` (a file or folder): JSONL (plain/.gz/.zst), Parquet,
    a Hugging Face ``save_to_disk`` folder (Arrow stream files) and text files; readers chain in one pipeline."""
    from datatrove.pipeline.readers import IpcReader, ParquetReader

    from isoflop.curate.steps import CheckedJsonlReader, TextFileReader

    if not source.exists():
        raise IsoflopError(f"source {str(source)!r} does not exist; give a file or folder of text/JSONL/Parquet data")
    folder, only = (source.parent, source.name) if source.is_file() else (source, None)
    files = [only] if only else [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    files = [f for f in files if not any(part.startswith(".") for part in Path(f).parts)]
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        return [IpcReader(str(folder), glob_pattern="**/*.arrow", stream=True, text_key=text_field)]
    readers: list[Any] = []
    kinds = [
        (JSONL_SUFFIXES, lambda g: CheckedJsonlReader(str(folder), glob_pattern=g, text_key=text_field)),
        ((".parquet",), lambda g: ParquetReader(str(folder), glob_pattern=g, text_key=text_field)),
        (TEXT_SUFFIXES, lambda g: TextFileReader(str(folder), glob_pattern=g)),
    ]
    for suffixes, make in kinds:
        for suffix in suffixes:
            if any(f.endswith(suffix) for f in files):
                readers.append(make(only if only else f"**/*{suffix}"))
    if not readers:
        raise IsoflopError(
            f"source {str(source)!r} holds no JSONL, Parquet, Arrow or text ({', '.join(TEXT_SUFFIXES)}) files; "
            "point it at a data file or folder"
        )
    return readers


def word_tokenizer(recipe: Recipe) -> Any:
    """What datatrove steps get as ``language``: our regex tokenizer, or the language code (datatrove's spaCy)."""
    from isoflop.curate.steps import RegexWordTokenizer

    return RegexWordTokenizer() if recipe.word_tokenizer == "regex" else recipe.language


def _filter_steps(recipe: Recipe, removed: Path | None, language: Any) -> list[Any]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    from isoflop.curate.steps import CodeQualityFilter

    classes = {
        "gopher_quality": GopherQualityFilter,
        "gopher_repetition": GopherRepetitionFilter,
        "c4": C4QualityFilter,
        "fineweb": FineWebQualityFilter,
    }
    steps = []
    for item in recipe.filters:
        ((name, options),) = item.items()
        kwargs = {**options, "exclusion_writer": _removed_writer(removed, name)}
        try:
            if name == "code":
                steps.append(CodeQualityFilter(**kwargs))
            else:
                steps.append(classes[name](**{"language": language, **kwargs}))
        except TypeError as exc:
            raise IsoflopError(f"recipe {recipe.name!r}: filter {name!r}: {exc}; check its option names") from None
    return steps


def _removed_writer(removed: Path | None, name: str) -> Any:
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(removed / name), compression=None) if removed else None


def _doc_writer(folder: Path, fmt: OutputFormat) -> Any:
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

    if fmt == "parquet":
        return ParquetWriter(str(folder), output_filename="${rank}.parquet")
    return JsonlWriter(str(folder), output_filename="${rank}.jsonl", compression=None)


def build_stages(req: CurateRequest) -> list[Stage]:
    """The datatrove pipelines of ``req``, in run order (see the module docstring)."""
    from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
    from datatrove.pipeline.dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader

    from isoflop.curate.steps import EvalFilesIndexer, MinhashVerifyCandidates, TagDomain, doc_text

    work, recipe, tasks = req.out / WORK, req.recipe, req.n_tasks
    removed = req.out / REMOVED if req.keep_removed else None
    stages: list[Stage] = []
    filtered = work / "filtered"
    first = [*source_readers(req.source, req.text_field), TagDomain(str(req.source.resolve()))]
    language = word_tokenizer(recipe)
    first += _filter_steps(recipe, removed, language)
    if req.eval_files:
        decont = NGramsDecontConfig(n_grams=recipe.decont_n_grams)
        index = work / "decont_index"
        eval_readers = [r for f in req.eval_files for r in source_readers(f, req.text_field)]
        stages.append(
            Stage("decont_index", [*eval_readers, EvalFilesIndexer(str(index), config=decont, language=language)], 1)
        )
        first.append(
            NGramsDecontFilter(
                str(index), config=decont, language=language, exclusion_writer=_removed_writer(removed, "decont")
            )
        )
    first.append(_doc_writer(filtered, "jsonl"))
    stages.append(Stage("filter", first, tasks))

    def read_filtered() -> Any:
        return JsonlReader(str(filtered), glob_pattern="*.jsonl", compression=None)

    dedup_steps: list[Any] = []
    stream: list[Any] = [read_filtered()]  # the documents the MinHash signatures index, without side outputs
    if recipe.dedup.exact:
        exact = ExactDedupConfig(content_getter=doc_text)
        stages.append(Stage("exact_sig", [read_filtered(), ExactDedupSignature(str(work / "exact_sig"), exact)], tasks))
        stages.append(
            Stage("exact_find", [ExactFindDedups(str(work / "exact_sig"), str(work / "exact_dups"), exact)], 1)
        )
        dedup_steps.append(
            ExactDedupFilter(str(work / "exact_dups"), exact, exclusion_writer=_removed_writer(removed, "exact_dedup"))
        )
        stream.append(ExactDedupFilter(str(work / "exact_dups"), exact))
    spec = recipe.dedup.minhash
    if spec is not None:
        config = MinhashConfig(n_grams=spec.n_grams, num_buckets=spec.bands, hashes_per_bucket=spec.rows)
        sig = MinhashDedupSignature(str(work / "minhash_sig"), config=config, language=language)
        stages.append(Stage("minhash_sig", [read_filtered(), *dedup_steps, sig], tasks))
        buckets = MinhashDedupBuckets(str(work / "minhash_sig"), str(work / "minhash_buckets"), config=config)
        stages.append(Stage("minhash_bkt", [buckets], spec.bands))
        check = MinhashVerifyCandidates(
            str(work / "minhash_buckets"),
            str(work / "minhash_checked"),
            signature=sig,
            stream=stream,
            stream_tasks=tasks,
            threshold=spec.jaccard_threshold,
        )
        stages.append(Stage("minhash_chk", [check], 1))
        cluster = MinhashDedupCluster(str(work / "minhash_checked"), str(work / "minhash_remove"), config=config)
        stages.append(Stage("minhash_clu", [cluster], 1))
        dedup_steps.append(
            MinhashDedupFilter(str(work / "minhash_remove"), exclusion_writer=_removed_writer(removed, "minhash_dedup"))
        )
    stages.append(
        Stage("write", [read_filtered(), *dedup_steps, _doc_writer(req.out / "data", req.output_format)], tasks)
    )
    return stages


def build_executors(req: CurateRequest, stages: list[Stage]) -> list[Any]:
    """One datatrove executor per stage, each depending on the previous one; logs under ``DIR/.curate/logs``."""
    logs = req.out / WORK / "logs"
    executors: list[Any] = []
    for stage in stages:
        prev = executors[-1] if executors else None
        common = {"pipeline": stage.pipeline, "tasks": stage.tasks, "logging_dir": str(logs / stage.name)}
        if req.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            workers = min(req.workers, stage.tasks)
            executors.append(LocalPipelineExecutor(**common, workers=workers, depends=prev))
        elif req.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            s = req.slurm
            executors.append(
                SlurmPipelineExecutor(
                    **common,
                    time=s.time,
                    partition=s.partition,
                    cpus_per_task=s.cpus_per_task,
                    mem_per_cpu_gb=s.mem_per_cpu_gb,
                    venv_path=s.venv_path,
                    workers=req.workers,
                    job_name=f"isoflop_curate_{stage.name}",
                    slurm_logs_folder=str(logs / stage.name / "slurm_logs"),
                    depends=prev,
                )
            )
        else:
            try:
                import ray  # noqa: F401
                from datatrove.executor import RayPipelineExecutor
            except ImportError:
                raise IsoflopError(
                    "--executor ray needs the 'ray' package; pip install 'datatrove[ray]' or use --executor local"
                ) from None
            executors.append(RayPipelineExecutor(**common, workers=req.workers, depends=prev))
    return executors


def incomplete_tasks(executors: list[Any]) -> int:
    """Tasks without a completion marker, over all stages."""
    return sum(len(ex.get_incomplete_ranks(skip_completed=True)) for ex in executors)


def slurm_dry_run(executors: list[Any]) -> list[Path]:
    """Write each stage's sbatch script (``launch_script.slurm`` beside its logs) without submitting anything;
    every pipeline is pickled with dill as datatrove would, so an unpicklable step fails here, not on the cluster."""
    import dill

    scripts = []
    for ex in executors:
        dill.dumps(ex.pipeline)
        sbatch = ex.get_sbatch_args(min(ex.world_size, ex.max_array_size))
        command = f"launch_pickled_pipeline {ex.logging_dir.resolve_paths('executor.pik')}"
        path = atomic_write_text(
            ex.logging_dir.resolve_paths("launch_script.slurm"), ex.get_launch_file_contents(sbatch, command)
        )
        scripts.append(path)
    return scripts
