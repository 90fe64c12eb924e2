"""``shape_for_params``: exact parameter counts (checked by ``count_params``), hardware-friendly shapes, tiny models."""

from __future__ import annotations

import pytest

from isoflop.errors import IsoflopError
from isoflop.plan.arch import shape_for_params, target_aspect
from isoflop.spec import count_params, get_model_preset


@pytest.mark.parametrize("n_params", [1.25e8, 1e9, 7e9, 16.6e9, 72.25e9, 400e9])
def test_large_shapes_are_hardware_friendly(n_params) -> None:
    spec = shape_for_params(n_params, vocab_size=32000, seq_len=4096)
    assert count_params(spec).total == pytest.approx(n_params, rel=0.025)
    assert spec.d_model % 128 == 0 and spec.d_ff % 256 == 0
    assert spec.n_heads * spec.head_dim == spec.d_model and spec.n_heads % spec.n_kv_heads == 0
    assert spec.d_ff == -(-8 * spec.d_model // 3 // 256) * 256 or spec.d_ff >= 8 * spec.d_model / 3
    aspect = spec.d_model / spec.n_layers
    assert target_aspect(n_params) / 2.5 < aspect < target_aspect(n_params) * 2.5
    assert spec.max_seq_len == 4096 and spec.mlp == "swiglu" and spec.norm == "rmsnorm"


def test_llama2_7b_like_width_gives_llama_ffn() -> None:
    # Llama 2 7B: d_model 4096 -> SwiGLU hidden 11008 (8/3 d rounded up to 256; Touvron et al. 2023).
    llama = get_model_preset("llama2-7b")
    spec = shape_for_params(count_params(llama).total, vocab_size=32000, aspect=128)
    if spec.d_model == 4096:
        assert spec.d_ff == llama.d_ff


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_heads_divide_tensor_parallelism(tp) -> None:
    spec = shape_for_params(30e9, tp=tp)
    assert spec.n_heads % tp == 0 and spec.n_kv_heads % tp == 0


@pytest.mark.parametrize(
    "n_params, kw",
    [
        (5e4, {"vocab_size": 256, "multiple": 16}),
        (5e4, {"vocab_size": 8000, "multiple": 16, "count": "non_embedding", "tie_embeddings": True}),
        (1e6, {"vocab_size": 1000, "multiple": 16}),
        (1e7, {"vocab_size": 4096, "multiple": 32}),
    ],
)
def test_tiny_models_for_the_ladder(n_params, kw) -> None:
    spec = shape_for_params(n_params, seq_len=256, **kw)
    counts = count_params(spec)
    got = counts.total if kw.get("count", "total") == "total" else counts.non_embedding
    assert got == pytest.approx(n_params, rel=0.1)
    assert spec.d_model % kw["multiple"] == 0 and spec.head_dim % 2 == 0


def test_impossible_sizes_are_errors() -> None:
    with pytest.raises(IsoflopError, match="no architecture"):
        shape_for_params(5e4, vocab_size=8000, multiple=16)
    with pytest.raises(IsoflopError, match="positive"):
        shape_for_params(-1)
    with pytest.raises(IsoflopError, match="count"):
        shape_for_params(1e9, count="all")


@pytest.mark.parametrize("multiple", [16, 32, 64])
def test_exact_size_and_aspect_return_that_shape(multiple) -> None:
    """Asked for a member's exact non-embedding size and aspect ratio, the rule returns that member (the ladder
    builds its model family this way): MHA, SwiGLU width rounded to ``multiple``, head_dim = ``multiple``."""
    for d in range(2 * multiple, 1025, 3 * multiple):
        for layers in (2, 5, 9, 16):
            ffn = -(-8 * d // (3 * multiple)) * multiple
            exact = layers * (4 * d * d + 3 * d * ffn + 2 * d) + d
            spec = shape_for_params(
                exact,
                vocab_size=4096,
                seq_len=256,
                multiple=multiple,
                head_dim=multiple,
                count="non_embedding",
                tie_embeddings=True,
                aspect=d / layers,
            )
            assert (spec.d_model, spec.n_layers, spec.d_ff, spec.n_kv_heads) == (d, layers, ffn, d // multiple)
            assert count_params(spec).non_embedding == exact
