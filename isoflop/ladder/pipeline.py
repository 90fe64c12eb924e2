"""The predict-then-verify loop in one call: design -> run the ladder -> fit -> predict -> train held-out -> report.

Everything lives under one folder: ``registry.sqlite`` (the runs), ``runs/<run_id>/`` (each run's config, log
and trainer output), ``analysis.json`` (fits, predictions, curves), ``report.html`` + ``plots/`` and
``summary.json``. Running it again over the same folder reuses every finished run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isoflop import structured
from isoflop.atomic import atomic_write_json, json_safe
from isoflop.errors import IsoflopError
from isoflop.ladder import verify as V
from isoflop.ladder.grid import GridPoint, LadderDesign, design_grid, edge_extensions
from isoflop.ladder.registry import Registry, RunRecord
from isoflop.ladder.runner import ExecOptions, Job, execute
from isoflop.laws.intervals import ci95

Say = Callable[[str], None]


def registry_for(out_dir: Path) -> Registry:
    return Registry(out_dir / "registry.sqlite")


def _jobs(reg: Registry, design: LadderDesign, points: list[GridPoint], out_dir: Path) -> list[Job]:
    jobs = []
    for p in points:
        config = p.config.model_dump(mode="json")
        run_id = reg.add(
            design.name,
            config,
            role=p.role,
            budget=p.budget,
            n_params=p.n_params,
            n_params_non_embedding=p.n_params_non_embedding,
            tokens=p.tokens,
            flops=p.flops,
        )
        jobs.append(Job(run_id, config, out_dir / "runs" / run_id, p.label))
    return jobs


def _progress(say: Say, jobs: list[Job]) -> Callable[[str, Job, dict[str, Any]], None]:
    """Progress lines ``[k/n]``; ``n`` is ``len(jobs)`` at the time, so runs added while the ladder trains count."""
    done = {"n": 0}

    def on_event(event: str, job: Job, info: dict[str, Any]) -> None:
        if event == "started":
            say(f"  start    {job.label}")
            return
        done["n"] += 1
        detail = {
            "finished": lambda: f"val loss {info.get('val_loss') or float('nan'):.4f} in {info.get('wall_s', 0):.0f} s",
            "failed": lambda: f"FAILED: {info.get('error', '')}",
            "skipped": lambda: "already finished (reused)",
        }[event]()
        say(f"  [{done['n']}/{len(jobs)}] {job.label}: {detail}")

    return on_event


def read_curve(out_dir: str | None) -> dict[str, list[float]]:
    """Training loss against tokens from a run's ``metrics.jsonl`` (the trainer logs ``tokens`` and ``loss``)."""
    path = Path(out_dir) / "metrics.jsonl" if out_dir else None
    tokens, loss = [], []
    if path is not None and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = structured.loads(line, "json", str(path), "metrics line", "")
            except IsoflopError:
                continue  # a torn last line of a live run
            if (
                isinstance(rec, dict)
                and rec.get("tokens")
                and rec.get("loss") is not None
                and math.isfinite(rec["loss"])
            ):
                tokens.append(float(rec["tokens"]))
                loss.append(float(rec["loss"]))
    return {"tokens": tokens, "loss": loss}


def prepare(design: LadderDesign, say: Say) -> int:
    """Tokenize the corpus once before the runs start (they then share the cache instead of racing to build it);
    returns the number of training tokens."""
    from isoflop.train.data import DataConfig, prepare_data

    t0 = time.perf_counter()
    say(f"data: preparing the {design.data_source} corpus (tokenized once, then cached)")
    data = prepare_data(DataConfig(source=design.data_source, vocab_size=design.vocab_size, **design.extra_data))
    say(
        f"data: {design.data_source} corpus, vocab {design.vocab_size}: {len(data.train):,} training tokens, "
        f"{len(data.val):,} validation tokens ({time.perf_counter() - t0:.0f} s)"
    )
    return len(data.train)


def repetition_note(tokens: int, corpus_tokens: int, what: str) -> str | None:
    """A note when ``tokens`` exceed the corpus: repeated tokens are worth less than fresh ones (Muennighoff et al.
    2023, Sec. 3), which the ladder's laws do not model."""
    if tokens <= corpus_tokens:
        return None
    return (
        f"note: {what} trains {tokens:,} tokens, {tokens / corpus_tokens:.2f} epochs of the corpus's "
        f"{corpus_tokens:,}; repeated data raises the loss (Muennighoff et al. 2023), which the fits do not model: "
        "give --data a larger corpus"
    )


def _point_dict(r: RunRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "budget": r.budget,
        "n": r.n_params_non_embedding,
        "n_total": r.n_params,
        "tokens": r.tokens,
        "flops": r.flops,
        "loss": r.val_loss,
        "train_loss": r.final_loss,
        "step_time_s": r.step_time_s,
        "memory_gib": r.memory_gib,
        "status": r.status,
        "error": r.error,
        "curve": read_curve(r.out_dir),
    }


