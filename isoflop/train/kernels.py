"""CPU kernels behind ``isoflop.train.model``: speed only, none changes the function computed.

* RMSNorm and SwiGLU with hand-written backward passes (fewer full-size memory passes than autograd's
  decomposition on CPU; SwiGLU writes its gradient straight into the fused gate/up buffer). Other devices
  use ``F.rms_norm`` and ``silu(gate) * up``, which fused kernels and ``torch.compile`` handle.
* The bf16 attention switch: on a CPU without native bf16 matmul (no AVX512-BF16 or AMX), half-precision
  attention uses SDPA's math backend, which was faster there than the flash-style CPU kernel running its
  blocked loops in emulated bf16 (``benchmarks/train_throughput.py`` shows the ratios). The math path builds
  the ``(T, T)`` scores, so it is only used while they stay small (``_MATH_ATTENTION_MAX_BYTES``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_MATH_ATTENTION_MAX_BYTES = 256 << 20  # fp32 scores of one attention call, (B, H, T, T)


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on x86; other CPUs (or a PyTorch without these probes) are assumed native."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(p) for p in probes) or not getattr(torch.cpu, "_is_avx512_supported", lambda: False)():
        return True
    return any(p() for p in probes)


NATIVE_BF16 = _cpu_has_native_bf16()


def uses_math_attention(q: Tensor) -> bool:
    """SDPA's math backend for half-precision attention on a CPU without native bf16 (module docstring)."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16) or NATIVE_BF16:
        return False
    B, H, T, _ = q.shape
    return B * H * T * T * 4 <= _MATH_ATTENTION_MAX_BYTES and not torch.compiler.is_compiling()


def eager_cpu_training(x: Tensor) -> bool:
    """Use the hand-written CPU functions: CPU, grad enabled, and not inside ``torch.compile`` (which
    fuses the plain ops itself)."""
    return x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling()


class RMSNormCPU(torch.autograd.Function):
    """RMSNorm with a hand-written backward: fewer full-size passes than the decomposition PyTorch
    uses on CPU (``pow``, ``mean``, ``rsqrt``, two ``mul`` and their autograd graph).

    With ``xhat = x * rstd``, ``rstd = (mean(x^2) + eps)^-1/2`` and ``y = xhat * w``:
    ``dw = sum(dy * xhat)``, ``dx = rstd * (g - xhat * mean(g * xhat))`` with ``g = dy * w``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        d = x.shape[-1]
        sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_()
        rstd = sq.div_(d).add_(eps).rsqrt_().to(x.dtype)
        xhat = x * rstd
        ctx.save_for_backward(xhat, weight, rstd)
        return xhat * weight

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, None]:
        xhat, weight, rstd = ctx.saved_tensors
        t = dy * xhat
        dw = t.reshape(-1, t.shape[-1]).sum(0)
        c = (t @ weight).unsqueeze(-1).div_(xhat.shape[-1])  # mean(g * xhat) with g = dy * w, as a matvec
        return (dy * weight).addcmul_(xhat, c, value=-1).mul_(rstd), dw.to(weight.dtype), None


class SwiGLUFn(torch.autograd.Function):
    """``silu(gate) * up`` on the fused ``[gate | up]`` projection output, whose gradient is written
    into one buffer (no ``cat`` of the two halves in the backward pass)."""

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * up

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        out = torch.empty_like(h)
        d_gate, d_up = out.chunk(2, dim=-1)
        torch.mul(grad, act, out=d_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        return out
