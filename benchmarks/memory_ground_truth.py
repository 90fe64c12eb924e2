"""Ground truth for the memory model: a real PyTorch training step measured without a GPU.

A reference decoder (torch.nn; Llama style: RMSNorm, RoPE, separate Q/K/V projections, SwiGLU, untied head;
or GPT style: LayerNorm with biases, learned positions, GELU, tied head) is built on the meta device and
materialised inside ``FakeTensorMode``; ``torch.distributed._tools.mem_tracker.MemTracker`` records the
peak bytes of one forward + backward with the optimizer states of a previous step alive.

Precision recipes (what the model's ``dtype`` means):
* ``bf16``: bf16 parameters and gradients, fp32 master weights, fp32 AdamW moments (Rajbhandari et al. 2020).
* ``fp32``: fp32 parameters and gradients, AdamW moments.
* ``amp``: fp32 parameters, gradients and AdamW moments, forward under ``torch.autocast(bfloat16)`` (the
  recipe of isoflop's own trainer): bf16 matmuls, fp32 residual stream, bf16 weight casts saved.

Gradients are kept allocated between steps (``zero_grad(set_to_none=False)``, as DDP buckets and Megatron's
grad buffer do). Norms use a fused-kernel autograd function that saves the input and the fp32 inverse RMS
(Apex/Transformer Engine/torch's CUDA fused RMSNorm); eager CPU ``nn.RMSNorm`` decomposes and saves two fp32
copies of its input as well, which isoflop does not model. Attention is ``F.scaled_dot_product_attention``
(the flash kernel: saves Q, K, V, the output and the log-sum-exp).

Prints one line per case and, last, one JSON object with the errors. Run:
``python benchmarks/memory_ground_truth.py``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isoflop.hardware import get_gpu  # noqa: E402
from isoflop.perf import Layout, estimate  # noqa: E402
from isoflop.spec import ModelSpec  # noqa: E402


def build_reference(spec: ModelSpec, recompute: str):
    """A torch.nn decoder with exactly ``spec``'s parameters; ``recompute`` as in Korthikanti et al. 2022."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    class FusedRMSNormFn(torch.autograd.Function):
        """RMSNorm that saves only its input and the fp32 inverse RMS, like a fused CUDA kernel."""

        @staticmethod
        def forward(ctx, x, weight, eps):
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            ctx.save_for_backward(x, weight, rstd)
            return (xf * rstd).to(x.dtype) * weight

        @staticmethod
        def backward(ctx, grad):
            x, weight, rstd = ctx.saved_tensors
            xhat = x.float() * rstd
            g = grad.float() * weight.float()
            dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
            dw = (grad.float() * xhat).reshape(-1, x.shape[-1]).sum(0)
            return dx.to(x.dtype), dw.to(weight.dtype), None

    class RMSNorm(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return FusedRMSNormFn.apply(x, self.weight, spec.norm_eps)

    def norm() -> nn.Module:
        return RMSNorm(spec.d_model) if spec.norm == "rmsnorm" else nn.LayerNorm(spec.d_model, bias=spec.bias)

    def rope(x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d, b = spec.d_model, spec.bias
            self.n1, self.n2 = norm(), norm()
            self.q = nn.Linear(d, spec.q_dim, bias=b)
            self.k = nn.Linear(d, spec.kv_dim, bias=b)
            self.v = nn.Linear(d, spec.kv_dim, bias=b)
            self.o = nn.Linear(spec.q_dim, d, bias=b)
            if spec.gated:
                self.gate = nn.Linear(d, spec.d_ff, bias=b)
            self.up = nn.Linear(d, spec.d_ff, bias=b)
            self.down = nn.Linear(spec.d_ff, d, bias=b)

        def core(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=spec.n_kv_heads != spec.n_heads)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            hd = spec.head_dim
            h = self.n1(x)
            q = self.q(h).view(B, T, spec.n_heads, hd).transpose(1, 2)
            k = self.k(h).view(B, T, spec.n_kv_heads, hd).transpose(1, 2)
            v = self.v(h).view(B, T, spec.n_kv_heads, hd).transpose(1, 2)
            if spec.rope:
                q, k = rope(q, cos, sin), rope(k, cos, sin)
            a = checkpoint(self.core, q, k, v, use_reentrant=False) if recompute == "selective" else self.core(q, k, v)
            x = x + self.o(a.transpose(1, 2).reshape(B, T, spec.q_dim))
            h = self.n2(x)
            hidden = F.silu(self.gate(h)) * self.up(h) if spec.gated else F.gelu(self.up(h), approximate="tanh")
            return x + self.down(hidden)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = spec.d_model
            self.emb = nn.Embedding(spec.vocab_size, d)
            self.pos = nn.Embedding(spec.max_seq_len, d) if spec.position == "learned" else None
            self.blocks = nn.ModuleList(Block() for _ in range(spec.n_layers))
            self.norm = norm()
            self.head = None if spec.tie_embeddings else nn.Linear(d, spec.vocab_size, bias=False)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.emb(idx)
            if self.pos is not None:
                x = x + self.pos(torch.arange(T, device=idx.device))
            hd = spec.head_dim
            inv = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2, device=idx.device, dtype=torch.float32) / hd))
            ang = torch.outer(torch.arange(T, device=idx.device, dtype=torch.float32), inv)
            low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
            cos = torch.cat((ang.cos(), ang.cos()), -1).to(low)
            sin = torch.cat((ang.sin(), ang.sin()), -1).to(low)
            for block in self.blocks:
                x = checkpoint(block, x, cos, sin, use_reentrant=False) if recompute == "full" else block(x, cos, sin)
            h = self.norm(x)
            logits = h @ (self.emb.weight if self.head is None else self.head.weight).t()
            return F.cross_entropy(logits.float().view(-1, spec.vocab_size), targets.view(-1))

    return Decoder()


