"""Checkpoint integrity and the pickle attack: no code runs from a checkpoint, a corrupt checkpoint is set aside
(renamed, never deleted) and the run resumes from the newest one that verifies."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _train_common import micro_config, run_cli, shared_cache, write_config
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

from isoflop.errors import IsoflopError
from isoflop.spec import spec_from_dict
from isoflop.train.checkpoint import (
    MANIFEST,
    STATE_FILE,
    Checkpointer,
    CheckpointInvalid,
    SafeFileSystemReader,
    TensorOnlyLoadPlanner,
    complete_checkpoints,
    read_metadata,
    verify,
    write_manifest,
)
from isoflop.train.distributed import DistEnv
from isoflop.train.loop import train
from isoflop.train.model import Transformer
from isoflop.train.optim import build_optimizer

CFG = micro_config(train={"max_steps": 8, "ckpt_every": 4, "eval_every": 0})
SHARD = "__0_0.distcp"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, cache_dir):
    """A finished micro run with checkpoints at steps 4 and 8."""
    out = tmp_path_factory.mktemp("pristine") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ISOFLOP_CACHE", str(cache_dir))
        train(CFG, out)
    assert [s for s, _ in complete_checkpoints(out / "checkpoints")] == [4, 8]
    return out


@pytest.fixture()
def run(pristine, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("ISOFLOP_CACHE", str(cache_dir))
    out = tmp_path / "run"
    shutil.copytree(pristine, out)
    return out


def _model_optim():
    model = Transformer(spec_from_dict(CFG["model"]))
    return model, build_optimizer(model, CFG["optim"]["lr"])


def _reference_weights(pristine: Path, step: int) -> dict[str, torch.Tensor]:
    model, optim = _model_optim()
    Checkpointer(pristine / "checkpoints", 2, DistEnv()).load(
        pristine / "checkpoints" / f"step-{step:08d}", model, optim
    )
    return {k: v.clone() for k, v in model.state_dict().items()}


def _overwrite_ff(ckpt: Path) -> None:
    with open(ckpt / SHARD, "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\xff" * 65536)


def _truncate(ckpt: Path) -> None:
    with open(ckpt / SHARD, "r+b") as fh:
        fh.truncate((ckpt / SHARD).stat().st_size // 2)


def _broken_metadata(ckpt: Path) -> None:
    (ckpt / ".metadata").write_bytes(b"\x80\x04garbage")
    write_manifest(ckpt)  # consistent manifest: the metadata check itself must catch it


def _state_without_keys(ckpt: Path) -> None:
    state = json.loads((ckpt / STATE_FILE).read_text())
    del state["sampler"], state["optim_param_groups"]
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    write_manifest(ckpt)


CORRUPTIONS = {
    "ff-64KiB": (_overwrite_ff, "sha256"),
    "truncated": (_truncate, "size"),
    "deleted": (lambda c: (c / SHARD).unlink(), "missing-file"),
    "broken-metadata": (_broken_metadata, "metadata"),
    "state-garbage": (lambda c: (c / STATE_FILE).write_text("{not json"), "size"),
    "state-missing-keys": (_state_without_keys, "trainer-state"),
    "no-manifest": (lambda c: (c / MANIFEST).unlink(), "manifest"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_newest_falls_back_to_previous(case, run, pristine):
    corrupt, reason = CORRUPTIONS[case]
    ckpts = run / "checkpoints"
    corrupt(ckpts / "step-00000008")
    with pytest.raises(CheckpointInvalid) as info:
        verify(ckpts / "step-00000008", ("sampler",))
    assert info.value.reason == reason and "\n" not in str(info.value)
    logged: list[str] = []
    model, optim = _model_optim()
    ckpt = Checkpointer(ckpts, 2, DistEnv(), log=logged.append, required=("sampler",))
    path, state = ckpt.restore(model, optim)
    assert path.name == "step-00000004" and state["step"] == 4
    aside = ckpts / f"step-00000008.corrupt-{reason}"
    assert aside.is_dir() and ckpt.set_aside == [aside]  # renamed, not deleted
    assert len(logged) == 1 and "set aside as step-00000008.corrupt-" in logged[0]
    ref = _reference_weights(pristine, 4)
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())


def test_training_resumes_from_the_good_checkpoint_and_none_left_is_one_line(run, pristine, cache_dir, tmp_path):
    ckpts = run / "checkpoints"
    _overwrite_ff(ckpts / "step-00000008")
    cfg = write_config(tmp_path / "cfg.yaml", CFG)
    res = run_cli(["train", str(cfg), "--out", str(run), "--json"], cache_dir)
    assert res.returncode == 0, res.stderr
    assert "step-00000008 failed verification" in res.stderr and "resuming from" in res.stderr
    s = json.loads(res.stdout)
    ref = json.loads((pristine / "summary.json").read_text())
    assert s["resumed_from"] == 4 and s["steps"] == 8
    assert s["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=1e-5)  # steps 5-8 retrained alike
    # Every checkpoint broken: one line, exit 2; nothing deleted, run.json untouched.
    before = (run / "run.json").read_text()
    for _, path in complete_checkpoints(ckpts):
        _truncate(path)
    res = run_cli(["train", str(cfg), "--out", str(run)], cache_dir)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: no checkpoint in ")
    assert "Traceback" not in res.stderr
    assert len([p for p in ckpts.iterdir() if ".corrupt-" in p.name]) == 3
    assert (run / "run.json").read_text() == before


def test_failed_resume_of_another_config_does_not_lock_the_run_out(run, cache_dir, tmp_path):
    (run / "run.json").unlink()  # no record: only the checkpoints' own identity can tell
    other = write_config(tmp_path / "other.yaml", micro_config(model={"d_model": 64}, train=CFG["train"]))
    res = run_cli(["train", str(other), "--out", str(run)], cache_dir)
    assert res.returncode == 2 and "different run" in res.stderr.strip().splitlines()[-1]
    assert not (run / "run.json").exists() and len(complete_checkpoints(run / "checkpoints")) == 2
    s = train(CFG, run)  # the right config still resumes
    assert s["resumed_from"] == 8 and json.loads((run / "run.json").read_text())["identity"]["model"]["d_model"] == 32


# The attack ---------------------------------------------------------------------------------------


class _Payload:
    """What an attacker appends to a shard: unpickling it creates the marker folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _plant_pickle(ckpt: Path, marker: Path, fqn: str = "model.norm.weight") -> None:
    """Point ``fqn`` of the metadata at a pickle appended to the shard, and rewrite the manifest to match."""
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)  # the format DCP's byte items have (torch.load reads them)
    payload = buf.getvalue()
    offset = (ckpt / SHARD).stat().st_size
    with open(ckpt / SHARD, "ab") as fh:
        fh.write(payload)
    md = read_metadata(ckpt)
    md.state_dict_metadata[fqn] = BytesStorageMetadata()
    for key in [k for k in md.storage_data if k.fqn == fqn]:
        del md.storage_data[key]
    md.storage_data[MetadataIndex(fqn)] = _StorageInfo(relative_path=SHARD, offset=offset, length=len(payload))
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    write_manifest(ckpt)


