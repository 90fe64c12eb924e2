"""Execute ladder runs: local subprocesses (each with its own thread count), torchrun, or SLURM via submitit.

Locally, ``workers`` runs go at once, each a separate Python process with ``OMP_NUM_THREADS`` and
``torch.set_num_threads`` set to ``threads``: on a small CPU, several 1-thread runs of tiny models
use the cores better than one multi-threaded run (``benchmarks/ladder_concurrency.py`` measures it).
``launcher="torchrun"`` starts each run as ``torch.distributed.run --nproc_per_node=N``;
``launcher="slurm"`` submits each run through ``submitit`` (only when it is installed).
A run that fails is recorded with the tail of its output; the other runs go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from isoflop import env as isoflop_env
from isoflop import structured
from isoflop.atomic import atomic_write_json
from isoflop.errors import IsoflopError
from isoflop.ladder.registry import Registry

Launcher = Literal["local", "torchrun", "slurm"]


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass
class Job:
    """One run to execute: its registry id, training config and output folder."""

    run_id: str
    config: dict[str, Any]
    out_dir: Path
    label: str = ""


@dataclass
class ExecOptions:
    """How to run jobs. ``workers=None``: as many as fit on the cores at ``threads`` each."""

    workers: int | None = None
    threads: int = 1
    launcher: Launcher = "local"
    nproc_per_node: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)
    entry: str | None = None  # module:function replacing the trainer (ISOFLOP_TRAIN_ENTRY)
    reuse_processes: bool = True  # local: a pool of worker processes, each running several jobs in turn

    def n_workers(self) -> int:
        if self.workers is not None:
            if self.workers < 1:
                raise IsoflopError(f"workers must be >= 1, got {self.workers}")
            return self.workers
        return max(1, available_cores() // max(1, self.threads * self.nproc_per_node))


Progress = Callable[[str, Job, dict[str, Any]], None]


def _env(opts: ExecOptions) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", isoflop_env.THREADS):
        env[var] = str(opts.threads)
    if opts.entry:
        env[isoflop_env.TRAIN_ENTRY] = opts.entry
    env["PYTHONPATH"] = isoflop_env.repo_pythonpath(env)
    return env


def command(job: Job, opts: ExecOptions) -> list[str]:
    """The command line that runs one job under the local or torchrun launcher."""
    args = [str(job.out_dir / "config.json"), str(job.out_dir)]
    if opts.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={opts.nproc_per_node}",
            "-m",
            "isoflop.ladder.worker",
            *args,
        ]
    return [sys.executable, "-m", "isoflop.ladder.worker", *args]


def _submitit_job(config_path: str, out_dir: str, threads: int, entry: str | None) -> int:
    """What a SLURM job runs (module level so submitit can pickle it)."""
    os.environ.update({"OMP_NUM_THREADS": str(threads), isoflop_env.THREADS: str(threads)})
    if entry:
        os.environ[isoflop_env.TRAIN_ENTRY] = entry
    from isoflop.ladder import worker

    return worker.main([config_path, out_dir])


def _run_slurm(job: Job, opts: ExecOptions) -> tuple[int, str]:
    try:
        import submitit
    except ImportError:
        raise IsoflopError("launcher 'slurm' needs submitit; `pip install submitit`, or use --launcher local") from None
    executor = submitit.AutoExecutor(folder=str(job.out_dir / "slurm"))
    executor.update_parameters(**{"timeout_min": 60, "cpus_per_task": opts.threads, **opts.slurm})
    submitted = executor.submit(
        _submitit_job, str(job.out_dir / "config.json"), str(job.out_dir), opts.threads, opts.entry
    )
    try:
        submitted.result()
    except Exception as exc:  # noqa: BLE001 - any job failure is recorded, not raised
        return 1, str(exc)
    return 0, ""


class _Pool:
    """Local worker processes (spawned, ``threads`` torch threads each) that run jobs in turn, so torch and the
    trainer are imported once per worker instead of once per run. If a worker dies (a crash in C code), the
    pool is dropped and the remaining jobs run as one fresh subprocess each."""

    def __init__(self, opts: ExecOptions) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from isoflop.ladder import worker

        self.broken = False
        self.executor = ProcessPoolExecutor(
            max_workers=opts.n_workers(),
            mp_context=mp.get_context("spawn"),
            initializer=worker.pool_init,
            initargs=(opts.threads, opts.entry),
        )

    def run(self, job: Job) -> tuple[int, str] | None:
        from concurrent.futures.process import BrokenProcessPool

        from isoflop.ladder import worker

        if self.broken:
            return None
        try:
            return self.executor.submit(
                worker.pool_job, str(job.out_dir / "config.json"), str(job.out_dir), str(job.out_dir / "log.txt")
            ).result()
        except BrokenProcessPool:
            self.broken = True
            return 1, "the worker process died (see log.txt); the run will be retried"

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _run_one(job: Job, opts: ExecOptions, pool: _Pool | None = None) -> tuple[int, str]:
    if opts.launcher == "slurm":
        return _run_slurm(job, opts)
    if pool is not None:
        done = pool.run(job)
        if done is not None:
            return done
    log_path = job.out_dir / "log.txt"
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(command(job, opts), env=_env(opts), stdout=log, stderr=subprocess.STDOUT, check=False)
    tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
    return proc.returncode, tail


def execute(
    registry: Registry,
    jobs: list[Job],
    opts: ExecOptions | None = None,
    progress: Progress | None = None,
    follow_up: Callable[[Job], list[Job]] | None = None,
) -> dict[str, str]:
    """Run every job not yet finished; returns ``run_id -> status`` (finished, failed, or skipped).
    ``follow_up(job)``, called once each job is done (finished, failed or skipped), returns more jobs to run in the
    same pool, queued behind the rest (a ladder adds a budget's edge size as soon as that budget is done)."""
    opts = opts or ExecOptions()
    if opts.launcher not in ("local", "torchrun", "slurm"):
        raise IsoflopError(f"unknown launcher {opts.launcher!r}; use local, torchrun or slurm")
    if opts.launcher == "slurm":
        import importlib.util

        if importlib.util.find_spec("submitit") is None:
            raise IsoflopError("launcher 'slurm' needs submitit; `pip install -e '.[slurm]'`, or use --launcher local")
    lock = threading.Lock()
    outcome: dict[str, str] = {}
    submitted: list[Future] = []

    def report(event: str, job: Job, info: dict[str, Any]) -> None:
        if progress:
            with lock:
                progress(event, job, info)

    def work(job: Job) -> None:
        run(job)
        if follow_up is not None:
            with lock:
                submitted.extend(threads.submit(work, new) for new in follow_up(job))

    def run(job: Job) -> None:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        if not registry.claim(job.run_id, str(job.out_dir), threads=opts.threads):
            outcome[job.run_id] = "skipped"
            report("skipped", job, {})
            return
        atomic_write_json(job.out_dir / "config.json", job.config)
        (job.out_dir / "result.json").unlink(missing_ok=True)
        report("started", job, {})
        start = time.perf_counter()
        try:
            code, tail = _run_one(job, opts, pool)
        except Exception as exc:  # noqa: BLE001 - a launcher error fails this run only
            code, tail = 1, f"{type(exc).__name__}: {exc}"
        wall = time.perf_counter() - start
        result_path = job.out_dir / "result.json"
        if code == 0 and result_path.is_file():
            result = structured.read(result_path, "run result", "re-run the run", "json")
            registry.finish(job.run_id, result)
            outcome[job.run_id] = "finished"
            report("finished", job, result)
        else:
            error = tail or f"exit code {code}"
            registry.fail(job.run_id, error, wall)
            outcome[job.run_id] = "failed"
            report("failed", job, {"error": error.splitlines()[-1] if error else ""})

    pool = _Pool(opts) if opts.launcher == "local" and opts.reuse_processes and jobs else None
    try:
        with ThreadPoolExecutor(max_workers=opts.n_workers()) as threads:
            with lock:
                submitted.extend(threads.submit(work, job) for job in jobs)
            while True:
                with lock:
                    pending = [f for f in submitted if not f.done()]
                if not pending:
                    break
                wait(pending, return_when=FIRST_COMPLETED)
            for future in submitted:
                future.result()  # a launcher or follow-up error surfaces here, as it did from map
    finally:
        if pool is not None:
            pool.close()
    return outcome
