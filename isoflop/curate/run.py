"""Run a curation: datatrove stages, then ``stats.json`` and, last, ``manifest.json`` (the completion mark)."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isoflop import structured
from isoflop.atomic import atomic_write_json
from isoflop.curate.manifest import MANIFEST, STATS, CurationStats, DomainCount, Manifest, StageStats
from isoflop.curate.pipeline import (
    REMOVED,
    WORK,
    CurateRequest,
    Stage,
    build_executors,
    build_stages,
    incomplete_tasks,
    slurm_dry_run,
)
from isoflop.errors import IsoflopError

REQUEST = "request.json"


@dataclass(frozen=True)
class CurateResult:
    out: Path
    stats: CurationStats | None
    manifest: Manifest | None
    slurm_scripts: list[Path]


def _request_key(req: CurateRequest) -> dict[str, Any]:
    """The settings a resumed run must share with the run it resumes."""
    return {
        "source": str(req.source.resolve()),
        "recipe": req.recipe.model_dump(),
        "eval_files": [str(p.resolve()) for p in req.eval_files],
        "tasks": req.n_tasks,
        "text_field": req.text_field,
        "format": req.output_format,
        "keep_removed": req.keep_removed,
    }


def prepare_out(req: CurateRequest, overwrite: bool) -> None:
    """Claim ``req.out``: wipe it (``overwrite``), resume a run with identical settings, or refuse a mismatch.
    A stale manifest is removed before any stage runs, so a partial output is never marked complete."""
    key = _request_key(req)
    saved = req.out / WORK / REQUEST
    if overwrite:
        for name in (WORK, REMOVED, "data"):
            shutil.rmtree(req.out / name, ignore_errors=True)
    elif saved.is_file() and structured.read(saved, "curation request", "pass --overwrite", fmt="json") != key:
        raise IsoflopError(f"{req.out} holds a curation with other settings; pass --overwrite or choose another --out")
    (req.out / MANIFEST).unlink(missing_ok=True)
    atomic_write_json(saved, key)


def curate(req: CurateRequest, *, overwrite: bool = False, dry_run: bool = False, tokenizer: Path | None = None):
    """Run (or, for Slurm with ``dry_run``, only script) the curation of ``req``; returns a ``CurateResult``."""
    from isoflop.curate import require_datatrove

    require_datatrove()
    stages = build_stages(req)  # validates the source and recipe before anything is written
    prepare_out(req, overwrite)
    executors = build_executors(req, stages)
    if req.executor == "slurm" and dry_run:
        return CurateResult(req.out, None, None, slurm_dry_run(executors))
    if req.executor != "local":  # submitted; each executor launches the ones it depends on first
        executors[-1].run()
        return CurateResult(req.out, None, None, [])
    seconds: dict[str, float] = {}
    for stage, executor in zip(stages, executors):  # in order, so each stage's wall time is its own
        start = time.perf_counter()
        executor.run()
        seconds[stage.name] = time.perf_counter() - start
    left = incomplete_tasks(executors)
    if left:
        raise IsoflopError(f"curation stopped with {left} unfinished tasks; rerun the same command to resume them")
    stats = collect_stats(req, stages, seconds)
    atomic_write_json(req.out / STATS, stats.model_dump())
    manifest = build_manifest(req, tokenizer)
    atomic_write_json(req.out / MANIFEST, manifest.model_dump())
    return CurateResult(req.out, stats, manifest, [])


# Label of each removing step in stats.json, by datatrove class name.
STEP_LABELS = {
    "GopherQualityFilter": "gopher_quality",
    "GopherRepetitionFilter": "gopher_repetition",
    "C4QualityFilter": "c4",
    "FineWebQualityFilter": "fineweb",
    "CodeQualityFilter": "code",
    "NGramsDecontFilter": "decont",
    "ExactDedupFilter": "exact_dedup",
    "MinhashDedupFilter": "minhash_dedup",
}


def _value(v: Any) -> int:
    return int(v.get("total", 0)) if isinstance(v, dict) else int(v)


def _stage_stats(folder: Path, stage: Stage, seconds: float) -> StageStats:
    """Sum datatrove's per-task stats files (every task, also those finished by an earlier, interrupted run)."""
    from datatrove.utils.stats import PipelineStats

    total = sum(
        (
            PipelineStats.from_json(structured.read(p, "stage stats", "rerun with --overwrite", fmt="json"))
            for p in sorted((folder / "stats").glob("*.json"))
        ),
        start=PipelineStats(),
    )
    removed: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    docs_in = bytes_in = docs_out = 0
    readers = 0
    pairs: dict[str, int] = {}
    for step, st in zip(stage.pipeline, total.stats):
        values = {k: _value(v) for k, v in st.to_dict()["stats"].items()}
        kind = type(step).__name__
        if kind.endswith("Reader"):
            readers += 1
            docs_in += values.get("documents", 0)
            bytes_in += values.get("doc_len", 0)
            skipped.update({k.removeprefix("skipped_"): v for k, v in values.items() if k.startswith("skipped_")})
        elif kind == "MinhashVerifyCandidates":
            pairs = {"candidates": values.get("candidate_pairs", 0), "rejected": values.get("rejected_pairs", 0)}
        elif kind in STEP_LABELS:
            label = STEP_LABELS[kind]
            removed[label] += values.get("dropped", 0)
            reasons.update({f"{label}:{k[8:]}": v for k, v in values.items() if k.startswith("dropped_")})
        docs_out = values.get("total", 0)
    return StageStats(
        name=stage.name,
        tasks=stage.tasks,
        documents_in=docs_in,
        documents_out=docs_out if type(stage.pipeline[-1]).__name__.endswith(("Writer", "Signature")) else 0,
        bytes_in=bytes_in,
        removed=dict(removed),
        removed_reasons=dict(reasons),
        skipped_inputs=dict(skipped),
        minhash_pairs=pairs,
        seconds=seconds,
    )


