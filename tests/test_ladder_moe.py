"""The MoE ladder family (``isoflop ladder --family moe``): the dense shapes with routed experts, exact FLOPs on the
budgets, sized by active parameters; a tiny MoE ladder end to end; bad input is one line with exit 2."""

from __future__ import annotations

import json
import math

import pytest

from isoflop.ladder.grid import LadderDesign, design_grid
from isoflop.ladder.presets import PRESETS, with_family
from isoflop.spec import count_flops, count_params


@pytest.mark.parametrize("name", ["smoke", "tiny", "quick"])
def test_moe_family_is_the_dense_grid_with_routed_experts_on_the_budgets(name: str) -> None:
    dense_design = PRESETS[name]
    moe_design = with_family(dense_design, "moe", 8, 2)
    assert moe_design.name == f"{name}-moe8x2" and with_family(dense_design, "dense") is dense_design
    dense, moe = design_grid(dense_design), design_grid(moe_design)
    assert len(moe) == len(dense) and [p.budget for p in moe] == [p.budget for p in dense]
    for d, m in zip(dense, moe, strict=True):
        spec = m.config.model
        assert spec.is_moe and (spec.n_experts, spec.top_k) == (8, 2)
        # the dense member's attention and embeddings; experts of width d_ff / top_k: the same active MLP width
        same = ("d_model", "n_layers", "n_heads", "vocab_size", "max_seq_len", "tie_embeddings")
        assert all(getattr(spec, k) == getattr(d.spec, k) for k in same)
        assert spec.d_ff * spec.top_k == d.spec.d_ff
        # sized by active non-embedding parameters: the dense count plus the router, by hand
        router = spec.n_layers * spec.d_model * spec.n_experts
        assert m.n_params_non_embedding == d.n_params_non_embedding + router
        assert count_params(spec).total > 3 * m.n_params_non_embedding  # the routed experts not counted
        # exact FLOPs: the config's steps x batch x the accounting, within half a step of the budget
        per_token = count_flops(spec, moe_design.seq_len).training
        assert m.flops == pytest.approx(
            m.config.train.max_steps * m.config.train.global_batch * moe_design.seq_len * per_token
        )
        assert (
            abs(m.flops - m.budget)
            <= 0.5 * m.config.train.global_batch * moe_design.seq_len * per_token + 1e-6 * m.budget
        )
        # a token costs the dense member's FLOPs plus the router's 2 d E per layer, forward + backward (x3)
        dense_per_token = count_flops(d.spec, dense_design.seq_len).training
        assert per_token - dense_per_token == pytest.approx(3 * 2 * router)
        assert m.config.optim.lr == pytest.approx(d.config.optim.lr, rel=0.01)  # the rule reads active N
    for b in moe_design.budgets:
        sizes = [p.n_params_non_embedding for p in moe if p.budget == b]
        assert len(sizes) >= moe_design.sizes and len(set(sizes)) == len(sizes)


def test_measured_flops_of_a_moe_member_are_the_dense_members_plus_the_router() -> None:
    """FlopCounterMode (independent of the accounting) on one forward + backward of the smallest members."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from isoflop.train.model import build_model

    design = PRESETS["smoke"]
    dense, moe = design_grid(design)[1].spec, design_grid(with_family(design, "moe"))[1].spec
    x = torch.randint(0, design.vocab_size, (2, design.seq_len))

    def measured(spec) -> int:
        model = build_model(spec, seed=0)
        with FlopCounterMode(display=False) as counter:
            model(x, x).backward()
        return counter.get_total_flops()

    tokens = x.numel()
    assert measured(moe) - measured(dense) == 3 * 2 * moe.d_model * moe.n_experts * moe.n_layers * tokens


def test_bad_family_input_is_one_line(cli, tmp_path) -> None:
    cases = {
        ("--family", "moe", "--experts", "4", "--top-k", "5"): "--top-k 5 with --experts 4",
        ("--family", "moe", "--experts", "0"): "--experts must be >= 1",
        ("--top-k", "2"): "need --family moe",
        ("--family", "sparse"): "unknown --family 'sparse'; use dense or moe",
    }
    for args, message in cases.items():
        res = cli("ladder", "--preset", "smoke", "--out", str(tmp_path / "x"), *args)
        assert res.code == 2, res.out + res.err
        assert res.err.count("\n") == 1 and res.err.startswith("error: ") and message in res.err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_tiny_moe_ladder_end_to_end(tmp_path, monkeypatch) -> None:
    """3 budgets x 4 MoE sizes, fitted; the held-out run (never in the fit) predicted, then trained and scored."""
    pytest.importorskip("torch")
    from isoflop.ladder.pipeline import run_pipeline
    from isoflop.ladder.runner import ExecOptions

    monkeypatch.setenv("ISOFLOP_CACHE", str(tmp_path / "cache"))
    tiny = LadderDesign(
        name="tiny",
        budgets=(2.5e8, 5e8, 1e9),
        seq_len=32,
        batch_seqs=8,
        eval_batches=2,
        bootstrap=20,
        max_extensions=0,
        heldout_factor=2.0,
        overtrain=0.0,
        extra_data={"max_bytes": 300_000},
    )
    design = with_family(tiny, "moe", 4, 2)
    summary = run_pipeline(design, tmp_path / "ladder", ExecOptions(workers=2), say=lambda _: None)
    assert summary["runs"]["finished"] == summary["runs"]["total"] == 13 and summary["runs"]["failed"] == 0
    analysis = json.loads((tmp_path / "ladder" / "analysis.json").read_text())
    assert analysis["design"]["n_experts"] == 4 and len(analysis["points"]) == 12
    held = summary["heldout"]
    assert held["run_id"] not in {p["run_id"] for p in analysis["points"]}  # never in the fit
    assert math.isfinite(held["actual_loss"]) and held["flops"] > 1e9 * 1.9
    assert held["error_pct"] == pytest.approx(
        100 * (held["predicted_loss"] - held["actual_loss"]) / held["actual_loss"]
    )
    run = json.loads(next((tmp_path / "ladder" / "runs" / held["run_id"]).glob("config.json")).read_text())
    assert run["model"]["n_experts"] == 4 and run["model"]["top_k"] == 2
