"""The training loop: ``train(config, out_dir) -> summary``.

One optimizer step = ``global_batch`` sequences, split over processes and accumulation micro-steps; the
loss is the mean token cross-entropy over the whole global batch, whatever the split (so 1 and N processes
give the same numbers). Each step: forward/backward per micro-batch (gradient sync only on the last),
global-norm clipping (Pascanu et al. 2013), AdamW with the scheduled learning rate.

Robustness:
* Re-running with the same ``out_dir`` resumes from the latest complete checkpoint (``checkpoint.py``).
* SIGTERM/SIGINT: finish the current step, save a checkpoint and return ``status: preempted``.
* Checkpoints are verified before loading (``checkpoint.verify``); one that fails is set aside and the run
  resumes from the newest that verifies. ``run.json`` is rewritten only once the resume succeeded.
* A bad step (non-finite loss or gradient norm, or a loss spike: above ``train.spike_factor`` times the median
  of the last 16 accepted losses, ln(vocab) before any) is skipped (no update). The weights only advance on
  good steps, so after ``max_bad_steps`` bad steps in a row the diverging update is the last one taken: the run
  rolls back weights and optimizer to the newest checkpoint from *before* it (step <= current - 1), continues
  with the data that follows, skipping the window that diverged (PaLM, Chowdhery et al. 2022, Sec. 5.1), and
  multiplies the learning rate by ``train.rollback_lr_factor`` (as in the OPT-175B logbook, Zhang et al. 2022).
  After ``train.max_rollbacks`` rollbacks the next divergence stops the run: ``DivergedError``, exit code 3.
* Deterministic: the seed fixes the initial weights and the data order; on CPU a resumed run is bitwise
  identical to an uninterrupted one.
"""

from __future__ import annotations

import base64
import math
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from isoflop import structured
from isoflop.atomic import atomic_write_json, atomic_write_text, json_safe
from isoflop.errors import IsoflopError
from isoflop.spec.accounting import count_params, flops_per_step
from isoflop.train.checkpoint import Checkpointer, latest_checkpoint
from isoflop.train.config import TrainConfig, build_config, load_train_config
from isoflop.train.distributed import (
    DistEnv,
    all_reduce,
    apply_activation_checkpointing,
    broadcast_object,
    clip_grad_norm,
    init_distributed,
    no_grad_sync,
    resolve_strategy,
    shutdown,
    wrap_model,
)
from isoflop.train.metrics import (
    MetricsLog,
    Progress,
    StepTimer,
    memory_gib,
    note,
    peak_flops_per_process,
    relative_errors,
)
from isoflop.train.moe import check_expert_parallel, enable_expert_parallel, reduce_expert_grads, step_stats
from isoflop.train.parallel.apply import ParallelModel, check_layout, uses_model_parallelism
from isoflop.train.precheck import check_memory
from isoflop.train.schedule import lr_at

if TYPE_CHECKING:
    from isoflop.train.data import TokenData

SUMMARY_FILE = "summary.json"
_SPIKE_WINDOW = 16


class DivergedError(IsoflopError):
    """Training diverged and could not be rolled back (the CLI exits with code 3)."""


