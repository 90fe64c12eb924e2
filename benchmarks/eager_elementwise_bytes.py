"""Bytes moved by the memory-bound (non-matmul) kernels of an eager PyTorch Llama block, counted per aten op.

The performance model charges a layer's memory-bound work (norms, RoPE, residual adds, SwiGLU) as
``elementwise_passes x`` the bytes a fused implementation moves: ``10 h + 2 (q + kv) + 3 f`` elements per
token in the forward, times 3 for forward + backward (``isoflop.perf.steptime``). Eager PyTorch moves more:
each aten op is one kernel that reads its inputs from HBM and writes its outputs, and torchtitan's RMSNorm and
RoPE upcast to fp32. This script runs torchtitan's Llama block (the eager code of
pytorch/torchtitan torchtitan/models/llama/model.py and torchtitan/models/norms.py at commit 9dec370, the
version of its docs/performance.md numbers) in bf16, forward + backward, under a ``TorchDispatchMode`` that
sums the input + output bytes of every op except matmuls, attention kernels and views, and prints the ratio
to the fused count: the ``elementwise_passes`` of the ``torchtitan`` profile in ``isoflop/perf/constants.yaml``.

Run: ``python benchmarks/eager_elementwise_bytes.py`` (CPU, a few seconds; prints one JSON object).
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# matmuls and attention kernels run at tensor-core speed (the model's GEMM and attention terms), not here
_COMPUTE = ("mm", "bmm", "addmm", "matmul", "scaled_dot_product", "flash_attention", "efficient_attention")


# metadata-only ops whose schema does not mark the output as an alias
_METADATA = ("detach", "t.", "empty", "_unsafe_view")


class ByteCounter(TorchDispatchMode):
    """Sums input + output bytes of every memory-bound aten op (views and matmuls excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__
        returns_view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        if returns_view or any(key in name for key in _COMPUTE) or name.startswith(_METADATA):
            return out
        flat = [*torch.utils._pytree.tree_leaves((args, kwargs)), *torch.utils._pytree.tree_leaves(out)]
        self.bytes += sum(x.numel() * x.element_size() for x in flat if isinstance(x, torch.Tensor))
        return out


class RMSNorm(nn.Module):  # torchtitan/models/norms.py
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope(xq: torch.Tensor, xk: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchtitan's apply_rotary_emb: fp32 complex multiply."""
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    f = freqs.view(1, xq.shape[1], 1, -1)
    return torch.view_as_real(xq_ * f).flatten(3).type_as(xq), torch.view_as_real(xk_ * f).flatten(3).type_as(xk)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    bs, slen, n_kv, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(bs, slen, n_kv, n_rep, hd).reshape(bs, slen, n_kv * n_rep, hd)


class Block(nn.Module):
    """torchtitan's TransformerBlock: x + attention(norm(x)), then h + w2(silu(w1(n)) * w3(n))."""

    def __init__(self, h: int, heads: int, kv_heads: int, f: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, h // heads
        self.wq, self.wk = nn.Linear(h, h, bias=False), nn.Linear(h, kv_heads * self.hd, bias=False)
        self.wv, self.wo = nn.Linear(h, kv_heads * self.hd, bias=False), nn.Linear(h, h, bias=False)
        self.w1, self.w2, self.w3 = (
            nn.Linear(h, f, bias=False),
            nn.Linear(f, h, bias=False),
            nn.Linear(h, f, bias=False),
        )
        self.attention_norm, self.ffn_norm = RMSNorm(h), RMSNorm(h)

    def attention(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        bs, s, _ = x.shape
        xq = self.wq(x).view(bs, s, -1, self.hd)
        xk = self.wk(x).view(bs, s, -1, self.hd)
        xv = self.wv(x).view(bs, s, -1, self.hd)
        xq, xk = rope(xq, xk, freqs)
        rep = self.heads // self.kv_heads
        keys, values = repeat_kv(xk, rep), repeat_kv(xv, rep)
        out = F.scaled_dot_product_attention(
            xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), is_causal=True
        )
        return self.wo(out.transpose(1, 2).contiguous().view(bs, s, -1))

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs)
        n = self.ffn_norm(h)
        return h + self.w2(F.silu(self.w1(n)) * self.w3(n))


def measure(h: int, heads: int, kv_heads: int, f: int, tokens: int = 256) -> dict[str, float]:
    """Eager bytes per token (forward, backward) of one bf16 block and the model's fused count."""
    torch.manual_seed(0)
    block = Block(h, heads, kv_heads, f).to(torch.bfloat16)
    hd = h // heads
    angles = torch.outer(torch.arange(tokens).float(), 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.polar(torch.ones_like(angles), angles)
    x = torch.randn(1, tokens, h, dtype=torch.bfloat16, requires_grad=True)
    with ByteCounter() as fwd:
        y = block(x, freqs)
    grad = torch.randn_like(y)
    with ByteCounter() as bwd:
        y.backward(grad)
    kv = kv_heads * hd
    fused = 3 * 2 * (10 * h + 2 * (h + kv) + 3 * f)  # the model's bytes per token: 3 x forward, bf16
    total = (fwd.bytes + bwd.bytes) / tokens
    return {
        "d_model": h,
        "kv_dim": kv,
        "d_ff": f,
        "forward_bytes_per_token": fwd.bytes / tokens,
        "backward_bytes_per_token": bwd.bytes / tokens,
        "fused_model_bytes_per_token": fused,
        "elementwise_passes": total / fused,
    }


# Llama 3 8B / 70B and Llama 2 13B: the real head counts (GQA's repeat_kv copies), widths scaled down 8x
# (head_dim 16; the byte counts are linear in the widths)
SHAPES = {
    "llama3-8b": (4096 // 8, 32, 8, 14336 // 8),
    "llama3-70b": (8192 // 8, 64, 8, 28672 // 8),
    "llama2-13b": (5120 // 8, 40, 40, 13824 // 8),
}


def main() -> None:
    rows = {name: measure(*shape) for name, shape in SHAPES.items()}
    passes = [r["elementwise_passes"] for r in rows.values()]
    print(json.dumps({"shapes": rows, "elementwise_passes_mean": sum(passes) / len(passes)}))


if __name__ == "__main__":
    main()
