"""The PyTorch model checked against independent references: ``count_params`` (the accounting), and
Hugging Face ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` holding the same weights (logits within fp32
tolerance)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from isoflop.errors import IsoflopError
from isoflop.spec import ModelSpec, count_params, get_model_preset
from isoflop.train.export import hf_config, hf_state_dict
from isoflop.train.model import Transformer, build_model, compile_blocks
from isoflop.train.optim import build_optimizer, param_groups

transformers = pytest.importorskip("transformers")

GPT2_KW = dict(norm="layernorm", mlp="gelu", position="learned", tie_embeddings=True, bias=True)
SPECS = {
    "gpt2-tied": ModelSpec(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=300, max_seq_len=32, **GPT2_KW),
    "gpt2-untied": ModelSpec(
        d_model=48,
        n_layers=2,
        n_heads=3,
        d_ff=100,
        vocab_size=200,
        max_seq_len=32,
        **{**GPT2_KW, "tie_embeddings": False},
    ),
    "llama-gqa-untied": ModelSpec(
        d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, d_ff=176, vocab_size=300, max_seq_len=32
    ),
    "llama-mqa": ModelSpec(
        d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, d_ff=160, vocab_size=256, max_seq_len=32, rope_theta=500000.0
    ),
    "llama-tied-headdim": ModelSpec(
        d_model=64,
        n_layers=2,
        n_heads=4,
        head_dim=24,
        d_ff=160,
        vocab_size=256,
        max_seq_len=32,
        tie_embeddings=True,
        norm_eps=1e-6,
    ),
}


def _hf(spec: ModelSpec, model: Transformer):
    cfg = hf_config(spec)
    cls = transformers.GPT2LMHeadModel if cfg["model_type"] == "gpt2" else transformers.LlamaForCausalLM
    config = transformers.AutoConfig.for_model(**cfg)
    config._attn_implementation = "eager"  # the plain matmul-softmax reference, not SDPA
    ref = cls(config).eval()
    missing, unexpected = ref.load_state_dict(hf_state_dict(model.state_dict(), spec), strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}  # tied: HF ties lm_head to the embedding itself
    return ref


@pytest.mark.parametrize("name", list(SPECS))
def test_param_count_equals_accounting(name: str) -> None:
    spec = SPECS[name]
    model = Transformer(spec)
    assert sum(p.numel() for p in model.parameters()) == count_params(spec).total


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "llama3-8b", "gpt2"])
def test_preset_param_count_on_meta(name: str) -> None:
    spec = get_model_preset(name)
    with torch.device("meta"):
        model = Transformer(spec)
    assert sum(p.numel() for p in model.parameters()) == count_params(spec).total


@pytest.mark.parametrize("name", list(SPECS))
def test_logits_match_hugging_face(name: str) -> None:
    torch.manual_seed(0)
    spec = SPECS[name]
    model = Transformer(spec).eval()
    ref = _hf(spec, model)
    idx = torch.randint(0, spec.vocab_size, (3, spec.max_seq_len))
    with torch.no_grad():
        ours, theirs = model(idx), ref(input_ids=idx).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # The loss path equals cross-entropy of the reference logits.
    targets = torch.randint(0, spec.vocab_size, idx.shape)
    with torch.no_grad():
        loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(theirs.flatten(0, 1), targets.flatten()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gpt2-untied", "llama-gqa-untied", "llama-tied-headdim"])
def test_gradients_match_hugging_face(name: str) -> None:
    """Training mode (the CPU paths with hand-written RMSNorm/SwiGLU backward): loss and every gradient."""
    torch.manual_seed(1)
    spec = SPECS[name]
    model = Transformer(spec)
    ref = _hf(spec, model)
    idx = torch.randint(0, spec.vocab_size, (2, spec.max_seq_len))
    targets = torch.randint(0, spec.vocab_size, idx.shape)
    loss = model(idx, targets)
    loss.backward()
    ref_loss = F.cross_entropy(ref(input_ids=idx).logits.flatten(0, 1), targets.flatten())
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    ours = hf_state_dict({k: p.grad for k, p in model.named_parameters()}, spec)
    for key, grad in ours.items():
        torch.testing.assert_close(grad, ref.get_parameter(key).grad, rtol=1e-4, atol=1e-6, msg=key)


def test_meta_build_to_empty_init_equals_direct_build() -> None:
    spec = SPECS["gpt2-tied"]
    a = build_model(spec, seed=3)
    with torch.device("meta"):
        b = Transformer(spec)
    b.to_empty(device="cpu")
    b.init_weights(torch.Generator().manual_seed(3))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    # Tied: one tensor serves as embedding and output head, before and after an optimizer step.
    assert b.output_weight is b.embed.weight and "lm_head.weight" not in b.state_dict()
    llama = build_model(SPECS["llama-mqa"], seed=0)
    ref_cos = Transformer(SPECS["llama-mqa"]).rope_cos
    torch.testing.assert_close(llama.rope_cos, ref_cos, rtol=0, atol=0)


def test_init_scheme() -> None:
    spec = ModelSpec(d_model=256, n_layers=8, n_heads=4, d_ff=1024, vocab_size=4096, max_seq_len=64)
    model = build_model(spec, seed=0)
    assert abs(model.layers[0].attn.qkv.weight.std().item() - 0.02) < 1e-3
    assert abs(model.layers[0].mlp.down.weight.std().item() - 0.02 / math.sqrt(16)) < 3e-4
    assert torch.all(model.layers[0].attn_norm.weight == 1)


def test_too_long_sequence_is_an_error() -> None:
    spec = SPECS["llama-mqa"]
    with pytest.raises(IsoflopError, match="max_seq_len"):
        Transformer(spec)(torch.zeros(1, spec.max_seq_len + 1, dtype=torch.long))


def test_weight_decay_groups() -> None:
    for name in ("gpt2-untied", "llama-tied-headdim"):
        model = Transformer(SPECS[name])
        decay, no_decay = param_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        decayed = {names[id(p)] for p in decay["params"]}
        assert decayed and all(
            n.endswith("weight") and ("attn." in n or "mlp." in n or n == "lm_head.weight") for n in decayed
        )
        assert "embed.weight" in {names[id(p)] for p in no_decay["params"]}
        assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = build_optimizer(model, lr=1e-3)
    assert opt.defaults["fused"] or opt.defaults["foreach"]
    with pytest.raises(IsoflopError):
        build_optimizer(model, lr=-1.0)


def test_training_step_reduces_loss_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    spec = SPECS["llama-gqa-untied"]
    model = build_model(spec, seed=0)
    opt = build_optimizer(model, lr=3e-3)
    idx = torch.randint(0, spec.vocab_size, (4, spec.max_seq_len))
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx[:, :-1], idx[:, 1:])
        assert loss.dtype == torch.float32
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_compile_blocks_keeps_names_and_function() -> None:
    spec = SPECS["llama-mqa"]
    model = build_model(spec, seed=0)
    idx = torch.randint(0, spec.vocab_size, (2, 16))
    with torch.no_grad():
        before = model(idx)
    keys = list(model.state_dict())
    loss_eager = model(idx, idx)
    grads_eager = torch.autograd.grad(loss_eager, list(model.parameters()))
    compile_blocks(model, backend="eager")
    with torch.no_grad():
        after = model(idx)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(before, after)
    # Training through the compiled blocks (plain ops inside compile) gives the same gradients.
    loss_compiled = model(idx, idx)
    grads_compiled = torch.autograd.grad(loss_compiled, list(model.parameters()))
    torch.testing.assert_close(loss_compiled, loss_eager)
    for a, b in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_linear_cross_entropy_matches_plain(autocast: bool) -> None:
    from isoflop.train.loss import fused_linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(700, 32, requires_grad=True)
    w = (torch.randn(300, 32) * 0.3).requires_grad_()
    targets = torch.randint(0, 300, (700,))
    targets[::7] = -100  # ignored positions
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fused = fused_linear_cross_entropy(h, w, targets, chunk=128) * 3.0  # 6 chunks, last partial; upstream grad 3
        plain = F.cross_entropy(F.linear(h, w).float(), targets, ignore_index=-100) * 3.0
    g_fused = torch.autograd.grad(fused, [h, w])
    g_plain = torch.autograd.grad(plain, [h, w])
    torch.testing.assert_close(fused, plain, **tol)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, **tol)
    assert torch.isnan(fused_linear_cross_entropy(h, w, torch.full((700,), -100)))


@pytest.mark.parametrize("math_backend", [True, False])
def test_bf16_attention_backends_match_fp32(monkeypatch, math_backend: bool) -> None:
    """Under bf16 autocast on CPU, both SDPA backends (math, used without native bf16; the fused kernel
    otherwise) give the fp32 model's loss and gradients to bf16 accuracy (GQA spec, so ``enable_gqa`` is used)."""
    import isoflop.train.kernels as kernels

    monkeypatch.setattr(kernels, "NATIVE_BF16", not math_backend)
    spec = SPECS["llama-gqa-untied"]
    model = build_model(spec, seed=0)
    idx = torch.randint(0, spec.vocab_size, (2, spec.max_seq_len), generator=torch.Generator().manual_seed(1))
    q = torch.zeros(2, spec.n_heads, spec.max_seq_len, spec.head_dim, dtype=torch.bfloat16)
    assert kernels.uses_math_attention(q) is math_backend
    losses, grads = [], []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    assert abs(losses[1] - losses[0]) < 2e-2
    assert (grads[1] - grads[0]).norm() / grads[0].norm() < 5e-2
