"""The trainer's optimizers with weight-decay groups: AdamW (Loshchilov & Hutter 2019, decoupled weight decay) by
default, or by ``optim.name`` SGD-momentum, Adafactor (``torch.optim.Adafactor``), 8-bit AdamW and Lion
(bitsandbytes) and GaLore (galore-torch); ``isoflop.perf.optimizer_state`` predicts their state bytes.

Groups: weight decay applies to the weight matrices of linear layers (attention, MLP and an untied
output head) only. Norm weights and biases (all 1-D tensors) and the token/position embedding tables
(including a tied output head, which is the token embedding) get no decay, as in nanoGPT, Megatron-LM
and OLMo (Groeneveld et al. 2024).

Implementation: ``fused=True`` (one kernel per step) where PyTorch supports it for every parameter's
device and dtype (CUDA, and CPU since PyTorch 2.4), else ``foreach=True`` (multi-tensor), else the
per-parameter loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from isoflop.errors import IsoflopError

if TYPE_CHECKING:
    from isoflop.train.config import OptimSection


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: ``decay`` (linear weight matrices) and ``no_decay`` (norms, biases, embeddings); an MoE model
    has a third, ``experts`` (decayed): under expert parallelism its weights live on the ``ep`` device mesh and a
    fused/foreach step (run per group) cannot mix meshes. The groups do not depend on the layout, so a
    checkpoint resumes under any ``ep``."""
    from isoflop.train.moe import Experts

    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    expert_ids = {id(p) for m in model.modules() if isinstance(m, Experts) for p in m.parameters()}
    decay, no_decay, experts, seen = [], [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in expert_ids:
            experts.append(param)
        else:
            (no_decay if param.ndim < 2 or id(param) in embedding_ids else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    if experts:
        groups.append({"params": experts, "weight_decay": weight_decay, "name": "experts"})
    return groups


def _implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """``fused`` when every parameter is on a device/dtype the fused kernel supports, else ``foreach``."""
    devices = {p.device.type for p in params}
    floating = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)
    if floating and devices and devices <= {"cuda", "cpu", "xpu", "mps"} and not any(p.is_meta for p in params):
        return {"fused": True}
    return {"foreach": True} if devices and "meta" not in devices else {}


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    implementation: str = "auto",
) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model)``; ``implementation`` is ``auto``, ``fused``, ``foreach`` or ``loop``."""
    if lr <= 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps <= 0:
        raise IsoflopError(
            f"invalid AdamW settings lr={lr}, weight_decay={weight_decay}, betas={betas}, eps={eps}; "
            "use lr > 0, weight_decay >= 0, 0 <= beta < 1, eps > 0"
        )
    groups = param_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    if implementation == "auto":
        kwargs = _implementation(params)
    elif implementation == "fused":
        kwargs = {"fused": True}
    elif implementation == "foreach":
        kwargs = {"foreach": True}
    elif implementation == "loop":
        kwargs = {"foreach": False}
    else:
        raise IsoflopError(f"unknown AdamW implementation {implementation!r}; use auto, fused, foreach or loop")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def _extra(module: str, feature: str) -> Any:
    """Import an optional optimizer package, or the project's one-line 'needs the extra' error."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise IsoflopError(f"{feature} needs the 'lowmem' extra; pip install isoflop[lowmem]") from None


def build_named_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` over ``param_groups(model)`` with the section's lr, betas, eps, weight decay."""
    name, betas = optim.name, (optim.beta1, optim.beta2)
    if name == "adamw":
        return build_optimizer(model, optim.lr, optim.weight_decay, betas, optim.eps)
    groups = param_groups(model, optim.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.beta1, foreach=True)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=optim.lr, eps=(None, 1e-3), foreach=True)
    if name == "adam8bit":
        bnb = _extra("bitsandbytes", "optim.name=adam8bit")
        return bnb.optim.AdamW8bit(groups, lr=optim.lr, betas=betas, eps=optim.eps)
    if name == "lion":
        bnb = _extra("bitsandbytes", "optim.name=lion")
        return bnb.optim.Lion(groups, lr=optim.lr, betas=betas)
    if name == "galore":
        from isoflop.perf.optimizer_state import ParamShape, check_galore_rank

        galore = _extra("galore_torch", "optim.name=galore")
        check_galore_rank([ParamShape("", tuple(p.shape), "linear") for p in groups[0]["params"]], optim.galore_rank)
        groups[0].update(rank=optim.galore_rank, update_proj_gap=optim.galore_update_gap, scale=optim.galore_scale)
        groups[0]["proj_type"] = "std"
        return galore.GaLoreAdamW(groups, lr=optim.lr, betas=betas, eps=optim.eps)
    raise IsoflopError(f"unknown optim.name {name!r}; use adamw, sgd, adafactor, adam8bit, lion or galore")


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Measured bytes of every tensor the optimizer's state holds (unique storages; tensors inside helper objects
    such as GaLore's projector included)."""
    seen: dict[int, int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            visit(vars(value))

    for per_param in optimizer.state.values():
        visit(per_param)
    return sum(seen.values())