def test_pickled_item_runs_no_code(run, tmp_path, cache_dir):
    ckpts = run / "checkpoints"
    newest = ckpts / "step-00000008"
    marker = tmp_path / "PWNED"
    _plant_pickle(newest, marker)
    model, optim = _model_optim()
    # The attack is real: DCP's default planner unpickles the item (weights_only=False) and runs the payload.
    control = tmp_path / "control"
    shutil.copytree(ckpts / "step-00000004", control)
    _plant_pickle(control, tmp_path / "CONTROL", fqn="model.embed.weight")
    with contextlib.suppress(CheckpointException):
        dcp.load(
            {"model": _model_optim()[0].state_dict()},
            storage_reader=SafeFileSystemReader(str(control)),
            planner=DefaultLoadPlanner(),
        )
    assert (tmp_path / "CONTROL").exists()
    # isoflop's planner refuses the byte item even when the metadata check is bypassed.
    with pytest.raises(CheckpointException, match="pickled object, which is never loaded"):
        dcp.load(
            {"model": model.state_dict()},
            storage_reader=SafeFileSystemReader(str(newest)),
            planner=TensorOnlyLoadPlanner(),
        )
    assert not marker.exists()
    # The metadata check names it in one line; restoring sets it aside and resumes from step 4.
    with pytest.raises(CheckpointInvalid, match="declares model.norm.weight as a pickled object") as info:
        Checkpointer(ckpts, 2, DistEnv()).load(newest, model, optim)
    assert "\n" not in str(info.value)
    res = run_cli(["train", write_config(tmp_path / "c.yaml", CFG).as_posix(), "--out", str(run)], cache_dir)
    assert res.returncode == 0, res.stderr
    assert "set aside as step-00000008.corrupt-pickled-item" in res.stderr and "(step 4 of 8)" in res.stderr
    assert not marker.exists()


def test_metadata_allow_list_refuses_other_classes(run):
    newest = run / "checkpoints" / "step-00000008"
    md = read_metadata(newest)
    assert isinstance(md.state_dict_metadata, dict)
    for module, name in (("builtins", "eval"), ("os", "system"), ("torch.distributed.checkpoint", "FileSystemWriter")):
        evil = pickle.PROTO + b"\x04" + f"c{module}\n{name}\n".encode() + b"."
        (newest / ".metadata").write_bytes(evil)
        with pytest.raises(CheckpointInvalid, match=f"{module}.{name}, which is not allowed"):
            read_metadata(newest)


def test_checkpoints_hold_no_byte_items(run):
    for _, path in complete_checkpoints(run / "checkpoints"):
        md = read_metadata(path)
        assert not any(isinstance(v, BytesStorageMetadata) for v in md.state_dict_metadata.values())
        (groups,) = json.loads((path / STATE_FILE).read_text())["optim_param_groups"]  # one set: one process
        assert [g["name"] for g in groups] == ["decay", "no_decay"] and groups[0]["betas"] == [0.9, 0.95]


def test_one_checkpoint_error_is_an_isoflop_error(run):
    _truncate(run / "checkpoints" / "step-00000004")
    model, optim = _model_optim()
    with pytest.raises(IsoflopError, match="has .* bytes, the manifest says"):
        Checkpointer(run / "checkpoints", 2, DistEnv()).load(run / "checkpoints" / "step-00000004", model, optim)