def measure(spec: ModelSpec, batch: int, seq_len: int, recompute: str, dtype: str, builder=None) -> dict[str, Any]:
    """Exact model-state bytes and the MemTracker peak of one fwd+bwd (with optimizer state alive).
    ``builder(spec)`` replaces the reference decoder (it must return ``module(idx, targets) -> loss``)."""
    import contextlib

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "amp" else contextlib.nullcontext
    with torch.device("meta"):
        model = (builder(spec) if builder else build_reference(spec, recompute)).to(torch_dtype)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        params = list(model.parameters())
        master = [p.detach().float().requires_grad_() for p in params] if dtype == "bf16" else params
        opt = torch.optim.AdamW(master, lr=1e-3, foreach=False)
        idx = torch.randint(0, spec.vocab_size, (batch, seq_len))
        tgt = torch.randint(0, spec.vocab_size, (batch, seq_len))

        def step() -> None:
            with autocast():
                loss = model(idx, tgt)
            loss.backward()
            if dtype == "bf16":
                for m, p in zip(master, params):
                    m.grad = p.grad.float()
            opt.step()
            if dtype == "bf16":
                for m, p in zip(master, params):
                    m.grad = None
                    p.detach().copy_(m.detach())
            model.zero_grad(set_to_none=False)

        step()
        state = [t for s in opt.state.values() for k, t in s.items() if k != "step"]
        nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
        exact = {
            "weights": nbytes(params),
            "gradients": nbytes(p.grad for p in params),
            "optimizer": nbytes(state) + (nbytes(master) if dtype == "bf16" else 0),
        }
        tracker = MemTracker()
        tracker.track_external(model, opt, *(master if dtype == "bf16" else []))
        with tracker:
            with autocast():
                loss = model(idx, tgt)
            loss.backward()
        peak = tracker.get_tracker_snapshot("peak")
    total = sum(d["Total"] for d in peak.values())
    return {"exact": exact, "peak_total": total}


def predict(spec: ModelSpec, batch: int, seq_len: int, recompute: str, dtype: str) -> dict[str, float]:
    """The model's bytes for the same step on one GPU (without the allocator/context allowance)."""
    est = estimate(
        spec, get_gpu("h100-sxm"), 1, Layout(micro_batch=batch, recompute=recompute, dtype=dtype), batch, seq_len
    )
    gib = 2.0**30
    m = est.memory
    return {
        "weights": m["weights_gib"] * gib,
        "gradients": m["gradients_gib"] * gib,
        "optimizer": m["optimizer_gib"] * gib,
        "total": (m["total_gib"] - m["overhead_gib"] - m["comm_buffers_gib"]) * gib,
    }


