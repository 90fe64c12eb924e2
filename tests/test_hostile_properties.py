"""Property-based hostile input (issue 10, Deliver 8): any value of the numeric flags of `count`, `estimate`,
`fit` and `plan` gives either one `error: ...` line with exit 2, or exit 0 with JSON whose numbers are all finite
(and, for the physical outputs of count/estimate/plan, non-negative). Never a traceback."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isoflop.cli import output

SETTINGS = settings(
    max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e-300, 1e300, 1e21, 0.5, 1.0, 2.0]),
)
INTS = st.one_of(st.integers(-4, 4096), st.sampled_from([0, -1, 2**31, 10**14, 10**30]))
RUNS = "N,D,loss\n" + "".join(
    f"{n},{d},{1.69 + 406.4 / n**0.34 + 410.7 / d**0.28}\n" for n in (1e7, 1e8, 1e9) for d in (1e9, 1e10, 1e11)
)


def _strict_json_safe(obj: Any) -> Any:
    """``json_safe`` that fails the test on a NaN/inf instead of writing ``null`` for it."""
    if isinstance(obj, float):
        assert math.isfinite(obj), "a non-finite number reached the output with exit 0"
        return obj
    if hasattr(obj, "model_dump"):
        return _strict_json_safe(obj.model_dump())
    if isinstance(obj, dict):
        return {str(k): _strict_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _strict_json_safe(obj.tolist())
    return obj


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.fixture
def strict_cli(cli, monkeypatch, tmp_path):
    monkeypatch.setattr(output, "json_safe", _strict_json_safe)
    empty = tmp_path / "calibration.yaml"
    empty.write_text("{}\n")
    monkeypatch.setenv("ISOFLOP_CALIBRATION", str(empty))
    monkeypatch.delenv("ISOFLOP_HARDWARE", raising=False)

    def run(*args: Any, physical: bool = True) -> None:
        result = cli(*(str(a) for a in args), "--json")
        if result.code == 0:
            values = _numbers(result.json())
            assert all(math.isfinite(v) for v in values)
            if physical:
                assert all(v >= 0 for v in values), [v for v in values if v < 0][:5]
        else:
            lines = result.err.strip().splitlines()
            assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.err[-600:]

    return run


@SETTINGS
@given(seq_len=INTS, batch=INTS, model=st.sampled_from(["gpt2", "llama2-7b", "mixtral-8x7b"]))
def test_count(strict_cli, seq_len: int, batch: int, model: str) -> None:
    strict_cli("count", model, "--seq-len", seq_len, "--batch-size", batch)


@SETTINGS
@given(gpus=INTS, batch=INTS, seq_len=INTS, tp=st.sampled_from([1, 2, 0, -3, 10**9]), mb=INTS)
def test_estimate(strict_cli, gpus: int, batch: int, seq_len: int, tp: int, mb: int) -> None:
    strict_cli(
        "estimate", "llama2-7b", "--gpu", "h100-sxm", "--gpus", gpus, "--global-batch", batch, "--seq-len", seq_len,
        "--tp", tp, "--micro-batch", mb,
    )  # fmt: skip


@SETTINGS
@given(budget=FLOATS, mfu=FLOATS, price=FLOATS, pue=FLOATS, carbon=FLOATS, seq_len=INTS)
def test_plan_budget(strict_cli, budget: float, mfu: float, price: float, pue: float, carbon: float, seq_len: int):
    strict_cli(
        "plan", "--budget-flops", budget, "--mfu", mfu, "--price", price, "--pue", pue, "--carbon-intensity", carbon,
        "--seq-len", seq_len,
    )  # fmt: skip


@SETTINGS
@given(gpus=INTS, days=FLOATS, unique=FLOATS, inference=FLOATS)
def test_plan_hardware(strict_cli, gpus: int, days: float, unique: float, inference: float) -> None:
    strict_cli(
        "plan", "--gpu", "h100-sxm", "--gpus", gpus, "--days", days, "--unique-tokens", unique,
        "--inference-tokens", inference,
    )  # fmt: skip


@SETTINGS
@given(target=FLOATS, vocab=INTS)
def test_plan_target_loss(strict_cli, target: float, vocab: int) -> None:
    strict_cli("plan", "--target-loss", target, "--vocab-size", vocab)


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    approach=st.sampled_from([1, 2, 3, 0, 4]),
    at_flops=FLOATS,
    drop=st.integers(-2, 12),
    bootstrap=st.sampled_from([4, 0, 1, -5]),
    seed=st.sampled_from([0, 7, -3, 2**40]),
)
def test_fit(strict_cli, tmp_path, approach: int, at_flops: float, drop: int, bootstrap: int, seed: int) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text(RUNS)
    strict_cli(
        "fit", runs, "--approach", approach, "--at-flops", at_flops, "--drop-highest-loss", drop,
        "--bootstrap", bootstrap, "--seed", seed, physical=False,
    )  # fmt: skip
