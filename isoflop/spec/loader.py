"""Resolve a model argument: a preset name, a ModelSpec file (YAML/JSON), or a Hugging Face ``config.json``.

Hugging Face configs are read from their keys alone (GPT2Config, LlamaConfig, MixtralConfig); nothing
is downloaded and ``transformers`` is not imported.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from isoflop import structured
from isoflop.errors import IsoflopError, describe_validation_error, quote
from isoflop.spec.model import ModelSpec
from isoflop.structured import read_json_or_yaml


@lru_cache(maxsize=1)
def _preset_table() -> dict[str, Any]:
    text = resources.files("isoflop.spec").joinpath("presets.yaml").read_text(encoding="utf-8")
    return structured.loads(text, "yaml", "presets.yaml", "model presets", "reinstall isoflop")


def preset_names() -> list[str]:
    return list(_preset_table()["presets"])


def get_model_preset(name: str) -> ModelSpec:
    """The named preset; an unknown name is an error listing the closest names."""
    table = _preset_table()
    entry = table["presets"].get(name)
    if entry is None:
        close = difflib.get_close_matches(name, preset_names(), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else "run `isoflop count --list` for the presets"
        raise IsoflopError(f"unknown model preset {name!r}; {hint}")
    fields = {k: v for k, v in entry.items() if k != "family"}
    return ModelSpec(name=name, **{**table["families"][entry["family"]], **fields})


def spec_from_dict(data: dict[str, Any], name: str = "custom") -> ModelSpec:
    """A ModelSpec from a mapping: ModelSpec fields, optionally ``preset: NAME`` plus overrides,
    or a Hugging Face config (recognised by ``model_type`` or its key names)."""
    if not isinstance(data, dict):
        raise IsoflopError("a model spec must be a mapping of fields, e.g. {d_model: 512, n_layers: 8, ...}")
    try:
        if "preset" in data:
            base = get_model_preset(str(data["preset"]))
            overrides = {k: v for k, v in data.items() if k != "preset"}
            return base.replace(**overrides) if overrides else base
        if _looks_like_hf(data):
            return _from_hf_config(data, name)
        return ModelSpec(**{"name": name, **data})
    except ValidationError as exc:
        raise IsoflopError(f"invalid model spec: {describe_validation_error(exc)}") from None
    except TypeError as exc:
        raise IsoflopError(f"invalid model spec: {exc}") from None


def load_spec(model: str | Path | ModelSpec) -> ModelSpec:
    """Resolve ``model``: a ModelSpec, a preset name, or a path to a YAML/JSON spec or ``config.json``."""
    if isinstance(model, ModelSpec):
        return model
    text_model = str(model)
    path = Path(text_model)
    if text_model in _preset_table()["presets"]:
        return get_model_preset(text_model)
    if not path.suffix and not path.exists():
        return get_model_preset(text_model)
    if not path.is_file():
        raise IsoflopError(
            f"model file {text_model!r} does not exist; give a preset name or an existing YAML/JSON file"
        )
    data = read_json_or_yaml(path, "model file", "fix the file's syntax")
    name = path.parent.name if path.name == "config.json" else path.stem
    return spec_from_dict(data, name=name)


# Hugging Face configs ---------------------------------------------------------------------------
_GPT2_KEYS = {"n_embd", "n_layer", "n_head"}
_LLAMA_KEYS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"}


def _looks_like_hf(data: dict[str, Any]) -> bool:
    return "model_type" in data or data.keys() >= _GPT2_KEYS or data.keys() >= _LLAMA_KEYS


def _require(data: dict[str, Any], keys: list[str], kind: str) -> None:
    missing = [k for k in keys if data.get(k) is None]
    if missing:
        raise IsoflopError(f"{kind} config.json lacks {', '.join(missing)}; is it a complete Hugging Face config?")


def _from_hf_config(data: dict[str, Any], name: str) -> ModelSpec:
    model_type = data.get("model_type", "gpt2" if data.keys() >= _GPT2_KEYS else "llama")
    if model_type == "gpt2":
        _require(data, ["n_embd", "n_layer", "n_head", "vocab_size"], "GPT-2")
        d_model = data["n_embd"]
        act = data.get("activation_function", "gelu_new")
        if "gelu" not in str(act):
            raise IsoflopError(f"GPT-2 config uses activation {quote(act, 40)}; isoflop models GELU MLPs only")
        return ModelSpec(
            name=name,
            d_model=d_model,
            n_layers=data["n_layer"],
            n_heads=data["n_head"],
            d_ff=data.get("n_inner") or 4 * d_model,
            vocab_size=data["vocab_size"],
            max_seq_len=data.get("n_positions", 1024),
            norm="layernorm",
            mlp="gelu",
            position="learned",
            tie_embeddings=data.get("tie_word_embeddings", True),
            bias=True,
            norm_eps=data.get("layer_norm_epsilon", 1e-5),
        )
    if model_type in {"llama", "mistral", "mixtral"}:
        _require(data, sorted(_LLAMA_KEYS | {"vocab_size"}), model_type)
        if data.get("attention_bias") or data.get("mlp_bias"):
            raise IsoflopError("Llama configs with attention_bias/mlp_bias are not modelled; set them to false")
        n_experts = data.get("num_local_experts")
        if n_experts is not None and (isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1):
            raise IsoflopError(
                f"num_local_experts is {quote(n_experts, 40)}; an MoE config needs >= 1 experts "
                "(drop the key for a dense model)"
            )
        n_experts = n_experts or 0
        return ModelSpec(
            name=name,
            d_model=data["hidden_size"],
            n_layers=data["num_hidden_layers"],
            n_heads=data["num_attention_heads"],
            n_kv_heads=data.get("num_key_value_heads"),
            head_dim=data.get("head_dim"),
            d_ff=data["intermediate_size"],
            vocab_size=data["vocab_size"],
            max_seq_len=data.get("max_position_embeddings", 2048),
            norm="rmsnorm",
            mlp="swiglu",
            position="rope",
            tie_embeddings=data.get("tie_word_embeddings", False),
            bias=False,
            norm_eps=data.get("rms_norm_eps", 1e-6),
            rope_theta=data.get("rope_theta", 10000.0),
            n_experts=n_experts,
            top_k=data.get("num_experts_per_tok", 2) if n_experts else 0,
        )
    raise IsoflopError(
        f"config.json model_type {quote(model_type, 40)} is not supported; use gpt2, llama, mistral or mixtral"
    )
