"""The MoE feed-forward (isoflop.train.moe) against independent references: Hugging Face's Mixtral block and
balancing loss, a per-token loop for the sigmoid router and capacity, FlopCounterMode against the accounting."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from isoflop.errors import IsoflopError
from isoflop.spec.accounting import count_flops, count_params
from isoflop.spec.model import ModelSpec
from isoflop.train import moe as moe_mod
from isoflop.train.model import Transformer, build_model
from isoflop.train.moe import MoE, moe_loss, step_stats

BASE = dict(d_model=64, n_layers=2, n_heads=4, d_ff=96, vocab_size=320, max_seq_len=64)


def _spec(**kw) -> ModelSpec:
    return ModelSpec(**{**BASE, "n_experts": 4, "top_k": 2, **kw})


def _layer(spec: ModelSpec, seed: int = 0) -> MoE:
    return build_model(spec, seed=seed).layers[0].mlp


def _reference(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """A per-token loop: each token through its top-k experts (selected on score + bias), weights normalised."""
    logits = layer.router(x).float()
    scores = logits.softmax(-1) if layer.router_kind == "softmax" else logits.sigmoid()
    out = torch.zeros_like(x)
    ex = layer.experts
    for t in range(x.shape[0]):
        idx = (scores[t] + layer.expert_bias).topk(layer.top_k).indices
        w = scores[t, idx] / scores[t, idx].sum()
        for e, we in zip(idx.tolist(), w, strict=True):
            gate, up = (ex.gate_up[e] @ x[t]).chunk(2)
            out[t] += we * (ex.down[e] @ (torch.nn.functional.silu(gate) * up))
    if layer.shared is not None:
        out += layer.shared(x)
    return out


def test_softmax_router_equals_hf_mixtral_block() -> None:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    spec = _spec()
    layer = _layer(spec)
    config = MixtralConfig(
        hidden_size=spec.d_model, intermediate_size=spec.d_ff, num_local_experts=4, num_experts_per_tok=2
    )
    hf = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        hf.gate.weight.copy_(layer.router.weight)
        hf.experts.gate_up_proj.copy_(layer.experts.gate_up)
        hf.experts.down_proj.copy_(layer.experts.down)
    x = torch.randn(3, 16, spec.d_model)
    torch.testing.assert_close(layer(x), hf(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(router="sigmoid"), dict(n_shared_experts=2), dict(n_experts=8, d_ff=48)])
def test_sigmoid_shared_and_fine_grained_match_a_per_token_loop(kw) -> None:
    layer = _layer(_spec(**kw))
    layer.expert_bias.copy_(torch.linspace(-0.05, 0.05, layer.n_experts))
    x = torch.randn(24, BASE["d_model"])
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-6)


def test_bias_steers_selection_only() -> None:
    layer = _layer(_spec(router="sigmoid"))
    x = torch.randn(32, BASE["d_model"])
    layer.expert_bias.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))
    idx, weights, _ = layer.route(layer.router(x).float())
    assert set(idx.flatten().tolist()) == {0, 1}
    scores = layer.router(x).float().sigmoid()[:, :2]
    torch.testing.assert_close(weights.sort(-1).values, (scores / scores.sum(-1, keepdim=True)).sort(-1).values)


def test_grouped_gemm_and_padded_fallback_agree_forward_and_backward(monkeypatch) -> None:
    spec = _spec(n_experts=8)
    x = torch.randn(40, spec.d_model)
    grads = []
    for grouped in (True, False):
        if not grouped:
            monkeypatch.setattr(moe_mod, "_grouped_ok", lambda *a: False)
        layer = _layer(spec)
        layer(x).square().sum().backward()
        grads.append([p.grad for p in (layer.experts.gate_up, layer.experts.down, layer.router.weight)])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_capacity_drops_the_overflow_in_choice_order() -> None:
    spec = _spec(capacity_factor=0.5)
    layer = _layer(spec)
    layer.train()
    x = torch.randn(40, spec.d_model)
    out = layer(x)
    idx, weights, _ = layer.route(layer.router(x).float())
    cap = math.ceil(0.5 * 40 * 2 / 4)
    ref, seen = torch.zeros_like(x), [0] * 4
    ex = layer.experts
    for j in range(2):  # first choices claim slots before second choices
        for t in range(40):
            e = int(idx[t, j])
            seen[e] += 1
            if seen[e] <= cap:
                gate, up = (ex.gate_up[e] @ x[t]).chunk(2)
                ref[t] += weights[t, j] * (ex.down[e] @ (torch.nn.functional.silu(gate) * up))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    dropped = sum(max(0, s - cap) for s in seen)
    moe_loss([layer], 0.0, 0.0)
    stats = step_stats(layer)
    assert dropped > 0 and stats.dropped_fraction == pytest.approx(dropped / 80)
    big = _layer(spec.replace(capacity_factor=4.0))
    torch.testing.assert_close(big(x), _layer(_spec())(x), rtol=1e-5, atol=1e-6)


def test_losses_match_hf_balancing_loss_and_the_z_loss_closed_form() -> None:
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    layer = _layer(_spec())
    layer.train()
    x = torch.randn(50, BASE["d_model"])
    layer(x)
    logits = layer.router(x).float()
    # HF sums f over the k choice slots (f sums to k); Switch's f is the fraction of the T k assignments.
    hf = load_balancing_loss_func((logits,), 4, 2)
    torch.testing.assert_close(layer.aux_loss * 2, hf.float())
    z = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 50
    assert layer.z_loss.item() == pytest.approx(z, rel=1e-5)


def test_training_loss_adds_the_coefficients_and_bias_moves_against_load() -> None:
    spec = _spec()
    model = build_model(spec, seed=0)
    x, y = torch.randint(0, 320, (2, 32)), torch.randint(0, 320, (2, 32))
    model.eval()
    ce = model(x, y)
    model.train()
    model.moe_coefs = (0.5, 0.25)
    total = model(x, y)
    aux = torch.stack([m.stats.aux_loss for m in (b.mlp for b in model.layers)]).mean()
    z = torch.stack([m.stats.z_loss for m in (b.mlp for b in model.layers)]).mean()
    assert total.item() == pytest.approx((ce + 0.5 * aux + 0.25 * z).item(), rel=1e-6)
    stats = step_stats(model, bias_rate=0.01)
    load = torch.tensor(stats.tokens_per_expert, dtype=torch.float64)
    assert load.sum(1).tolist() == [2 * 32 * 2] * 2
    expected = 0.01 * torch.sign(load.mean(1, keepdim=True) - load)
    torch.testing.assert_close(torch.stack([b.mlp.expert_bias for b in model.layers]).double(), expected)
    assert stats.dropped_fraction == 0 and stats.aux_loss >= 1 - 1e-6


def test_activation_checkpointing_counts_each_forward_once() -> None:
    from isoflop.train.distributed import apply_activation_checkpointing

    model = build_model(_spec(), seed=0)
    apply_activation_checkpointing(model)
    model(torch.randint(0, 320, (2, 32)), torch.randint(0, 320, (2, 32))).backward()
    assert [sum(layer) for layer in step_stats(model).tokens_per_expert] == [2 * 32 * 2] * 2


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_shared_experts=1),
        dict(router="sigmoid"),
        dict(n_experts=8, capacity_factor=1.0),  # a padded bmm of E x C = T k rows, counted by torch itself
        dict(n_experts=8, mlp="gelu", norm="layernorm", position="learned"),
    ],
    ids=["shared", "sigmoid", "capacity", "gelu"],
)
def test_measured_moe_flops_equal_the_accounting(kw) -> None:
    spec = _spec(**kw)
    model = build_model(spec, seed=0)
    assert count_params(spec).total == sum(p.numel() for p in model.parameters())
    x, y = torch.randint(0, 320, (2, 32)), torch.randint(0, 320, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(x, y).backward()
    measured = sum(sum(v.values()) for k, v in counter.get_flop_counts().items() if k.endswith(".mlp"))
    assert measured == count_flops(spec, 32).mlp * 2 * 32 * 3


def test_bad_moe_input_is_one_line() -> None:
    with pytest.raises(IsoflopError, match=r"^top_k=5 must be between 1 and n_experts=4; choose"):
        _spec(top_k=5)
    for cf in (0, -1.0, float("nan")):
        with pytest.raises(IsoflopError, match=r"^capacity_factor must be a positive number, got .*; use"):
            _spec(capacity_factor=cf)
    with pytest.raises(IsoflopError, match="set bias: false"):
        Transformer(_spec(bias=True))


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


DATA = ("data.vocab_size=512", "data.max_bytes=400000", "train.global_batch=8", "train.seq_len=64")
FAST = _sets(*DATA, "train.max_steps=12", "train.eval_every=6", "train.eval_batches=2", "train.log_every=6")


def test_tiny_moe_preset_trains_with_falling_validation_loss_and_reports_routing(tmp_path_factory) -> None:
    from _train_common import run_cli, shared_cache, summary

    from isoflop.spec.loader import load_spec

    cache, out = shared_cache(tmp_path_factory), tmp_path_factory.mktemp("tiny-moe") / "run"
    result = run_cli(["train", "--preset", "tiny-moe", "--out", str(out), *FAST], cache)
    assert result.returncode == 0, result.stderr
    got = summary(out)
    spec = load_spec("tiny-moe")
    assert got["params"] == count_params(spec).total and got["model"] == "tiny-moe"
    history = [v for _, v in got["val_history"]]
    assert history[-1] < history[1] < history[0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        load = row["moe_tokens_per_expert"]
        assert len(load) == spec.n_layers and all(sum(layer) == 8 * 64 * spec.top_k for layer in load)
        assert row["moe_dropped_fraction"] == 0 and row["moe_aux_loss"] >= 1 - 1e-6 and row["moe_z_loss"] > 0
    assert got["moe"] == {k: v for k, v in rows[-1].items() if k.startswith("moe_")}


def test_moe_fields_set_on_a_dense_spec(tmp_path_factory) -> None:
    from _train_common import run_cli, shared_cache, summary

    cache, out = shared_cache(tmp_path_factory), tmp_path_factory.mktemp("set-moe") / "run"
    moe = ("model.n_experts=4", "model.top_k=1", "model.router=sigmoid", "model.capacity_factor=1.0")
    args = _sets(*DATA, *moe, "moe.bias_rate=0.01", "train.max_steps=2", "train.log_every=1", "train.eval_batches=1")
    result = run_cli(["train", "--preset", "tiny", "--out", str(out), *args], cache)
    assert result.returncode == 0, result.stderr
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(row["moe_tokens_per_expert"][0]) == 4 and summary(out)["steps"] == 2
