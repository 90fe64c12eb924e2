"""Registry: one row per run, concurrent writers, resumable (finished never re-run, crashed retried)."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3

from isoflop.ladder.registry import Registry, config_hash


def _claim_all(path: str, ids: list[str], queue) -> None:
    reg = Registry(path, timeout_s=30)
    won = [rid for rid in ids if reg.claim(rid, "/tmp/x")]
    for rid in won:
        reg.finish(rid, {"final_loss": 1.0, "val_loss": 1.0})
    queue.put(won)


def _set_pid(db, run_id: str, pid: int) -> None:
    """Edit the registry file directly, as another process would (sqlite3, not the Registry's internals)."""
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET pid=? WHERE run_id=?", (pid, run_id))


def test_two_processes_never_claim_the_same_run(tmp_path) -> None:
    path = tmp_path / "reg.sqlite"
    reg = Registry(path)
    ids = [reg.add("l", {"i": i}) for i in range(40)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(path), ids, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    won = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    # Every run claimed by exactly one process, and every row finished.
    assert sorted(won[0] + won[1]) == sorted(ids)
    assert not set(won[0]) & set(won[1])
    assert {r.status for r in reg.runs("l")} == {"finished"}


def test_finished_runs_are_not_reclaimed_and_crashed_runs_are(tmp_path) -> None:
    reg = Registry(tmp_path / "reg.sqlite")
    done = reg.add("l", {"a": 1}, budget=1e9, n_params=10)
    failed = reg.add("l", {"a": 2})
    crashed = reg.add("l", {"a": 3})
    assert reg.add("l", {"a": 1}) == done == config_hash({"a": 1})  # idempotent
    assert reg.claim(done, "o") and reg.claim(failed, "o") and reg.claim(crashed, "o")
    reg.finish(done, {"final_loss": 2.0, "val_loss": 2.1, "step_time_s": 0.1, "summary": {"k": 1}})
    reg.fail(failed, "Traceback ...\nRuntimeError: boom")
    # A process that died while running: simulate with a pid that cannot exist.
    _set_pid(tmp_path / "reg.sqlite", crashed, 2**22 + 12345)
    assert not reg.claim(done, "o")
    assert reg.claim(failed, "o") and reg.claim(crashed, "o")
    rec = reg.get(done)
    assert rec.status == "finished" and rec.val_loss == 2.1 and rec.summary == {"k": 1} and rec.budget == 1e9
    assert reg.get(failed).attempts == 2 and reg.get(crashed).attempts == 2


def test_running_in_a_live_process_is_not_taken(tmp_path) -> None:
    reg = Registry(tmp_path / "reg.sqlite")
    rid = reg.add("l", {"a": 1})
    assert reg.claim(rid, "o")
    _set_pid(tmp_path / "reg.sqlite", rid, os.getppid())  # pretend our parent (alive) holds it
    assert not reg.claim(rid, "o")
    assert reg.runs(status="running")[0].run_id == rid