def train(config: TrainConfig | dict[str, Any] | str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Train ``config`` (a TrainConfig, a mapping, or a YAML path) into ``out_dir``; returns the summary.

    Run under torchrun for several processes. The summary is also written to ``out_dir/summary.json``
    (on completion; a preempted run returns ``{"status": "preempted", ...}`` and writes no summary)."""
    if isinstance(config, (str, Path)):
        cfg = load_train_config(config)
    elif isinstance(config, dict):
        cfg = build_config(config)
    else:
        cfg = config
    env = init_distributed(cfg.train.device)
    try:
        return _Run(cfg, Path(out_dir), env).run()
    finally:
        shutdown(env)


@dataclass
class TrainerState:
    """Where a run stands, beside the weights: what a checkpoint's ``trainer_state.json`` carries (with the data
    position and RNG) and the summary reports."""

    step: int = 0
    tokens: int = 0
    val_history: list[list[float]] = field(default_factory=list)  # [step, validation loss] pairs
    skipped_steps: int = 0
    rollbacks: int = 0
    resumed_from: int | None = None
    last_loss: float | None = None
    last_grad_norm: float | None = None
    lr_scale: float = 1.0  # the product of the rollbacks' learning-rate factors
    moe: dict[str, Any] | None = None  # the last logged step's routing statistics (not saved)

    _SAVED = ("tokens", "val_history", "skipped_steps", "rollbacks", "lr_scale", "last_loss", "last_grad_norm")

    def state_dict(self) -> dict[str, Any]:
        """The saved fields (the step is the checkpoint's own)."""
        return {key: getattr(self, key) for key in self._SAVED}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Take the step and the saved fields of a checkpoint's trainer state (missing ones keep their value)."""
        for key in ("step", *self._SAVED):
            setattr(self, key, saved.get(key, getattr(self, key)))
        self.resumed_from = self.step


class _StopFlag:
    """Set by SIGTERM/SIGINT; a second signal falls through to the default handler."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a resumed run must share with the checkpointed one."""
    return {
        "model": cfg.model.model_dump(),
        "data": cfg.data.model_dump(),
        "seq_len": cfg.train.seq_len,
        "global_batch": cfg.train.global_batch,
        "seed": cfg.train.seed,
    }


def _at_most_one(mfu: float | None) -> float | None:
    """An MFU above 1 means the peak was measured too low: not reported."""
    return mfu if mfu is not None and mfu <= 1 else None


def _rng_state() -> dict[str, str]:
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode("ascii")
    return state


def _set_rng_state(state: dict[str, str]) -> None:
    if "torch" in state:
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8))


