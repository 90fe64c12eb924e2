"""``isoflop train --init-from RUN [--upcycle E,K]``: a run starts from another run's newest checkpoint; sparse
upcycling (Komatsuzaki et al. 2022) turns a dense run into an MoE whose identical experts compute exactly the
dense model's function (the top-k weights sum to 1), and training continues from there."""

from __future__ import annotations

import json

import pytest
import torch
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
    # The data continues after the source run's 6 steps of 8 windows (no batch is replayed).
    state = json.loads((tmp_path / "next" / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert (state["sampler"]["epoch"], state["sampler"]["pos"]) == (0, (6 + 3) * 8)
    # Another seed draws another data order: that run starts at its beginning, and says so.
    other = cli("train", "--init-from", str(run), "--max-steps", "1", "--seed", "5", "--out", str(tmp_path / "seed5"))
    assert other.code == 0 and "note: the data starts from the beginning: sampler state has seed=0" in other.err
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
        (
            ["--init-from", "{dense}", "--upcycle", "4,2", "--set", "model.n_shared_experts=1"],
            "upcycling gives routed experts only",
        ),
        (["--init-from", "{dense}", "--set", "model.d_model=64"], "its model differs in d_model"),
    ],
    ids=[
        "no-init-from",
        "already-moe",
        "malformed",
        "top-k-above-experts",
        "not-a-run",
        "with-preset",
        "shared-experts",
        "other-shape",
    ],
)
def test_bad_input_is_one_line(cli, tmp_path, dense_run, args, message):
    moe = tmp_path / "moe"
    moe.mkdir()
    write_config(moe / "config.yaml", micro_config(model={"n_experts": 4, "top_k": 2}))
    paths = {"moe": moe, "dense": dense_run[0], "missing": tmp_path / "nowhere"}
    result = cli("train", *[a.format(**paths) for a in args], "--out", str(tmp_path / "out"))
    assert result.code == 2 and message in result.err, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("error: ")


def _dense_and_upcycled(router: str) -> tuple:
    from isoflop.spec import ModelSpec
    from isoflop.train.model import build_model
    from isoflop.train.upcycle import upcycle_state

    spec = ModelSpec(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, vocab_size=256, max_seq_len=32)
    dense = build_model(spec, seed=0).eval()
    moe_spec = spec.replace(n_experts=4, top_k=2, router=router)
    moe = build_model(moe_spec, seed=1).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a router far from uniform, and selection biases: the top-k choice varies by token
        for block in moe.layers:
            block.mlp.router.weight.normal_(0.0, 0.5, generator=generator)
            if router == "sigmoid":
                block.mlp.expert_bias.normal_(0.0, 0.3, generator=generator)
    moe.load_state_dict(upcycle_state(dense.state_dict(), moe.state_dict(), moe_spec))
    return dense, moe


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_upcycled_experts_compute_the_dense_function(router):
    """Identical experts and top-k weights that sum to 1 (softmax renormalised over the top k; sigmoid scores
    normalised): the MoE's output is the dense MLP's, whatever the router chooses."""
    dense, moe = _dense_and_upcycled(router)
    for i, block in enumerate(moe.layers):
        mlp = dense.layers[i].mlp
        assert torch.equal(block.mlp.experts.gate_up, mlp.gate_up.weight.expand(4, -1, -1))
        assert torch.equal(block.mlp.experts.down, mlp.down.weight.expand(4, -1, -1))
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(moe(idx), dense(idx), rtol=1e-5, atol=1e-5)


def test_upcycle_cli_starts_at_the_dense_loss_trains_and_exports_mixtral(cli, tmp_path, dense_run):
    """``--upcycle 4,2`` on the dense run: the first validation loss is the dense run's last (same function), the
    loss falls from there, and the run's ``hf/`` folder is a Mixtral with the run's tokenizer whose logits equal the
    trainer's."""
    transformers = pytest.importorskip("transformers")
    from isoflop.train.model import build_model
    from isoflop.train.upcycle import latest_weights, run_config

    run, before = dense_run
    out = tmp_path / "moe"
    result = cli("train", "--init-from", str(run), "--upcycle", "4,2", "--max-steps", "6", "--out", str(out), "--json")
    assert result.code == 0, result.err
    after = result.json()
    assert after["val_loss_initial"] == pytest.approx(before["val_loss"], rel=1e-5)
    assert after["val_loss"] < after["val_loss_initial"] and after["steps"] == 6
    _, cfg = run_config(out)
    assert (cfg.model.n_experts, cfg.model.top_k, cfg.model.name) == (4, 2, "micro-upcycled-4x2")
    assert _data(out) == _data(run)  # the tokenizer is carried over

    model = build_model(cfg.model, seed=0).eval()
    model.load_state_dict(latest_weights(out, cfg.model)[1])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", use_safetensors=True).eval()
    assert type(hf).__name__ == "MixtralForCausalLM"
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf")
    idx = torch.tensor([tokenizer("def upcycle(dense):\n    return [dense] * 4\n")["input_ids"][:32]])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=idx).logits, model(idx), rtol=1e-4, atol=1e-5)
