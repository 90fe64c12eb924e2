"""``PackedSampler``: deterministic, resumable sampling of packed training windows, sharded over ranks.

Documents are already packed end to end (separated by the end-of-text token) in one token stream. Epoch
``e`` cuts the stream into windows of ``seq_len + 1`` tokens starting at ``offset_e + k * seq_len``
(``offset_e`` in ``[0, seq_len)`` so window boundaries move between epochs) and visits them in a random
permutation; both come from ``numpy.random.default_rng([seed, e])``, so the order is a pure function of
(seed, epoch). Each ``next_batch`` call consumes ``world * batch_size`` consecutive windows of the permutation
and rank ``r`` takes the ``r``-th block of ``batch_size``; an optimizer step of ``global_batch`` sequences
is ``global_batch / (world * batch_size)`` such calls (gradient accumulation). So every optimizer step uses
the same ``global_batch`` windows whatever the number of ranks and micro-batches, which makes DDP/FSDP runs
match a single process, and an epoch ends (dropping its partial last step) at the same place. The position
(epoch, windows consumed) is all the state; it does not depend on ``world`` or ``batch_size``, so a
checkpoint taken at a step boundary resumes on a different number of processes with the same global batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from isoflop.errors import IsoflopError

if TYPE_CHECKING:
    import torch

STATE_VERSION = 1


class PackedSampler:
    """Batches ``(x, y)`` of int64 tensors shaped (batch_size, seq_len); ``y`` is ``x`` shifted by one token."""

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        global_batch: int | None = None,
    ) -> None:
        """``batch_size`` sequences per call on this rank; ``global_batch`` sequences per optimizer step over all
        ranks and accumulation micro-steps (default ``world * batch_size``, i.e. no accumulation)."""
        if seq_len < 1 or batch_size < 1:
            raise IsoflopError(f"seq_len and batch_size must be positive (got {seq_len}, {batch_size})")
        if seed < 0:
            raise IsoflopError(f"seed must be >= 0 (got {seed})")
        if world < 1 or not 0 <= rank < world:
            raise IsoflopError(f"rank {rank} is outside world size {world}; use 0 <= rank < world")
        self.tokens = tokens
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.global_batch = int(global_batch) if global_batch is not None else self.world * self.batch_size
        if self.global_batch < 1 or self.global_batch % self.per_call:
            raise IsoflopError(
                f"global_batch {self.global_batch} is not a multiple of world x batch_size = "
                f"{self.per_call}; make each optimizer step a whole number of micro-batches"
            )
        # Every epoch must hold at least one global batch whatever its offset (offset <= seq_len - 1).
        min_windows = (len(tokens) - self.seq_len) // self.seq_len
        if min_windows < self.global_batch:
            raise IsoflopError(
                f"{len(tokens)} training tokens hold {max(min_windows, 0)} windows of seq_len {seq_len}, fewer "
                f"than one global batch of {self.global_batch}; use a larger corpus (max_bytes) or a smaller batch"
            )
        self.epoch = 0
        self.pos = 0  # windows of the current epoch's permutation already consumed (all ranks together)
        self._cache: tuple[int, int, np.ndarray] | None = None

    @property
    def per_call(self) -> int:
        """Windows one ``next_batch`` call consumes over all ranks: ``world * batch_size``."""
        return self.world * self.batch_size

    def _epoch_plan(self, epoch: int) -> tuple[int, np.ndarray]:
        """(offset, permutation of window indices) of ``epoch``, a pure function of (seed, epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(0, self.seq_len))
        n_windows = (len(self.tokens) - 1 - offset) // self.seq_len
        perm = rng.permutation(n_windows)
        self._cache = (epoch, offset, perm)
        return offset, perm

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        """Optimizer steps in ``epoch`` (default: the current one); a last partial global batch is dropped."""
        return len(self._epoch_plan(self.epoch if epoch is None else epoch)[1]) // self.global_batch

    def next_window_starts(self) -> np.ndarray:
        """Token offsets of this rank's next batch, advancing the position by ``world * batch_size`` windows."""
        offset, perm = self._epoch_plan(self.epoch)
        if self.pos >= (len(perm) // self.global_batch) * self.global_batch:
            self.epoch, self.pos = self.epoch + 1, 0
            offset, perm = self._epoch_plan(self.epoch)
        lo = self.pos + self.rank * self.batch_size
        starts = offset + perm[lo : lo + self.batch_size].astype(np.int64) * self.seq_len
        self.pos += self.per_call
        return starts

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next ``(x, y)``, int64 tensors of shape (batch_size, seq_len)."""
        import torch

        starts = self.next_window_starts()
        idx = starts[:, None] + np.arange(self.seq_len + 1, dtype=np.int64)[None, :]
        rows = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        return rows[:, :-1], rows[:, 1:]

    def __iter__(self) -> PackedSampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Plain ints describing the data position (goes into checkpoints)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "pos": self.pos,
            "seq_len": self.seq_len,
            "n_tokens": int(len(self.tokens)),
            "batch_size": self.batch_size,
            "world": self.world,
            "global_batch": self.global_batch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position. The token count, seq_len and seed must match; world and batch_size may differ."""
        for key in ("seq_len", "n_tokens", "seed"):
            mine = self.seq_len if key == "seq_len" else len(self.tokens) if key == "n_tokens" else self.seed
            if int(state[key]) != int(mine):
                raise IsoflopError(
                    f"sampler state has {key}={int(state[key])} but this run has {key}={mine}; "
                    "resume with the same data, seq_len and seed, or start a fresh run"
                )
        epoch, pos = int(state["epoch"]), int(state["pos"])
        if epoch < 0 or pos < 0 or pos > len(self._epoch_plan(epoch)[1]):
            raise IsoflopError(
                f"sampler state position (epoch {epoch}, pos {pos}) is out of range; "
                "the checkpoint does not belong to this data"
            )
        self.epoch, self.pos = epoch, pos
