"""Runner: concurrent subprocesses with their own thread counts; failures recorded; resume skips finished runs."""

from __future__ import annotations

import os

from isoflop.ladder.registry import Registry
from isoflop.ladder.runner import ExecOptions, Job, command, execute

ENTRY = "tests.ladder_fake_entry:train"


def _jobs(reg: Registry, tmp_path, modes: dict[str, str], sleep: float = 0.0) -> list[Job]:
    jobs = []
    for name, mode in modes.items():
        cfg = {
            "plan": {
                "name": name,
                "fake": mode,
                "sleep": sleep,
                "log": str(tmp_path / "log.txt"),
                "marker": str(tmp_path / name),
            }
        }
        jobs.append(Job(reg.add("t", cfg), cfg, tmp_path / "runs" / name, name))
    return jobs


def test_failures_are_recorded_and_do_not_stop_the_ladder(tmp_path) -> None:
    reg = Registry(tmp_path / "reg.sqlite")
    jobs = _jobs(reg, tmp_path, {"a": "ok", "b": "crash", "c": "ok", "d": "crash_once"})
    events = []
    out = execute(
        reg, jobs, ExecOptions(workers=2, threads=1, entry=ENTRY), lambda e, j, i: events.append((e, j.label))
    )
    assert out == {
        jobs[0].run_id: "finished",
        jobs[1].run_id: "failed",
        jobs[2].run_id: "finished",
        jobs[3].run_id: "failed",
    }
    assert "deliberate failure" in reg.get(jobs[1].run_id).error
    done = reg.get(jobs[0].run_id)
    assert done.val_loss == 3.1 and done.final_loss == 3.0 and done.step_time_s > 0 and done.memory_gib > 0
    # Runs went to worker processes (not this one) with one torch thread and OMP_NUM_THREADS=1.
    lines = (tmp_path / "log.txt").read_text().split()
    assert lines[2::4] == ["1", "1"] and lines[3::4] == ["1", "1"] and str(os.getpid()) not in lines[1::4]

    # Resume: finished runs are skipped, the crashed ones are retried (d now succeeds, b fails again).
    again = execute(reg, jobs, ExecOptions(workers=2, threads=1, entry=ENTRY))
    assert again[jobs[0].run_id] == again[jobs[2].run_id] == "skipped"
    assert again[jobs[3].run_id] == "finished" and again[jobs[1].run_id] == "failed"
    assert reg.get(jobs[3].run_id).attempts == 2
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 3


def test_one_subprocess_per_run_mode(tmp_path) -> None:
    reg = Registry(tmp_path / "reg.sqlite")
    jobs = _jobs(reg, tmp_path, {"a": "ok", "b": "crash"})
    out = execute(reg, jobs, ExecOptions(workers=2, threads=1, entry=ENTRY, reuse_processes=False))
    assert out == {jobs[0].run_id: "finished", jobs[1].run_id: "failed"}
    assert "deliberate failure" in reg.get(jobs[1].run_id).error


def test_torchrun_command_line(tmp_path) -> None:
    job = Job("id", {}, tmp_path / "r")
    cmd = command(job, ExecOptions(launcher="torchrun", nproc_per_node=2))
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=2" in cmd
    assert cmd[-4:] == ["-m", "isoflop.ladder.worker", str(tmp_path / "r" / "config.json"), str(tmp_path / "r")]


def test_slurm_without_submitit_is_a_clear_error(tmp_path) -> None:
    import importlib.util

    import pytest

    from isoflop.errors import IsoflopError

    if importlib.util.find_spec("submitit") is not None:
        pytest.skip("submitit is installed here")
    reg = Registry(tmp_path / "reg.sqlite")
    with pytest.raises(IsoflopError, match="needs submitit"):
        execute(reg, _jobs(reg, tmp_path, {"a": "ok"}), ExecOptions(launcher="slurm"))


def test_follow_up_jobs_run_in_the_same_pool_and_on_resume(tmp_path) -> None:
    """``follow_up`` runs after each job (finished, failed or skipped); the jobs it returns join the pool while
    others still run (a ladder's edge size), and a resumed ladder sees them again as skipped."""
    reg = Registry(tmp_path / "reg.sqlite")
    jobs = _jobs(reg, tmp_path, {"a": "ok", "b": "ok", "c": "ok"}, sleep=0.2)
    extra = _jobs(reg, tmp_path, {"a2": "ok"})
    calls = []

    def follow_up(job: Job) -> list[Job]:
        calls.append(job.label)
        return extra if job.label == "a" else []

    out = execute(reg, jobs, ExecOptions(workers=2, threads=1, entry=ENTRY), follow_up=follow_up)
    assert out == {j.run_id: "finished" for j in jobs + extra}
    assert sorted(calls) == ["a", "a2", "b", "c"] and reg.get(extra[0].run_id).status == "finished"
    calls.clear()
    again = execute(reg, jobs, ExecOptions(workers=2, threads=1, entry=ENTRY), follow_up=follow_up)
    assert set(again.values()) == {"skipped"} and extra[0].run_id in again and sorted(calls) == ["a", "a2", "b", "c"]
