"""Named ladders for ``isoflop ladder`` and ``isoflop quickstart``: larger presets spend more compute on more
budgets, which gives a longer, more accurate extrapolation base. Budgets are training FLOPs (exact accounting).

``smoke`` only checks the machinery in about a minute. ``quick``, the quickstart's default, is sized for 5 minutes
on 2 idle CPU cores (``python -m isoflop quickstart``, measured in the README) with an approach-3 fit that is not
degenerate: 3 budgets 1.6e11-1.28e12 FLOPs (an 8e10-6.4e11 ladder left E's interval reaching 0, its smallest
budget's runs still in their optimisation transient) x 3 sizes centred at 20 tokens per parameter
(embeddings included), one more size where a budget's lowest loss sits at an edge, learning rate ``0.25 / d_model``
(the LR sweep in ``isoflop.ladder.grid``); approach 3 is primary (3 sizes leave a parabola no residuals, so the
envelope's interval needs an edge run), held-out runs at 1.5x the largest budget (compute-optimal) and at the
largest budget 16x over-trained, trained side by side. ``medium`` is the 4 x 4 ladder on 1.6e11-1.28e12 (452 s);
``large`` took 954 s (its largest runs repeat the stdlib corpus: give ``isoflop ladder --data`` a larger one).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from isoflop.errors import IsoflopError
from isoflop.ladder.grid import LadderDesign

PRESETS: dict[str, LadderDesign] = {
    # A smoke test of the machinery (about a minute; too small to predict well): 3 MB of the corpus.
    "smoke": LadderDesign(
        name="smoke",
        budgets=(2e9, 4e9, 8e9),
        sizes=4,
        size_ratio=2.0,
        eval_batches=4,
        bootstrap=30,
        max_extensions=0,
        extra_data={"max_bytes": 3_000_000},
    ),
    # The smoke budgets on a finer shape family (head_dim 8: 856 to 6,984 non-embedding parameters) with a
    # 256-token batch (4x smoke's steps), for comparisons on a loaded machine (benchmarks/moe_vs_dense.py); one
    # (compute-optimal) held-out run.
    "tiny": LadderDesign(
        name="tiny",
        budgets=(2e9, 4e9, 8e9),
        sizes=4,
        size_ratio=2.0,
        batch_seqs=4,
        dim_multiple=8,
        eval_batches=16,
        bootstrap=100,
        overtrain=0.0,
        max_extensions=0,
        extra_data={"max_bytes": 3_000_000},
    ),
    "quick": LadderDesign(
        name="quick",
        budgets=(1.6e11, 6.4e11, 1.28e12),
        sizes=3,
        size_ratio=2.0,
        tokens_per_param=20.0,
        lr_width=0.25,
        heldout_factor=1.5,
        primary="approach3",
    ),
    # quick's budgets and rules plus 3.2e11, 4 sizes, the envelope primary: the first ladder here whose approach-3
    # fit was not degenerate (README, "Quickstart").
    "medium": LadderDesign(
        name="medium",
        budgets=(1.6e11, 3.2e11, 6.4e11, 1.28e12),
        sizes=4,
        size_ratio=2.0,
        tokens_per_param=40.0,
        lr_width=0.25,
        heldout_factor=2.0,
    ),
    "large": LadderDesign(
        name="large",
        budgets=(1e11, 2e11, 4e11, 8e11, 1.6e12, 3.2e12),
        sizes=5,
        size_ratio=1.8,
        seq_len=128,
        batch_seqs=16,
        tokens_per_param=30.0,
    ),
}


def get_ladder_preset(name: str) -> LadderDesign:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=2, cutoff=0.3)
        raise IsoflopError(
            f"unknown ladder preset {name!r}; "
            f"{'did you mean ' + ', '.join(close) + '?' if close else 'use ' + ', '.join(PRESETS)}"
        )
    return PRESETS[name]


FAMILIES = ("dense", "moe")
MOE_EXPERTS, MOE_TOP_K = 8, 2  # Mixtral's 8 experts, top-2 (Jiang et al. 2024)


def with_family(
    design: LadderDesign, family: str, experts: int | None = None, top_k: int | None = None
) -> LadderDesign:
    """``design`` for ``family``: ``dense``, or ``moe``, the dense shapes with ``experts`` routed experts of width
    ``d_ff / top_k``, ``top_k`` per token (``isoflop.ladder.grid.moe_member``), named ``<name>-moe<E>x<k>``; unset
    ``experts`` and ``top_k`` default to 8 and 2.

    8 experts top-2 (the default) keeps every expert of a ladder run busy: a 1,024-token batch gives each expert
    ``1024 x 2 / 8 = 256`` assignments a step, and top-2 routing gives each token two gradients through the router
    (top-1 Switch routing trains less stably at small scale; Fedus et al. 2022, Sec. 2.1 and Table 1)."""
    if family not in FAMILIES:
        raise IsoflopError(f"unknown --family {family!r}; use {' or '.join(FAMILIES)}")
    if family == "dense":
        if experts is not None or top_k is not None:
            raise IsoflopError("--experts and --top-k need --family moe; add --family moe or drop them")
        return design
    experts = MOE_EXPERTS if experts is None else experts
    top_k = MOE_TOP_K if top_k is None else top_k
    moe = dataclasses.replace(design, name=f"{design.name}-moe{experts}x{top_k}", n_experts=experts, top_k=top_k)
    if experts < 1:
        raise IsoflopError(f"--experts must be >= 1, got {experts}; give e.g. --experts 8")
    moe.validate()
    return moe


def with_data(design: LadderDesign, source: str) -> LadderDesign:
    """``design`` trained on ``source``: ``stdlib``, a .txt/.jsonl/.parquet file or folder, or ``hf:<dataset>``.
    A local path is made absolute, so that a resumed ladder finds it from any working directory."""
    if source != "stdlib" and not source.startswith("hf:"):
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise IsoflopError(
                f"--data {source!r} does not exist; give stdlib, an existing .txt/.jsonl/.parquet file "
                "or folder, or hf:<dataset>"
            )
        source = str(path)
    return dataclasses.replace(design, data_source=source)
