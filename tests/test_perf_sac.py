"""torchtitan's op-level selective activation checkpointing, run for real, against ``isoflop.perf.sac`` and the
memory model's ``op`` policy.

A torchtitan Llama block (benchmarks/eager_elementwise_bytes.py) is checkpointed with PyTorch's
``create_selective_checkpoint_contexts`` under torchtitan's policy (parallelize_llama.py: save the output of
every odd ``aten.mm`` of the block and of the attention kernel, recompute the rest), as the trainer runs it
(``isoflop.train.recompute.op_sac_context``). Dispatch modes count the
matmul FLOPs the backward recomputes and the bytes the policy saves; the model must match both.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _benchmarks import load_benchmark  # noqa: E402

from isoflop.perf import Layout, LayoutArrays  # noqa: E402
from isoflop.perf.memory import layer_activation_bytes  # noqa: E402
from isoflop.perf.sac import recomputed_flops_per_token  # noqa: E402
from isoflop.spec import get_model_preset  # noqa: E402

eager = load_benchmark("eager_elementwise_bytes")


def _run_op_sac(h: int, heads: int, kv_heads: int, f: int, tokens: int) -> tuple[int, float]:
    """(bytes the policy saves, FLOPs recomputed in the backward) for one block and one sequence: the matmul
    FLOPs the backward runs with op-level SAC less those it runs without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    from isoflop.train.recompute import op_sac_context  # the trainer's policy, built from isoflop.perf.sac

    mm = torch.ops.aten.mm.default
    attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default  # the CPU flash kernel

    torch.manual_seed(0)
    block = eager.Block(h, heads, kv_heads, f).to(torch.bfloat16)
    hd = h // heads
    angles = torch.outer(torch.arange(tokens).float(), 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.polar(torch.ones_like(angles), angles)
    x = torch.randn(1, tokens, h, dtype=torch.bfloat16, requires_grad=True)

    def backward_flops(sac: bool) -> float:
        y = checkpoint(block, x, freqs, use_reentrant=False, context_fn=op_sac_context) if sac else block(x, freqs)
        with MatmulFlops() as counter:
            y.backward(torch.ones_like(y))
        return counter.flops

    recomputed = backward_flops(sac=True) - backward_flops(sac=False)
    with SaveCounter(mm, attention) as saved:
        block(x.detach(), freqs)
    return saved.bytes + x.numel() * x.element_size(), recomputed  # + the block input the checkpoint keeps


class MatmulFlops(torch.utils._python_dispatch.TorchDispatchMode):
    """FLOPs of the ``aten.mm`` calls that run (2 M N K each)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func == torch.ops.aten.mm.default:
            self.flops += 2.0 * args[0].shape[0] * args[0].shape[1] * args[1].shape[1]
        return func(*args, **(kwargs or {}))


class SaveCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Output bytes of torchtitan's saved ops in one forward: odd matmuls and the attention kernel."""

    def __init__(self, mm, attention) -> None:
        super().__init__()
        self.mm, self.attention, self.count, self.bytes = mm, attention, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func == self.mm:
            self.count += 1
        if func == self.attention or (func == self.mm and self.count % 2 == 1):
            outs = out if isinstance(out, tuple) else (out,)
            self.bytes += sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))
        return out


@pytest.mark.parametrize("shape", [(256, 8, 2, 640), (192, 6, 6, 512)])  # GQA (Llama 3) and MHA (Llama 2)
def test_op_sac_matches_torchtitans_policy(shape) -> None:
    h, heads, kv_heads, f = shape
    tokens = 64
    spec = get_model_preset("llama3-8b").model_copy(
        update={"d_model": h, "n_heads": heads, "n_kv_heads": kv_heads, "head_dim": h // heads, "d_ff": f}
    )
    saved_bytes, recomputed = _run_op_sac(h, heads, kv_heads, f, tokens)
    assert recomputed / tokens == pytest.approx(recomputed_flops_per_token(spec) / spec.n_layers, rel=1e-9)
    la = LayoutArrays.from_layouts([Layout(micro_batch=1, recompute="op")])
    model = float(np.asarray(layer_activation_bytes(spec, la, tokens, act=2.0)["op"])[0])
    # the CPU flash kernel also returns a few scalars and its fp32 log-sum-exp per (head, token), as CUDA's does
    assert model == pytest.approx(saved_bytes, rel=0.01)


def test_torchtitan_elementwise_passes_is_the_measured_eager_traffic() -> None:
    """The torchtitan profile's ``elementwise_passes`` is the eager block's memory-bound bytes (counted per aten
    op by benchmarks/eager_elementwise_bytes.py) over the model's fused count, not a fitted number."""
    from isoflop.perf import load_constants

    measured = eager.measure(256, 16, 4, 896, tokens=64)["elementwise_passes"]
    assert load_constants(None, "torchtitan").elementwise_passes == pytest.approx(measured, rel=0.05)
