"""Low-communication training on 2 gloo processes: DiLoCo with H = 1 (outer lr 1, no momentum, a linear inner
update) equals DDP; the bytes counted for DDP, PowerSGD and Streaming DiLoCo equal ``isoflop.perf.lowcomm``."""

from __future__ import annotations

import json

import pytest
from _train_common import micro_config, run_cli, run_torchrun, shared_cache, summary, write_config
from safetensors.torch import load_file

from isoflop.errors import IsoflopError
from isoflop.perf.lowcomm import check_powersgd_rank, ddp_bytes, diloco_run_bytes, powersgd_run_bytes
from isoflop.perf.optimizer_state import param_shapes
from isoflop.spec.loader import spec_from_dict
from isoflop.train.config import build_config
from isoflop.train.data import DataConfig, prepare_data

STEPS = 8
SHAPES = param_shapes(spec_from_dict(dict(micro_config()["model"])))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    cache = shared_cache(tmp_path_factory)
    prepare_data(DataConfig(**micro_config()["data"]), cache_dir=cache / "data")
    return cache


def _run(tmp_path, cache, name, optim, sets):
    cfg = micro_config(optim=optim, train={"max_steps": STEPS, "ckpt_every": 0, "eval_every": 0, "log_every": 1})
    path = write_config(tmp_path / f"{name}.yaml", cfg)
    args = ["train", str(path), "--out", str(tmp_path / name)]
    for item in sets:
        args += ["--set", item]
    result = run_torchrun(2, args, cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name, summary(tmp_path / name)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


SGD = {"name": "sgd", "beta1": 0.0, "grad_clip": 0.0, "lr": 0.5, "warmup_steps": 2}


def test_diloco_h1_equals_ddp_and_bytes_match(tmp_path, cache_dir):
    ddp_out, ddp = _run(tmp_path, cache_dir, "ddp", SGD, ["parallel.strategy=ddp", "sync.comm_hook=allreduce"])
    dl_out, dl = _run(
        tmp_path,
        cache_dir,
        "diloco",
        SGD,
        ["sync.mode=diloco", "sync.inner_steps=1", "sync.outer_lr=1", "sync.outer_momentum=0"],
    )
    a, b = load_file(ddp_out / "hf" / "model.safetensors"), load_file(dl_out / "hf" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert _losses(dl_out) == pytest.approx(_losses(ddp_out), abs=1e-6)
    assert ddp["comm"]["bytes_total"] == STEPS * ddp_bytes(SHAPES)
    assert dl["comm"]["bytes_total"] == diloco_run_bytes(SHAPES, 1, 1, "fp32", STEPS)
    assert dl["strategy"] == "diloco"


def test_powersgd_bytes_match_prediction(tmp_path, cache_dir):
    _, got = _run(
        tmp_path,
        cache_dir,
        "psgd",
        {"lr": 0.01},
        ["parallel.strategy=ddp", "sync.comm_hook=powersgd", "sync.powersgd_rank=2"],
    )
    predicted = powersgd_run_bytes(SHAPES, 2, 2, STEPS)
    assert got["comm"]["bytes_total"] == pytest.approx(predicted, rel=0.02)
    assert predicted < STEPS * ddp_bytes(SHAPES) / 2


def test_streaming_int4_non_iid_diloco_trains_and_bytes_match(tmp_path, cache_dir):
    _, got = _run(
        tmp_path,
        cache_dir,
        "stream",
        {"lr": 0.01},
        ["sync.mode=diloco", "sync.inner_steps=4", "sync.fragments=2", "sync.outer_dtype=int4", "sync.non_iid=true"],
    )
    assert got["comm"]["bytes_total"] == diloco_run_bytes(SHAPES, 4, 2, "int4", STEPS)
    assert got["val_loss"] < got["val_loss_initial"]


def test_bad_inputs_are_one_line_errors(tmp_path, cache_dir):
    result = run_cli(["train", "--out", str(tmp_path / "x"), "--set", "sync.inner_steps=0"], cache_dir)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(IsoflopError, match="powersgd_rank=64 exceeds the smaller side"):
        check_powersgd_rank(SHAPES, 64)
    with pytest.raises(IsoflopError, match="comm_hook=fp16 applies to DDP"):
        build_config({"sync": {"mode": "diloco", "comm_hook": "fp16"}, "train": {"max_steps": 2}})


def test_diloco_resume_is_bitwise(tmp_path, cache_dir):
    """Kill after the step-8 checkpoint is gone: the rerun resumes at step 4 from the trainer's checkpoint plus
    each worker's DiLoCo state and ends with the same weights, bit for bit."""
    import shutil

    sets = ["sync.mode=diloco", "sync.inner_steps=3", "train.ckpt_every=4", "train.keep_checkpoints=3"]
    out, first = _run(tmp_path, cache_dir, "resume", {"lr": 0.01}, sets)
    before = load_file(out / "hf" / "model.safetensors")
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:08d}")
    shutil.rmtree(out / "hf")
    (out / "summary.json").unlink()
    _, again = _run(tmp_path, cache_dir, "resume", {"lr": 0.01}, sets)
    after = load_file(out / "hf" / "model.safetensors")
    assert again["resumed_from"] == 4
    assert all(bool((before[k] == after[k]).all()) for k in before)
    assert again["val_loss"] == first["val_loss"]
