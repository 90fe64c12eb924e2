"""Grid design: >= 3 budgets x >= 4 sizes around the expected optimum, exact FLOPs, the stated hyperparameter rule."""

from __future__ import annotations

import math

import pytest

from isoflop.errors import IsoflopError
from isoflop.ladder.grid import (
    LadderDesign,
    centre_size,
    design_grid,
    edge_extensions,
    family_spec,
    fit_params,
    in_family,
    kaplan_lr,
)
from isoflop.ladder.presets import PRESETS, get_ladder_preset, with_data
from isoflop.spec import count_flops, count_params


def test_every_preset_is_a_valid_isoflop_grid() -> None:
    for design in PRESETS.values():
        points = design_grid(design)
        budgets = sorted({p.budget for p in points})
        assert len(budgets) >= 3
        for b in budgets:
            sizes = sorted(p.n_params_non_embedding for p in points if p.budget == b)
            assert len(sizes) >= design.sizes >= 3 and len(set(sizes)) == len(sizes)
            centre = centre_size(design, b)
            if design.name != "smoke":  # smoke only exercises the machinery
                assert sizes[0] < centre < sizes[-1]  # the expected optimum is inside the sizes tried


def test_points_spend_their_budget_exactly() -> None:
    design = PRESETS["quick"]
    for p in design_grid(design):
        spec = p.config.model
        per_token = count_flops(spec, design.seq_len).training  # independent recount from the config
        assert p.flops == pytest.approx(
            p.config.train.max_steps * p.config.train.global_batch * design.seq_len * per_token
        )
        # whole steps: within half a step of the budget
        assert (
            abs(p.flops - p.budget) <= 0.5 * p.config.train.global_batch * design.seq_len * per_token + 1e-6 * p.budget
        )
        assert (
            p.config.train.tokens == p.tokens == p.config.train.max_steps * p.config.train.global_batch * design.seq_len
        )
        assert count_params(spec).non_embedding == p.n_params_non_embedding
        assert spec.tie_embeddings and in_family(spec)  # one shape family


def test_hyperparameter_rule() -> None:
    # Kaplan et al. 2020, Eq. D.1 at N = 1e5 and 1e6 non-embedding parameters.
    assert kaplan_lr(1e5) == pytest.approx(0.003239 - 0.0001395 * math.log(1e5))
    assert kaplan_lr(1e6) < kaplan_lr(1e5)
    for p in design_grid(PRESETS["large"]):
        assert p.config.optim.lr == pytest.approx(3 * kaplan_lr(p.n_params_non_embedding), abs=1e-6)
    # The quick ladder's muP-style rule (Yang et al. 2022, Table 3): lr = lr_width / fan-in, halving per doubling.
    widths = {}
    for p in design_grid(PRESETS["quick"]):
        optim, train = p.config.optim.model_dump(), p.config.train.model_dump()
        assert optim["lr"] == pytest.approx(PRESETS["quick"].lr_width / p.spec.d_model, abs=1e-6)
        widths[p.spec.d_model] = optim["lr"]
        assert optim["schedule"] == "cosine" and optim["warmup_steps"] == max(1, round(0.05 * train["max_steps"]))
        assert train["seed"] == 0 and p.config.data.vocab_size == PRESETS["quick"].vocab_size
    assert widths[32] == pytest.approx(2 * widths[64], rel=1e-4)
    with pytest.raises(IsoflopError, match="lr_width"):
        design_grid(LadderDesign(name="x", budgets=(1e9, 2e9, 4e9), lr_width=0.0))


def test_too_small_a_grid_is_refused() -> None:
    with pytest.raises(IsoflopError, match=">= 3 budgets x >= 3 sizes"):
        design_grid(LadderDesign(name="x", budgets=(1e10, 2e10), sizes=4))
    with pytest.raises(IsoflopError, match="primary approach3"):
        design_grid(LadderDesign(name="x", budgets=(1e10, 2e10, 4e10), sizes=3))


def test_edge_minima_get_one_more_size() -> None:
    design = PRESETS["quick"]
    points = design_grid(design)
    b0, b1 = sorted({p.budget for p in points})[:2]
    mid = math.exp(sum(math.log(p.n_params_non_embedding) for p in points if p.budget == b1) / design.sizes)
    finished = []
    for p in points:
        if p.budget == b0:  # minimum at the largest size
            finished.append((p.budget, p.n_params_non_embedding, 1.0 / p.n_params_non_embedding))
        elif p.budget == b1:  # interior minimum
            finished.append((p.budget, p.n_params_non_embedding, (math.log(p.n_params_non_embedding / mid)) ** 2))
    (extra,) = edge_extensions(design, finished)
    largest = max(n for b, n, _ in finished if b == b0)
    assert extra.budget == b0 and extra.n_params_non_embedding > largest
    # At the smallest model of the shape family there is nothing smaller to add.
    family = sorted({fit_params(family_spec(n, design)) for n in (1, 6e3, 1.2e4)})  # the family's 3 smallest
    assert edge_extensions(design, [(b0, n, float(n)) for n in family]) == []


def test_ladder_cli_rejects_bad_input(cli, tmp_path) -> None:
    bad = cli("ladder", "--preset", "quik", "--out", str(tmp_path))
    assert bad.code == 2 and "unknown ladder preset 'quik'; did you mean quick" in bad.err
    threads = cli("ladder", "--threads", "0", "--out", str(tmp_path))
    assert threads.code == 2 and "--threads must be >= 1" in threads.err
    launcher = cli("ladder", "--launcher", "mpi", "--out", str(tmp_path))
    assert launcher.code == 2 and "unknown --launcher 'mpi'" in launcher.err


def test_ladder_data_source(cli, tmp_path) -> None:
    """``--data`` reaches every run's config as an absolute path; a missing corpus is refused before any run."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("text\n")
    design = with_data(get_ladder_preset("quick"), str(tmp_path / "corpus"))
    assert {p.config.data.source for p in design_grid(design)} == {str((tmp_path / "corpus").resolve())}
    assert with_data(get_ladder_preset("quick"), "hf:user/name").data_source == "hf:user/name"
    missing = cli("ladder", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert missing.code == 2 and "--data" in missing.err and "does not exist" in missing.err
    assert not (tmp_path / "out").exists()


def test_repetition_note_only_when_a_run_outgrows_the_corpus() -> None:
    from isoflop.ladder.pipeline import repetition_note

    assert repetition_note(1_000, 1_000, "run") is None
    note = repetition_note(1_500, 1_000, "the held-out run")
    assert "1.50 epochs" in note and "Muennighoff" in note and "--data" in note