def _law_dict(law) -> dict[str, Any]:
    """The law's file content without its bootstrap draws, plus the 95% interval of ``a = beta / (alpha + beta)``
    (Hoffmann et al. 2022, Eq. 4) over those draws."""
    data = law.to_dict()
    data.pop("bootstrap_samples", None)
    if law.samples_ is not None:
        alpha, beta = (law.samples_[:, law.param_names.index(k)] for k in ("alpha", "beta"))
        data["a_opt_ci95"] = ci95(beta / (alpha + beta))
    return data


def _heldout_entry(
    design: LadderDesign, fits: V.LadderFit, point: GridPoint, corpus_tokens: int, say: Say
) -> dict[str, Any]:
    """One held-out run's plan and predictions, made before it trains. The primary method is the design's (for a
    compute-optimal run; approach 3 for the over-trained one); if it has no interval, the first method that has
    one."""
    if note := repetition_note(point.tokens, corpus_tokens, f"the {point.role} run"):
        say(note)
    optimal = point.role == "heldout"
    preds, interval_note = V.predict(fits, point.n_params_non_embedding, point.tokens, point.flops, optimal)
    wanted = design.primary if optimal else "approach3"
    primary = next(
        (p for p in preds if p["method"] == wanted and p["ci95"]),
        next((p for p in preds if p["ci95"]), preds[0]),
    )
    lo, hi = primary["ci95"] or (float("nan"), float("nan"))
    kind = "compute-optimal" if optimal else f"over-trained ({design.overtrain:g}x the compute-optimal tokens/param)"
    say(
        f"held-out prediction, {kind}, at C = {point.budget:.3g} FLOPs (N = {point.n_params_non_embedding:,} "
        f"non-embedding, D = {point.tokens:,} tokens): loss {primary['predicted_loss']:.4f} "
        f"[95% CI {lo:.4f}, {hi:.4f}] ({primary['method']})"
    )
    return {
        "role": point.role,
        "budget": point.budget,
        "flops": point.flops,
        "n": point.n_params_non_embedding,
        "n_total": point.n_params,
        "tokens": point.tokens,
        "tokens_per_param": point.tokens / point.n_params,
        "epochs": point.tokens / corpus_tokens,
        "method": primary["method"],
        "sized_by": "approach2" if fits.approach2 else "approach3",
        "note": interval_note or fits.note,
        "predicted_loss": primary["predicted_loss"],
        "ci95": primary["ci95"],
        "predictions": preds,
        "actual_loss": None,
        "error_pct": None,
        "inside_ci": None,
        "shape": {k: getattr(point.spec, k) for k in ("d_model", "n_layers", "n_heads", "d_ff")},
    }


def _verify_entry(entry: dict[str, Any], rec: RunRecord | None) -> None:
    """Fill a held-out entry with its trained run's loss and every method's error."""
    if not (rec and rec.status == "finished" and rec.val_loss is not None):
        return
    actual = rec.val_loss
    for p in entry["predictions"]:
        p["error_pct"] = 100 * (p["predicted_loss"] - actual) / actual
        p["inside_ci"] = bool(p["ci95"] and p["ci95"][0] <= actual <= p["ci95"][1])
    primary = next(p for p in entry["predictions"] if p["method"] == entry["method"])
    entry.update(
        actual_loss=actual,
        error_pct=primary["error_pct"],
        inside_ci=primary["inside_ci"],
        curve=read_curve(rec.out_dir),
        run_id=rec.run_id,
        wall_s=rec.wall_s,
        step_time_s=rec.step_time_s,
    )


def _edge_follow_up(
    design: LadderDesign, reg: Registry, jobs: list[Job], out: Path, say: Say, shape_fn
) -> Callable[[Job], list[Job]]:
    """The ladder's follow-up (``execute``): once every run of a budget is done, a budget whose lowest loss sits at
    an edge size gets one more size beyond it (``edge_extensions``, at most ``design.max_extensions`` per budget),
    queued at once while other budgets still train; new jobs are appended to ``jobs``."""
    rounds: dict[float, int] = {}

    def budget_of(job: Job) -> float:
        return float(job.config["plan"]["budget"])

    def follow_up(job: Job) -> list[Job]:
        budget = budget_of(job)
        records = [reg.get(j.run_id) for j in jobs if budget_of(j) == budget]
        if rounds.get(budget, 0) >= design.max_extensions or any(
            r is None or r.status not in ("finished", "failed") for r in records
        ):
            return []
        finished = [
            (r.budget, r.n_params_non_embedding, r.val_loss)
            for r in records
            if r.status == "finished" and r.val_loss is not None and math.isfinite(r.val_loss)
        ]
        extra = edge_extensions(design, finished, shape_fn)
        if not extra:
            return []
        rounds[budget] = rounds.get(budget, 0) + 1
        say(f"C={budget:.2e} has its lowest loss at an edge size: adding {', '.join(p.label for p in extra)}")
        new_jobs = _jobs(reg, design, extra, out)
        jobs.extend(new_jobs)
        return new_jobs

    return follow_up