def _can_compile(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here, or None when it can (inductor needs a C++ compiler on CPU)."""
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python"
    except ImportError:
        return "torch._dynamo is unavailable"
    if device.type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")
    ):
        return "no C++ compiler was found for inductor's CPU backend"
    return None


class _Run:
    def __init__(self, cfg: TrainConfig, out: Path, env: DistEnv) -> None:
        self.cfg, self.out, self.env = cfg, out, env
        self.spec = cfg.model
        self.total_steps = cfg.total_steps()
        self.warmup = cfg.warmup_steps()
        self.micro_batch, self.accum = cfg.micro_batch_for(env.world)
        self.dtype = cfg.train.dtype if cfg.train.dtype != "auto" else ("bf16" if env.device.type == "cuda" else "fp32")
        self.par: ParallelModel | None = None  # tensor/pipeline parallel (isoflop.train.parallel)
        self.init_checkpoint: Path | None = None  # the other run's checkpoint train.init_from loaded
        check_layout(cfg, env.world)  # one-line errors before any work
        check_expert_parallel(cfg.model, cfg.parallel.ep, env.world)
        if cfg.parallel.ep > 1 and cfg.sync.mode == "diloco":
            raise IsoflopError("parallel.ep > 1 needs every step synchronised; drop sync.mode=diloco or set ep: 1")
        if uses_model_parallelism(cfg):
            if cfg.sync.mode == "diloco" or cfg.sync.comm_hook != "default":
                raise IsoflopError(
                    "sync.mode=diloco and DDP comm hooks run with data parallelism only; "
                    "drop parallel.tp/pp/cp/interleave or the sync settings"
                )
            if cfg.train.init_from:
                raise IsoflopError("train.init_from runs with data parallelism only; drop parallel.tp/pp/cp/interleave")
            self.strategy = "model-parallel"
        elif cfg.sync.mode == "diloco":  # DiLoCo workers train unwrapped copies (isoflop.train.lowcomm / diloco)
            self.strategy = "diloco"
        else:
            self.strategy = resolve_strategy(cfg.parallel.strategy, env)
        self.stop = _StopFlag()

    # -- setup ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _build_model(self) -> nn.Module:
        from isoflop.train.model import Transformer, build_model, compile_blocks

        cfg, env = self.cfg, self.env
        if self.strategy == "model-parallel":
            self.par = ParallelModel(cfg, env, self.dtype)
            self.micro_batch, self.accum, self.strategy = self.par.micro_batch, self.par.accum, self.par.description
            return self.par.module
        meta_init = (
            env.device.type == "cuda"
            and self.strategy in ("fsdp", "hsdp")
            and not cfg.train.init_from
            and cfg.parallel.ep == 1  # expert parallelism slices the seeded full experts
        )
        if meta_init:  # never materialise the full model on one GPU: shard first, then initialise the shards
            with torch.device("meta"):
                model = Transformer(self.spec)
        else:
            model = build_model(self.spec, "cpu", seed=cfg.train.seed)
            if cfg.train.init_from:  # another run's weights, upcycled dense -> MoE (isoflop.train.upcycle)
                from isoflop.train.upcycle import init_from_run

                self.init_checkpoint = init_from_run(model, cfg.train.init_from)
                self._say(f"initial weights from {self.init_checkpoint}")
            model = model.to(env.device)
        model.moe_coefs = (cfg.moe.aux_loss, cfg.moe.z_loss)
        enable_expert_parallel(model, cfg.parallel.ep, env.device.type)
        apply_activation_checkpointing(model, cfg.train.activation_checkpointing)
        if cfg.train.compile:
            why = _can_compile(env.device)
            if why:
                self._say(f"note: train.compile requested but {why}; running eagerly")
            else:
                compile_blocks(model)
        if env.device.type == "cuda" and self.dtype == "fp32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        model = wrap_model(
            model,
            "none" if self.strategy == "diloco" else self.strategy,
            env,
            cfg.parallel.replicate,
            cfg.parallel.fsdp_reshard(),
            bf16_params=env.device.type == "cuda" and self.dtype == "bf16",
        )
        if meta_init:
            model.to_empty(device=env.device)
            torch.manual_seed(cfg.train.seed)
            model.init_weights()
        return model

    def _say(self, message: str) -> None:
        if self.env.is_main:
            note(message)

    # -- the run: setup / resume / loop / finish -----------------------------------------------
    def run(self) -> dict[str, Any]:
        self.wall0 = time.perf_counter()
        self._setup()
        self._resume()
        cfg, env = self.cfg, self.env
        self.metrics = (
            MetricsLog(self.out, cfg.train.loggers, cfg.model_dump(mode="json"), self.state.step)
            if env.is_main
            else None
        )
        self.progress = Progress(self.total_steps, self.state.step, env.is_main)
        try:
            if self._loop():
                return self._preempted()
            final_val, hf_dir = self._finish_training()
        finally:
            comm = self.lowcomm.close()
            self.stop.restore()
            self.progress.close()
            if self.metrics is not None:
                self.metrics.close()
        return self._finish(final_val, hf_dir, comm)

    def _setup(self) -> None:
        """Data, model, optimizer, sampler and checkpointer; a fresh ``TrainerState``."""
        from isoflop.train.data import PackedSampler, prepare_data
        from isoflop.train.optim import build_named_optimizer

        cfg, env = self.cfg, self.env
        if env.device.type == "cpu":
            from isoflop.train.cpu import tune_allocator

            tune_allocator()  # keep freed activation buffers in the heap (no page faults every step)
        torch.manual_seed(cfg.train.seed)
        check_memory(cfg, env, self.micro_batch, self.dtype, self.strategy)
        self._check_out_dir()
        self.data = prepare_data(cfg.data)
        if self.data.vocab_size > self.spec.vocab_size:
            raise IsoflopError(
                f"the tokenizer has {self.data.vocab_size} tokens but the model's vocab_size is "
                f"{self.spec.vocab_size}; set data.vocab_size <= {self.spec.vocab_size} or enlarge the model's "
                "vocab_size"
            )
        self.model = self._build_model()
        self.optimizer = build_named_optimizer(self.model, cfg.optim)
        self.sampler = PackedSampler(
            self.data.train,
            cfg.train.seq_len,
            self.micro_batch,
            cfg.train.seed,
            self.par.dp_rank if self.par else env.rank,
            self.par.dp_world if self.par else env.world,
            global_batch=cfg.train.global_batch,
        )
        self.ckpt = Checkpointer(
            self.out / "checkpoints",
            cfg.train.keep_checkpoints,
            env,
            log=self._say,
            required=("tokens", "sampler"),
            identity=json_safe(_identity(cfg)),
        )
        self.state = TrainerState()
        self.params = count_params(self.spec)
        self.peak, self.peak_source = peak_flops_per_process(env.device, self.dtype)
        self.step_flops = flops_per_step(self.spec, cfg.train.global_batch, cfg.train.seq_len).model
        self.val_sets = self.data.val_batches(cfg.train.seq_len, cfg.train.global_batch, cfg.train.eval_batches)
        self.timer = StepTimer(env.device)

    def _resume(self) -> None:
        """Load the newest checkpoint that verifies (if any), record the run, attach the sync scheme."""
        from isoflop.train.lowcomm import LowComm

        cfg, env, ckpt = self.cfg, self.env, self.ckpt
        restored = ckpt.restore(self.model, self.optimizer)
        aside = broadcast_object([p.name for p in ckpt.set_aside], env)  # rank 0 verified and renamed
        if restored is None and aside:
            raise IsoflopError(
                f"no checkpoint in {ckpt.root} passed verification ({len(aside)} set aside as "
                f"{', '.join(aside[:3])}); move one back to inspect it, or use another --out to start over"
            )
        if restored is not None:
            latest, loaded = restored
            try:
                self.sampler.load_state_dict(loaded["sampler"])
                _set_rng_state(loaded.get("rng", {}))
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise IsoflopError(
                    f"checkpoint {latest} has a malformed data or RNG state ({type(exc).__name__}); "
                    "move that folder aside to resume from an older checkpoint"
                ) from None
            self.state.load_state_dict(loaded)
            self._say(f"resuming from {latest} (step {self.state.step} of {self.total_steps})")
        elif self.init_checkpoint is not None:
            from isoflop.train.upcycle import continue_data

            continue_data(self.sampler, self.init_checkpoint, self._say)
        self._record_run()
        self.lowcomm = LowComm(cfg, env, self.strategy)
        self.lowcomm.attach(self.model, self.optimizer, self.out, self.state.resumed_from)
        self.sampler = self.lowcomm.wrap_sampler(self.sampler)
        self._say(
            f"{self.spec.name}: {self.params.total:,} parameters, {self.total_steps} steps of "
            f"{cfg.train.global_batch} x {cfg.train.seq_len} tokens, {env.world} process(es), {self.strategy}, "
            f"{self.dtype} on {env.device.type}"
        )

    def _loop(self) -> bool:
        """Train until the last step; True when a signal stopped the run first."""
        cfg, state = self.cfg, self.state
        if state.step == 0 and not state.val_history:
            state.val_history.append([0, self._evaluate(self.model, self.val_sets)])
        self.stop.install()
        bad = 0
        recent: list[float] = []  # the last accepted losses (spike reference)
        self._window = [0, 0.0]  # tokens and seconds since the last logged row
        while state.step < self.total_steps:
            if self._should_stop():
                return True
            step = state.step
            lr = lr_at(
                step,
                self.total_steps,
                cfg.optim.lr,
                self.warmup,
                cfg.optim.schedule,
                cfg.optim.min_lr_ratio,
                cfg.optim.decay_fraction,
            ) * float(state.lr_scale)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.timer.start()
            ceiling = self._loss_ceiling(recent)
            loss, grad_norm = self._step(self.model, self.optimizer, self.sampler, ceiling)
            elapsed = self.timer.stop()
            moe = step_stats(self.model, cfg.moe.bias_rate)  # None for a dense model
            self.ckpt.poll()
            if not (math.isfinite(loss) and math.isfinite(grad_norm) and loss <= ceiling):
                bad += 1
                state.skipped_steps += 1
                what = "spiking" if math.isfinite(loss) and math.isfinite(grad_norm) else "non-finite"
                self._say(
                    f"step {step + 1}: {what} loss {loss:.4g} / grad norm {grad_norm:.4g} (ceiling {ceiling:.4g}); "
                    f"update skipped ({bad} in a row, rollback after {cfg.train.max_bad_steps})"
                )
                if bad >= cfg.train.max_bad_steps:
                    self._rollback(self.ckpt, self.model, self.optimizer, state, loss)
                    recent.clear()
                    bad = 0
                continue
            bad = 0
            recent.append(loss)
            del recent[:-_SPIKE_WINDOW]
            self._after_step(loss, grad_norm, lr, elapsed, moe)
        return False

    def _after_step(self, loss: float, grad_norm: float, lr: float, elapsed: float, moe: Any) -> None:
        """Count an accepted step; evaluate, log and checkpoint when due."""
        cfg, env, state = self.cfg, self.env, self.state
        state.step = step = state.step + 1
        self.lowcomm.after_step(step)
        tokens = cfg.train.global_batch * cfg.train.seq_len
        state.tokens += tokens
        self._window[0] += tokens
        self._window[1] += elapsed
        state.last_loss, state.last_grad_norm = loss, grad_norm
        log_now = step % cfg.train.log_every == 0 or step == self.total_steps
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != self.total_steps:
            state.val_history.append([step, self._evaluate(self.model, self.val_sets)])
        if log_now:
            window_tokens, window_time = self._window
            tps = window_tokens / window_time if window_time else float("nan")
            peak = self.peak
            row = {
                "step": step,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": state.tokens,
                "tokens_per_s": tps,
                "step_time_s": window_time / max(1, round(window_tokens / tokens)),
                "mfu": _at_most_one((self.step_flops * tps / tokens) / (peak * env.world) if peak else None),
                "memory_gib": memory_gib(env.device),
            }
            if state.val_history and state.val_history[-1][0] == step:
                row["val_loss"] = state.val_history[-1][1]
            if moe is not None:
                row.update(moe.to_row())
                state.moe = moe.to_row()
            if self.metrics is not None:
                self.metrics.log(row)
            self._window = [0, 0.0]
        self.progress.update(step, f"loss {loss:.4f} lr {lr:.2e}", log_now)
        if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0 and step != self.total_steps:
            self.ckpt.save(step, self.model, self.optimizer, self._trainer_state())

    def _preempted(self) -> dict[str, Any]:
        """Save where a signal stopped the run; the same command resumes it."""
        step = self.state.step
        self.ckpt.save(step, self.model, self.optimizer, self._trainer_state())
        self.ckpt.close()
        self._say(
            f"stopped by signal {self.stop.signal} at step {step}; checkpoint saved, run the same command again to "
            "resume"
        )
        return {
            "status": "preempted",
            "step": step,
            "steps": self.total_steps,
            "checkpoint": str(latest_checkpoint(self.ckpt.root)),
        }

    def _finish_training(self) -> tuple[float, Path | None]:
        """The final evaluation, the final checkpoint (unless resumed at the end) and the export."""
        state, ckpt = self.state, self.ckpt
        final_val = self._evaluate(self.model, self.val_sets)
        if not state.val_history or state.val_history[-1][0] != state.step:
            state.val_history.append([state.step, final_val])
        done = latest_checkpoint(ckpt.root)
        if done is None or int(done.name.split("-")[1]) != state.step or state.resumed_from != state.step:
            ckpt.save(state.step, self.model, self.optimizer, self._trainer_state())
        ckpt.close()
        return final_val, self._export(self.model, self.data)

    def _finish(self, final_val: float, hf_dir: Path | None, comm: Any) -> dict[str, Any]:
        """The summary (steady-state step time, MFU, predictions against measurements), written by rank 0."""
        cfg, env, state, out = self.cfg, self.env, self.state, self.out
        peak, peak_source, step_flops = self.peak, self.peak_source, self.step_flops
        steady = self.timer.steady()
        step_time = sorted(steady)[len(steady) // 2] if steady else None
        session_tokens = cfg.train.global_batch * cfg.train.seq_len * len(steady)
        tokens_per_s = session_tokens / sum(steady) if steady and sum(steady) > 0 else None
        mfu = (step_flops / step_time) / (peak * env.world) if (peak and step_time) else None
        if mfu is not None and mfu > 1 and env.device.type == "cpu":  # the cached CPU peak was measured under load
            peak, peak_source = peak_flops_per_process(env.device, self.dtype, refresh=True)
            mfu = (step_flops / step_time) / (peak * env.world)
        if mfu is not None and mfu > 1:
            self._say(
                f"note: MFU {mfu:.2f} > 1 against the peak ({peak_source}); the peak is too low, MFU not reported"
            )
            mfu = None
        mem = memory_gib(env.device)
        measured = {
            "loss": final_val,
            "step_time_s": step_time,
            "memory_gib": mem,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
        }
        summary: dict[str, Any] = {
            "status": "complete",
            "final_train_loss": state.last_loss,
            "val_loss": final_val,
            "val_loss_initial": state.val_history[0][1] if state.val_history else None,
            "val_history": state.val_history,
            "steps": state.step,
            "tokens": state.tokens,
            "tokens_per_s": tokens_per_s,
            "step_time_s": step_time,
            "mfu": mfu,
            "mfu_peak": peak_source,
            "memory_gib": mem,
            "wall_s": time.perf_counter() - self.wall0,
            "grad_norm": state.last_grad_norm,
            "params": self.params.total,
            "model_flops_per_step": step_flops,
            "model_flops": step_flops * state.step,
            "model": self.spec.name,
            "world": env.world,
            "strategy": self.strategy,
            "dtype": self.dtype,
            "device": env.device.type,
            "micro_batch": self.micro_batch,
            "grad_accum": self.accum,
            "resumed_from": state.resumed_from,
            "skipped_steps": state.skipped_steps,
            "rollbacks": state.rollbacks,
            "hf_dir": str(hf_dir) if hf_dir else None,
            "comm": comm.to_dict(),
        }
        if state.moe is not None:
            summary["moe"] = state.moe  # the last logged step's routing statistics
        if cfg.predicted is not None:
            predicted = cfg.predicted.model_dump(exclude_none=True)
            summary["predicted"] = predicted
            summary["measured"] = measured
            summary["prediction_error"] = relative_errors(predicted, measured)
        if env.is_main:
            atomic_write_json(out / SUMMARY_FILE, json_safe(summary))
            train_loss = summary["final_train_loss"]
            self._say(
                f"done: {state.step} steps, train loss "
                f"{train_loss if train_loss is None else round(train_loss, 4)}, "
                f"val loss {final_val:.4f}, {tokens_per_s or 0:,.0f} tokens/s -> {out / SUMMARY_FILE}"
            )
        return summary

    # -- pieces -----------------------------------------------------------------------------------
    def _check_out_dir(self) -> None:
        """Refuse to resume a different run. Rank 0 decides, all ranks raise."""
        out, cfg = self.out, self.cfg
        ident = _identity(cfg)
        marker = out / "run.json"
        problem = None
        if self.env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            old = None
            if marker.is_file():
                try:
                    old = structured.read(marker, "run record", "it is rewritten", fmt="json").get("identity")
                except (IsoflopError, AttributeError):
                    old = None
            if old is not None and old != ident and latest_checkpoint(out / "checkpoints") is not None:
                diff = sorted(k for k in ident if ident.get(k) != old.get(k))
                problem = (
                    f"{out} holds checkpoints of a different run ({', '.join(diff)} differ); "
                    "use another --out, or delete that folder to start over"
                )
        problem = broadcast_object(problem, self.env)
        if problem:
            raise IsoflopError(str(problem))

    def _record_run(self) -> None:
        """Record this run's identity and config, once its checkpoint (if any) has loaded: a failed resume
        must not rewrite ``run.json`` and lock the right command out."""
        if self.env.is_main:
            atomic_write_json(self.out / "run.json", {"identity": _identity(self.cfg)})
            atomic_write_text(self.out / "config.yaml", self.cfg.to_yaml())

    def _loss_ceiling(self, recent: list[float]) -> float:
        """The loss above which a step counts as a spike: ``spike_factor`` x the median of ``recent`` (ln V when
        empty); infinite when ``train.spike_factor`` is 0."""
        factor = self.cfg.train.spike_factor
        if factor <= 0:
            return math.inf
        ref = sorted(recent)[len(recent) // 2] if recent else math.log(self.spec.vocab_size)
        return factor * ref

    def _step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, sampler: Any, ceiling: float = math.inf
    ) -> tuple[float, float]:
        """One optimizer step over the global batch; returns (mean loss, gradient norm before clipping). The update
        is skipped when either is non-finite or the loss is above ``ceiling``."""
        if self.par is not None:  # tensor/pipeline parallel: the stages step themselves (no spike skipping yet)
            return self.par.step(optimizer, sampler)
        device = self.env.device
        total = torch.zeros((), device=device, dtype=torch.float32)
        for micro in range(self.accum):
            x, y = sampler.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with no_grad_sync(model, micro == self.accum - 1):
                with self._autocast():
                    loss = model(x, y)
                (loss / self.accum).backward()
            total += loss.detach().float()
        total /= self.accum
        all_reduce(total, "avg")
        if self.strategy == "ddp":
            reduce_expert_grads(model, self.env.world)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        norm = clip_grad_norm([p for p in model.parameters() if p.grad is not None], clip)
        loss_value, norm_value = float(total), float(norm)
        if math.isfinite(loss_value) and math.isfinite(norm_value) and loss_value <= ceiling:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, val_sets: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean token loss over the fixed validation batches; each process takes its rows of every batch."""
        if self.par is not None:
            return self.par.evaluate(val_sets)
        env = self.env
        was_training = model.training
        model.eval()
        total = torch.zeros(2, device=env.device, dtype=torch.float64)
        rows = self.cfg.train.global_batch // env.world
        for x, y in val_sets:
            xs = x[env.rank * rows : (env.rank + 1) * rows]
            ys = y[env.rank * rows : (env.rank + 1) * rows]
            for lo in range(0, rows, self.micro_batch):
                xb = xs[lo : lo + self.micro_batch].to(env.device)
                yb = ys[lo : lo + self.micro_batch].to(env.device)
                with self._autocast():
                    loss = model(xb, yb)
                total[0] += loss.double() * yb.numel()
                total[1] += yb.numel()
        all_reduce(total, "sum")
        model.train(was_training)
        return float(total[0] / total[1])

    def _should_stop(self) -> bool:
        flag = torch.tensor([1.0 if self.stop.signal is not None else 0.0])
        if self.env.distributed:
            flag = flag.to(self.env.device)
            all_reduce(flag, "max")
        return bool(flag.item() > 0)

    def _trainer_state(self) -> dict[str, Any]:
        return {
            **self.state.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": _rng_state(),
            "world": self.env.world,
            "total_steps": self.total_steps,
            "identity": json_safe(_identity(self.cfg)),
        }

    def _rollback(
        self,
        ckpt: Checkpointer,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainerState,
        loss: float,
    ) -> None:
        """Restore weights and optimizer from the newest checkpoint from before the diverging update; the data
        position moves on (the window that diverged is skipped) and the learning rate is scaled. Raises
        ``DivergedError`` after ``train.max_rollbacks`` rollbacks or when no such checkpoint is left."""
        train_cfg = self.cfg.train
        ckpt.wait()
        before = state.step
        where = f"at step {before + 1} (loss {loss:.4g})"
        fix = "lower optim.lr, raise optim.warmup_steps or set train.rollback_lr_factor below 1"
        if state.rollbacks >= train_cfg.max_rollbacks:
            raise DivergedError(
                f"training diverged {where} after {state.rollbacks} rollback(s) "
                f"(train.max_rollbacks={train_cfg.max_rollbacks}); {fix}"
            )
        # The weights of step `before` produced the bad losses: the last update taken diverged.
        restored = ckpt.restore(model, optimizer, at_most=before - 1)
        if restored is None:
            raise DivergedError(
                f"training diverged {where} and there is no checkpoint to roll back to from before it; "
                f"{fix}, or set train.ckpt_every"
            )
        path, loaded = restored
        ckpt.set_aside_after(int(loaded["step"]))
        state.step = int(loaded["step"])
        state.tokens = int(loaded.get("tokens", state.tokens))
        state.val_history = [v for v in state.val_history if v[0] <= state.step]
        state.rollbacks += 1
        state.lr_scale = float(state.lr_scale) * train_cfg.rollback_lr_factor
        lr_note = (
            f"; learning rate x{train_cfg.rollback_lr_factor:g} (now x{state.lr_scale:.4g} of the schedule)"
            if train_cfg.rollback_lr_factor != 1
            else ""
        )
        self._say(
            f"ROLLBACK {state.rollbacks}/{train_cfg.max_rollbacks}: {train_cfg.max_bad_steps} consecutive bad "
            f"steps at step {before}; restored {path} (step {state.step}) and continuing with the next data "
            f"(the data since step {state.step} is not replayed){lr_note}"
        )

    def _export(self, model: nn.Module, data: TokenData) -> Path | None:
        """Gather the full weights and write ``out/hf`` (safetensors, config.json, the tokenizer) on rank 0."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from isoflop.train.export import export_hf, hf_architecture
        from isoflop.train.model import build_model

        try:
            hf_architecture(self.spec)
        except IsoflopError as exc:  # e.g. a router Hugging Face has no class for: the run itself is fine
            self._say(f"note: no Hugging Face export: {exc}")
            return None
        if self.par is not None:
            full = self.par.full_state_dict()
        else:
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.env.is_main:
            return None
        clean = build_model(self.spec, "cpu")
        clean.load_state_dict({k: v.to(torch.float32) for k, v in full.items()}, strict=True)
        target = self.out / "hf"
        tmp = self.out / "hf.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        export_hf(clean, tmp, tokenizer=data.tokenizer, eos_id=data.eot_id)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target
