"""The training loop in-process on a micro model: outputs, resume, checkpoint validity, NaN handling, options."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from _train_common import micro_config, shared_cache

from isoflop.errors import IsoflopError
from isoflop.spec import spec_from_dict
from isoflop.train.checkpoint import COMPLETE, Checkpointer, latest_checkpoint, write_manifest
from isoflop.train.distributed import DistEnv
from isoflop.train.loop import train
from isoflop.train.model import Transformer


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return shared_cache(tmp_path_factory)


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("ISOFLOP_CACHE", str(cache_dir))


def test_micro_run_outputs_and_rerun(tmp_path):
    out = tmp_path / "run"
    s = train(micro_config(), out)
    assert s["status"] == "complete" and s["steps"] == 12 and s["tokens"] == 12 * 8 * 32
    assert s["val_loss"] < s["val_loss_initial"] - 0.3, s["val_history"]
    assert [v[0] for v in s["val_history"]] == [0, 6, 12]
    for key in (
        "final_train_loss",
        "val_loss",
        "steps",
        "tokens",
        "tokens_per_s",
        "mfu",
        "wall_s",
        "step_time_s",
        "memory_gib",
    ):
        assert key in s
    assert s["tokens_per_s"] > 0 and s["wall_s"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    assert all({"step", "loss", "lr", "tokens_per_s", "grad_norm", "memory_gib"} <= r.keys() for r in rows)
    assert rows[-1]["loss"] == s["final_train_loss"]
    assert json.loads((out / "summary.json").read_text())["val_loss"] == s["val_loss"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (out / "hf").iterdir()
    }
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-00000008", "step-00000012"]
    # Running again over the same folder resumes at the end: nothing to train, same numbers.
    again = train(micro_config(), out)
    assert again["resumed_from"] == 12 and again["steps"] == 12
    assert again["val_loss"] == s["val_loss"] and again["final_train_loss"] == s["final_train_loss"]
    # A different model in the same folder is refused.
    with pytest.raises(IsoflopError, match="different run"):
        train(micro_config(model={"d_model": 64}), out)


def test_half_written_checkpoints_are_ignored_and_predictions_reported(tmp_path):
    out = tmp_path / "run"
    predicted = {"loss": 5.0, "loss_ci95": [4.5, 5.5], "step_time_s": 0.01, "memory_gib": 0.5}
    first = train(micro_config(train={"max_steps": 8}, predicted=predicted, plan={"budget": "tiny"}), out)
    # A config from a plan reports its predictions beside the measurements.
    assert first["predicted"]["loss"] == 5.0 and first["measured"]["loss"] == first["val_loss"]
    assert first["prediction_error"]["loss"] == pytest.approx((first["val_loss"] - 5.0) / 5.0)
    assert first["measured"]["step_time_s"] == first["step_time_s"]
    ckpts = out / "checkpoints"
    # A crash mid-save leaves a .tmp folder; a crash before the marker leaves a folder without COMPLETE.
    shutil.copytree(ckpts / "step-00000008", ckpts / "step-00000012.tmp")
    (ckpts / "step-00000012.tmp" / COMPLETE).unlink()
    shutil.copytree(ckpts / "step-00000008", ckpts / "step-00000010")
    (ckpts / "step-00000010" / COMPLETE).unlink()
    with open(ckpts / "step-00000010" / "__0_0.distcp", "r+b") as fh:  # and truncated shards
        fh.truncate(10)
    assert latest_checkpoint(ckpts).name == "step-00000008"
    s = train(micro_config(train={"max_steps": 12}), out)
    assert s["resumed_from"] == 8 and s["steps"] == 12
    assert not (ckpts / "step-00000012.tmp").exists()


def test_checkpoint_metadata_cannot_run_code(tmp_path):
    out = tmp_path / "run"
    train(micro_config(train={"max_steps": 4, "eval_every": 0}), out)
    ckpt = latest_checkpoint(out / "checkpoints")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (ckpt / ".metadata").write_bytes(pickle.dumps(Evil()))
    write_manifest(ckpt)  # an attacker who can write the files can rewrite the manifest too
    model = Transformer(spec_from_dict(micro_config()["model"]))
    optim = torch.optim.AdamW(model.parameters())
    with pytest.raises(IsoflopError, match="builtins.print, which is not allowed"):
        Checkpointer(out / "checkpoints", 2, DistEnv()).load(ckpt, model, optim)


def _nan_on_calls(monkeypatch, bad_calls: set[int]) -> None:
    """Make training forward number k (1-based) return a NaN loss for k in ``bad_calls``."""
    original = Transformer.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None):
        out = original(self, idx, targets)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                return out * float("nan")
        return out

    monkeypatch.setattr(Transformer, "forward", forward)


def test_nan_steps_are_skipped_then_rolled_back(tmp_path, monkeypatch, capsys):
    # Calls 1-5: steps 1-5; call 6 NaN (skipped); calls 7-10: steps 6-9 (checkpoint at 8); calls 11-13 NaN:
    # the third in a row rolls back to step 8, and training continues with the following data.
    _nan_on_calls(monkeypatch, {6, 11, 12, 13})
    cfg = micro_config(train={"max_steps": 12, "max_bad_steps": 3, "eval_every": 0})
    s = train(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert "update skipped" in err
    assert "ROLLBACK 1/3: 3 consecutive bad steps at step 9" in err and "(step 8)" in err
    assert s["skipped_steps"] == 4 and s["rollbacks"] == 1 and s["steps"] == 12
    assert s["final_train_loss"] == s["final_train_loss"]  # finite, not NaN
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in rows)


def test_nan_without_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, {1, 2, 3})
    cfg = micro_config(train={"max_steps": 6, "max_bad_steps": 3, "ckpt_every": 0, "eval_every": 0})
    with pytest.raises(IsoflopError, match="no checkpoint to roll back to"):
        train(cfg, tmp_path / "run")


def test_activation_checkpointing_compile_and_bf16_options(tmp_path, capsys, monkeypatch):
    base = micro_config(train={"max_steps": 4, "eval_every": 0, "ckpt_every": 0})
    plain = train(base, tmp_path / "plain")
    for policy in (True, "selective", "op"):  # true = full
        ac = train(micro_config(train={**base["train"], "activation_checkpointing": policy}), tmp_path / f"ac-{policy}")
        # Recomputing activations changes no arithmetic: the same losses.
        assert ac["final_train_loss"] == pytest.approx(plain["final_train_loss"], rel=1e-6)
        assert ac["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6)
    # torch.compile is guarded: where it cannot run (here: pretend no C++ compiler) the run says why and stays eager.
    monkeypatch.setattr("isoflop.train.loop._can_compile", lambda device: "no C++ compiler was found")
    compiled = train(micro_config(train={**base["train"], "compile": True}), tmp_path / "compiled")
    assert "train.compile requested but" in capsys.readouterr().err
    assert compiled["final_train_loss"] == plain["final_train_loss"]
    bf16 = train(micro_config(train={**base["train"], "dtype": "bf16"}), tmp_path / "bf16")
    assert bf16["dtype"] == "bf16" and bf16["final_train_loss"] == pytest.approx(plain["final_train_loss"], rel=0.05)
    if not torch.cuda.is_available():
        with pytest.raises(IsoflopError, match="no CUDA GPU"):
            train(micro_config(train={**base["train"], "device": "cuda"}), tmp_path / "cuda")


def test_tiny_preset_via_cli_val_loss_falls(cli, tmp_path):
    """The built-in ``tiny`` preset (its model, optimizer and schedule) through ``isoflop train``; the corpus
    is capped at 1 MB and the run cut to 12 steps of 8 sequences to keep the test short."""
    result = cli(
        "train",
        "--preset",
        "tiny",
        "--max-steps",
        "12",
        "--set",
        "data.max_bytes=1000000",
        "--set",
        "train.eval_every=6",
        "--set",
        "train.global_batch=8",
        "--out",
        str(tmp_path / "tiny"),
        "--json",
    )
    assert result.code == 0, result.err
    s = result.json()
    assert s["model"] == "tiny-llama" and s["steps"] == 12 and 1.0e6 < s["params"] < 1.5e6
    history = [loss for _, loss in s["val_history"]]
    assert len(history) == 3 and history[0] > history[1] > history[2]
    assert s["val_loss"] < s["val_loss_initial"] - 0.5


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_async_checkpoint_is_staged_before_save_returns(tmp_path):
    """The asynchronous path (used on GPU): weights changed right after ``save`` returns do not leak into the
    checkpoint, which becomes complete (marker + rename) once the background write ends."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 2))
    optim = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 16)).sum().backward()
    optim.step()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = Checkpointer(tmp_path, 2, DistEnv(), async_save=True)
    assert ckpt.async_save
    ckpt.save(1, model, optim, {"note": "async"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ckpt.close()  # waits for the write, then marks it complete
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    state = Checkpointer(tmp_path, 2, DistEnv()).load(latest_checkpoint(tmp_path), model, optim)
    assert state["step"] == 1 and state["note"] == "async"
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())
