"""Pipeline stages and schedules from ``torch.distributed.pipelining`` (Huang et al. 2019; Narayanan et al. 2021).

Each rank keeps the blocks of its (virtual) stages, cut by ``isoflop.perf.layout.stage_split`` (the split the
performance model costs); the embedding sits on the first stage, the final norm and output head on the last.
A stage keeps the original parameter names (``layers.7.attn...``), so checkpoints and exports are keyed as
for the whole model. Schedules: ``gpipe``, ``1f1b``, ``interleaved-1f1b`` (``interleave`` > 1, looped
placement: virtual stage ``s`` on rank ``s % pp``), and torch's ``zero-bubble`` (``ScheduleInterleavedZeroBubble``,
Qi et al. 2023; needs ``interleave`` > 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Replicate

from isoflop.errors import IsoflopError
from isoflop.perf.layout import stage_split
from isoflop.train.model import Transformer

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zero-bubble")


class Stage(nn.Module):
    """Blocks ``layer_ids`` of ``model`` (plus the embedding on the first stage, the head on the last)."""

    def __init__(self, model: Transformer, layer_ids: list[int], first: bool, last: bool) -> None:
        super().__init__()
        spec = model.spec
        self.spec, self.first, self.last = spec, first, last
        self.seq_shards = 1  # the tensor-parallel degree once sequence parallelism is applied
        self.embed = model.embed if first else None
        self.pos_embed = model.pos_embed if first else None
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layer_ids})
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        if spec.rope:
            self.register_buffer("rope_cos", model.rope_cos, persistent=False)
            self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.first:
            T = x.shape[1]
            x = self.embed(x)
            if self.pos_embed is not None:
                x = x + self.pos_embed.weight[:T]
        else:  # under sequence parallelism stages pass on their sequence shard
            T = x.shape[1] * self.seq_shards
        rope = None
        if self.spec.rope:
            rope = torch.complex(self.rope_cos[:T, None].float(), self.rope_sin[:T, None].float())
        for block in self.layers.values():
            x = block(x, rope)
        if self.last:
            h = self.norm(x)
            if isinstance(h, DTensor):  # tensor parallel: gather the sequence, logits sharded on the vocabulary
                h = h.redistribute(placements=[Replicate()])
            x = F.linear(h, self.lm_head.weight)
        return x


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy of one microbatch (float32 softmax; ``-100`` targets ignored)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1), ignore_index=-100)


def check_pipeline(model_layers: int, tied: bool, pp: int, interleave: int, schedule: str, microbatches: int) -> None:
    """One-line errors for a pipeline the schedules cannot run."""
    if schedule not in SCHEDULES:
        raise IsoflopError(f"unknown parallel.pp_schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if tied:
        raise IsoflopError(
            "pp > 1 needs untied embeddings (the embedding and the head live on different stages); "
            "set model.tie_embeddings: false"
        )
    if pp * interleave > model_layers:
        raise IsoflopError(f"pp*interleave = {pp * interleave} exceeds n_layers={model_layers}; use fewer stages")
    looped = schedule in ("interleaved-1f1b", "zero-bubble")
    if looped != (interleave > 1):
        raise IsoflopError(
            f"pp_schedule {schedule} {'needs interleave > 1' if looped else 'runs one stage per rank'} "
            f"(interleave={interleave}); use {'interleaved-1f1b or zero-bubble' if interleave > 1 else 'gpipe or 1f1b'}"
        )
    if looped and microbatches % pp:
        raise IsoflopError(
            f"{schedule} needs the microbatches per step ({microbatches}) to be a multiple of pp={pp}; "
            "change train.micro_batch or the global batch"
        )


def build_stages(model: Transformer, pp: int, pp_rank: int, interleave: int) -> tuple[list[tuple[int, Stage]], Stage]:
    """This rank's ``(stage index, Stage)`` pairs under the looped placement, cut by ``stage_split``, and one
    ``Stage`` holding all of this rank's parameters (what the optimizer and the checkpoints see)."""
    n = pp * interleave
    sizes = stage_split(model.spec.n_layers, n)
    bounds = [sum(sizes[:i]) for i in range(n + 1)]
    mine = list(range(pp_rank, n, pp))
    stages = [(s, Stage(model, list(range(bounds[s], bounds[s + 1])), s == 0, s == n - 1)) for s in mine]
    ids = [i for s in mine for i in range(bounds[s], bounds[s + 1])]
    return stages, Stage(model, ids, 0 in mine, n - 1 in mine)


def build_schedule(stages: list[tuple[int, nn.Module]], n_stages: int, schedule: str, microbatches: int, device, group):
    """``PipelineStage`` objects over ``group`` and the named torch schedule (loss: ``token_loss``)."""
    from torch.distributed import pipelining as pl

    pipe = [pl.PipelineStage(mod, idx, n_stages, device, group=group) for idx, mod in stages]
    if schedule == "gpipe":
        return pl.ScheduleGPipe(pipe[0], microbatches, loss_fn=token_loss)
    if schedule == "1f1b":
        return pl.Schedule1F1B(pipe[0], microbatches, loss_fn=token_loss)
    if schedule == "interleaved-1f1b":
        return pl.ScheduleInterleaved1F1B(pipe, microbatches, loss_fn=token_loss)
    return pl.ScheduleInterleavedZeroBubble(pipe, microbatches, loss_fn=token_loss)
