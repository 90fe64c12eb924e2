"""Export to a Hugging Face folder; ``AutoModelForCausalLM.from_pretrained`` (safetensors only) gives the
same logits as isoflop's model."""

from __future__ import annotations

import json

import pytest
import torch

from isoflop.errors import IsoflopError
from isoflop.spec import ModelSpec, load_spec
from isoflop.train.export import export_hf
from isoflop.train.model import build_model

transformers = pytest.importorskip("transformers")

GPT2_KW = dict(norm="layernorm", mlp="gelu", position="learned", tie_embeddings=True, bias=True)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=300, max_seq_len=32, **GPT2_KW),
        ModelSpec(d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, d_ff=176, vocab_size=300, max_seq_len=32),
        ModelSpec(d_model=64, n_layers=2, n_heads=4, d_ff=160, vocab_size=256, max_seq_len=32, tie_embeddings=True),
    ],
    ids=["gpt2-tied", "llama-gqa", "llama-tied"],
)
def test_export_loads_in_transformers_with_same_logits(tmp_path, spec: ModelSpec) -> None:
    model = build_model(spec, seed=1).eval()
    out = export_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no pickle file
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    idx = torch.randint(0, spec.vocab_size, (2, spec.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(input_ids=idx).logits, rtol=1e-4, atol=1e-5)

    # The exported config.json reads back as the same ModelSpec (the loader's HF path).
    def shape(s: ModelSpec) -> dict:
        return {**s.model_dump(exclude={"name"}), "n_kv_heads": s.n_kv_heads, "head_dim": s.head_dim}

    assert shape(load_spec(out / "config.json")) == shape(spec)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"


def test_export_bf16_and_unsupported_family(tmp_path) -> None:
    spec = ModelSpec(d_model=64, n_layers=1, n_heads=4, d_ff=160, vocab_size=256, max_seq_len=16)
    out = export_hf(build_model(spec, seed=0), tmp_path / "hf", dtype=torch.bfloat16)
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    chinchilla_like = spec.replace(mlp="gelu")
    with pytest.raises(IsoflopError, match="no Hugging Face architecture"):
        export_hf(build_model(chinchilla_like, seed=0), tmp_path / "x")


def test_export_with_tokenizer_loads_in_auto_tokenizer(tmp_path) -> None:
    from isoflop.train.data.tokenizer import EOT, train_bpe

    texts = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 0\n", "import os\nprint(os.sep)\n"] * 20
    tok = train_bpe(texts, vocab_size=300)
    eos = tok.token_to_id(EOT)
    spec = ModelSpec(d_model=64, n_layers=2, n_heads=4, d_ff=160, vocab_size=300, max_seq_len=32)
    out = export_hf(build_model(spec, seed=0), tmp_path / "hf", tokenizer=tok, eos_id=eos)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "def point(x):\n    return Point(x) + ünïcode"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_special_tokens=False).ids
    assert hf_tok.decode(hf_tok(text)["input_ids"]) == text
    config = json.loads((out / "config.json").read_text())
    assert hf_tok.eos_token == EOT and hf_tok.eos_token_id == config["eos_token_id"] == eos
    assert hf_tok.model_max_length == spec.max_seq_len


MOE = ModelSpec(d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, d_ff=48, vocab_size=300, max_seq_len=32)


@pytest.mark.parametrize(
    ("changes", "hf_class"),
    [
        ({"router": "softmax"}, "MixtralForCausalLM"),
        ({"router": "sigmoid"}, "Glm4MoeForCausalLM"),
        ({"router": "sigmoid", "n_shared_experts": 2}, "Glm4MoeForCausalLM"),
    ],
    ids=["mixtral", "sigmoid-router", "sigmoid-router-shared-experts"],
)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # Glm4Moe's empty shared-expert MLP
def test_moe_export_loads_in_transformers_with_same_logits(tmp_path, changes, hf_class) -> None:
    """An MoE with a router far from uniform (and selection biases for the sigmoid router), so that the top-k
    choice varies by token: Hugging Face's class routes every token to the same experts with the same weights."""
    spec = MOE.replace(n_experts=4, top_k=2, **changes)
    model = build_model(spec, seed=1).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in model.layers:
            block.mlp.router.weight.normal_(0.0, 0.5, generator=generator)
            if changes["router"] == "sigmoid":
                block.mlp.expert_bias.normal_(0.0, 0.3, generator=generator)
    out = export_hf(model, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    assert type(ref).__name__ == hf_class
    idx = torch.randint(0, spec.vocab_size, (2, spec.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(input_ids=idx).logits, rtol=1e-4, atol=1e-5)
    if hf_class == "MixtralForCausalLM":  # the loader reads a Mixtral config.json back as the same spec
        assert load_spec(out / "config.json").replace(name=spec.name) == spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_shared_experts": 1}, "cannot export the softmax router with n_shared_experts=1"),
        ({"capacity_factor": 1.25}, "cannot export capacity_factor=1.25"),
    ],
)
def test_moe_export_unsupported_combinations(changes, message) -> None:
    from isoflop.train.export import hf_architecture

    with pytest.raises(IsoflopError, match=message) as info:
        hf_architecture(MOE.replace(n_experts=4, top_k=2, **changes))
    assert "export supports the softmax router without shared experts (Mixtral)" in str(info.value)