LLAMA = dict(
    d_model=512,
    n_layers=4,
    n_heads=8,
    n_kv_heads=2,
    d_ff=1536,
    vocab_size=4096,
    max_seq_len=1024,
    norm="rmsnorm",
    mlp="swiglu",
    position="rope",
    tie_embeddings=False,
    bias=False,
)
GPT = dict(
    d_model=384,
    n_layers=3,
    n_heads=6,
    d_ff=1536,
    vocab_size=2048,
    max_seq_len=512,
    norm="layernorm",
    mlp="gelu",
    position="learned",
    tie_embeddings=True,
    bias=True,
)

CASES = [
    ("llama", LLAMA, 2, 512, "none", "bf16"),
    ("llama", LLAMA, 1, 1024, "selective", "bf16"),
    ("llama", LLAMA, 4, 256, "full", "bf16"),
    (
        "llama-wide",
        {**LLAMA, "d_model": 768, "n_heads": 12, "n_kv_heads": 4, "d_ff": 2048, "vocab_size": 8192},
        2,
        512,
        "none",
        "bf16",
    ),
    ("gpt", GPT, 2, 512, "none", "bf16"),
    ("gpt", GPT, 4, 256, "full", "fp32"),
    ("gpt", GPT, 2, 512, "selective", "fp32"),
    ("llama", LLAMA, 2, 512, "none", "amp"),
    ("gpt", GPT, 4, 256, "full", "amp"),
]


def run_case(name: str, fields: dict, batch: int, seq: int, recompute: str, dtype: str) -> dict[str, Any]:
    spec = ModelSpec(name=name, **fields)
    meas, pred = measure(spec, batch, seq, recompute, dtype), predict(spec, batch, seq, recompute, dtype)
    return {
        "case": f"{name} b={batch} s={seq} {recompute} {dtype}",
        "model_states_exact": all(pred[k] == meas["exact"][k] for k in ("weights", "gradients", "optimizer")),
        "model_states_bytes": sum(meas["exact"].values()),
        "measured_peak_bytes": meas["peak_total"],
        "predicted_peak_bytes": pred["total"],
        "total_error": pred["total"] / meas["peak_total"] - 1.0,
        "activation_error": (pred["total"] - sum(meas["exact"].values()))
        / (meas["peak_total"] - sum(meas["exact"].values()))
        - 1.0,
    }


def trainer_rows() -> list[dict[str, Any]]:
    """The same measurement on isoflop's own trainer model (``isoflop.train.model``), when it is installed."""
    try:
        from isoflop.train.model import Transformer
    except ImportError:
        return []
    rows = []
    for name, fields, batch, seq in (("llama", LLAMA, 2, 512), ("gpt", GPT, 2, 512)):
        spec = ModelSpec(name=name, **fields)
        meas = measure(spec, batch, seq, "none", "amp", builder=Transformer)
        pred = predict(spec, batch, seq, "none", "amp")
        rows.append(
            {
                "case": f"trainer {name} b={batch} s={seq} none amp",
                "measured_peak_bytes": meas["peak_total"],
                "predicted_peak_bytes": pred["total"],
                "total_error": pred["total"] / meas["peak_total"] - 1.0,
            }
        )
    return rows


def main() -> None:
    rows = [run_case(*case) for case in CASES]
    for r in rows:
        print(
            f"{r['case']:<40} states exact: {r['model_states_exact']}  measured "
            f"{r['measured_peak_bytes'] / 2**20:8.1f} MiB  "
            f"predicted {r['predicted_peak_bytes'] / 2**20:8.1f} MiB  error {r['total_error']:+.2%} "
            f"(activations + logits {r['activation_error']:+.2%})"
        )
    trainer = trainer_rows()
    for r in trainer:
        print(
            f"{r['case']:<40} measured {r['measured_peak_bytes'] / 2**20:8.1f} MiB  "
            f"predicted {r['predicted_peak_bytes'] / 2**20:8.1f} MiB  error {r['total_error']:+.2%}"
        )
    worst = max(abs(r["total_error"]) for r in rows)
    worst_act = max(abs(r["activation_error"]) for r in rows)
    print(
        json.dumps(
            {
                "cases": rows,
                "max_abs_total_error": worst,
                "max_abs_activation_error": worst_act,
                "all_states_exact": all(r["model_states_exact"] for r in rows),
                "trainer": trainer,
            }
        )
    )


if __name__ == "__main__":
    main()
