"""``TrainConfig``: the training run as one YAML file (the planner's ``plan.yaml`` runs as it is).

Sections (the shared schema): ``model``, ``data``, ``train``, ``optim``, ``parallel``, ``sync``, ``moe``,
``predicted``, ``plan``.
Unknown keys are errors naming the closest valid key; values are validated by pydantic and reported on one
line. Overrides use dotted keys (``train.max_steps=40``) and YAML values.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from isoflop import structured
from isoflop.errors import IsoflopError
from isoflop.perf.layout import Layout, Recompute
from isoflop.spec.loader import load_spec, spec_from_dict
from isoflop.spec.model import ModelSpec
from isoflop.train.data import DataConfig


def _integral(value: Any) -> Any:
    """Accept ``3.2e11`` (float, or the string PyYAML makes of it) for integer fields when it is whole."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainSection(_Section):
    """How long and how to train (sequences, batches, precision, evaluation, checkpoints)."""

    seq_len: int = Field(256, gt=0)
    global_batch: int = Field(32, gt=0, description="Sequences per optimizer step, over all processes.")
    micro_batch: int | None = Field(
        None, gt=0, description="Sequences per process per forward; null = global_batch / world."
    )
    max_steps: int | None = Field(None, gt=0)
    tokens: int | None = Field(
        None, gt=0, description="Total training tokens; max_steps = ceil(tokens / (global_batch * seq_len))."
    )
    seed: int = 0
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    activation_checkpointing: Literal["none", "selective", "op", "full"] = Field(
        "none",
        description="Activation recomputation (isoflop.train.recompute): none, selective (the attention core), "
        "op (torchtitan's op-level SAC), full (each block); true/false = full/none.",
    )
    eval_every: int = Field(50, ge=0, description="Validation every N steps (0 = only at the end).")
    eval_batches: int = Field(8, gt=0)
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(0, ge=0, description="0 = checkpoint only at the end and on preemption.")
    keep_checkpoints: int = Field(2, gt=0)
    max_bad_steps: int = Field(
        5, gt=0, description="Consecutive bad (non-finite or spiking) steps before rolling back to a checkpoint."
    )
    spike_factor: float = Field(
        2.0, ge=0, description="A loss above this x the median of the last 16 is a bad step (0 = only non-finite)."
    )
    max_rollbacks: int = Field(3, ge=0, description="Rollbacks before a divergence stops the run (exit code 3).")
    rollback_lr_factor: float = Field(1.0, gt=0, le=1, description="Learning-rate multiplier at each rollback.")
    loggers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, description="Used only if installed.")
    init_from: str | None = Field(
        None, description="Run folder whose newest checkpoint gives the initial weights (upcycled when dense -> MoE)."
    )

    @field_validator("seq_len", "global_batch", "micro_batch", "max_steps", "tokens", "seed", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        return _integral(value)

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        return {True: "full", False: "none"}.get(value, value) if isinstance(value, bool) else value


class OptimSection(_Section):
    """The optimizer (AdamW, Loshchilov & Hutter 2019, unless ``name`` says otherwise) and its schedule."""

    name: Literal["adamw", "sgd", "adafactor", "adam8bit", "lion", "galore"] = "adamw"
    galore_rank: int = Field(128, gt=0, description="GaLore: projection rank of each linear weight.")
    galore_update_gap: int = Field(200, gt=0, description="GaLore: steps between projection updates.")
    galore_scale: float = Field(0.25, gt=0, description="GaLore: scale of the projected update.")
    lr: float = Field(3.0e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    schedule: Literal["cosine", "wsd"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0, description="null = 10% of the steps, at most 1000.")
    decay_fraction: float = Field(0.2, gt=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1.0e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm; 0 = no clipping.")

    @field_validator("warmup_steps", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        return _integral(value)


# The performance model's ``Layout`` knobs are the parallel section's fields (one list, ``isoflop.perf.layout``).
# Degrees default to the Layout's 1; every other knob defaults to null: the trainer's own setting decides.
_DEGREES = ("tp", "pp", "cp", "ep", "interleave", "replicate")
_KNOB_HELP = {
    "tp": "Tensor (+ sequence) parallel degree.",
    "pp": "Pipeline stages.",
    "dp": "Data-parallel degree; null = the processes left by tp*pp*cp (must match when given).",
    "cp": "Context parallel degree (refused: ring attention does not run on CPU/gloo here).",
    "ep": "Expert parallelism of an MoE model over groups of ep data-parallel ranks.",
    "zero": "0 = replicated (DDP), 1/2 = FSDP2 without resharding after forward (ZeRO-1 runs as ZeRO-2), 3 = FSDP2.",
    "recompute": "Sets train.activation_checkpointing: none, selective, op or full (they must agree when both given).",
    "sequence_parallel": "Tensor parallelism always runs sequence-parallel here; false with tp > 1 is refused.",
    "micro_batch": "Sets train.micro_batch (they must agree when both are given).",
    "interleave": "Virtual pipeline stages per rank (interleaved 1F1B).",
    "offload": "Optimizer-state offload to the CPU: refused (not in the trainer).",
    "dtype": "fp32 or bf16/amp set train.dtype (they must agree when both are given); fp16/fp8 are refused.",
    "optimizer": "Sets optim.name (they must agree when both are given).",
    "replicate": "HSDP replica groups (the outer data-parallel mesh dimension); needs strategy hsdp.",
}


_KNOB_FIX = {"offload": "false", "dtype": "fp32 or bf16"}


def _knob_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(Layout)
    out: dict[str, Any] = {}
    for knob in dataclasses.fields(Layout):
        kind, help_ = hints[knob.name], _KNOB_HELP[knob.name]
        if knob.name in _DEGREES:
            out[knob.name] = (int, Field(knob.default, gt=0, description=help_))
        elif kind is int:
            out[knob.name] = (int | None, Field(None, gt=0, description=help_))
        else:
            out[knob.name] = (kind | None, Field(None, description=help_))
    return out


_LayoutKnobs = create_model("_LayoutKnobs", __base__=_Section, **_knob_fields())


class ParallelSection(_LayoutKnobs):  # type: ignore[misc, valid-type]
    """How processes share the model: the performance model's ``Layout`` knobs (``isoflop.perf.layout``), each
    taking effect or refused with one line (``TrainConfig`` and ``isoflop.train.parallel.apply.plan_layout``), and
    the trainer's own choices: the data-parallel wrapper, FSDP resharding and the pipeline schedule. With
    ``tp``/``pp`` > 1 the trainer composes tensor + sequence and pipeline parallelism on one DeviceMesh
    (``isoflop.train.parallel``)."""

    strategy: Literal["auto", "none", "ddp", "fsdp", "hsdp"] = "auto"
    reshard_after_forward: bool | None = Field(
        None,
        description="FSDP: true = ZeRO-3, false = SHARD_GRAD_OP (ZeRO-2). "
        "null: false when zero <= 2 is given, else true.",
    )
    pp_schedule: Literal["gpipe", "1f1b", "interleaved-1f1b", "zero-bubble"] | None = Field(
        None, description="Pipeline schedule; null: 1f1b, or interleaved-1f1b when interleave > 1."
    )

    @field_validator(*_DEGREES, mode="before")
    @classmethod
    def _degree(cls, value: Any) -> Any:
        return 1 if value is None else value  # null (as older plan files write it): the Layout's default

    def fsdp_reshard(self) -> bool:
        if self.reshard_after_forward is not None:
            return self.reshard_after_forward
        return not (self.zero is not None and self.zero <= 2)

    def layout(self, world: int, strategy: str, micro_batch: int, recompute: str, dtype: str) -> Layout:
        """The performance model's ``Layout`` of this run: the section's degrees, with ``strategy`` (the resolved
        wrapper, or ``model-parallel``), the micro batch, recomputation and dtype the trainer settled on."""
        dp = max(1, world // (self.tp * self.pp * self.cp))
        sharded = strategy in ("fsdp", "hsdp") or (strategy == "model-parallel" and self.strategy != "ddp")
        knobs = {k: getattr(self, k) for k in _DEGREES}
        return Layout(
            **{**knobs, "replicate": self.replicate if self.strategy == "hsdp" else 1},
            dp=dp,
            zero=self.zero if self.zero is not None else (3 if sharded and dp > 1 else 0),
            sequence_parallel=self.tp > 1,
            micro_batch=micro_batch,
            recompute=recompute,
            dtype="amp" if dtype == "bf16" else "fp32",
        )


class SyncSection(_Section):
    """How data-parallel workers synchronise (``isoflop.train.lowcomm``): every step through DDP, optionally with
    one of torch's gradient-compression comm hooks, or every ``inner_steps`` steps with DiLoCo
    (Douillard et al. 2023), optionally streaming ``fragments`` (Douillard et al. 2025) and quantised."""

    mode: Literal["allreduce", "diloco"] = "allreduce"
    comm_hook: Literal["default", "allreduce", "fp16", "bf16", "powersgd"] = Field(
        "default", description="DDP: default = the built-in all-reduce; the others are torch's ddp_comm_hooks."
    )
    powersgd_rank: int = Field(1, gt=0, description="PowerSGD matrix approximation rank (Vogels et al. 2019).")
    powersgd_start_iter: int = Field(2, ge=2, description="PowerSGD: plain all-reduce for the first N steps.")
    inner_steps: int = Field(8, gt=0, description="DiLoCo H: inner AdamW steps between outer steps.")
    outer_lr: float = Field(0.7, gt=0)
    outer_momentum: float = Field(0.9, ge=0, lt=1, description="Nesterov momentum of the outer SGD; 0 = plain SGD.")
    outer_dtype: Literal["fp32", "bf16", "int4"] = Field("fp32", description="Pseudo-gradient wire format.")
    fragments: int = Field(1, gt=0, description="Streaming DiLoCo: fragments synchronised at staggered steps.")
    non_iid: bool = Field(False, description="Federated: each worker samples only its own slice of the corpus.")

    @model_validator(mode="after")
    def _check(self) -> SyncSection:
        if self.mode == "diloco" and self.comm_hook != "default":
            raise IsoflopError(f"sync.comm_hook={self.comm_hook} applies to DDP, not DiLoCo; drop one of them")
        if self.fragments > self.inner_steps:
            raise IsoflopError(
                f"sync.fragments={self.fragments} exceeds sync.inner_steps={self.inner_steps}; "
                "use at most one fragment per inner step"
            )
        return self


AUX_LOSS_COEF = 0.01  # Switch (Fedus et al. 2022, Sec. 2.2): alpha = 1e-2
Z_LOSS_COEF = 0.001  # ST-MoE (Zoph et al. 2022, Sec. 3.1): c_z = 1e-3


class MoESection(_Section):
    """Mixture-of-experts training settings (``isoflop.train.moe``); the architecture (experts, top-k, router,
    capacity factor) is in the model spec."""

    aux_loss: float = Field(AUX_LOSS_COEF, ge=0, description="Switch load-balancing loss coefficient; 0 = off.")
    z_loss: float = Field(Z_LOSS_COEF, ge=0, description="ST-MoE router z-loss coefficient; 0 = off.")
    bias_rate: float = Field(
        0.0, ge=0, description="DeepSeek-V3 aux-loss-free balancing: expert-bias step per update (1e-3); 0 = off."
    )


class PredictedSection(BaseModel):
    """What the planner predicted; copied into ``summary.json`` beside the measured values."""

    model_config = ConfigDict(extra="allow")

    loss: float | None = None
    loss_ci95: list[float] | None = None
    step_time_s: float | None = None
    memory_gib: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None


class TrainConfig(_Section):
    """A whole training run. ``model`` is given as a preset name, a spec file path, a mapping of ModelSpec fields
    or a ``ModelSpec``, and resolved to a ``ModelSpec`` once, when the config is validated."""

    model: ModelSpec = Field(default_factory=lambda: load_spec("tiny-llama"))
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    parallel: ParallelSection = Field(default_factory=ParallelSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    moe: MoESection = Field(default_factory=MoESection)
    predicted: PredictedSection | None = None
    plan: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model", mode="before")
    @classmethod
    def _resolve_model(cls, value: Any) -> Any:
        if isinstance(value, str):
            return load_spec(value)
        if isinstance(value, dict):
            return spec_from_dict(dict(value))
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        self._apply_layout_knobs()
        if self.train.seq_len > self.model.max_seq_len:
            raise IsoflopError(
                f"train.seq_len={self.train.seq_len} exceeds the model's max_seq_len={self.model.max_seq_len}; "
                "lower train.seq_len or raise model max_seq_len"
            )
        if self.train.max_steps is None and self.train.tokens is None:
            raise IsoflopError("train.max_steps and train.tokens are both null; set one of them (e.g. --max-steps 100)")
        mb = self.train.micro_batch
        if mb is not None and self.train.global_batch % mb:
            raise IsoflopError(
                f"train.global_batch={self.train.global_batch} is not a multiple of train.micro_batch={mb}; "
                "pick a divisor"
            )
        return self

    def _apply_layout_knobs(self) -> None:
        """The ``parallel`` knobs that other sections own take effect there, or are refused with one line: a knob
        the trainer does not implement, or one that contradicts the section that owns it."""
        p, train, optim = self.parallel, self.train, self.optim
        for knob, value, refused in (
            ("offload", p.offload, (True,)),
            ("dtype", p.dtype, ("fp16", "fp8")),
        ):
            if value in refused:
                raise IsoflopError(
                    f"parallel.{knob}={json.dumps(value)} is not implemented by the trainer; "
                    f"drop it or use {_KNOB_FIX[knob]}"
                )
        if p.sequence_parallel is False and p.tp > 1:
            raise IsoflopError(
                "parallel.sequence_parallel=false: the trainer's tensor parallelism always runs sequence-parallel; "
                "drop it or set it true"
            )
        if p.replicate > 1 and p.strategy != "hsdp":
            raise IsoflopError(f"parallel.replicate={p.replicate} needs parallel.strategy: hsdp (got {p.strategy})")
        if p.zero is not None and (p.zero == 0) != (p.strategy == "ddp") and p.strategy not in ("auto", "none"):
            raise IsoflopError(
                f"parallel.zero={p.zero} contradicts parallel.strategy={p.strategy}; "
                "zero 0 is ddp, zero 1-3 are fsdp or hsdp"
            )
        if p.zero is not None and p.strategy == "auto":
            p.strategy = "ddp" if p.zero == 0 else "fsdp"
        owned: list[tuple[str, Any, Any, str]] = [
            ("micro_batch", p.micro_batch, train, "micro_batch"),
            (
                "recompute",
                None if p.recompute is None else Recompute(p.recompute).value,
                train,
                "activation_checkpointing",
            ),
            ("dtype", {"amp": "bf16"}.get(p.dtype, p.dtype), train, "dtype"),
            ("optimizer", p.optimizer, optim, "name"),
        ]
        for knob, value, section, field in owned:
            if value is None:
                continue
            current = getattr(section, field)
            if field in section.model_fields_set and current != value and current != "auto":
                raise IsoflopError(
                    f"parallel.{knob}={json.dumps(getattr(p, knob))} contradicts "
                    f"{'optim' if section is optim else 'train'}.{field}={json.dumps(current)}; "
                    "give one of them"
                )
            setattr(section, field, value)

    # Derived values -------------------------------------------------------------------------------
    def total_steps(self) -> int:
        if self.train.max_steps is not None:
            return self.train.max_steps
        per_step = self.train.global_batch * self.train.seq_len
        return max(1, math.ceil(self.train.tokens / per_step))

    def warmup_steps(self) -> int:
        from isoflop.train.schedule import default_warmup

        warm = self.optim.warmup_steps
        return default_warmup(self.total_steps()) if warm is None else warm

    def micro_batch_for(self, world: int) -> tuple[int, int]:
        """(per-process micro batch, accumulation steps) for ``world`` processes."""
        gb = self.train.global_batch
        if gb % world:
            raise IsoflopError(
                f"train.global_batch={gb} does not divide over {world} processes; use a multiple of {world}"
            )
        per_rank = gb // world
        mb = self.train.micro_batch or per_rank
        if per_rank % mb:
            raise IsoflopError(
                f"train.micro_batch={mb} does not divide the {per_rank} sequences each of {world} processes gets; "
                "pick a divisor or leave micro_batch null"
            )
        return mb, per_rank // mb

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=False), sort_keys=False)


# Loading ----------------------------------------------------------------------------------------

PRESETS_PACKAGE = "isoflop.train.presets"


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".yaml")
    )


def _preset_dict(name: str) -> dict[str, Any]:
    path = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml")
    if not path.is_file():
        close = difflib.get_close_matches(name, preset_names(), n=3, cutoff=0.3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known presets: {', '.join(preset_names())}"
        raise IsoflopError(f"unknown training preset {name!r}; {hint}")
    return _safe_yaml(path.read_text(encoding="utf-8"), f"preset {name}")


def _safe_yaml(text: str, origin: str) -> dict[str, Any]:
    data = structured.loads(text, "yaml", origin, "YAML in", "fix the file's syntax")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IsoflopError(f"{origin} must be a mapping with sections model, data, train, optim, parallel")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.max_steps=40`` -> (['train', 'max_steps'], 40); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise IsoflopError(f"override {item!r} is not KEY=VALUE; write e.g. train.max_steps=40")
    try:
        value = structured.loads(raw, "yaml", key, "override", "") if raw.strip() else None
    except IsoflopError:
        value = raw
    parts = key.strip().split(".")
    if not all(part.strip() for part in parts):
        raise IsoflopError(f"override key {key.strip()[:80]!r} has an empty part; write e.g. train.max_steps=40")
    return [part.strip() for part in parts], value


def _section_class(name: str) -> type[BaseModel] | None:
    """The pydantic class of TrainConfig section ``name`` (``None`` for ``model``, which may be a preset name or a
    spec path, and for plain mappings such as ``plan``)."""
    field = TrainConfig.model_fields.get(name)
    if name == "model" or field is None:
        return None
    for cls in typing.get_args(field.annotation) or (field.annotation,):
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            return cls
    return None


def _check_override_path(path: list[str]) -> None:
    """An override names a field inside a section, never a whole section (``model=tiny-llama`` is allowed)."""
    if not path:
        raise IsoflopError("an override has an empty key; write e.g. --set train.max_steps=40")
    section = _section_class(path[0]) if len(path) == 1 else None
    if section is not None:
        example = next(iter(section.model_fields), "field")
        raise IsoflopError(
            f"--set {path[0]}=... would replace the whole {path[0]} section; set one field, "
            f"e.g. --set {path[0]}.{example}=..."
        )


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if depth == 0 and part == "model" and isinstance(child, str):  # a preset/spec file: its fields, then set
            child = load_spec(child).model_dump(mode="json")
            node[part] = child
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            raise IsoflopError(
                f"override {'.'.join(path)[:80]} goes inside {'.'.join(path[: depth + 1])}, which is not a section; "
                f"set {'.'.join(path[: depth + 1])} itself"
            )
        node = child
    node[path[-1]] = value


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _explain(exc: ValidationError, origin: str) -> IsoflopError:
    """One line per config problem; unknown keys get a 'did you mean' from the section's fields."""
    sections = {
        "train": TrainSection,
        "optim": OptimSection,
        "parallel": ParallelSection,
        "sync": SyncSection,
        "moe": MoESection,
        "data": DataConfig,
    }
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        where = ".".join(loc) or "config"
        if err.get("type") == "extra_forbidden":
            owner = sections.get(loc[0]) if len(loc) > 1 else TrainConfig
            known = _known_keys(owner) if owner is not None else []
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
            hint = f"did you mean {'.'.join(loc[:-1] + close)}?" if close else f"valid keys: {', '.join(known)}"
            parts.append(f"unknown key {where} ({hint})")
        else:
            parts.append(f"{where}: {err.get('msg', 'invalid')} (got {err.get('input')!r})")
    return IsoflopError(f"invalid training config {origin}: {'; '.join(parts)}")


def build_config(data: dict[str, Any], origin: str = "") -> TrainConfig:
    """Validate a mapping into a ``TrainConfig`` with one-line errors."""
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        raise _explain(exc, origin or "(mapping)") from None
    except TypeError as exc:
        raise IsoflopError(f"invalid training config {origin}: {exc}") from None


def load_train_config(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> TrainConfig:
    """Read a YAML config (or a built-in preset; with neither, the ``tiny`` preset) and apply overrides.

    ``overrides`` is a list of ``dotted.key=value`` strings or a mapping of dotted keys to values.
    """
    if path is not None and preset is not None:
        raise IsoflopError("give a CONFIG file or --preset, not both")
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise IsoflopError(f"config file {file} does not exist; give a YAML file or use --preset tiny")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise IsoflopError(f"config file {file} is not UTF-8 text; give a YAML file") from None
        data, origin = _safe_yaml(text, str(file)), str(file)
        if isinstance(data.get("model"), str) and not Path(data["model"]).is_absolute():
            candidate = file.parent / data["model"]
            if candidate.suffix and candidate.is_file():
                data["model"] = str(candidate)
    else:
        name = preset or "tiny"
        data, origin = _preset_dict(name), f"preset {name}"
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        path = key.split(".") if isinstance(key, str) else list(key)
        _check_override_path(path)
        _set_path(data, path, value)
    return build_config(data, origin)