def run_pipeline(
    design: LadderDesign,
    out_dir: str | Path,
    opts: ExecOptions | None = None,
    say: Say = print,
    verify: bool = True,
    shape_fn=None,
    heldout_threads: int | None = None,
) -> dict[str, Any]:
    """Run the whole loop and return ``summary.json``'s content (also written to ``out_dir``).

    The held-out runs (the compute-optimal one at ``heldout_factor`` x the largest budget and, unless
    ``design.overtrain`` is 0, the over-trained one) train together, one per worker, each with ``heldout_threads``
    torch threads (default: the ladder's thread count; ``benchmarks/ladder_concurrency.py`` measures whether more
    threads help on this machine). ``heldouts`` lists them all; ``heldout`` is the compute-optimal one."""
    start = time.perf_counter()
    out = Path(out_dir)
    opts = opts or ExecOptions()
    reg = registry_for(out)
    points = design_grid(design, shape_fn)
    budgets = sorted({p.budget for p in points})
    say(
        f"ladder {design.name!r}: {len(budgets)} budgets x {design.sizes} sizes = {len(points)} runs "
        f"({', '.join(f'{b:.2g}' for b in budgets)} FLOPs), {opts.n_workers()} at a time x {opts.threads} thread(s)"
    )
    jobs = _jobs(reg, design, points, out)
    corpus_tokens = prepare(design, say)
    if note := repetition_note(max(p.tokens for p in points), corpus_tokens, "the largest ladder run"):
        say(note)
    # Executed longest first (tiny runs cost about their step count) so the last runs leave no core idle; a budget
    # whose lowest loss is at an edge gets its extra size as soon as it is done (``_edge_follow_up``).
    steps = {j.run_id: j.config["train"]["max_steps"] for j in jobs}
    follow_up = _edge_follow_up(design, reg, jobs, out, say, shape_fn)
    outcome = execute(reg, sorted(jobs, key=lambda j: -steps[j.run_id]), opts, _progress(say, jobs), follow_up)
    # Budget by budget, smallest size first, edge sizes included: the fits' order never depends on the schedule.
    records = [r for j in jobs if (r := reg.get(j.run_id)) is not None]
    runs = sorted(records, key=lambda r: (r.budget, r.n_params_non_embedding))
    arr = V.run_arrays(runs)
    say(f"fitting approach 2 (IsoFLOP parabolas, envelope) and approach 3 on {len(arr['n'])} runs")
    fits = V.fit_ladder(arr, bootstrap=design.bootstrap, seed=design.seed)
    if fits.note:
        say(f"note: {fits.note}")
    held_points = [V.plan_heldout(design, fits, shape_fn)]
    if (over := V.plan_overtrained(design, fits, held_points[0], shape_fn)) is not None:
        held_points.append(over)
    heldouts = [_heldout_entry(design, fits, p, corpus_tokens, say) for p in held_points]
    if verify:
        held_opts = ExecOptions(
            workers=min(len(held_points), opts.n_workers()),
            threads=heldout_threads or opts.threads,
            launcher=opts.launcher,
            nproc_per_node=opts.nproc_per_node,
            slurm=opts.slurm,
            entry=opts.entry,
        )
        say(f"training the {len(held_points)} held-out run(s) to verify ({held_opts.threads} thread(s) each)")
        held_jobs = _jobs(reg, design, held_points, out)
        outcome.update(execute(reg, held_jobs, held_opts, _progress(say, held_jobs)))
        for entry, job in zip(heldouts, held_jobs, strict=True):
            _verify_entry(entry, reg.get(job.run_id))
    heldout = heldouts[0]
    fit_summary = {
        "param_kind": "non_embedding",
        "approach3": _law_dict(fits.approach3),
        "approach2": None if fits.approach2 is None else fits.approach2.to_dict(),
        "envelope": fits.envelope_dict(),
        "n_opt_fit": fits.n_opt_fit(),
        "d_opt_fit": fits.d_opt_fit(),
    }
    analysis = {
        "ladder": design.name,
        "design": {k: v for k, v in design.__dict__.items()},
        "points": [_point_dict(r) for r in runs if r is not None],
        "parabolas": fits.parabolas(),
        "n_opt_fit": fits.n_opt_fit(),
        "d_opt_fit": fits.d_opt_fit(),
        "curves": V.curves(fits, heldout["flops"]),
        "heldout": heldout,
        "heldouts": heldouts,
        "fits": fit_summary,
    }
    atomic_write_json(out / "analysis.json", json_safe(analysis))
    from isoflop.report import write_report

    report = write_report(analysis, out)
    counts = {s: sum(1 for v in outcome.values() if v == s) for s in ("finished", "failed", "skipped")}
    summary = {
        "ladder": design.name,
        "out_dir": str(out),
        "runs": {"total": len(outcome), **counts},
        "corpus_train_tokens": corpus_tokens,
        "heldout": {k: v for k, v in heldout.items() if k != "curve"},
        "heldouts": [{k: v for k, v in h.items() if k != "curve"} for h in heldouts],
        "fit": fit_summary,
        "report": str(report),
        "wall_s": time.perf_counter() - start,
    }
    atomic_write_json(out / "summary.json", json_safe(summary))
    return summary
