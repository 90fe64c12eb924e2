"""Load the base model (a Hugging Face folder or an isoflop run's ``hf/`` export) and attach peft adapters."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from isoflop.errors import IsoflopError, first_line

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def require_extra() -> None:
    """Refuse early, in one line, when peft (the ``finetune`` extra) is missing."""
    if importlib.util.find_spec("peft") is None:
        raise IsoflopError("fine-tuning needs the 'finetune' extra; pip install isoflop[finetune]")


def linear_names(model: torch.nn.Module) -> set[str]:
    """Leaf names of the linear layers peft can wrap (``nn.Linear``, GPT-2's ``Conv1D``, bitsandbytes')."""
    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return names


def check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    known = linear_names(model) - {"lm_head"}
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise IsoflopError(
            f"target modules {', '.join(unknown)} do not exist in this model; choose from {', '.join(sorted(known))}"
        )


def load_base(folder: Path, dtype: str, quant: str) -> Any:
    """``AutoModelForCausalLM`` from ``folder`` on the CPU; ``quant`` ``nf4`` (double-quantised, QLoRA) or
    ``int8`` through bitsandbytes."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if quant != "none":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise IsoflopError("QLoRA needs the 'finetune' extra (bitsandbytes); pip install isoflop[finetune]")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=DTYPES[dtype],
            )
            if quant == "nf4"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = "cpu"
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        first = first_line(str(exc)) or type(exc).__name__
        raise IsoflopError(f"cannot load the model in {str(folder)!r} ({first}); is it a causal-LM folder?") from None
    for module in model.modules():
        # bitsandbytes repacks 4-bit weights for AVX512-BF16 inference on the first eval forward (the held-out
        # loss before training); the packed kernel has no autograd, so the input gradient would be dropped.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def quant_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """bitsandbytes' quantisation constants (absmax, nested absmax, code tables), which are not buffers."""
    out: list[torch.Tensor] = []

    def collect(state: Any) -> None:
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                out.append(value)
            elif type(value).__name__ == "QuantState":
                collect(value)

    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            collect(state)
    return out


def attach_adapter(
    model: Any, method: str, rank: int, alpha: float, dropout: float, targets: list[str], grad_ckpt: bool
) -> Any:
    """Wrap ``model`` with a LoRA (or DoRA) adapter; a full fine-tune returns it unchanged (all trainable)."""
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    check_targets(model, targets)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        use_dora=method == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
