"""The trainer's activation recomputation policies (isoflop.train.recompute) against no checkpointing and the
performance model.

Each policy must leave the loss and the gradients unchanged (fp32, a tiny model), and the forward FLOPs the backward
recomputes, counted by ``FlopCounterMode`` (the backward's FLOPs with the policy less those without), must be the
model's: the attention core for ``selective`` (``isoflop.spec.accounting.recompute_flops_per_token``), the even
matmuls of ``isoflop.perf.sac`` for ``op``, the whole forward but the logits for ``full``. PyTorch's
non-reentrant checkpoint stops recomputing once the tensors the backward needs are rebuilt, so no policy reruns a
block's last matmul (the MLP's down projection, whose output only feeds the residual add): ``op`` leaves it out
(``isoflop.perf.sac``); the ``full`` count of ``recompute_flops_per_token`` (the whole layer, as Megatron-LM's
full recompute) is that much above what torch reruns.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from isoflop.perf.sac import recomputed_flops_per_token, tail_matmul_flops_per_token  # noqa: E402
from isoflop.spec import get_model_preset  # noqa: E402
from isoflop.spec.accounting import count_flops, recompute_flops_per_token  # noqa: E402
from isoflop.train.distributed import apply_activation_checkpointing  # noqa: E402
from isoflop.train.model import build_model  # noqa: E402

POLICIES = ("selective", "op", "full")
SEQ, BATCH = 32, 2


def _spec(**fields):
    base = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "d_ff": 96}
    base.update(vocab_size=128, max_seq_len=SEQ)
    return get_model_preset("tiny-llama").model_copy(update={**base, **fields})


def _model(spec, policy: str):
    model = build_model(spec, "cpu", seed=0).train()
    apply_activation_checkpointing(model, policy)
    return model


def _batch(spec):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, spec.vocab_size, (BATCH, SEQ + 1), generator=g)


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash kernel (no formula in FlopCounterMode): Q K^T and A V over the full square, as sdpa_flop."""
    b, h, s_q, d = query
    return 4 * b * h * s_q * key[2] * d


def _backward_flops(spec, policy: str) -> float:
    model, idx = _model(spec, policy), _batch(spec)
    loss = model(idx[:, :-1], idx[:, 1:])
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        loss.backward()
    return float(counter.get_total_flops())


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fields", [{}, {"norm": "layernorm", "mlp": "gelu", "position": "learned", "bias": True}])
def test_recompute_leaves_loss_and_gradients_unchanged(policy, fields) -> None:
    spec = _spec(**fields)
    idx = _batch(spec)
    runs = []
    for p in ("none", policy):
        model = _model(spec, p)
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        grads = {n.replace("_checkpoint_wrapped_module.", ""): q.grad for n, q in model.named_parameters()}
        runs.append((loss.detach(), grads))
    (ref_loss, ref_grads), (loss, grads) = runs
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-6, atol=1e-9, msg=name)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fields", [{}, {"mlp": "gelu"}])
def test_recomputed_flops_are_the_performance_models(policy, fields) -> None:
    spec = _spec(**fields)
    tokens = BATCH * SEQ
    flops = count_flops(spec, SEQ, causal=False)  # SDPA's FLOP formula counts the full square
    if policy == "op":
        predicted = recomputed_flops_per_token(spec, fused=True)  # the trainer's fused QKV and gate/up matmuls
    else:
        predicted = recompute_flops_per_token(flops, policy)
        if policy == "full":
            predicted -= tail_matmul_flops_per_token(spec)  # never rerun by torch's non-reentrant checkpoint
    recomputed = _backward_flops(spec, policy) - _backward_flops(spec, "none")
    assert recomputed == pytest.approx(predicted * tokens, rel=1e-9)
    assert recomputed > 0


def test_eval_and_no_grad_do_not_checkpoint() -> None:
    spec = _spec()
    model = _model(spec, "selective").eval()
    idx = _batch(spec)[:, :-1]
    with torch.no_grad():
        torch.testing.assert_close(model(idx), _model(spec, "none").eval()(idx), rtol=0, atol=0)
