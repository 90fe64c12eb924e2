"""Output head + next-token cross-entropy, fused and chunked on CPU.

The plain path materialises the ``(N, V)`` logits, then ``log_softmax``, then in the backward pass a
zero-filled gradient, the ``log_softmax`` gradient and two matmuls: several full passes over a tensor
that is far larger than the CPU caches (67 MB for 4096 tokens x 4096 vocabulary in fp32).

The fused path (the idea of Liger Kernel's fused linear cross-entropy, Hsu et al. 2024) walks over
chunks of tokens small enough to stay in cache and, for each chunk, computes the logits, the loss
``logsumexp(z) - z_target`` and, right away, the gradient ``dL/dz = (softmax(z) - onehot(target)) / n``
(the cross-entropy gradient, e.g. Goodfellow et al. 2016, Sec. 6.2.2.3), turning it into the
gradients of the hidden states (``dz W``) and of the output matrix (``dz^T h``). The backward pass only
scales these by the incoming gradient. Matmuls run in the autocast dtype when autocast is on, the
softmax in float32, as in the plain path.

Used for CPU training steps (grad enabled) in float32. Elsewhere, and under bf16 autocast on CPU (where
it was slower on the CPU we measured: without native bf16 matmul instructions, PyTorch's bf16 matmul
prefers one large matrix to many cache-sized ones), ``F.cross_entropy`` on the full logits. The chunked
path handles any compute dtype (tested under bf16 autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 21  # logits per chunk: 8 MB in float32, cache-sized


def _compute_dtype(h: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        cdt = _compute_dtype(h)
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(cdt)
            n_valid = (targets != IGNORE_INDEX).sum()
            inv_n = 1.0 / n_valid.clamp(min=1).to(torch.float32)  # an all-ignored batch gives loss nan below
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], chunk):
                hc = h[start : start + chunk].to(cdt)
                tc = targets[start : start + chunk]
                valid = tc != IGNORE_INDEX
                safe = tc.masked_fill(~valid, 0).unsqueeze(1)
                logits = torch.mm(hc, w.t()).float()
                lse = torch.logsumexp(logits, dim=1)
                loss_sum += ((lse - logits.gather(1, safe).squeeze(1)) * valid).sum()
                probs = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place
                probs.scatter_add_(1, safe, -valid.to(probs.dtype).unsqueeze(1))  # minus the one-hot target
                row_scale = (valid.to(torch.float32) * inv_n).unsqueeze(1)  # 1/n, and 0 for ignored rows
                dz = probs.to(cdt)
                grad_h[start : start + chunk] = (torch.mm(dz, w) * row_scale).to(h.dtype)
                scaled_h = (hc.float() * row_scale).to(cdt)
                if cdt == torch.float32:
                    grad_w.addmm_(dz.t(), scaled_h)
                else:
                    grad_w += torch.mm(dz.t(), scaled_h).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return torch.where(n_valid > 0, loss_sum * inv_n, torch.full_like(loss_sum, float("nan")))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, Tensor, None, None]:
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None


def fused_linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, chunk: int | None = None) -> Tensor:
    """The chunked path of ``linear_cross_entropy`` (any device and compute dtype), ``chunk`` tokens at a time."""
    chunk = chunk or max(128, _CHUNK_ELEMENTS // weight.shape[0])
    return _FusedLinearCrossEntropy.apply(h, weight, targets, chunk)


def linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``h @ weight.T`` (``h``: ``(N, d)``, ``weight``: ``(V, d)``) against
    ``targets`` ``(N,)``; targets equal to ``-100`` are ignored."""
    fusable = h.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling()
    if fusable and _compute_dtype(h) == torch.float32 and (h.requires_grad or weight.requires_grad):
        return fused_linear_cross_entropy(h, weight, targets)
    logits = F.linear(h, weight)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
