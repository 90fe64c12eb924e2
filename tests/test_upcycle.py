"""``isoflop train --init-from RUN [--upcycle E,K]``: a run starts from another run's newest checkpoint; sparse
upcycling (Komatsuzaki et al. 2022) turns a dense run into an MoE whose identical experts compute exactly the
dense model's function (the top-k weights sum to 1), and training continues from there."""

from __future__ import annotations

import pytest
import yaml
from _train_common import micro_config, shared_cache, write_config

from isoflop.train.loop import train


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return shared_cache(tmp_path_factory)


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("ISOFLOP_CACHE", str(cache_dir))


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, cache_dir):
    """A dense micro run of 6 steps (checkpoint at the end) and its summary."""
    out = tmp_path_factory.mktemp("dense") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ISOFLOP_CACHE", str(cache_dir))
        summary = train(micro_config(train={"max_steps": 6, "ckpt_every": 0, "eval_every": 0}), out)
    return out, summary


def test_init_from_continues_from_the_runs_weights(cli, tmp_path, dense_run):
    """Same weights, same validation batches: the new run's initial validation loss is the old run's final one;
    the optimizer and the step count start fresh."""
    run, before = dense_run
    result = cli("train", "--init-from", str(run), "--max-steps", "3", "--out", str(tmp_path / "next"), "--json")
    assert result.code == 0, result.err
    after = result.json()
    assert after["val_loss_initial"] == pytest.approx(before["val_loss"], rel=1e-6)
    assert after["steps"] == 3 and after["resumed_from"] is None
    config = yaml.safe_load((tmp_path / "next" / "config.yaml").read_text())
    assert config["train"]["init_from"] == str(run.resolve()) and config["data"] == _data(run)


def _data(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())["data"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upcycle", "4,2"], "--upcycle needs the dense run to start from; add --init-from RUN"),
        (["--init-from", "{moe}", "--upcycle", "4,2"], "already trains an MoE model (4 experts, top-2)"),
        (["--init-from", "{dense}", "--upcycle", "4"], "is not EXPERTS,TOPK"),
        (["--init-from", "{dense}", "--upcycle", "2,3"], "1 <= top-k <= experts"),
        (["--init-from", "{missing}"], "is not a training run folder"),
        (["--init-from", "{dense}", "--preset", "tiny"], "--init-from takes its config from the run folder"),
    ],
    ids=["no-init-from", "already-moe", "malformed", "top-k-above-experts", "not-a-run", "with-preset"],
)
def test_bad_input_is_one_line(cli, tmp_path, dense_run, args, message):
    moe = tmp_path / "moe"
    moe.mkdir()
    write_config(moe / "config.yaml", micro_config(model={"n_experts": 4, "top_k": 2}))
    paths = {"moe": moe, "dense": dense_run[0], "missing": tmp_path / "nowhere"}
    result = cli("train", *[a.format(**paths) for a in args], "--out", str(tmp_path / "out"))
    assert result.code == 2 and message in result.err, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("error: ")