def collect_stats(req: CurateRequest, stages: list[Stage], seconds: dict[str, float]) -> CurationStats:
    """Per-stage counts and totals; a document is removed once, in ``filter`` (quality, decontamination) or in
    ``write`` (deduplication), so the totals add those two stages only."""
    logs = req.out / WORK / "logs"
    per_stage = [_stage_stats(logs / s.name, s, seconds.get(s.name, 0.0)) for s in stages]
    removed: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for s in per_stage:
        if s.name in ("filter", "write"):
            removed.update(s.removed)
        skipped.update(s.skipped_inputs)
    first = next(s for s in per_stage if s.name == "filter")
    return CurationStats(
        stages=per_stage,
        documents_read=first.documents_in,
        documents_kept=per_stage[-1].documents_out,
        removed=dict(removed),
        skipped_inputs=dict(skipped),
    )


def build_manifest(req: CurateRequest, tokenizer: Path | None) -> Manifest:
    """Documents, bytes, tokens and per-domain counts of ``DIR/data``, read back from the written shards."""
    from isoflop.curate.read import iter_kept

    encode = _token_counter(tokenizer)
    domains: dict[str, DomainCount] = {}
    files = sorted(p for p in (req.out / "data").glob(f"*.{req.output_format}"))
    for text, domain in iter_kept(files):
        n_bytes = len(text.encode("utf-8"))
        d = domains.setdefault(domain, DomainCount(documents=0, bytes=0, tokens=0))
        d.documents += 1
        d.bytes += n_bytes
        d.tokens += encode(text) if encode else n_bytes
    return Manifest(
        source=str(req.source.resolve()),
        recipe=req.recipe.name,
        format=req.output_format,
        documents=sum(d.documents for d in domains.values()),
        bytes=sum(d.bytes for d in domains.values()),
        tokens=sum(d.tokens for d in domains.values()),
        tokenizer=str(tokenizer) if tokenizer else "bytes (UTF-8 bytes; pass --tokenizer for model tokens)",
        domains=dict(sorted(domains.items())),
        files=[p.relative_to(req.out).as_posix() for p in files],
    )


def _token_counter(tokenizer: Path | None):
    if tokenizer is None:
        return None
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer))
    except Exception as exc:
        raise IsoflopError(f"cannot load tokenizer {tokenizer} ({type(exc).__name__}); give a tokenizer.json") from None
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
